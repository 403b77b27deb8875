//! The registration API: the line protocol, connections, and the sockets they arrive on.

pub mod auth;
pub mod connection;
pub mod listener;
pub mod protocol;

pub use listener::{RegistrationServer, RegistrationSettings, UnixSocket};
