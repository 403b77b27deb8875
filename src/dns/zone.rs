//! One served zone: its static records (from its zone file), and the registry's
//! instances in it, read from a published snapshot at every query.
//!
//! Static names are prepared once, at start-up, in a map keyed by their lowercase wire
//! form, so a query looks them up without building a name. The registry's names are not
//! stored at all: `naming` finds the instances a name stands for, `records` renders
//! them into whichever answer path asked. Queries never wait for writers: a snapshot is
//! an `Arc` loaded from an `ArcSwap` that the registry's writer replaces after each batch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::rr::rdata::NS;
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use super::naming::{self, Resolution};
use super::records::{self, Rdata, Rec, Sampling, Sink, Soa, StaticRecord};
use super::wire::{NameRef, WireName};
use super::zone_file::{SoaSpec, ZoneSpec};
use crate::registry::records::{taken_label, NameRecords};
use crate::registry::view::Rotation;
use crate::registry::{Instance, Label, RegistryError, View, ZoneSettings};

/// The labels below the apex that the naming table uses at most (`_T._sub._S._P`).
const MAX_RELATIVE_LABELS: usize = 4;

/// A zone's own data: its origin, SOA and static records.
pub struct Zone {
    origin: Name,
    lower_origin: LowerName,
    /// The origin in lowercase wire form.
    origin_wire: Box<[u8]>,
    default_ttl: u32,
    soa: SoaSpec,
    soa_mname: Box<[u8]>,
    soa_rname: Box<[u8]>,
    /// Static RRsets at the apex besides the SOA (NS, and any others the file has).
    apex: Vec<StaticSet>,
    /// Every other static name by lowercase wire form; a node without sets is an empty
    /// non-terminal.
    statics: HashMap<Box<[u8]>, Vec<StaticSet>>,
    /// Service labels whose names a static record already owns (see `taken_label`).
    static_service_labels: HashMap<String, Name>,
}

/// One static RRset, with the static addresses of the names it points at (NS, MX, SRV
/// targets) as additional data.
struct StaticSet {
    record_type: RecordType,
    records: Vec<StaticRecord>,
    additionals: Vec<Vec<StaticRecord>>,
    rotation: Rotation,
}

/// Why a name has no answer of the asked type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negative {
    /// The name exists without data of that type.
    NoData,
    NxDomain,
    /// The snapshot has no such zone: an internal inconsistency, never a client's doing.
    ServFail,
}

/// A zone as served: its own data and the registry's snapshots of its instances.
pub struct ServedZone {
    zone: Arc<Zone>,
    published: Arc<ArcSwap<View>>,
    /// The zone's position in the registry's snapshots.
    index: usize,
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

