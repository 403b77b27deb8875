//! A zone version as a list of records, and what changed between two versions: the
//! contents of zone transfers (AXFR) and of the journal behind IXFR.
//!
//! The records are not a second rendering of the registry: every name the naming
//! table gives a service is resolved by `naming` and rendered by `records`, the code
//! that answers queries, so a secondary holds exactly what we would answer (healthy
//! instances only, no sampling). Everything the registry adds to a zone belongs to one
//! service (even the `_services._dns-sd._udp` PTR to `_S._P`), so a version's records are
//! its static records plus each service's, and two versions differ only in the services
//! whose `Arc<Service>` is not the same: a diff costs a pointer comparison per service
//! and a rendering of the changed ones, never a rendering of the zone.

use std::cmp::Ordering;
use std::sync::Arc;

use hickory_proto::rr::RecordType;

use super::naming::{self, Resolution};
use super::records::{self, Rec, Sampling, Sink};
use super::wire::{NameRef, WireName};
use super::zone::{Negative, ServedZone};
use crate::registry::records::{NameRecords, ZoneRecords};
use crate::registry::view::Service;
use crate::registry::{Label, Proto, View, ZoneView};

/// The record types the naming table gives registry names.
const REGISTRY_TYPES: [RecordType; 5] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::TXT,
    RecordType::SRV,
    RecordType::PTR,
];

/// One record of a zone, standalone: names whole and lowercase. Ordered by owner, type
/// and data, then TTL, so that sorted lists can be merged into a difference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ZoneRecord {
    /// The owner in lowercase wire form.
    pub owner: Box<[u8]>,
    pub record_type: u16,
    /// The RDATA as on the wire, names uncompressed.
    pub rdata: Box<[u8]>,
    pub ttl: u32,
}

impl ZoneRecord {
    /// A rendered record, made standalone.
    pub fn of(record: &Rec<'_>) -> ZoneRecord {
        let mut owner = Vec::with_capacity(64);
        record.owner.write_uncompressed(&mut owner);
        let mut rdata = Vec::with_capacity(32);
        records::emit_rdata(&record.data, &mut rdata);
        ZoneRecord {
            owner: owner.into_boxed_slice(),
            record_type: record.data.record_type(),
            rdata: rdata.into_boxed_slice(),
            ttl: record.ttl,
        }
    }

    /// Bytes the record takes uncompressed: what a journal entry costs, roughly.
    pub fn size(&self) -> usize {
        self.owner.len() + 10 + self.rdata.len()
    }
}

/// Records removed from and added to a zone between two versions, each sorted.
#[derive(Debug, Default)]
pub struct Difference {
    pub removed: Vec<ZoneRecord>,
    pub added: Vec<ZoneRecord>,
}

/// Takes rendered answers as [`ZoneRecord`]s; additional data is not zone content.
struct Collector<'o> {
    records: &'o mut Vec<ZoneRecord>,
}

impl Sink for Collector<'_> {
    fn answer(&mut self, record: Rec<'_>) -> bool {
        self.records.push(ZoneRecord::of(&record));
        true
    }

    fn additional_set<'r>(&mut self, _records: impl IntoIterator<Item = Rec<'r>>) -> bool {
        false
    }

    fn set_answer_ttl(&mut self, first: usize, ttl: u32) {
        for record in self.records.iter_mut().skip(first) {
            record.ttl = ttl;
        }
    }

    fn answers_len(&self) -> usize {
        self.records.len()
    }
}

/// The records `name` holds of `record_type` in `view` (one RRset for ANY), whole:
/// what an UPDATE's prerequisites compare with (RFC 2136 §3.2).
pub fn records_at(
    zone: &ServedZone,
    view: &View,
    name: &WireName,
    record_type: RecordType,
) -> Result<Vec<ZoneRecord>, Negative> {
    let mut records = Vec::new();
    zone.records_at(
        view,
        name,
        record_type,
        &mut Collector {
            records: &mut records,
        },
    )?;
    Ok(records)
}

