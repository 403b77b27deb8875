//! svcdns: a DNS server for service discovery. Services register over a small socket
//! (`api`), the registry keeps them and their leases (`registry`), and every change is
//! answered in DNS from the latest snapshot by svcdns's own UDP/TCP front, with
//! hickory-server behind it for everything else (`dns`).

pub mod api;
pub mod client;
pub mod config;
pub mod dns;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod reload;
pub mod serve;
pub mod stop;
pub mod store;
pub mod throttle;
