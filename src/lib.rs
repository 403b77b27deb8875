//! svcdns: a DNS server for service discovery. Services register over a small socket
//! (`api`), the registry keeps them and their leases (`registry`), and every change is
//! rendered into prepared DNS answers served by hickory-server (`dns`).

pub mod api;
pub mod client;
pub mod config;
pub mod dns;
pub mod registry;
pub mod serve;
pub mod stop;
