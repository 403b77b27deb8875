//! Answers as hickory records, fitted to the response they go into.
//!
//! Records are made from the registry's compact instances when a query asks for them,
//! never stored: a registry of a million instances would otherwise hold several
//! million `Record`s. Sizes are exactly those of the response hickory will send (see
//! [`Fitter`]): an answer that does not fit gets TC from hickory's encoder, and
//! additional RRsets are dropped whole, from the end, without TC (RFC 2181 §9). For
//! huge sets only what fits is ever made.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::Query;
use hickory_proto::rr::rdata::{A, AAAA, PTR, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use super::naming::{Data, Family, Members};
use crate::registry::view::{Entry, Rotation};
use crate::registry::{Label, Proto};

/// Builds a response's answer and additional sections, measuring as it goes.
///
/// Measuring means encoding, which costs as much as the response itself, so while the
/// records' uncompressed sizes add up to less than the room, nothing is encoded: a
/// compressed response can only be smaller. Only an answer that may not fit is encoded,
/// exactly as hickory will encode it, from its first record on.
pub struct Fitter<'b> {
    encoder: BinEncoder<'b>,
    question: &'b Query,
    /// Most bytes the sections may take, header and question included; `None` when
    /// nothing is measured.
    room: Option<usize>,
    /// Upper bound of the response's size so far, while not `exact`.
    bound: usize,
    /// Every record so far is in `encoder`, and sizes are exact.
    exact: bool,
    answers: Vec<Record>,
    additionals: Vec<Record>,
    /// No more records go in: the answer overflowed, or an additional RRset did not fit.
    full: bool,
    /// The answer section did not fit whole.
    truncated: bool,
}

impl<'b> Fitter<'b> {
    /// A response to `question` of at most `room` bytes (`None`: no limit). `buffer` is
    /// scratch space for the measurement.
    pub fn new(buffer: &'b mut Vec<u8>, question: &'b Query, room: Option<usize>) -> Fitter<'b> {
        buffer.clear();
        Fitter {
            encoder: BinEncoder::new(buffer),
            question,
            room,
            bound: HEADER_LEN + wire_len(question.name()) + 4,
            exact: false,
            answers: Vec::new(),
            additionals: Vec::new(),
            full: false,
            truncated: false,
        }
    }

    /// Adds an answer record; false once the answer section has overflowed. The record
    /// that overflows is kept, so that hickory's encoder overflows on it too and sets TC.
    pub fn answer(&mut self, record: Record) -> bool {
        debug_assert!(self.additionals.is_empty(), "answers go before additionals");
        if self.full {
            return false;
        }
        let fits = self.measure(&record);
        self.answers.push(record);
        if !fits {
            self.full = true;
            self.truncated = true;
        }
        fits
    }

    /// Adds an additional RRset whole, or not at all; false when it did not fit, after
    /// which nothing more is added (sets are offered most useful first).
    pub fn additional_set(&mut self, records: Vec<Record>) -> bool {
        if self.full {
            return false;
        }
        for record in &records {
            if !self.measure(record) {
                self.full = true;
                return false;
            }
        }
        self.additionals.extend(records);
        true
    }

    /// Gives the answer records from `first` on one TTL (an RRset has one, RFC 2181
    /// §5.2): the smallest of the instances that ended up in the response.
    pub fn set_answer_ttl(&mut self, first: usize, ttl: u32) {
        for record in self.answers.iter_mut().skip(first) {
            record.ttl = ttl;
        }
    }

    pub fn answers_len(&self) -> usize {
        self.answers.len()
    }

    /// Whether the answer section did not fit (the response will carry TC).
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    pub fn finish(self) -> (Vec<Record>, Vec<Record>) {
        (self.answers, self.additionals)
    }

    fn measure(&mut self, record: &Record) -> bool {
        let Some(room) = self.room else {
            return true;
        };
        if !self.exact {
            if let Some(size) = upper_bound(record) {
                if self.bound + size <= room {
                    self.bound += size;
                    return true;
                }
            }
            if !self.start_exact() {
                return false;
            }
        }
        record.emit(&mut self.encoder).is_ok() && self.encoder.len() <= room
    }

    /// Encodes the header, the question and every record so far, as hickory will.
    fn start_exact(&mut self) -> bool {
        self.exact = true;
        // hickory copies the client's question verbatim and never compresses later
        // names against it, so it goes in as opaque bytes of the same length.
        let mut question = Vec::with_capacity(64);
        let encoded = self
            .question
            .emit(&mut BinEncoder::new(&mut question))
            .and_then(|()| self.encoder.emit_vec(&[0; HEADER_LEN]))
            .and_then(|()| self.encoder.emit_vec(&question))
            .and_then(|()| {
                for record in self.answers.iter().chain(&self.additionals) {
                    record.emit(&mut self.encoder)?;
                }
                Ok(())
            });
        encoded.is_ok()
    }
}

/// A DNS message header (RFC 1035 §4.1.1).
const HEADER_LEN: usize = 12;

