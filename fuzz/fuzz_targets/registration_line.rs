//! One registration protocol line, whatever its bytes, through the real parser and
//! into a live registry: never a panic, every refusal a reply.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use svcdns::api::protocol::{handle_line, Session};
use svcdns::dns::{LiveZones, ZoneSpec, Zones};
use svcdns::registry::{Limits, Registry};
use svcdns::store::MemoryStore;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let origin = "svc.internal.".parse().expect("origin");
        let zones = Zones::new(&[ZoneSpec::empty(origin, 5, None)]);
        let settings = zones.settings().into_iter().flatten().collect();
        let limits = Limits {
            max_instances_per_service: 100,
            max_instances: 10_000,
            ..Limits::default()
        };
        Registry::start(
            settings,
            "svc.internal.",
            Arc::new(LiveZones::new(zones)),
            Box::new(MemoryStore::default()),
            limits,
        )
        .expect("registry")
    })
}

fuzz_target!(|line: &[u8]| {
    let mut session = Session::new(1, None);
    // The reply (or what it waits for) is dropped: the writer's answer goes nowhere.
    let _ = handle_line(registry(), &mut session, line);
});
