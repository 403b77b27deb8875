//! Where the registry's state outlives the process (DESIGN §5-6).
//!
//! The registry's writer owns a [`Store`]. It hands each batch's changes to
//! [`Store::apply`] and acknowledges the batch only once that returns, so an
//! acknowledged change survives a crash. At start, [`Store::load`] gives back what was
//! committed, before DNS answers. The registry view and the DNS side never see which
//! store runs.
//!
//! What is stored: every registered instance except ephemeral ones (they live with a
//! connection, which a restart closes) and static ones (they come from the zone files,
//! read again at every start). Also stored: their health marks, their lease deadlines
//! as wall-clock times, and the highest SOA serial published, so serials never go
//! backwards across a restart.
//!
//! Lease renewals are not written one by one: the writer checkpoints the deadlines of
//! renewed leases every few seconds. A restart gives every lease its remaining time
//! plus one full TTL of grace, which covers the checkpoint lag, so a restart never
//! expires live services en masse (etcd does the same after a leader change).
//!
//! A store that other nodes write too (etcd, [`Store::is_shared`]) works the other way
//! round: the writer commits a batch there and does not apply it; every node applies
//! what the store reports ([`Store::follow`]), its own changes included, in the
//! store's order, and acknowledges a batch once it has applied the batch's revision.
//! Such a store also keeps ephemeral instances (tied to a lease of the node that
//! holds their connection) and runs leases itself.

pub mod embedded;
#[cfg(feature = "etcd")]
pub mod etcd;

use data_encoding::{HEXLOWER, HEXLOWER_PERMISSIVE};
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::BinEncodable;
use serde_json::{json, Map, Value};
use thiserror::Error;

use crate::registry::records::{NameRecords, RecordSet};
use crate::registry::spec::registration_from_json;
use crate::registry::{Health, InstanceJson, InstanceKey, Registration};

/// Version of the backup format (`svcdns snapshot save`).
pub const BACKUP_FORMAT: u64 = 1;

/// The field of a backup line that carries the lease deadline.
const BACKUP_DEADLINE: &str = "lease_deadline_unix_ms";

/// One change in a batch, in order.
#[derive(Debug, Clone)]
pub enum Change {
    /// An instance registered or replaced.
    Put(StoredInstance),
    /// An instance marked: the same instance with another health (a shared store
    /// keeps its lease running as it was).
    Health(StoredInstance),
    /// An instance gone (deregistered, expired, replaced by one that is not stored).
    Delete(InstanceKey),
    /// A renewed lease's new deadline (a checkpoint).
    Lease {
        key: InstanceKey,
        deadline_unix_ms: u64,
    },
    /// The highest SOA serial published so far.
    Serial(u32),
    /// A lease renewed: for a shared store, which runs leases itself.
    Renew(InstanceKey),
    /// Records of a zone at one owner name, written or replaced.
    Records(StoredRecords),
    /// Every record at an owner name (lowercase wire form) gone.
    DeleteRecords { zone: String, owner: Box<[u8]> },
}

/// What a shared store reports, in its order.
#[derive(Debug)]
pub enum Remote {
    /// Changes committed at `revision`, by any node.
    Changes {
        revision: u64,
        changes: Vec<RemoteChange>,
    },
    /// The store was read again from scratch (after it lost track of changes): this
    /// is everything it holds at `revision`.
    Reload {
        revision: u64,
        instances: Vec<StoredInstance>,
        records: Vec<StoredRecords>,
    },
}

/// One change a shared store reports.
#[derive(Debug)]
pub enum RemoteChange {
    Put(StoredInstance),
    Delete(InstanceKey),
    Records(StoredRecords),
    DeleteRecords { zone: String, owner: Box<[u8]> },
}

/// Where a shared store sends what it reports; false once the registry is gone.
pub type Feed = Box<dyn Fn(Remote) -> bool + Send + Sync>;

/// An instance as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredInstance {
    pub registration: Registration,
    pub health: Health,
    /// When its lease ends, in milliseconds since the Unix epoch; `None` without one.
    pub lease_deadline_unix_ms: Option<u64>,
}

/// Records of a zone that are not instances, at one owner name, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecords {
    /// Zone origin, lowercase and fully qualified.
    pub zone: String,
    pub records: NameRecords,
}