/// The zone's static records, the SOA left out (transfers put it first and last).
pub fn static_records(zone: &ServedZone) -> Vec<ZoneRecord> {
    zone.zone()
        .static_records()
        .map(|record| ZoneRecord {
            owner: record.owner.clone(),
            record_type: u16::from(record.record.record_type()),
            rdata: record.rdata.clone(),
            ttl: record.record.ttl,
        })
        .collect()
}

/// The records written through DNS UPDATE at these owners.
pub fn written_records<'r>(owners: impl Iterator<Item = &'r NameRecords>) -> Vec<ZoneRecord> {
    let mut out = Vec::new();
    for records in owners {
        for set in &records.sets {
            out.extend(set.rdata.iter().map(|rdata| ZoneRecord {
                owner: records.owner.clone(),
                record_type: set.record_type,
                rdata: rdata.clone(),
                ttl: set.ttl,
            }));
        }
    }
    out
}

/// Every record service `name` gives the zone in `view` (nothing when it has no healthy
/// instance), appended to `out`.
pub fn service_records(
    zone: &ServedZone,
    view: &ZoneView,
    name: &Label,
    service: &Service,
    out: &mut Vec<ZoneRecord>,
) {
    let origin = zone.zone().origin_wire();
    let service_label = underscored(name.as_str());
    let mut names: Vec<Vec<String>> = vec![vec![name.to_string()]];
    for entry in service.all().members() {
        names.push(vec![entry.id().to_string(), name.to_string()]);
    }
    for tag in service.tags() {
        names.push(vec![tag.to_string(), name.to_string()]);
        names.push(vec![service_label.clone(), underscored(tag.as_str())]);
    }
    let protos: Vec<Proto> = Proto::ALL
        .into_iter()
        .filter(|proto| service.proto(*proto).is_some_and(|group| !group.is_empty()))
        .collect();
    for &proto in &protos {
        let proto_label = proto.label().to_string();
        names.push(vec![service_label.clone(), proto_label.clone()]);
        for entry in service
            .proto(proto)
            .map(|g| g.members())
            .unwrap_or_default()
        {
            names.push(vec![
                entry.id().to_string(),
                service_label.clone(),
                proto_label.clone(),
            ]);
        }
        for tag in service.tags() {
            names.push(vec![
                underscored(tag.as_str()),
                "_sub".to_string(),
                service_label.clone(),
                proto_label.clone(),
            ]);
        }
    }

    let mut sink = Collector { records: out };
    let mut owner = Vec::with_capacity(256);
    for labels in &names {
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        owner_wire(&labels, origin, &mut owner);
        for record_type in REGISTRY_TYPES {
            if let Resolution::Data(data) = naming::resolve(view, &labels, record_type) {
                let owner = NameRef::wire(&owner);
                records::render(&data, owner, origin, Sampling::default(), &mut sink);
            }
        }
    }
    owner_wire(&["_services", "_dns-sd", "_udp"], origin, &mut owner);
    let ttl = view.settings().default_ttl;
    for proto in protos {
        let ptr = records::service_type_ptr(NameRef::wire(&owner), origin, name, proto, ttl);
        sink.answer(ptr);
    }
}

