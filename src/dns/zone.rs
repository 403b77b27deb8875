//! One served zone: its static data, the live names of its services, and the immutable
//! snapshot that queries read.
//!
//! Queries never wait for writers (DESIGN §5): they `load()` an `Arc<ZoneData>` from an
//! `ArcSwap` and answer from it. A writer builds the next version under its own mutex
//! and swaps it in. The name map is a persistent hash map (`imbl`), so the next version
//! shares everything it does not change and a change costs what the one service it
//! touches costs, never what the whole zone costs.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use hickory_proto::rr::rdata::{NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType};
use hickory_server::zone_handler::{
    AuthLookup, LookupControlFlow, LookupError, LookupOptions, LookupRecords,
};
use tracing::error;

use super::answer::{record_set, rrset_of, Answer, NameEntry};
use super::service_records::{self, child, service_type_name};
use super::zone_file::{SoaSpec, ZoneSpec};
use crate::registry::{Instance, Label, RegistryError};

/// What queries read: every name of the zone, immutable once published.
pub struct ZoneData {
    names: imbl::HashMap<LowerName, Arc<NameEntry>>,
}

/// Room a response needs beyond what `Answer` sizes account for.
pub struct ResponseRoom {
    /// The most bytes the response may have (the client's UDP limit, or 65535 on TCP).
    pub limit: usize,
    /// Bytes to keep free for the OPT record and an uncompressible question.
    pub slack: usize,
}

pub struct Zone {
    origin: Name,
    lower_origin: LowerName,
    default_ttl: u32,
    soa: SoaSpec,
    /// Service labels whose names a static record already owns (see `static_owner`).
    static_service_labels: HashMap<String, Name>,
    published: ArcSwap<ZoneData>,
    writer: Mutex<Writer>,
}

/// The writer's side: the working name map plus the bookkeeping that keeps empty
/// non-terminals and the DNS-SD service list right as services come and go.
struct Writer {
    names: imbl::HashMap<LowerName, Arc<NameEntry>>,
    /// For every name strictly between a data name and the apex: how many data names
    /// lie below it. A name with a count and no data is an empty non-terminal.
    descendants: HashMap<LowerName, u32>,
    service_names: HashMap<Label, Vec<LowerName>>,
    /// `_S._P.Z` of every service, for `_services._dns-sd._udp.Z`.
    service_types: BTreeMap<Label, BTreeSet<Name>>,
    /// Static answers at the apex (NS and any static records there), kept to rebuild the
    /// apex when the SOA serial moves.
    apex_static: Vec<Arc<Answer>>,
    serial: u32,
}