        let prepare = |records: &[Record]| -> Vec<StaticRecord> {
            records.iter().map(static_record).collect()
        };
        let addresses_of = |target: &Name| -> Vec<Vec<StaticRecord>> {
            let target = LowerName::new(target);
            [RecordType::A, RecordType::AAAA]
                .iter()
                .filter_map(|t| grouped.get(&(target.clone(), *t)).map(|r| prepare(r)))
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
                records: prepare(records),
                additionals,
                rotation: Rotation::default(),
            });
        }

        let apex = nodes.remove(&lower_origin).unwrap_or_default();
        let origin_wire = lower_wire(&origin);
        let mut static_service_labels = HashMap::new();
        let mut statics: HashMap<Box<[u8]>, Vec<StaticSet>> = HashMap::new();
        let mut non_terminals: HashSet<LowerName> = HashSet::new();
        for (owner, sets) in nodes {
            let owner_wire = lower_wire(&Name::from(owner.clone()));
            if let Some(label) = taken_label(&owner_wire, origin_wire.len()) {
                static_service_labels.insert(label, Name::from(owner.clone()));
            }
            let mut ancestor = owner.base_name();
            while ancestor.num_labels() > lower_origin.num_labels() {
                let next = ancestor.base_name();
                non_terminals.insert(ancestor);
                ancestor = next;
            }
            statics.insert(lower_wire(&Name::from(owner)), sets);
        }
        for name in non_terminals {
            statics.entry(lower_wire(&Name::from(name))).or_default();
        }

        Zone {
            origin_wire,
            soa_mname: lower_wire(&spec.soa.mname),
            soa_rname: lower_wire(&spec.soa.rname),
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

    /// The origin in lowercase wire form.
    pub fn origin_wire(&self) -> &[u8] {
        &self.origin_wire
    }

    /// Every static record but the SOA: the apex's first, then the other names'.
    pub fn static_records(&self) -> impl Iterator<Item = &StaticRecord> {
        self.apex
            .iter()
            .chain(self.statics.values().flatten())
            .flat_map(|set| &set.records)
    }

    /// What the registry needs to know of this zone.
    pub fn settings(&self) -> ZoneSettings {
        ZoneSettings {
            origin: Arc::from(self.origin.to_string()),
            default_ttl: self.default_ttl,
        }
    }

    /// Whether the zone file has `name` (lowercase wire form), with records or as an
    /// empty non-terminal.
    pub fn has_static_name(&self, name: &[u8]) -> bool {
        name == &*self.origin_wire || self.statics.contains_key(name)
    }

    /// The static record that owns service label `service`'s names, if one does.
    pub fn static_service_label(&self, service: &str) -> Option<&Name> {
        self.static_service_labels.get(service)
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
        let zone_len = self.origin_wire.len();
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
        sampling: Sampling,
    ) -> ServedZone {
        ServedZone {
            zone,
            published,
            index,
            sampling,
        }
    }

    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// The zone's own data, to tell whether a reload replaced it.
    pub fn zone_arc(&self) -> &Arc<Zone> {
        &self.zone
    }

    /// The zone's position in the registry's snapshots.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The latest published snapshot, to answer from.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<View>> {
        self.published.load()
    }

    /// Adds the answer for `name`/`record_type` in `view` to `out`; returns how many
    /// records the whole answer has. A CNAME is followed once, within the zone (RFC 1034
    /// §4.3.2). `name` must be within the zone.
    pub fn answer<'a, S: Sink>(
        &'a self,
        view: &'a View,
        name: &'a WireName,
        record_type: RecordType,
        out: &mut S,
    ) -> Result<usize, Negative> {
        self.fill(view, name, record_type, out, true, self.sampling)
    }

    /// The records `name` has of `record_type` in `view`, whole (never sampled), and
    /// without following a CNAME: what an UPDATE's prerequisites are checked against.
    pub fn records_at<'a, S: Sink>(
        &'a self,
        view: &'a View,
        name: &WireName,
        record_type: RecordType,
        out: &mut S,
    ) -> Result<usize, Negative> {
        self.fill(view, name, record_type, out, false, Sampling::default())
    }

    fn fill<'a, S: Sink>(
        &'a self,
        view: &'a View,
        name: &WireName,
        record_type: RecordType,
        out: &mut S,
        follow_cname: bool,
        sampling: Sampling,
    ) -> Result<usize, Negative> {
        let zone = &*self.zone;
        let owner = NameRef::wire(name.as_wire());
        if name.as_wire() == &*zone.origin_wire {
            if matches!(record_type, RecordType::SOA | RecordType::ANY) {
                out.answer(self.soa(view));
                return Ok(1);
            }
            return fill_static(zone.apex.iter(), owner, record_type, out);
        }
        if let Some(sets) = zone.statics.get(name.as_wire()) {
            return match fill_static(sets.iter(), owner, record_type, out) {
                Err(Negative::NoData) if follow_cname => {
                    let Some(cname) = sets.iter().find(|s| s.record_type == RecordType::CNAME)
                    else {
                        return Err(Negative::NoData);
                    };
                    let total = fill_static(std::iter::once(cname), owner, RecordType::CNAME, out)?;
                    let target = cname.records.first().map(|r| &*r.rdata);
                    Ok(total + self.chase(view, target, record_type, out, sampling))
                }
                other => other,
            };
        }
        let instances = view.zone(self.index).ok_or(Negative::ServFail)?;
        if let Some(records) = instances.records().get(name.as_wire()) {
            return match fill_records(records, owner, record_type, out) {
                Err(Negative::NoData) if follow_cname => {
                    let Some(cname) = records.set(u16::from(RecordType::CNAME)) else {
                        return Err(Negative::NoData);
                    };
                    let total = fill_records(records, owner, RecordType::CNAME, out)?;
                    let target = cname.rdata.first().map(|rdata| &**rdata);
                    Ok(total + self.chase(view, target, record_type, out, sampling))
                }
                other => other,
            };
        }
        let relative = name
            .label_count()
            .saturating_sub(self.zone.lower_origin.num_labels() as usize);
        if relative > MAX_RELATIVE_LABELS {
            return Err(Negative::NxDomain);
        }
        let mut labels = [""; MAX_RELATIVE_LABELS];
        for (index, slot) in labels[..relative].iter_mut().enumerate() {
            // Our names are ASCII; a label that is not UTF-8 is not one of them.
            *slot = std::str::from_utf8(name.label(index)).map_err(|_| Negative::NxDomain)?;
        }
        match naming::resolve(instances, &labels[..relative], record_type) {
            Resolution::Data(data) => Ok(records::render(
                &data,
                owner,
                &zone.origin_wire,
                sampling,
                out,
            )),
            Resolution::NoData => Err(Negative::NoData),
            // Records written below a name make it exist.
            Resolution::NxDomain if instances.records().is_ancestor(name.as_wire()) => {
                Err(Negative::NoData)
            }
            Resolution::NxDomain => Err(Negative::NxDomain),
        }
    }

    /// Adds the answer at a CNAME's `target` (its RDATA), if the target is in the zone
    /// and has one (RFC 1034 §4.3.2: followed once); returns how many records it has.
    fn chase<S: Sink>(
        &self,
        view: &View,
        target: Option<&[u8]>,
        record_type: RecordType,
        out: &mut S,
        sampling: Sampling,
    ) -> usize {
        match target.and_then(WireName::from_wire) {
            Some(target) if target.is_within(&self.zone.origin_wire) => self
                .fill(view, &target, record_type, out, false, sampling)
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// The zone's SOA record in `view`: its serial grows with every change to the zone
    /// (and across restarts, see [`View::serial`]).
    pub fn soa<'a>(&'a self, view: &View) -> Rec<'a> {
        self.soa_at(view.serial(self.index))
    }

    /// The zone's SOA record with `serial`: zone transfers give past versions' SOAs.
    pub fn soa_at(&self, serial: u32) -> Rec<'_> {
        let zone = &*self.zone;
        let soa = &zone.soa;
        Rec {
            owner: NameRef::wire(&zone.origin_wire),
            // The SOA's TTL caps negative caching along with its MINIMUM (RFC 2308 §5).
            ttl: zone.default_ttl.min(soa.minimum),
            data: Rdata::Soa(Soa {
                mname: &zone.soa_mname,
                rname: &zone.soa_rname,
                serial,
                refresh: soa.refresh,
                retry: soa.retry,
                expire: soa.expire,
                minimum: soa.minimum,
            }),
        }
    }
}