/// What changed in the zone from `old` to `new`: the records of every service whose
/// contents are not shared by the two versions, before and after.
pub fn difference(zone: &ServedZone, old: &ZoneView, new: &ZoneView) -> Difference {
    let mut changed: Vec<&Label> = new
        .services()
        .filter(|(name, service)| {
            old.service(name.as_str())
                .is_none_or(|before| !std::ptr::eq(before, *service))
        })
        .map(|(name, _)| name)
        .collect();
    changed.extend(
        old.services()
            .map(|(name, _)| name)
            .filter(|name| new.service(name.as_str()).is_none()),
    );
    let mut difference = Difference::default();
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for name in changed {
        before.clear();
        after.clear();
        if let Some((label, service)) = old.service_named(name.as_str()) {
            service_records(zone, old, label, service, &mut before);
        }
        if let Some((label, service)) = new.service_named(name.as_str()) {
            service_records(zone, new, label, service, &mut after);
        }
        merge(&mut before, &mut after, &mut difference);
    }
    // Records written through DNS UPDATE: owners whose records are not shared (none
    // at all, at the cost of one comparison, when the versions share the records).
    let old_written = old.records();
    let new_written = new.records();
    let changed_owners = if old_written.is_same(new_written) {
        Vec::new()
    } else {
        written_changes(old_written, new_written)
    };
    for owner in changed_owners {
        let mut before = written_records(old_written.get(&owner).map(|r| &**r).into_iter());
        let mut after = written_records(new_written.get(&owner).map(|r| &**r).into_iter());
        merge(&mut before, &mut after, &mut difference);
    }
    difference.removed.sort();
    difference.added.sort();
    difference
}

/// The owners whose written records differ between two versions: a pointer
/// comparison per owner, since an unchanged owner's records are shared.
fn written_changes(old: &ZoneRecords, new: &ZoneRecords) -> Vec<Box<[u8]>> {
    let changed = new.iter().filter(|records| {
        old.get(&records.owner)
            .is_none_or(|before| !Arc::ptr_eq(before, records))
    });
    let gone = old
        .iter()
        .filter(|records| new.get(&records.owner).is_none());
    changed
        .chain(gone)
        .map(|records| records.owner.clone())
        .collect()
}

/// Adds to `difference` the records only in `before` (removed) and only in `after`
/// (added). A record whose TTL changed is both: IXFR has no other way to say so.
fn merge(before: &mut [ZoneRecord], after: &mut [ZoneRecord], difference: &mut Difference) {
    before.sort_unstable();
    after.sort_unstable();
    let (mut i, mut j) = (0, 0);
    while i < before.len() || j < after.len() {
        let order = match (before.get(i), after.get(j)) {
            (Some(b), Some(a)) => b.cmp(a),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Equal => {
                i += 1;
                j += 1;
            }
            Ordering::Less => {
                difference.removed.push(before[i].clone());
                i += 1;
            }
            Ordering::Greater => {
                difference.added.push(after[j].clone());
                j += 1;
            }
        }
    }
}

fn underscored(label: &str) -> String {
    format!("_{label}")
}

