//! What goes into an answer: registry data rendered as records, into any [`Sink`].
//!
//! Records are made from the registry's compact instances when a query asks for them,
//! never stored: a registry of a million instances would otherwise hold several
//! million records. The same rendering feeds both answer paths: the fast path's wire
//! writer ([`super::wire::ResponseWriter`]) and the hickory records the Catalog path
//! sends ([`super::fitter::Fitter`]). A sink takes records while they fit the response:
//! an answer that does not fit gets TC, and additional RRsets are dropped whole, from
//! the end, without TC (RFC 2181 §9). For huge sets only what fits is ever made.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::rr::rdata::NULL;
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecoder, Restrict};

use super::naming::{Data, Family, Members};
use super::wire::{
    LabelRef, NameRef, RdataOut, ResponseWriter, Section, TYPE_A, TYPE_AAAA, TYPE_PTR, TYPE_SOA,
    TYPE_SRV, TYPE_TXT,
};
use crate::registry::view::{Entry, Rotation};
use crate::registry::{Label, Meta, Proto};

/// One record to add to a response, borrowed from the registry or the zone.
#[derive(Clone, Copy)]
pub struct Rec<'a> {
    pub owner: NameRef<'a>,
    pub ttl: u32,
    pub data: Rdata<'a>,
}

/// The data of a [`Rec`].
#[derive(Clone, Copy)]
pub enum Rdata<'a> {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: NameRef<'a>,
    },
    Ptr(NameRef<'a>),
    /// An instance's metadata (a single empty string when it has none, RFC 6763 §6.1).
    Txt(&'a Meta),
    Soa(Soa<'a>),
    /// A record from a zone file.
    Static(&'a StaticRecord),
    /// A record written through DNS UPDATE: its type and RDATA as on the wire.
    Raw {
        record_type: u16,
        rdata: &'a [u8],
    },
}

/// A zone's SOA data, with the serial of the snapshot answering.
#[derive(Clone, Copy)]
pub struct Soa<'a> {
    /// MNAME and RNAME in lowercase wire form.
    pub mname: &'a [u8],
    pub rname: &'a [u8],
    pub serial: u32,
    pub refresh: i32,
    pub retry: i32,
    pub expire: i32,
    pub minimum: u32,
}

/// A record from a zone file, in both forms the answer paths use.
pub struct StaticRecord {
    pub record: Record,
    /// The owner in lowercase wire form.
    pub owner: Box<[u8]>,
    /// The RDATA as on the wire, names uncompressed.
    pub rdata: Box<[u8]>,
}

impl Rdata<'_> {
    pub fn record_type(&self) -> u16 {
        match self {
            Rdata::A(_) => TYPE_A,
            Rdata::Aaaa(_) => TYPE_AAAA,
            Rdata::Srv { .. } => TYPE_SRV,
            Rdata::Ptr(_) => TYPE_PTR,
            Rdata::Txt(_) => TYPE_TXT,
            Rdata::Soa(_) => TYPE_SOA,
            Rdata::Static(record) => u16::from(record.record.record_type()),
            Rdata::Raw { record_type, .. } => *record_type,
        }
    }
}

/// Where rendered records go: a response being built, that takes records while they fit.
pub trait Sink {
    /// Adds an answer record; false once the answer section has overflowed (the
    /// response then carries TC).
    fn answer(&mut self, record: Rec<'_>) -> bool;

    /// Adds an additional RRset whole, or not at all; false when it did not fit, after
    /// which nothing more is added (sets are offered most useful first).
    fn additional_set<'r>(&mut self, records: impl IntoIterator<Item = Rec<'r>>) -> bool;

    /// Gives the answer records from `first` on one TTL (an RRset has one, RFC 2181
    /// §5.2): the smallest of the instances that ended up in the response.
    fn set_answer_ttl(&mut self, first: usize, ttl: u32);

    fn answers_len(&self) -> usize;
}

impl Sink for ResponseWriter<'_> {
    fn answer(&mut self, record: Rec<'_>) -> bool {
        let fits = write(self, record);
        if !fits {
            self.set_truncated();
        }
        fits
    }

    fn additional_set<'r>(&mut self, records: impl IntoIterator<Item = Rec<'r>>) -> bool {
        self.begin(Section::Additional);
        let mark = self.mark();
        for record in records {
            if !write(self, record) {
                self.rollback(mark);
                return false;
            }
        }
        true
    }

    fn set_answer_ttl(&mut self, first: usize, ttl: u32) {
        ResponseWriter::set_answer_ttl(self, first, ttl);
    }

    fn answers_len(&self) -> usize {
        self.answers()
    }
}

/// Writes one record into the current section of `out`.
pub fn write(out: &mut ResponseWriter<'_>, record: Rec<'_>) -> bool {
    let record_type = record.data.record_type();
    out.record(record.owner, record_type, record.ttl, |rdata| {
        emit_rdata(&record.data, rdata)
    })
}