/// Length of `name` on the wire, uncompressed.
pub fn wire_len(name: &Name) -> usize {
    name.iter().map(|label| label.len() + 1).sum::<usize>() + 1
}

/// The most bytes `record` can take in a message (its size without compression), for
/// the types svcdns serves; `None` for others, which are then measured.
fn upper_bound(record: &Record) -> Option<usize> {
    let rdata = match &record.data {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::SRV(srv) => 6 + wire_len(&srv.target),
        RData::PTR(ptr) => wire_len(&ptr.0),
        RData::CNAME(cname) => wire_len(&cname.0),
        RData::NS(ns) => wire_len(&ns.0),
        RData::MX(mx) => 2 + wire_len(&mx.exchange),
        RData::TXT(txt) => txt.txt_data.iter().map(|s| s.len() + 1).sum(),
        RData::SOA(soa) => wire_len(&soa.mname) + wire_len(&soa.rname) + 20,
        _ => return None,
    };
    // Owner, type, class, TTL, RDLENGTH, RDATA (RFC 1035 §4.1.3).
    Some(wire_len(&record.name) + 10 + rdata)
}

/// How an answer drawn from many instances is cut down, if at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sampling {
    /// `dns.max_answer_records`: A, AAAA and SRV answers of more instances than this
    /// carry a random sample of this many.
    pub max_answer_records: Option<usize>,
}

/// Renders registry data at `owner` in the zone `origin`; returns how many records the
/// whole answer has (more than were added when it was truncated or sampled).
pub fn render(
    data: &Data<'_>,
    owner: &Name,
    origin: &Name,
    sampling: Sampling,
    out: &mut Fitter<'_>,
) -> usize {
    let first = out.answers_len();
    match data {
        Data::GroupAddresses { group, family } => {
            let ttl = group.min_ttl();
            let rotation = group.rotation();
            match family {
                Family::V4 => addresses_of_group(out, group.v4(), rotation, sampling, |a| {
                    a_record(owner, ttl, a)
                }),
                Family::V6 => addresses_of_group(out, group.v6(), rotation, sampling, |a| {
                    aaaa_record(owner, ttl, a)
                }),
            }
        }
        Data::HostAddresses { entry, family } => {
            let records = match family {
                Family::V4 => v4_records(owner, entry.dns_ttl, entry.instance.v4()),
                Family::V6 => v6_records(owner, entry.dns_ttl, entry.instance.v6()),
            };
            let total = records.len();
            let start = HOST_ROTATION.fetch_add(1, Ordering::Relaxed) % total.max(1);
            for record in records[start..].iter().chain(&records[..start]) {
                if !out.answer(record.clone()) {
                    break;
                }
            }
            total
        }
        Data::Txt { entry } => {
            out.answer(Record::from_rdata(owner.clone(), entry.dns_ttl, txt(entry)));
            1
        }
        Data::Srv { service, members } => {
            let Some(hosts) = child(origin, service.as_str()) else {
                return 0;
            };
            let mut targets = Vec::new();
            for entry in sample(members, sampling) {
                let Some(target) = child(&hosts, entry.id().as_str()) else {
                    continue;
                };
                let fits = out.answer(srv_record(owner, entry, &target));
                targets.push((entry, target));
                if !fits {
                    break;
                }
            }
            out.set_answer_ttl(first, min_ttl(targets.iter().map(|(e, _)| *e)));
            for (entry, target) in &targets {
                if !host_additionals(out, entry, target) {
                    break;
                }
            }
            members.len_hint()
        }
        Data::InstanceSrv { service, entry } => {
            if let Some(target) = host_name(origin, service, entry) {
                out.answer(srv_record(owner, entry, &target));
                host_additionals(out, entry, &target);
            }
            1
        }
        Data::Browse {
            service,
            proto,
            members,
        } => {
            let (Some(hosts), Some(instances)) = (
                child(origin, service.as_str()),
                service_type_name(origin, service, *proto),
            ) else {
                return 0;
            };
            let mut browsed = Vec::new();
            for entry in members.iter() {
                let Some(instance) = child(&instances, entry.id().as_str()) else {
                    continue;
                };
                let fits = out.answer(Record::from_rdata(
                    owner.clone(),
                    entry.dns_ttl,
                    RData::PTR(PTR(instance.clone())),
                ));
                browsed.push((entry, instance));
                if !fits {
                    break;
                }
            }
            out.set_answer_ttl(first, min_ttl(browsed.iter().map(|(e, _)| *e)));
            // RFC 6763 §12.1: each instance's SRV, TXT and addresses, instance by
            // instance, so that trimming for size keeps whole instances.
            for (entry, instance) in &browsed {
                let Some(target) = child(&hosts, entry.id().as_str()) else {
                    continue;
                };
                let srv = vec![srv_record(instance, entry, &target)];
                let txt = vec![Record::from_rdata(
                    instance.clone(),
                    entry.dns_ttl,
                    txt(entry),
                )];
                let whole = out.additional_set(srv)
                    && out.additional_set(txt)
                    && host_additionals(out, entry, &target);
                if !whole {
                    break;
                }
            }
            members.len_hint()
        }
        Data::ServiceTypes { zone } => {
            let ttl = zone.settings().default_ttl;
            for (service, proto) in zone.service_types() {
                let Some(type_name) = service_type_name(origin, service, *proto) else {
                    continue;
                };
                if !out.answer(Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::PTR(PTR(type_name)),
                )) {
                    break;
                }
            }
            zone.service_types().len()
        }
    }
}