/// `labels` (leftmost first) in front of `origin`, in wire form, into `out`.
fn owner_wire(labels: &[&str], origin: &[u8], out: &mut Vec<u8>) {
    out.clear();
    for label in labels {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.extend_from_slice(origin);
}

#[cfg(test)]
mod tests {
    //! A difference must be exactly what turns one version's records into the next's,
    //! whatever happened in between: the invariant IXFR relies on, which the
    //! integration tests see only for a few changes.

    use std::collections::BTreeSet;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;
    use std::time::Instant;

    use arc_swap::ArcSwap;
    use hickory_proto::rr::Name;
    use proptest::prelude::*;

    use super::*;
    use crate::dns::zone::Zone;
    use crate::dns::ZoneSpec;
    use crate::registry::model::{LabelKind, Meta};
    use crate::registry::view::{Entry, InstanceRef};
    use crate::registry::{Health, Instance, View};

    fn label(text: String) -> Label {
        Label::parse(&text, LabelKind::Id).unwrap()
    }

    fn all_records(zone: &ServedZone, view: &ZoneView) -> BTreeSet<ZoneRecord> {
        let mut records = static_records(zone);
        records.extend(written_records(view.records().iter().map(|r| &**r)));
        for (name, service) in view.services() {
            service_records(zone, view, name, service, &mut records);
        }
        let count = records.len();
        let set: BTreeSet<ZoneRecord> = records.into_iter().collect();
        assert_eq!(set.len(), count, "a record listed twice");
        set
    }

    /// One change: `(service, id, kind, address, udp, tag, ttl)`; kind 0-2 registers
    /// (replacing), 3 removes, 4 marks critical, 5 marks healthy, 6 writes an A
    /// record at `w{id}` (as DNS UPDATE does), 7 deletes the records there.
    type Change = (u8, u8, u8, u8, bool, Option<u8>, u8);

    fn change() -> impl Strategy<Value = Change> {
        (
            0..3u8,
            0..5u8,
            0..8u8,
            0..4u8,
            prop::bool::weighted(0.2),
            prop::option::of(0..2u8),
            1..4u8,
        )
    }

    fn apply(view: &mut View, (service, id, kind, address, udp, tag, ttl): Change) {
        let service = label(format!("s{service}"));
        let id = label(format!("i{id}"));
        let at = InstanceRef {
            zone: 0,
            service: service.clone(),
            id: id.clone(),
        };
        let written = |id: &Label| {
            let mut owner = vec![id.as_str().len() as u8 + 1, b'w'];
            owner.extend_from_slice(id.as_str().as_bytes());
            owner.extend_from_slice(b"\x03svc\x08internal\x00");
            owner.into_boxed_slice()
        };
        match kind {
            3 => {
                view.remove(&at);
            }
            6 => {
                let records = NameRecords {
                    owner: written(&id),
                    sets: vec![crate::registry::records::RecordSet {
                        record_type: 1,
                        ttl: u32::from(ttl),
                        rdata: vec![vec![10, 0, 0, address].into_boxed_slice()],
                    }],
                };
                view.put_records(0, records);
            }
            7 => {
                view.remove_records(0, &written(&id));
            }
            4 | 5 => {
                view.mark(
                    &at,
                    if kind == 4 {
                        Health::Critical
                    } else {
                        Health::Healthy
                    },
                );
            }
            _ => {
                let instance = Instance {
                    id,
                    addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, address))]
                        .into_boxed_slice(),
                    port: 80,
                    proto: if udp { Proto::Udp } else { Proto::Tcp },
                    priority: 1,
                    weight: 1,
                    tags: tag.map(|t| label(format!("t{t}"))).into_iter().collect(),
                    meta: Meta::default(),
                    dns_ttl: Some(u32::from(ttl)),
                    ttl: None,
                    ephemeral: false,
                };
                if view.zones()[0].check_labels(&service, &instance).is_ok() {
                    view.insert(0, &service, Arc::new(Entry::new(instance, 5, None, true)));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn a_difference_turns_one_version_into_the_next(
            batches in prop::collection::vec(prop::collection::vec(change(), 1..6), 1..12)
        ) {
            let origin = Name::from_ascii("svc.internal.").unwrap();
            let spec = ZoneSpec::empty(origin, 5, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            let zone = Zone::new(&spec);
            let mut view = View::new(vec![zone.settings()], Instant::now(), 1);
            let published = Arc::new(ArcSwap::from_pointee(view.clone()));
            let served = ServedZone::new(Arc::new(zone), published, 0, Sampling::default());
            let mut before = Arc::new(view.clone());
            for batch in &batches {
                for change in batch {
                    apply(&mut view, *change);
                }
                let after = Arc::new(view.clone());
                let old = all_records(&served, &before.zones()[0]);
                let new = all_records(&served, &after.zones()[0]);
                let difference = difference(&served, &before.zones()[0], &after.zones()[0]);
                let mut patched = old.clone();
                for record in &difference.removed {
                    prop_assert!(patched.remove(record), "removes a record it does not have");
                }
                for record in &difference.added {
                    prop_assert!(patched.insert(record.clone()), "adds a record it already has");
                }
                prop_assert_eq!(&patched, &new);
                before = after;
            }
        }
    }
}
