//! One served zone: its static records (from its zone file), and the registry's
//! instances in it, read from the latest published snapshot at every query.
//!
//! Static names are prepared once, at start-up, in a map. The registry's names are not
//! stored at all: `naming` finds the instances a name stands for, `records` renders
//! them. Queries never wait for writers: a snapshot is an `Arc` loaded from an
//! `ArcSwap` that the registry's writer replaces after each batch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::rdata::{NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::zone_handler::LookupError;

use super::naming::{self, Resolution};
use super::records::{self, wire_len, Fitter, Sampling};
use super::zone_file::{SoaSpec, ZoneSpec};
use crate::registry::view::Rotation;
use crate::registry::{Instance, Label, RegistryError, View, ZoneSettings};

/// The labels below the apex that the naming table uses at most (`_T._sub._S._P`).
const MAX_RELATIVE_LABELS: usize = 4;

/// A zone's own data: its origin, SOA and static records.
pub struct Zone {
    origin: Name,
    lower_origin: LowerName,
    default_ttl: u32,
    soa: SoaSpec,
    /// Static RRsets at the apex besides the SOA (NS, and any others the file has).
    apex: Vec<StaticSet>,
    /// Every other static name; a node without sets is an empty non-terminal.
    statics: HashMap<LowerName, Vec<StaticSet>>,
    /// Service labels whose names a static record already owns (see `static_owner`).
    static_service_labels: HashMap<String, Name>,
}

/// One static RRset, with the static addresses of the names it points at (NS, MX, SRV
/// targets) as additional data.
struct StaticSet {
    record_type: RecordType,
    records: Vec<Record>,
    additionals: Vec<Vec<Record>>,
    rotation: Rotation,
}

/// A response's records, and what the response builder must know about them.
pub struct Answer {
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
    /// The answer section did not fit the room (the response will carry TC).
    pub truncated: bool,
    /// Records of the complete answer, for messages about truncated answers.
    pub total: usize,
}

/// A zone as served: its own data and the registry's snapshots of its instances.
pub struct ServedZone {
    zone: Arc<Zone>,
    published: Arc<ArcSwap<View>>,
    /// The zone's position in the registry's snapshots.
    index: usize,
    /// SOA serials are this plus the zone's revision in the registry, so they grow
    /// with every change and, starting from the clock, across restarts.
    serial_base: u32,
    sampling: Sampling,
}