/// Adds a group's distinct addresses of one family, rotated or sampled; returns how
/// many there are.
fn addresses_of_group<T: Copy>(
    out: &mut Fitter<'_>,
    set: &[(T, u32)],
    rotation: &Rotation,
    sampling: Sampling,
    record: impl Fn(T) -> Record,
) -> usize {
    for i in order(set.len(), || rotation.next(set.len()), sampling) {
        if !out.answer(record(set[i].0)) {
            break;
        }
    }
    set.len()
}

/// Rotation of instances with several addresses of one family: one counter for all of
/// them, since only the spread matters.
static HOST_ROTATION: AtomicUsize = AtomicUsize::new(0);

/// The order in which a set of `len` records is given: a random sample when sampling
/// applies, otherwise every record starting at the rotation's position.
fn order(
    len: usize,
    rotation: impl FnOnce() -> usize,
    sampling: Sampling,
) -> Box<dyn Iterator<Item = usize>> {
    match sampling.max_answer_records {
        Some(max) if len > max => Box::new(random_indices(len, max).into_iter()),
        _ => {
            let start = if len > 1 { rotation() } else { 0 };
            Box::new((start..len).chain(0..start))
        }
    }
}

/// The members of an SRV answer: all of them in id order, or a random sample.
fn sample<'v>(
    members: &Members<'v>,
    sampling: Sampling,
) -> Box<dyn Iterator<Item = &'v Entry> + 'v> {
    match (sampling.max_answer_records, members.as_slice()) {
        (Some(max), Some(all)) if all.len() > max => {
            Box::new(random_indices(all.len(), max).into_iter().map(|i| &*all[i]))
        }
        _ => Box::new(members.iter()),
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
fn host_additionals(out: &mut Fitter<'_>, entry: &Entry, host: &Name) -> bool {
    let v4 = v4_records(host, entry.dns_ttl, entry.instance.v4());
    let v6 = v6_records(host, entry.dns_ttl, entry.instance.v6());
    (v4.is_empty() || out.additional_set(v4)) && (v6.is_empty() || out.additional_set(v6))
}

fn v4_records(owner: &Name, ttl: u32, addresses: impl Iterator<Item = Ipv4Addr>) -> Vec<Record> {
    addresses.map(|a| a_record(owner, ttl, a)).collect()
}

fn v6_records(owner: &Name, ttl: u32, addresses: impl Iterator<Item = Ipv6Addr>) -> Vec<Record> {
    addresses.map(|a| aaaa_record(owner, ttl, a)).collect()
}

fn a_record(owner: &Name, ttl: u32, address: Ipv4Addr) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::A(A(address)))
}

fn aaaa_record(owner: &Name, ttl: u32, address: Ipv6Addr) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::AAAA(AAAA(address)))
}

fn srv_record(owner: &Name, entry: &Entry, target: &Name) -> Record {
    let instance = &entry.instance;
    Record::from_rdata(
        owner.clone(),
        entry.dns_ttl,
        RData::SRV(SRV::new(
            instance.priority,
            instance.weight,
            instance.port,
            target.clone(),
        )),
    )
}

/// TXT of an instance: its metadata as `key=value` strings. Without metadata it is a
/// single empty string, since every DNS-SD instance must have a TXT record (RFC 6763 §6.1).
fn txt(entry: &Entry) -> RData {
    let meta = &entry.instance.meta;
    let strings: Vec<&[u8]> = if meta.is_empty() {
        vec![&[]]
    } else {
        meta.strings().collect()
    };
    RData::TXT(TXT::from_bytes(strings))
}

/// `label.parent`, for labels we validated (LDH, with the underscores we add). Fails
/// only for a name over 255 bytes, which admission rules out.
fn child(parent: &Name, label: &str) -> Option<Name> {
    Name::from_labels([label.as_bytes()])
        .and_then(|name| name.append_domain(parent))
        .ok()
}

/// `I.S.Z`: the host name SRV records point at.
fn host_name(origin: &Name, service: &Label, entry: &Entry) -> Option<Name> {
    child(&child(origin, service.as_str())?, entry.id().as_str())
}

/// `_S._P.Z`: the DNS-SD service type.
fn service_type_name(origin: &Name, service: &Label, proto: Proto) -> Option<Name> {
    child(&child(origin, proto.label())?, &format!("_{service}"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
