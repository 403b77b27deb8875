//! The DNS side: zones built from files and from the live registry, answered by our own
//! UDP/TCP front on the wire (`front`), with a hickory-server `Catalog` behind it.

pub mod fitter;
pub mod forward;
pub mod front;
pub mod handler;
pub mod naming;
pub mod records;
pub mod server;
pub mod tcp;
pub mod udp;
pub mod wire;
pub mod zone;
pub mod zone_file;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::rr::{LowerName, Name};
use hickory_server::zone_handler::Catalog;

use crate::registry::{Admission, Instance, Label, RegistryError, View, ZoneSettings};
pub use records::Sampling;
pub use zone::{ServedZone, Zone};
pub use zone_file::ZoneSpec;

/// Every served zone, by canonical origin (`svc.internal.`). Implements the registry's
/// [`Admission`]: whether an instance's names fit its zone.
pub struct Zones {
    /// In the order given, which is also their order in the registry's snapshots.
    zones: Vec<Arc<Zone>>,
    by_origin: HashMap<String, usize>,
}

impl Zones {
    pub fn new(specs: &[ZoneSpec]) -> Zones {
        let zones: Vec<Arc<Zone>> = specs.iter().map(|spec| Arc::new(Zone::new(spec))).collect();
        let by_origin = zones
            .iter()
            .enumerate()
            .map(|(index, zone)| (zone.origin().to_string(), index))
            .collect();
        Zones { zones, by_origin }
    }

    /// What the registry needs to know of each zone, in snapshot order.
    pub fn settings(&self) -> Vec<ZoneSettings> {
        self.zones.iter().map(|zone| zone.settings()).collect()
    }

    /// Every zone as served from the snapshots published in `published` (whose zones
    /// are in the order of [`Zones::settings`]).
    pub fn served(
        &self,
        published: &Arc<ArcSwap<View>>,
        serial_base: u32,
        sampling: Sampling,
    ) -> Vec<Arc<ServedZone>> {
        self.zones
            .iter()
            .enumerate()
            .map(|(index, zone)| {
                Arc::new(ServedZone::new(
                    zone.clone(),
                    published.clone(),
                    index,
                    serial_base,
                    sampling,
                ))
            })
            .collect()
    }
}

/// A hickory catalog with the served zones as its zone handlers, and the forwarder (if
/// any) for every other name.
pub fn catalog(served: &[Arc<ServedZone>], forwarder: Option<forward::Forwarder>) -> Catalog {
    let mut catalog = Catalog::new();
    for zone in served {
        catalog.upsert(zone.zone().lower_origin().clone(), vec![zone.clone()]);
    }
    if let Some(forwarder) = forwarder {
        catalog.upsert(LowerName::from(Name::root()), vec![Arc::new(forwarder)]);
    }
    catalog
}

impl Admission for Zones {
    fn admit(&self, zone: &str, service: &Label, instance: &Instance) -> Result<(), RegistryError> {
        let index = self
            .by_origin
            .get(zone)
            .ok_or_else(|| RegistryError::UnknownZone(zone.to_string()))?;
        self.zones[*index].admit(service, instance)
    }
}
