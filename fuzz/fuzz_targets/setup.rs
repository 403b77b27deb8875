//! What the DNS fuzz targets answer from: a zone with static records, 40 registered
//! instances, and the responder serving them; built once per process.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde_json::json;
use svcdns::dns::front::Responder;
use svcdns::dns::{zone_file, LiveZones, Sampling, Zones};
use svcdns::registry::spec::registration_from_json;
use svcdns::registry::{Limits, Registry};
use svcdns::store::MemoryStore;

const ZONE: &str = "origin: svc.internal.\nrecords:\n  - {name: docs, type: CNAME, data: web.svc.internal.}\n  - {name: mail, type: MX, data: 10 mx.svc.internal.}\n  - {name: mx, type: A, data: 10.9.0.1}\n  - {name: deep.a.b, type: TXT, data: hello}\n";

pub fn served() -> &'static (Registry, Arc<Responder>) {
    static READY: OnceLock<(Registry, Arc<Responder>)> = OnceLock::new();
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
        (registry, Arc::new(Responder::new(served, true)))
    })
}
