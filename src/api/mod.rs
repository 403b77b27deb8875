//! The registration API: the line protocol and the sockets it is served on.

pub mod listener;
pub mod protocol;

pub use listener::RegistrationServer;