impl Zone {
    /// Builds a zone from its file (or the defaults), with its static records published.
    pub fn new(spec: &ZoneSpec, serial: u32) -> Zone {
        let origin = spec.origin.clone();
        let lower_origin = LowerName::new(&origin);
        let mut writer = Writer {
            names: imbl::HashMap::new(),
            descendants: HashMap::new(),
            service_names: HashMap::new(),
            service_types: BTreeMap::new(),
            apex_static: Vec::new(),
            serial,
        };

        // Static RRsets, grouped by owner and type.
        let mut grouped: BTreeMap<(LowerName, RecordType), Vec<Record>> = BTreeMap::new();
        for record in &spec.records {
            let ttl = record.ttl.unwrap_or(spec.ttl);
            grouped
                .entry((LowerName::new(&record.name), record.rdata.record_type()))
                .or_default()
                .push(Record::from_rdata(
                    record.name.clone(),
                    ttl,
                    record.rdata.clone(),
                ));
        }
        let mut sets: BTreeMap<(LowerName, RecordType), RecordSet> = grouped
            .into_iter()
            .filter_map(|(key, records)| Some((key, rrset_of(records)?)))
            .collect();
        let ns_rdata = spec.ns.iter().map(|ns| RData::NS(NS(ns.clone())));
        let ns_set = record_set(&origin, spec.ttl, ns_rdata);
        if let Some(ns_set) = ns_set {
            sets.insert((lower_origin.clone(), RecordType::NS), ns_set);
        }
        // Additional data for static NS/MX/SRV: the targets' static addresses.
        let addresses_of = |target: &Name| -> Vec<Arc<RecordSet>> {
            let target = LowerName::new(target);
            [RecordType::A, RecordType::AAAA]
                .iter()
                .filter_map(|t| sets.get(&(target.clone(), *t)))
                .map(|set| Arc::new(set.clone()))
                .collect()
        };
        let mut entries: BTreeMap<LowerName, NameEntry> = BTreeMap::new();
        for ((owner, _), set) in &sets {
            let additionals = set
                .records_without_rrsigs()
                .filter_map(|r| match &r.data {
                    RData::NS(ns) => Some(ns.0.clone()),
                    RData::MX(mx) => Some(mx.exchange.clone()),
                    RData::SRV(srv) => Some(srv.target.clone()),
                    _ => None,
                })
                .flat_map(|target| addresses_of(&target))
                .collect();
            entries
                .entry(owner.clone())
                .or_default()
                .answers
                .push(Arc::new(Answer::new(set.clone(), additionals)));
        }

        let mut static_service_labels = HashMap::new();
        for (owner, entry) in entries {
            if owner == lower_origin {
                writer.apex_static = entry.answers;
                continue;
            }
            if let Some(label) = static_owner(&origin, &owner) {
                static_service_labels.insert(label, Name::from(owner.clone()));
            }
            writer.insert_data(&lower_origin, owner, Arc::new(entry), true);
        }

        let zone = Zone {
            origin,
            lower_origin,
            default_ttl: spec.ttl,
            soa: spec.soa.clone(),
            static_service_labels,
            published: ArcSwap::from_pointee(ZoneData {
                names: imbl::HashMap::new(),
            }),
            writer: Mutex::new(writer),
        };
        let mut writer = zone.lock_writer();
        zone.publish_apex(&mut writer);
        drop(writer);
        zone
    }

    pub fn origin(&self) -> &Name {
        &self.origin
    }

    pub fn lower_origin(&self) -> &LowerName {
        &self.lower_origin
    }

    /// Refuses an instance whose names this zone cannot hold: a service label owned by a
    /// static record, or a name over 255 bytes.
    pub fn admit(&self, instance: &Instance) -> Result<(), RegistryError> {
        if let Some(name) = self.static_service_labels.get(instance.service.as_str()) {
            return Err(RegistryError::NameConflict {
                service: instance.service.to_string(),
                zone: self.origin.to_string(),
                name: name.to_string(),
            });
        }
        // The longest names a registration creates: I._S._P.Z and _T._sub._S._P.Z
        // (every label is one length byte plus its text).
        let zone_len = wire_len(&self.origin);
        let service = instance.service.as_str().len() + 2;
        let proto = instance.proto.label().len() + 1;
        let longest_label = instance
            .tags
            .iter()
            .map(|t| t.as_str().len() + 2 + "_sub".len() + 1)
            .chain([instance.id.as_str().len() + 1])
            .max()
            .unwrap_or(0);
        let longest = longest_label + service + proto + zone_len;
        if longest > 255 {
            return Err(RegistryError::NameTooLong {
                service: instance.service.to_string(),
                zone: self.origin.to_string(),
                length: longest,
            });
        }
        Ok(())
    }