/// Writes a record's data, into a response or as standalone bytes.
pub fn emit_rdata(data: &Rdata<'_>, rdata: &mut impl RdataOut) {
    match *data {
        Rdata::A(address) => rdata.bytes(&address.octets()),
        Rdata::Aaaa(address) => rdata.bytes(&address.octets()),
        Rdata::Srv {
            priority,
            weight,
            port,
            target,
        } => {
            rdata.u16(priority);
            rdata.u16(weight);
            rdata.u16(port);
            rdata.name_uncompressed(target);
        }
        Rdata::Ptr(target) => rdata.name(target),
        Rdata::Txt(meta) if meta.is_empty() => rdata.bytes(&[0]),
        Rdata::Txt(meta) => rdata.bytes(meta.as_wire()),
        Rdata::Soa(soa) => {
            rdata.name(NameRef::wire(soa.mname));
            rdata.name(NameRef::wire(soa.rname));
            rdata.u32(soa.serial);
            rdata.u32(soa.refresh as u32);
            rdata.u32(soa.retry as u32);
            rdata.u32(soa.expire as u32);
            rdata.u32(soa.minimum);
        }
        Rdata::Static(record) => rdata.bytes(&record.rdata),
        Rdata::Raw { rdata: bytes, .. } => rdata.bytes(bytes),
    }
}

/// The hickory form of a record's wire RDATA (names uncompressed); a type hickory does
/// not know, or data it cannot read, stays opaque (RFC 3597).
pub fn rdata_of(record_type: u16, bytes: &[u8]) -> RData {
    let code = RecordType::from(record_type);
    let mut decoder = BinDecoder::new(bytes);
    match RData::read(&mut decoder, code, Restrict::new(bytes.len() as u16)) {
        Ok(rdata) if decoder.is_empty() => rdata,
        // `NULL::with` asserts its data is not empty; empty RDATA is valid (RFC 3597).
        _ if bytes.is_empty() => RData::Unknown {
            code,
            rdata: NULL::new(),
        },
        _ => RData::Unknown {
            code,
            rdata: NULL::with(bytes.to_vec()),
        },
    }
}

/// How an answer drawn from many instances is cut down, if at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sampling {
    /// `dns.max_answer_records`: A, AAAA and SRV answers of more instances than this
    /// carry a random sample of this many.
    pub max_answer_records: Option<usize>,
}

/// Renders registry data at `owner` in the zone whose origin is `origin` (lowercase wire
/// form); returns how many records the whole answer has (more than were added when it
/// was truncated or sampled).
pub fn render<'v, S: Sink>(
    data: &Data<'v>,
    owner: NameRef<'v>,
    origin: &'v [u8],
    sampling: Sampling,
    out: &mut S,
) -> usize {
    let first = out.answers_len();
    let record = |ttl, data| Rec { owner, ttl, data };
    match data {
        Data::GroupAddresses { group, family } => {
            let ttl = group.min_ttl();
            let rotation = group.rotation();
            match family {
                Family::V4 => addresses_of_group(out, group.v4(), rotation, sampling, |a| {
                    record(ttl, Rdata::A(a))
                }),
                Family::V6 => addresses_of_group(out, group.v6(), rotation, sampling, |a| {
                    record(ttl, Rdata::Aaaa(a))
                }),
            }
        }
        Data::HostAddresses { entry, family } => {
            let ttl = entry.dns_ttl;
            match family {
                Family::V4 => rotated(out, entry.instance.v4(), |a| record(ttl, Rdata::A(a))),
                Family::V6 => rotated(out, entry.instance.v6(), |a| record(ttl, Rdata::Aaaa(a))),
            }
        }
        Data::Txt { entry } => {
            out.answer(record(entry.dns_ttl, Rdata::Txt(&entry.instance.meta)));
            1
        }
        Data::Srv { service, members } => {
            let chosen = sample(members, sampling);
            let mut written = 0;
            for entry in chosen.clone() {
                written += 1;
                if !out.answer(srv(owner, entry, host_name(origin, service, entry))) {
                    break;
                }
            }
            out.set_answer_ttl(first, min_ttl(chosen.clone().take(written)));
            for entry in chosen.take(written) {
                if !host_additionals(out, entry, host_name(origin, service, entry)) {
                    break;
                }
            }
            members.len_hint()
        }
        Data::InstanceSrv { service, entry } => {
            let target = host_name(origin, service, entry);
            out.answer(srv(owner, entry, target));
            host_additionals(out, entry, target);
            1
        }
        Data::Browse {
            service,
            proto,
            members,
        } => {
            let instance_name =
                |entry: &'v Entry| dns_sd_instance_name(origin, service, *proto, entry);
            let mut written = 0;
            for entry in members.iter() {
                written += 1;
                let ptr = record(entry.dns_ttl, Rdata::Ptr(instance_name(entry)));
                if !out.answer(ptr) {
                    break;
                }
            }
            out.set_answer_ttl(first, min_ttl(members.iter().take(written)));
            // RFC 6763 §12.1: each instance's SRV, TXT and addresses, instance by
            // instance, so that trimming for size keeps whole instances.
            for entry in members.iter().take(written) {
                let instance = instance_name(entry);
                let target = host_name(origin, service, entry);
                let txt = Rec {
                    owner: instance,
                    ttl: entry.dns_ttl,
                    data: Rdata::Txt(&entry.instance.meta),
                };
                let whole = out.additional_set([srv(instance, entry, target)])
                    && out.additional_set([txt])
                    && host_additionals(out, entry, target);
                if !whole {
                    break;
                }
            }
            members.len_hint()
        }
        Data::ServiceTypes { zone } => {
            let ttl = zone.settings().default_ttl;
            for (service, proto) in zone.service_types() {
                if !out.answer(service_type_ptr(owner, origin, service, *proto, ttl)) {
                    break;
                }
            }
            zone.service_types().len()
        }
    }
}