/// Everything a store holds.
#[derive(Debug, Default)]
pub struct Loaded {
    pub instances: Vec<StoredInstance>,
    pub records: Vec<StoredRecords>,
    /// The highest SOA serial ever published, if any was stored.
    pub serial: Option<u32>,
    /// Records that could not be read back; they are left out and logged.
    pub unreadable: Vec<String>,
    /// The store's revision at the time of loading (shared stores follow from it).
    pub revision: u64,
}

/// Why a store cannot take or give data. The message names the file.
#[derive(Debug, Clone, Error)]
pub enum StoreError {
    /// The store cannot be opened at all: damaged, locked by another process, or of
    /// an unknown format. svcdns does not start on it.
    #[error("{0}")]
    Unusable(String),
    /// A write failed (disk full, I/O error, read-only file system); it may work again
    /// later, and the store retries.
    #[error("{0}")]
    Unavailable(String),
}

/// A durable home for the registry.
pub trait Store: Send {
    /// Everything committed so far.
    fn load(&mut self) -> Result<Loaded, StoreError>;

    /// Commits `changes` as one atomic batch, durably before it returns. Returns the
    /// store's revision after it.
    fn apply(&mut self, changes: &[Change]) -> Result<u64, StoreError>;

    /// Whether anything outlives the process; the writer skips the work of preparing
    /// changes for a store that keeps nothing.
    fn is_durable(&self) -> bool;

    /// Where the data lives, for logs.
    fn describe(&self) -> String;

    /// Whether other nodes write the same data: then the writer applies changes only
    /// as [`Store::follow`] reports them.
    fn is_shared(&self) -> bool {
        false
    }

    /// Starts reporting every change after the revision [`Store::load`] returned, in
    /// order, to `feed`. Only shared stores report anything.
    fn follow(&mut self, feed: Feed) {
        drop(feed);
    }
}

/// The default: nothing survives the process.
#[derive(Default)]
pub struct MemoryStore {
    revision: u64,
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        Ok(Loaded::default())
    }

    fn apply(&mut self, _changes: &[Change]) -> Result<u64, StoreError> {
        self.revision += 1;
        Ok(self.revision)
    }

    fn is_durable(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        "memory only (no data_dir): registrations do not survive a restart".to_string()
    }
}

impl StoredInstance {
    /// The stored form: the registration as a `register` request would carry it, plus
    /// its health. Read back with the same parser as requests, so a stored record is
    /// checked exactly as a new registration is.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.as_json()).unwrap_or_default()
    }

    fn as_json(&self) -> InstanceJson<'_> {
        let registration = &self.registration;
        InstanceJson {
            zone: &registration.zone,
            service: &registration.service,
            instance: &registration.instance,
            health: self.health,
            expires_in: None,
        }
    }

    pub fn from_json(bytes: &[u8], lease_deadline_unix_ms: Option<u64>) -> Result<Self, String> {
        let object: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JSON object: {e}"))?;
        StoredInstance::from_object(&object, lease_deadline_unix_ms, false)
    }

    /// As [`StoredInstance::from_json`], from a shared store, which also keeps
    /// ephemeral instances (their node's lease removes them).
    pub fn from_shared_json(bytes: &[u8]) -> Result<Self, String> {
        let object: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JSON object: {e}"))?;
        StoredInstance::from_object(&object, None, true)
    }

    /// A backup's record: the stored form with `lease_deadline_unix_ms`.
    pub fn to_backup(&self) -> Value {
        let mut record = serde_json::to_value(self.as_json()).unwrap_or_default();
        if let (Some(deadline), Value::Object(object)) = (self.lease_deadline_unix_ms, &mut record)
        {
            object.insert(BACKUP_DEADLINE.into(), Value::from(deadline));
        }
        record
    }

    pub fn from_backup_line(line: &str) -> Result<Self, String> {
        let mut object: Map<String, Value> =
            serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
        let deadline = match object.remove(BACKUP_DEADLINE) {
            None | Some(Value::Null) => None,
            Some(value) => Some(
                value
                    .as_u64()
                    .ok_or_else(|| format!("{BACKUP_DEADLINE} {value} is not a time"))?,
            ),
        };
        StoredInstance::from_object(&object, deadline, false)
    }

    fn from_object(
        object: &Map<String, Value>,
        lease_deadline_unix_ms: Option<u64>,
        allow_ephemeral: bool,
    ) -> Result<Self, String> {
        let health = match object.get("health").and_then(Value::as_str) {
            None => Health::Healthy,
            Some(text) => Health::parse(text).map_err(|e| e.to_string())?,
        };
        let zone = object
            .get("zone")
            .and_then(Value::as_str)
            .ok_or("no zone")?
            .to_string();
        let registration =
            registration_from_json(object, &zone, &["health"]).map_err(|e| e.to_string())?;
        // An ephemeral instance lives with a connection; one read back would have none
        // and never go away.
        if registration.instance.ephemeral && !allow_ephemeral {
            return Err("an ephemeral instance cannot be stored".to_string());
        }
        Ok(StoredInstance {
            registration,
            health,
            lease_deadline_unix_ms: lease_deadline_unix_ms
                .filter(|_| registration_has_lease(object)),
        })
    }

    pub fn key(&self) -> InstanceKey {
        InstanceKey {
            zone: self.registration.zone.clone(),
            service: self.registration.service.clone(),
            id: self.registration.instance.id.clone(),
        }
    }
}