    /// Replaces everything published for `service` with names built from `instances`.
    pub fn publish_service(&self, service: &Label, instances: &[Arc<Instance>]) {
        let names = match service_records::build(&self.origin, self.default_ttl, service, instances)
        {
            Ok(names) => names,
            Err(e) => {
                // `admit` rules out every name the builder could fail on, so this is a
                // bug; keep serving the previous version rather than half of a new one.
                error!(%service, zone = %self.origin, error = %e, "could not build the service's records");
                return;
            }
        };
        let mut writer = self.lock_writer();
        let old: HashSet<LowerName> = writer
            .service_names
            .remove(service)
            .unwrap_or_default()
            .into_iter()
            .collect();
        for gone in old.iter().filter(|name| !names.contains_key(*name)) {
            writer.remove_data(&self.lower_origin, gone);
        }
        let mut owned = Vec::with_capacity(names.len());
        for (name, entry) in names {
            let is_new = !old.contains(&name);
            owned.push(name.clone());
            writer.insert_data(&self.lower_origin, name, Arc::new(entry), is_new);
        }
        if !owned.is_empty() {
            writer.service_names.insert(service.clone(), owned);
        }

        let types: BTreeSet<Name> = instances
            .iter()
            .map(|i| i.proto)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|proto| service_type_name(&self.origin, service, proto).ok())
            .collect();
        let previous_types = if types.is_empty() {
            writer.service_types.remove(service)
        } else {
            writer.service_types.insert(service.clone(), types.clone())
        };
        if previous_types.unwrap_or_default() != types {
            self.publish_service_types(&mut writer);
        }
        writer.serial = writer.serial.wrapping_add(1);
        self.publish_apex(&mut writer);
    }

    /// Answers `name`/`record_type` from the current snapshot. With `room`, additional
    /// records are trimmed to what fits; without, all are returned.
    pub fn answer(
        &self,
        name: &LowerName,
        record_type: RecordType,
        room: Option<&ResponseRoom>,
        options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        let data = self.published.load();
        let Some(entry) = data.names.get(name) else {
            return LookupControlFlow::Break(Err(LookupError::from(
                hickory_proto::op::ResponseCode::NXDomain,
            )));
        };
        let found = if record_type == RecordType::ANY {
            entry.any()
        } else {
            entry.get(record_type)
        };
        if let Some(answer) = found {
            let additionals = match room {
                Some(room) => answer.additionals_within(room.limit, room.slack, options),
                None => answer.additionals_within(usize::MAX, 0, options),
            };
            return LookupControlFlow::Break(Ok(AuthLookup::answers(
                answer.records(options),
                additionals,
            )));
        }
        if let Some(cname) = entry.get(RecordType::CNAME) {
            return LookupControlFlow::Break(Ok(AuthLookup::answers(
                chase_cname(&data, cname, record_type, options),
                None,
            )));
        }
        LookupControlFlow::Break(Err(LookupError::NameExists))
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        // Writer state is only changed by whole-map inserts/removes; recovering from a
        // poisoned lock keeps the zone serving instead of failing every later change.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds `_services._dns-sd._udp.Z` (RFC 6763 §9) from the service types.
    fn publish_service_types(&self, writer: &mut Writer) {
        let Ok(name) = child(&self.origin, "_udp")
            .and_then(|n| child(&n, "_dns-sd"))
            .and_then(|n| child(&n, "_services"))
        else {
            return;
        };
        let lower = LowerName::new(&name);
        let types: BTreeSet<&Name> = writer.service_types.values().flatten().collect();
        let pointers = types
            .into_iter()
            .map(|t| RData::PTR(hickory_proto::rr::rdata::PTR(t.clone())));
        let present = writer
            .names
            .get(&lower)
            .is_some_and(|e| !e.is_empty_non_terminal());
        match Answer::from_rdata(&name, self.default_ttl, pointers, vec![]) {
            Some(answer) => {
                let entry = NameEntry {
                    answers: vec![Arc::new(answer)],
                };
                writer.insert_data(&self.lower_origin, lower, Arc::new(entry), !present);
            }
            None if present => writer.remove_data(&self.lower_origin, &lower),
            None => {}
        }
    }

    /// Rebuilds the apex (SOA with the current serial, NS, static apex records) and
    /// publishes the writer's map as the new snapshot.
    fn publish_apex(&self, writer: &mut Writer) {
        let soa = &self.soa;
        let rdata = RData::SOA(SOA::new(
            soa.mname.clone(),
            soa.rname.clone(),
            writer.serial,
            soa.refresh,
            soa.retry,
            soa.expire,
            soa.minimum,
        ));
        // The SOA's TTL caps negative caching along with its MINIMUM (RFC 2308 §5).
        let soa_ttl = self.default_ttl.min(soa.minimum);
        let mut answers = Vec::with_capacity(writer.apex_static.len() + 1);
        answers.extend(Answer::from_rdata(&self.origin, soa_ttl, [rdata], vec![]).map(Arc::new));
        answers.extend(writer.apex_static.iter().cloned());
        writer
            .names
            .insert(self.lower_origin.clone(), Arc::new(NameEntry { answers }));
        self.published.store(Arc::new(ZoneData {
            names: writer.names.clone(),
        }));
    }
}