/// Adds a group's distinct addresses of one family, rotated or sampled; returns how
/// many there are.
fn addresses_of_group<'r, T: Copy, S: Sink>(
    out: &mut S,
    set: &[(T, u32)],
    rotation: &Rotation,
    sampling: Sampling,
    record: impl Fn(T) -> Rec<'r>,
) -> usize {
    for i in order(set.len(), || rotation.next(set.len()), sampling) {
        if !out.answer(record(set[i].0)) {
            break;
        }
    }
    set.len()
}

/// Adds an instance's addresses of one family, starting at a rotating position.
fn rotated<'r, T, S: Sink>(
    out: &mut S,
    addresses: impl Iterator<Item = T> + Clone,
    record: impl Fn(T) -> Rec<'r>,
) -> usize {
    let total = addresses.clone().count();
    let start = HOST_ROTATION.fetch_add(1, Ordering::Relaxed) % total.max(1);
    for address in addresses.clone().skip(start).chain(addresses.take(start)) {
        if !out.answer(record(address)) {
            break;
        }
    }
    total
}

/// Rotation of instances with several addresses of one family: one counter for all of
/// them, since only the spread matters.
static HOST_ROTATION: AtomicUsize = AtomicUsize::new(0);

/// Indices in the order a set's records are given: every one from a rotating start, or
/// a random sample.
#[derive(Clone)]
enum Order {
    Rotated(std::iter::Chain<std::ops::Range<usize>, std::ops::Range<usize>>),
    Sampled(std::vec::IntoIter<usize>),
}

impl Iterator for Order {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Order::Rotated(indices) => indices.next(),
            Order::Sampled(indices) => indices.next(),
        }
    }
}

/// The order in which a set of `len` records is given: a random sample when sampling
/// applies, otherwise every record starting at the rotation's position.
fn order(len: usize, rotation: impl FnOnce() -> usize, sampling: Sampling) -> Order {
    match sampling.max_answer_records {
        Some(max) if len > max => Order::Sampled(random_indices(len, max).into_iter()),
        _ => {
            let start = if len > 1 { rotation() } else { 0 };
            Order::Rotated((start..len).chain(0..start))
        }
    }
}

/// The members of an SRV answer: all of them in id order, or a random sample.
#[derive(Clone)]
enum Chosen<'v, I> {
    All(I),
    Sampled {
        all: &'v [std::sync::Arc<Entry>],
        indices: std::vec::IntoIter<usize>,
    },
}

impl<'v, I: Iterator<Item = &'v Entry>> Iterator for Chosen<'v, I> {
    type Item = &'v Entry;

    fn next(&mut self) -> Option<&'v Entry> {
        match self {
            Chosen::All(members) => members.next(),
            Chosen::Sampled { all, indices } => indices.next().map(|i| &*all[i]),
        }
    }
}

fn sample<'v>(
    members: &Members<'v>,
    sampling: Sampling,
) -> Chosen<'v, impl Iterator<Item = &'v Entry> + Clone + 'v> {
    match (sampling.max_answer_records, members.as_slice()) {
        (Some(max), Some(all)) if all.len() > max => Chosen::Sampled {
            all,
            indices: random_indices(all.len(), max).into_iter(),
        },
        _ => Chosen::All(members.iter()),
    }
}

/// `count` distinct indices below `len`, uniformly chosen (Floyd's algorithm), in
/// random order.
fn random_indices(len: usize, count: usize) -> Vec<usize> {
    let mut chosen: Vec<usize> = Vec::with_capacity(count);
    for upper in len - count..len {
        let pick = random_below(upper + 1);
        let value = if chosen.contains(&pick) { upper } else { pick };
        chosen.push(value);
    }
    for i in (1..chosen.len()).rev() {
        chosen.swap(i, random_below(i + 1));
    }
    chosen
}