impl Zone {
    /// Prepares a zone's static records.
    pub fn new(spec: &ZoneSpec) -> Zone {
        let origin = spec.origin.clone();
        let lower_origin = LowerName::new(&origin);

        // Static RRsets, grouped by owner and type; an RRset is a set (RFC 2181 §5).
        let mut grouped: BTreeMap<(LowerName, RecordType), Vec<Record>> = BTreeMap::new();
        for record in &spec.records {
            let ttl = record.ttl.unwrap_or(spec.ttl);
            let records = grouped
                .entry((LowerName::new(&record.name), record.rdata.record_type()))
                .or_default();
            if records.iter().all(|r| r.data != record.rdata) {
                records.push(Record::from_rdata(
                    record.name.clone(),
                    ttl,
                    record.rdata.clone(),
                ));
            }
        }
        let ns_records: Vec<Record> = spec
            .ns
            .iter()
            .map(|ns| Record::from_rdata(origin.clone(), spec.ttl, RData::NS(NS(ns.clone()))))
            .collect();
        if !ns_records.is_empty() {
            grouped.insert((lower_origin.clone(), RecordType::NS), ns_records);
        }
        // One RRset has one TTL: the first record's stands for all.
        for records in grouped.values_mut() {
            let ttl = records.first().map_or(0, |r| r.ttl);
            records.iter_mut().for_each(|r| r.ttl = ttl);
        }

        let addresses_of = |target: &Name| -> Vec<Vec<Record>> {
            let target = LowerName::new(target);
            [RecordType::A, RecordType::AAAA]
                .iter()
                .filter_map(|t| grouped.get(&(target.clone(), *t)).cloned())
                .collect()
        };
        let mut nodes: BTreeMap<LowerName, Vec<StaticSet>> = BTreeMap::new();
        for ((owner, record_type), records) in &grouped {
            let additionals = records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::NS(ns) => Some(ns.0.clone()),
                    RData::MX(mx) => Some(mx.exchange.clone()),
                    RData::SRV(srv) => Some(srv.target.clone()),
                    _ => None,
                })
                .flat_map(|target| addresses_of(&target))
                .collect();
            nodes.entry(owner.clone()).or_default().push(StaticSet {
                record_type: *record_type,
                records: records.clone(),
                additionals,
                rotation: Rotation::default(),
            });
        }

        let apex = nodes.remove(&lower_origin).unwrap_or_default();
        let mut static_service_labels = HashMap::new();
        let mut statics: HashMap<LowerName, Vec<StaticSet>> = HashMap::new();
        let mut non_terminals: HashSet<LowerName> = HashSet::new();
        for (owner, sets) in nodes {
            if let Some(label) = static_owner(&origin, &owner) {
                static_service_labels.insert(label, Name::from(owner.clone()));
            }
            let mut ancestor = owner.base_name();
            while ancestor.num_labels() > lower_origin.num_labels() {
                let next = ancestor.base_name();
                non_terminals.insert(ancestor);
                ancestor = next;
            }
            statics.insert(owner, sets);
        }
        for name in non_terminals {
            statics.entry(name).or_default();
        }

        Zone {
            origin,
            lower_origin,
            default_ttl: spec.ttl,
            soa: spec.soa.clone(),
            apex,
            statics,
            static_service_labels,
        }
    }

    pub fn origin(&self) -> &Name {
        &self.origin
    }

    pub fn lower_origin(&self) -> &LowerName {
        &self.lower_origin
    }

    /// What the registry needs to know of this zone.
    pub fn settings(&self) -> ZoneSettings {
        ZoneSettings {
            origin: Arc::from(self.origin.to_string()),
            default_ttl: self.default_ttl,
        }
    }

    /// Refuses an instance whose names this zone cannot hold: a service label owned by a
    /// static record, or a name over 255 bytes.
    pub fn admit(&self, service: &Label, instance: &Instance) -> Result<(), RegistryError> {
        if let Some(name) = self.static_service_labels.get(service.as_str()) {
            return Err(RegistryError::NameConflict {
                service: service.to_string(),
                zone: self.origin.to_string(),
                name: name.to_string(),
            });
        }
        // The longest names a registration creates: I._S._P.Z and _T._sub._S._P.Z
        // (every label is one length byte plus its text).
        let zone_len = wire_len(&self.origin);
        let service_len = service.as_str().len() + 2;
        let proto = instance.proto.label().len() + 1;
        let longest_label = instance
            .tags
            .iter()
            .map(|t| t.as_str().len() + 2 + "_sub".len() + 1)
            .chain([instance.id.as_str().len() + 1])
            .max()
            .unwrap_or(0);
        let longest = longest_label + service_len + proto + zone_len;
        if longest > 255 {
            return Err(RegistryError::NameTooLong {
                service: service.to_string(),
                zone: self.origin.to_string(),
                length: longest,
            });
        }
        Ok(())
    }
}

impl ServedZone {
    pub fn new(
        zone: Arc<Zone>,
        published: Arc<ArcSwap<View>>,
        index: usize,
        serial_base: u32,
        sampling: Sampling,
    ) -> ServedZone {
        ServedZone {
            zone,
            published,
            index,
            serial_base,
            sampling,
        }
    }

    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// Answers `name`/`record_type` from the current snapshot, in a response to
    /// `question` of at most `room` bytes (`None`: unlimited). `buffer` is scratch
    /// space. NODATA is `Err(NameExists)`, NXDOMAIN `Err(NXDomain)`, as the Catalog wants.
    pub fn answer(
        &self,
        name: &LowerName,
        record_type: RecordType,
        question: &Query,
        room: Option<usize>,
        buffer: &mut Vec<u8>,
    ) -> Result<Answer, LookupError> {
        let view = self.published.load();
        let mut out = Fitter::new(buffer, question, room);
        let total = self.fill(&view, name, record_type, &mut out, true)?;
        let truncated = out.truncated();
        let (answers, additionals) = out.finish();
        Ok(Answer {
            answers,
            additionals,
            truncated,
            total,
        })
    }