impl StoredRecords {
    /// The stored form, readable in a backup or in etcd: the owner as text, each RDATA
    /// in hex (the RFC 3597 form, which needs no parser per type).
    /// `{"zone": "svc.internal.", "owner": "www.svc.internal.", "sets": [{"type": 1,
    /// "ttl": 60, "rdata": ["0a000005"]}]}`
    pub fn to_value(&self) -> Value {
        let sets: Vec<Value> = self
            .records
            .sets
            .iter()
            .map(|set| {
                let rdata: Vec<String> = set.rdata.iter().map(|r| HEXLOWER.encode(r)).collect();
                json!({"type": set.record_type, "ttl": set.ttl, "rdata": rdata})
            })
            .collect();
        json!({"zone": self.zone, "owner": owner_text(&self.records.owner), "sets": sets})
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_value()).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let object: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JSON object: {e}"))?;
        StoredRecords::from_object(&object)
    }

    /// Whether a backup line's object holds records (rather than an instance).
    pub fn is_records(object: &Map<String, Value>) -> bool {
        object.contains_key("owner") && object.contains_key("sets")
    }

    pub fn from_object(object: &Map<String, Value>) -> Result<Self, String> {
        let text = |key: &str| {
            object
                .get(key)
                .and_then(Value::as_str)
                .ok_or(format!("no {key}"))
        };
        let zone = text("zone")?.to_ascii_lowercase();
        let owner = owner_wire(text("owner")?)?;
        let mut sets = Vec::new();
        for set in object
            .get("sets")
            .and_then(Value::as_array)
            .ok_or("no sets")?
        {
            let number = |key: &str| {
                set.get(key)
                    .and_then(Value::as_u64)
                    .ok_or(format!("a set has no {key}"))
            };
            let record_type = u16::try_from(number("type")?).map_err(|_| "type is over 65535")?;
            let ttl = u32::try_from(number("ttl")?).map_err(|_| "ttl is over 2^32")?;
            let rdata = set
                .get("rdata")
                .and_then(Value::as_array)
                .ok_or("a set has no rdata")?
                .iter()
                .map(|hex| {
                    let hex = hex.as_str().ok_or("rdata is not a string")?;
                    HEXLOWER_PERMISSIVE
                        .decode(hex.as_bytes())
                        .map(Vec::into_boxed_slice)
                        .map_err(|e| format!("rdata {hex:?} is not hex: {e}"))
                })
                .collect::<Result<Vec<_>, String>>()?;
            if rdata.is_empty() {
                return Err("a set has no records".into());
            }
            sets.push(RecordSet {
                record_type,
                ttl,
                rdata,
            });
        }
        Ok(StoredRecords {
            zone,
            records: NameRecords { owner, sets },
        })
    }
}