impl Writer {
    fn insert_data(
        &mut self,
        origin: &LowerName,
        name: LowerName,
        entry: Arc<NameEntry>,
        is_new: bool,
    ) {
        if is_new {
            for ancestor in ancestors(origin, &name) {
                let count = self.descendants.entry(ancestor.clone()).or_insert(0);
                *count += 1;
                if *count == 1 && !self.names.contains_key(&ancestor) {
                    self.names.insert(ancestor, Arc::new(NameEntry::default()));
                }
            }
        }
        self.names.insert(name, entry);
    }

    fn remove_data(&mut self, origin: &LowerName, name: &LowerName) {
        if self.descendants.contains_key(name) {
            self.names
                .insert(name.clone(), Arc::new(NameEntry::default()));
        } else {
            self.names.remove(name);
        }
        for ancestor in ancestors(origin, name) {
            let Some(count) = self.descendants.get_mut(&ancestor) else {
                continue;
            };
            *count -= 1;
            if *count == 0 {
                self.descendants.remove(&ancestor);
                if self
                    .names
                    .get(&ancestor)
                    .is_some_and(|e| e.is_empty_non_terminal())
                {
                    self.names.remove(&ancestor);
                }
            }
        }
    }
}

/// The names strictly between `name` and the zone apex.
fn ancestors(origin: &LowerName, name: &LowerName) -> Vec<LowerName> {
    let mut out = Vec::new();
    let mut current = name.base_name();
    while current.num_labels() > origin.num_labels() {
        let next = current.base_name();
        out.push(current);
        current = next;
    }
    out
}

/// The service label whose names a static record at `owner` would occupy: `S` for
/// `S.Z` and names below it, and `S` for `_S._X.Z` and below. `None` at the apex.
fn static_owner(origin: &Name, owner: &LowerName) -> Option<String> {
    let owner = Name::from(owner.clone());
    let relative = owner.num_labels().checked_sub(origin.num_labels())? as usize;
    let labels: Vec<&[u8]> = owner.iter().take(relative).collect();
    let last = labels.last()?;
    if last.starts_with(b"_") {
        let second = labels.get(labels.len().checked_sub(2)?)?;
        return second
            .strip_prefix(b"_")
            .map(|s| String::from_utf8_lossy(s).into_owned());
    }
    Some(String::from_utf8_lossy(last).into_owned())
}

/// A CNAME answer, followed by the target's records of the asked type when the target
/// is in this zone (as authoritative servers do, RFC 1034 §4.3.2).
fn chase_cname(
    data: &ZoneData,
    cname: &Answer,
    record_type: RecordType,
    options: LookupOptions,
) -> LookupRecords {
    let target = cname
        .rrset()
        .records_without_rrsigs()
        .find_map(|r| match &r.data {
            RData::CNAME(target) => Some(LowerName::new(&target.0)),
            _ => None,
        });
    let target_set = target
        .and_then(|t| data.names.get(&t).cloned())
        .and_then(|entry| entry.get(record_type).map(|a| a.rrset().clone()));
    let mut sets = vec![cname.rrset().clone()];
    sets.extend(target_set);
    LookupRecords::many(options, sets)
}

/// Length of `name` on the wire, uncompressed.
fn wire_len(name: &Name) -> usize {
    name.iter().map(|label| label.len() + 1).sum::<usize>() + 1
}