    /// Adds the answer for `name` to `out`; returns how many records it has. A CNAME is
    /// followed once, within the zone (RFC 1034 §4.3.2), when `follow_cname`.
    fn fill(
        &self,
        view: &View,
        name: &LowerName,
        record_type: RecordType,
        out: &mut Fitter<'_>,
        follow_cname: bool,
    ) -> Result<usize, LookupError> {
        let zone = &*self.zone;
        if *name == zone.lower_origin {
            let soa = [self.soa_set(view)];
            return fill_static(soa.iter().chain(&zone.apex), record_type, out);
        }
        if let Some(sets) = zone.statics.get(name) {
            return match fill_static(sets.iter(), record_type, out) {
                Err(LookupError::NameExists) if follow_cname => {
                    let Some(cname) = sets.iter().find(|s| s.record_type == RecordType::CNAME)
                    else {
                        return Err(LookupError::NameExists);
                    };
                    let total = fill_static(std::iter::once(cname), RecordType::CNAME, out)?;
                    let target = cname.records.iter().find_map(|r| match &r.data {
                        RData::CNAME(target) => Some(LowerName::new(&target.0)),
                        _ => None,
                    });
                    match target {
                        Some(target) if zone.lower_origin.zone_of(&target) => {
                            // The target's own answer, if it has one, follows the CNAME.
                            Ok(total
                                + self
                                    .fill(view, &target, record_type, out, false)
                                    .unwrap_or(0))
                        }
                        _ => Ok(total),
                    }
                }
                other => other,
            };
        }
        let instances = view
            .zone(self.index)
            .ok_or(LookupError::from(ResponseCode::ServFail))?;
        let mut labels = [""; MAX_RELATIVE_LABELS];
        let relative = usize::from(
            name.num_labels()
                .saturating_sub(zone.lower_origin.num_labels()),
        );
        if relative > MAX_RELATIVE_LABELS {
            return Err(ResponseCode::NXDomain.into());
        }
        for (slot, label) in labels.iter_mut().zip(name.iter()) {
            // Our names are ASCII; a label that is not UTF-8 is not one of them.
            *slot = std::str::from_utf8(label)
                .map_err(|_| LookupError::from(ResponseCode::NXDomain))?;
        }
        match naming::resolve(instances, &labels[..relative], record_type) {
            Resolution::Data(data) => {
                let owner = Name::from(name.clone());
                Ok(records::render(
                    &data,
                    &owner,
                    &zone.origin,
                    self.sampling,
                    out,
                ))
            }
            Resolution::NoData => Err(LookupError::NameExists),
            Resolution::NxDomain => Err(ResponseCode::NXDomain.into()),
        }
    }

    /// The SOA, with a serial that grows with every change to the zone.
    fn soa_set(&self, view: &View) -> StaticSet {
        let revision = view.zone(self.index).map_or(0, |zone| zone.revision());
        let zone = &*self.zone;
        let soa = &zone.soa;
        let rdata = RData::SOA(SOA::new(
            soa.mname.clone(),
            soa.rname.clone(),
            self.serial_base.wrapping_add(revision as u32),
            soa.refresh,
            soa.retry,
            soa.expire,
            soa.minimum,
        ));
        // The SOA's TTL caps negative caching along with its MINIMUM (RFC 2308 §5).
        let ttl = zone.default_ttl.min(soa.minimum);
        StaticSet {
            record_type: RecordType::SOA,
            records: vec![Record::from_rdata(zone.origin.clone(), ttl, rdata)],
            additionals: Vec::new(),
            rotation: Rotation::default(),
        }
    }
}

/// Adds the static RRset of `record_type` among `sets` (the first one for ANY, RFC 8482),
/// rotating address sets; NODATA when there is none.
fn fill_static<'a>(
    mut sets: impl Iterator<Item = &'a StaticSet>,
    record_type: RecordType,
    out: &mut Fitter<'_>,
) -> Result<usize, LookupError> {
    let found = match record_type {
        RecordType::ANY => sets.next(),
        wanted => sets.find(|set| set.record_type == wanted),
    };
    let Some(set) = found else {
        return Err(LookupError::NameExists);
    };
    let records = &set.records;
    let start = match set.record_type {
        RecordType::A | RecordType::AAAA if records.len() > 1 => set.rotation.next(records.len()),
        _ => 0,
    };
    for record in records[start..].iter().chain(&records[..start]) {
        if !out.answer(record.clone()) {
            return Ok(records.len());
        }
    }
    for additional in &set.additionals {
        if !out.additional_set(additional.clone()) {
            break;
        }
    }
    Ok(records.len())
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
