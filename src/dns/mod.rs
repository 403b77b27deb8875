//! The DNS side: zones built from files and from the live registry, answered through a
//! hickory-server `Catalog`.

pub mod answer;
pub mod handler;
pub mod server;
pub mod service_records;
pub mod zone;
pub mod zone_file;

use std::collections::HashMap;
use std::sync::Arc;

use hickory_server::zone_handler::Catalog;

use crate::registry::{Instance, Label, Publisher, RegistryError};
pub use zone::Zone;
pub use zone_file::ZoneSpec;

/// Every served zone, by canonical origin (`svc.internal.`). Implements the registry's
/// [`Publisher`], which is the only way registrations reach DNS.
pub struct Zones {
    by_origin: HashMap<String, Arc<Zone>>,
}

impl Zones {
    pub fn new(zones: Vec<Arc<Zone>>) -> Zones {
        Zones {
            by_origin: zones
                .into_iter()
                .map(|zone| (zone.origin().to_string(), zone))
                .collect(),
        }
    }

    /// A hickory catalog with one zone handler per zone.
    pub fn catalog(&self) -> Catalog {
        let mut catalog = Catalog::new();
        for zone in self.by_origin.values() {
            catalog.upsert(zone.lower_origin().clone(), vec![zone.clone()]);
        }
        catalog
    }

    fn zone(&self, origin: &str) -> Result<&Arc<Zone>, RegistryError> {
        self.by_origin
            .get(origin)
            .ok_or_else(|| RegistryError::UnknownZone(origin.to_string()))
    }
}

impl Publisher for Zones {
    fn admit(&self, instance: &Instance) -> Result<(), RegistryError> {
        self.zone(&instance.zone)?.admit(instance)
    }

    fn publish(&self, zone: &str, service: &Label, instances: &[Arc<Instance>]) {
        if let Ok(zone) = self.zone(zone) {
            zone.publish_service(service, instances);
        }
    }
}