/// Adds the static RRset of `record_type` among `sets` (the first one for ANY, RFC 8482)
/// at `owner`, rotating address sets; NODATA when there is none.
fn fill_static<'a, S: Sink>(
    mut sets: impl Iterator<Item = &'a StaticSet>,
    owner: NameRef<'_>,
    record_type: RecordType,
    out: &mut S,
) -> Result<usize, Negative> {
    let found = match record_type {
        RecordType::ANY => sets.next(),
        wanted => sets.find(|set| set.record_type == wanted),
    };
    let Some(set) = found else {
        return Err(Negative::NoData);
    };
    let records = &set.records;
    let start = match set.record_type {
        RecordType::A | RecordType::AAAA if records.len() > 1 => set.rotation.next(records.len()),
        _ => 0,
    };
    for record in records[start..].iter().chain(&records[..start]) {
        let rec = Rec {
            owner,
            ttl: record.record.ttl,
            data: Rdata::Static(record),
        };
        if !out.answer(rec) {
            return Ok(records.len());
        }
    }
    for additional in &set.additionals {
        let recs = additional.iter().map(|record| Rec {
            owner: NameRef::wire(&record.owner),
            ttl: record.record.ttl,
            data: Rdata::Static(record),
        });
        if !out.additional_set(recs) {
            break;
        }
    }
    Ok(records.len())
}

/// Adds the RRset of `record_type` (the first for ANY, RFC 8482) among the records
/// written through DNS UPDATE at `owner`; NODATA when there is none.
fn fill_records<S: Sink>(
    records: &NameRecords,
    owner: NameRef<'_>,
    record_type: RecordType,
    out: &mut S,
) -> Result<usize, Negative> {
    let found = match record_type {
        RecordType::ANY => records.sets.first(),
        wanted => records.set(u16::from(wanted)),
    };
    let set = found.ok_or(Negative::NoData)?;
    for rdata in &set.rdata {
        let rec = Rec {
            owner,
            ttl: set.ttl,
            data: Rdata::Raw {
                record_type: set.record_type,
                rdata,
            },
        };
        if !out.answer(rec) {
            break;
        }
    }
    Ok(set.rdata.len())
}

/// A name's lowercase wire form.
pub fn lower_wire(name: &Name) -> Box<[u8]> {
    let mut name = name.to_lowercase();
    name.set_fqdn(true);
    name.to_bytes().unwrap_or_default().into_boxed_slice()
}

/// A zone file record in the forms the answer paths use. Names in its RDATA are written
/// uncompressed (the canonical form of RFC 4034 §6.2), so the bytes stand alone.
fn static_record(record: &Record) -> StaticRecord {
    StaticRecord {
        record: record.clone(),
        owner: lower_wire(&record.name),
        // Zone files hold only types hickory encodes; an error would leave it empty.
        rdata: canonical_rdata(&record.data).unwrap_or_default(),
    }
}

/// RDATA in the canonical form of RFC 4034 §6.2: names uncompressed (and, for the
/// types that section lists, lowercase), so the bytes stand alone and compare as
/// the data does.
pub fn canonical_rdata(data: &RData) -> Option<Box<[u8]>> {
    let mut rdata = Vec::new();
    let mut encoder = BinEncoder::new(&mut rdata);
    encoder.set_canonical_form(true);
    data.emit(&mut encoder).ok()?;
    Some(rdata.into_boxed_slice())
}