thread_local! {
    /// xorshift64* state, seeded from the randomness std gives every `RandomState`.
    static RANDOM: Cell<u64> = Cell::new(RandomState::new().build_hasher().finish() | 1);
}

fn random_below(bound: usize) -> usize {
    RANDOM.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1) as u64) as usize
    })
}

fn min_ttl<'a>(entries: impl Iterator<Item = &'a Entry>) -> u32 {
    entries.map(|e| e.dns_ttl).min().unwrap_or(0)
}

/// The instance's A and AAAA sets, as additional data of answers that point at it.
fn host_additionals<S: Sink>(out: &mut S, entry: &Entry, host: NameRef<'_>) -> bool {
    let ttl = entry.dns_ttl;
    let instance = &entry.instance;
    let v4 = instance.v4().map(|a| Rec {
        owner: host,
        ttl,
        data: Rdata::A(a),
    });
    let v6 = instance.v6().map(|a| Rec {
        owner: host,
        ttl,
        data: Rdata::Aaaa(a),
    });
    (instance.v4().next().is_none() || out.additional_set(v4))
        && (instance.v6().next().is_none() || out.additional_set(v6))
}

fn srv<'a>(owner: NameRef<'a>, entry: &Entry, target: NameRef<'a>) -> Rec<'a> {
    let instance = &entry.instance;
    Rec {
        owner,
        ttl: entry.dns_ttl,
        data: Rdata::Srv {
            priority: instance.priority,
            weight: instance.weight,
            port: instance.port,
            target,
        },
    }
}

/// `I.S.Z`: the host name SRV records point at.
fn host_name<'a>(origin: &'a [u8], service: &'a Label, entry: &'a Entry) -> NameRef<'a> {
    let labels = [
        LabelRef::plain(entry.id().as_str().as_bytes()),
        LabelRef::plain(service.as_str().as_bytes()),
    ];
    NameRef::under(&labels, origin)
}

/// `I._S._P.Z`: a DNS-SD service instance.
fn dns_sd_instance_name<'a>(
    origin: &'a [u8],
    service: &'a Label,
    proto: Proto,
    entry: &'a Entry,
) -> NameRef<'a> {
    let labels = [
        LabelRef::plain(entry.id().as_str().as_bytes()),
        LabelRef::underscored(service.as_str().as_bytes()),
        LabelRef::plain(proto.label().as_bytes()),
    ];
    NameRef::under(&labels, origin)
}

/// The PTR of `_services._dns-sd._udp.Z` (at `owner`) to one service type `_S._P.Z`.
pub fn service_type_ptr<'a>(
    owner: NameRef<'a>,
    origin: &'a [u8],
    service: &'a Label,
    proto: Proto,
    ttl: u32,
) -> Rec<'a> {
    Rec {
        owner,
        ttl,
        data: Rdata::Ptr(service_type_name(origin, service, proto)),
    }
}

/// `_S._P.Z`: the DNS-SD service type.
fn service_type_name<'a>(origin: &'a [u8], service: &'a Label, proto: Proto) -> NameRef<'a> {
    let labels = [
        LabelRef::underscored(service.as_str().as_bytes()),
        LabelRef::plain(proto.label().as_bytes()),
    ];
    NameRef::under(&labels, origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_rdata_reads_back_even_empty_or_unknown() {
        // Found by fuzzing dns_update: an empty RDATA of a type hickory reads as NULL.
        assert!(matches!(
            rdata_of(10, &[]),
            RData::Unknown { .. } | RData::NULL(_)
        ));
        assert!(matches!(rdata_of(65280, &[]), RData::Unknown { .. }));
        assert!(matches!(rdata_of(65280, &[1, 2]), RData::Unknown { .. }));
        assert_eq!(
            rdata_of(1, &[10, 0, 0, 1]).ip_addr(),
            Some([10, 0, 0, 1].into())
        );
        // A that is not 4 bytes stays opaque rather than being misread.
        assert!(matches!(rdata_of(1, &[10, 0, 0]), RData::Unknown { .. }));
    }

    #[test]
    fn random_indices_are_distinct_and_in_range() {
        for (len, count) in [(10, 3), (5, 5), (1000, 10), (2, 1)] {
            let mut picked = random_indices(len, count);
            assert_eq!(picked.len(), count);
            assert!(picked.iter().all(|&i| i < len));
            picked.sort();
            picked.dedup();
            assert_eq!(picked.len(), count);
        }
    }

    #[test]
    fn every_index_can_be_sampled() {
        let mut seen = [false; 8];
        for _ in 0..500 {
            for i in random_indices(8, 2) {
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
    }
}
