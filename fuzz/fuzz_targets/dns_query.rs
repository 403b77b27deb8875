//! A datagram, whatever its bytes, through the fast path's parse and answer, over UDP
//! and TCP, against a zone with static records and registered instances. Never a
//! panic; a response, when there is one, is within the transport's limit.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use svcdns::dns::front::{Reply, Responder, Transport};
use svcdns::dns::wire::Scratch;
use svcdns::dns::{zone_file, LiveZones, Sampling, Zones};
use svcdns::registry::spec::registration_from_json;
use svcdns::registry::{Limits, Registry};
use svcdns::store::MemoryStore;

const ZONE: &str = "origin: svc.internal.\nrecords:\n  - {name: docs, type: CNAME, data: web.svc.internal.}\n  - {name: mail, type: MX, data: 10 mx.svc.internal.}\n  - {name: mx, type: A, data: 10.9.0.1}\n  - {name: deep.a.b, type: TXT, data: hello}\n";

fn responder() -> &'static (Registry, Responder) {
    static READY: OnceLock<(Registry, Responder)> = OnceLock::new();
    READY.get_or_init(|| {
        let spec = zone_file::parse(ZONE, Path::new("fuzz.yaml"), 5, None).expect("zone");
        let zones = Zones::new(&[spec]);
        let settings = zones.settings().into_iter().flatten().collect();
        let live = Arc::new(LiveZones::new(zones));
        let registry = Registry::start(
            settings,
            "svc.internal.",
            live.clone(),
            Box::new(MemoryStore::default()),
            Limits::default(),
        )
        .expect("registry");
        for i in 0..40 {
            let request = json!({"service": format!("s{}", i % 4), "id": format!("i{i}"),
                "addresses": [format!("10.0.0.{i}"), format!("fd00::{i}")], "port": 80,
                "tags": [format!("t{}", i % 3)], "meta": {"k": "v", "n": i.to_string()},
                "proto": if i % 5 == 0 { "udp" } else { "tcp" }});
            let serde_json::Value::Object(object) = request else {
                unreachable!()
            };
            let registration =
                registration_from_json(&object, "svc.internal.", &[]).expect("registration");
            let pending = registry.register(registration, None);
            drop(pending);
        }
        // Let the writer publish them.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let served = live
            .current()
            .served(&registry.published(), Sampling::default());
        (registry, Responder::new(served, true))
    })
}

fuzz_target!(|packet: &[u8]| {
    let (_, responder) = responder();
    let mut scratch = Scratch::default();
    for (transport, limit) in [(Transport::Udp, 4096), (Transport::Tcp, 65_535)] {
        if let Reply::Send(response) = responder.respond(packet, transport, &mut scratch) {
            assert!(
                response.len() <= limit,
                "{} bytes over {transport:?}",
                response.len()
            );
            assert!(response.len() >= 12, "a response without a header");
        }
    }
});