/// An owner name as text (`www.svc.internal.`).
pub fn owner_text(owner: &[u8]) -> String {
    let mut labels = Vec::new();
    let mut at = 0;
    while let Some(&len) = owner.get(at).filter(|&&len| len > 0) {
        labels.push(
            owner
                .get(at + 1..at + 1 + usize::from(len))
                .unwrap_or_default(),
        );
        at += 1 + usize::from(len);
    }
    match Name::from_labels(labels) {
        Ok(mut name) => {
            name.set_fqdn(true);
            name.to_string()
        }
        Err(_) => String::from("."),
    }
}

/// An owner name's lowercase wire form, from text.
pub fn owner_wire(text: &str) -> Result<Box<[u8]>, String> {
    let mut name = Name::from_ascii(text).map_err(|e| format!("owner {text:?}: {e}"))?;
    name.set_fqdn(true);
    name.to_lowercase()
        .to_bytes()
        .map(Vec::into_boxed_slice)
        .map_err(|e| format!("owner {text:?}: {e}"))
}

fn registration_has_lease(object: &Map<String, Value>) -> bool {
    object.get("ttl").is_some_and(|ttl| !ttl.is_null())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stored(lease: Option<u64>) -> StoredInstance {
        let request = json!({"zone": "svc.internal.", "service": "web", "id": "web-1",
            "addresses": ["10.0.0.1", "fd00::1"], "port": 8080, "proto": "udp", "priority": 3,
            "weight": 7, "tags": ["v2", "canary"], "meta": {"version": "2.1"},
            "dns_ttl": 9, "ttl": lease.map(|_| 30)});
        let Value::Object(object) = request else {
            unreachable!()
        };
        StoredInstance {
            registration: registration_from_json(&object, "svc.internal.", &[]).unwrap(),
            health: Health::Critical,
            lease_deadline_unix_ms: lease,
        }
    }

    #[test]
    fn stored_records_and_backup_lines_read_back_as_written() {
        for lease in [None, Some(1_795_000_000_000)] {
            let original = stored(lease);
            let record = StoredInstance::from_json(&original.to_json(), lease).unwrap();
            assert_eq!(record, original);
            let line = original.to_backup().to_string();
            assert_eq!(StoredInstance::from_backup_line(&line).unwrap(), original);
        }
        // A lease deadline for an instance without a lease is not one.
        let permanent = stored(None);
        let record = StoredInstance::from_json(&permanent.to_json(), Some(5)).unwrap();
        assert_eq!(record.lease_deadline_unix_ms, None);
    }

    #[test]
    fn zone_records_read_back_as_written() {
        let records = StoredRecords {
            zone: "svc.internal.".into(),
            records: NameRecords {
                owner: owner_wire("_acme-challenge.WWW.svc.internal.").unwrap(),
                sets: vec![RecordSet {
                    record_type: 16,
                    ttl: 120,
                    rdata: vec![b"\x05token".to_vec().into_boxed_slice()],
                }],
            },
        };
        let value = records.to_value();
        assert_eq!(value["owner"], "_acme-challenge.www.svc.internal.");
        assert_eq!(
            StoredRecords::from_json(&records.to_json()).unwrap(),
            records
        );
        let Value::Object(object) = value else {
            unreachable!()
        };
        assert!(StoredRecords::is_records(&object));
        assert!(StoredRecords::from_json(b"{\"zone\":\"z.\",\"owner\":\"a.z.\",\"sets\":[{\"type\":1,\"ttl\":1,\"rdata\":[\"zz\"]}]}").is_err());
    }

    #[test]
    fn damaged_records_are_refused_with_the_reason() {
        let problem = StoredInstance::from_json(b"{\"zone\":\"svc.internal.\",\"service\":\"web\",\"id\":\"x\",\"addresses\":[\"nope\"],\"port\":1}", None)
            .unwrap_err();
        assert!(problem.contains("nope"), "{problem}");
        assert!(StoredInstance::from_json(b"[1]", None).is_err());
        let ephemeral = StoredInstance::from_json(b"{\"zone\":\"svc.internal.\",\"service\":\"web\",\"id\":\"x\",\"addresses\":[\"10.0.0.1\"],\"port\":1,\"ephemeral\":true}", None)
            .unwrap_err();
        assert!(ephemeral.contains("ephemeral"), "{ephemeral}");
        assert!(StoredInstance::from_backup_line("{\"lease_deadline_unix_ms\":\"soon\"}").is_err());
    }
}
