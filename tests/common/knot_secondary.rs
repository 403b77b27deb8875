//! The configuration of a Knot secondary of one of our zones, for tests and benchmarks
//! (bench/src/transfer.rs includes this file too): one worker of each kind, everything
//! in `home`, the zone kept in memory only, NOTIFY taken from loopback.

use std::net::SocketAddr;
use std::path::Path;

/// knot.conf for a Knot listening on 127.0.0.1 at `port`, secondary of `zone` at
/// `primary`.
pub fn knot_secondary_config(home: &Path, port: u16, primary: SocketAddr, zone: &str) -> String {
    let home = home.display();
    format!(
        "server:\n    rundir: \"{home}\"\n    listen: 127.0.0.1@{port}\n    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n\
         database:\n    storage: \"{home}\"\n\
         log:\n  - target: stderr\n    any: info\n\
         remote:\n  - id: svcdns\n    address: {}@{}\n\
         acl:\n  - id: notify_from_svcdns\n    address: 127.0.0.1\n    action: notify\n\
         template:\n  - id: default\n    storage: \"{home}\"\n    zonefile-sync: -1\n    zonefile-load: none\n    journal-content: none\n\
         zone:\n  - domain: {zone}\n    master: svcdns\n    acl: notify_from_svcdns\n",
        primary.ip(),
        primary.port()
    )
}
