//! The DNS side: zones built from files and from the live registry, answered by our own
//! UDP/TCP front on the wire (`front`), with a hickory-server `Catalog` behind it.

pub mod fitter;
pub mod forward;
pub mod front;
pub mod handler;
pub mod journal;
pub mod naming;
pub mod notify;
pub mod rate_limit;
pub mod records;
pub mod server;
pub mod tcp;
pub mod transfer;
pub mod udp;
pub mod update;
pub mod wire;
pub mod zone;
pub mod zone_file;
pub mod zone_records;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::rr::{LowerName, Name};
use hickory_server::zone_handler::Catalog;

use crate::registry::{Admission, Instance, Label, RegistryError, View, ZoneSettings};
pub use records::Sampling;
pub use zone::{ServedZone, Zone};
pub use zone_file::ZoneSpec;

/// Every served zone, by canonical origin (`svc.internal.`), at its position in the
/// registry's snapshots. Implements the registry's [`Admission`]: whether an
/// instance's names fit its zone.
///
/// Positions never change: a zone that a reload takes away leaves an empty slot (the
/// registry keeps its position too), and a zone that comes back takes its old one.
pub struct Zones {
    /// Canonical origin of every position, served or not.
    origins: Vec<String>,
    /// The zone at each position; `None` where a reload took the zone away.
    zones: Vec<Option<Arc<Zone>>>,
    /// Positions of the served zones.
    by_origin: HashMap<String, usize>,
}

impl Zones {
    pub fn new(specs: &[ZoneSpec]) -> Zones {
        Zones::empty().reloaded(specs)
    }

    fn empty() -> Zones {
        Zones {
            origins: Vec::new(),
            zones: Vec::new(),
            by_origin: HashMap::new(),
        }
    }

    /// The zones of `specs`, at the positions this set gave their origins; new origins
    /// after them.
    pub fn reloaded(&self, specs: &[ZoneSpec]) -> Zones {
        let mut origins = self.origins.clone();
        let mut zones: Vec<Option<Arc<Zone>>> = vec![None; origins.len()];
        for spec in specs {
            let zone = Arc::new(Zone::new(spec));
            let origin = zone.origin().to_string();
            match origins.iter().position(|known| *known == origin) {
                Some(index) => zones[index] = Some(zone),
                None => {
                    origins.push(origin);
                    zones.push(Some(zone));
                }
            }
        }
        let by_origin = origins
            .iter()
            .enumerate()
            .filter(|(index, _)| zones[*index].is_some())
            .map(|(index, origin)| (origin.clone(), index))
            .collect();
        Zones {
            origins,
            zones,
            by_origin,
        }
    }

    /// What the registry needs to know of each position (`None`: not served).
    pub fn settings(&self) -> Vec<Option<ZoneSettings>> {
        self.zones
            .iter()
            .map(|zone| zone.as_ref().map(|zone| zone.settings()))
            .collect()
    }

    /// The zone at `index`, if served.
    pub fn get(&self, index: usize) -> Option<&Arc<Zone>> {
        self.zones.get(index)?.as_ref()
    }

    /// The position of a served zone.
    pub fn position(&self, origin: &str) -> Option<usize> {
        self.by_origin.get(origin).copied()
    }

    /// Every served zone as answered from the snapshots published in `published`.
    pub fn served(
        &self,
        published: &Arc<ArcSwap<View>>,
        sampling: Sampling,
    ) -> Vec<Arc<ServedZone>> {
        self.zones
            .iter()
            .enumerate()
            .filter_map(|(index, zone)| {
                Some(Arc::new(ServedZone::new(
                    zone.clone()?,
                    published.clone(),
                    index,
                    sampling,
                )))
            })
            .collect()
    }
}

/// The zones in force, replaced whole by a reload; what the registry admits against.
pub struct LiveZones(ArcSwap<Zones>);

impl LiveZones {
    pub fn new(zones: Zones) -> LiveZones {
        LiveZones(ArcSwap::from_pointee(zones))
    }

    pub fn current(&self) -> Arc<Zones> {
        self.0.load_full()
    }

    pub fn replace(&self, zones: Zones) {
        self.0.store(Arc::new(zones));
    }
}

impl Admission for LiveZones {
    fn admit(&self, zone: &str, service: &Label, instance: &Instance) -> Result<(), RegistryError> {
        let zones = self.0.load();
        let zone = zones
            .position(zone)
            .and_then(|index| zones.get(index))
            .ok_or_else(|| RegistryError::UnknownZone(zone.to_string()))?;
        zone.admit(service, instance)
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
