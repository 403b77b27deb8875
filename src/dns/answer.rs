//! Prepared answers: what a query for one (name, type) returns, built when the data
//! changes so that answering is a hash probe plus reference-count bumps.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hickory_proto::op::Query;
use hickory_proto::rr::{Name, RData, Record, RecordSet, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::zone_handler::{LookupOptions, LookupRecords};

/// Everything at one owner name. No answers means an empty non-terminal: the name
/// exists (NOERROR/NODATA) only because names below it do.
#[derive(Debug, Default)]
pub struct NameEntry {
    pub answers: Vec<Arc<Answer>>,
}

impl NameEntry {
    pub fn get(&self, record_type: RecordType) -> Option<&Arc<Answer>> {
        self.answers
            .iter()
            .find(|answer| answer.record_type() == record_type)
    }

    /// The data of an RFC 8482 minimal ANY answer: one RRset, the first we hold.
    pub fn any(&self) -> Option<&Arc<Answer>> {
        self.answers.first()
    }

    pub fn is_empty_non_terminal(&self) -> bool {
        self.answers.is_empty()
    }
}

/// One RRset with the additional records that make it useful on its own (SRV targets'
/// addresses, DNS-SD instance data), and the sizes needed to fit them into a response.
#[derive(Debug)]
pub struct Answer {
    rrset: Arc<RecordSet>,
    /// One single-record set per record, for answers whose order rotates.
    rotation: Vec<Arc<RecordSet>>,
    next_rotation: AtomicUsize,
    /// Whole RRsets, most useful first: when a response is short of room, they are
    /// dropped from the end.
    additionals: Vec<Arc<RecordSet>>,
    /// Encoded size of a response with this answer and a lowercase question, and of
    /// the same response after each additional RRset is appended.
    answer_size: usize,
    additional_ends: Vec<usize>,
}

impl Answer {
    /// Prepares an answer. Address sets with more than one record rotate their order
    /// between responses (DESIGN §1), spreading naive clients that take the first one.
    pub fn new(rrset: RecordSet, additionals: Vec<Arc<RecordSet>>) -> Answer {
        let rotate = matches!(rrset.record_type(), RecordType::A | RecordType::AAAA)
            && rrset.records_count() > 1;
        let rotation = if rotate {
            rrset
                .records_without_rrsigs()
                .map(|record| Arc::new(single_record_set(record.clone())))
                .collect()
        } else {
            Vec::new()
        };
        let (answer_size, additional_ends) = encoded_sizes(&rrset, &additionals);
        Answer {
            rrset: Arc::new(rrset),
            rotation,
            next_rotation: AtomicUsize::new(0),
            additionals,
            answer_size,
            additional_ends,
        }
    }

    /// Convenience for a set of records sharing name, type and TTL.
    pub fn from_rdata(
        name: &Name,
        ttl: u32,
        rdata: impl IntoIterator<Item = RData>,
        additionals: Vec<Arc<RecordSet>>,
    ) -> Option<Answer> {
        record_set(name, ttl, rdata).map(|rrset| Answer::new(rrset, additionals))
    }

    pub fn record_type(&self) -> RecordType {
        self.rrset.record_type()
    }

    pub fn rrset(&self) -> &Arc<RecordSet> {
        &self.rrset
    }

    /// The answer records, in this response's rotation.
    pub fn records(&self, options: LookupOptions) -> LookupRecords {
        if self.rotation.is_empty() {
            return LookupRecords::new(options, self.rrset.clone());
        }
        let start = self.next_rotation.fetch_add(1, Ordering::Relaxed) % self.rotation.len();
        let rotated = self.rotation[start..]
            .iter()
            .chain(&self.rotation[..start])
            .cloned()
            .collect();
        LookupRecords::many(options, rotated)
    }

    /// The additional RRsets that fit in a response of at most `limit` bytes, keeping
    /// `slack` bytes free for what the prepared sizes do not include (the OPT record).
    ///
    /// Whole RRsets are dropped from the end, and since the answer section then still
    /// fits, the response carries no TC bit (RFC 2181 §9: additional data is optional).
    /// When even the answer does not fit, nothing is added and the encoder truncates
    /// the answer and sets TC, which sends the client to TCP.
    pub fn additionals_within(
        &self,
        limit: usize,
        slack: usize,
        options: LookupOptions,
    ) -> Option<LookupRecords> {
        let room = limit.saturating_sub(slack);
        if self.additionals.is_empty() || self.answer_size > room {
            return None;
        }
        let fitting = self.additional_ends.partition_point(|&end| end <= room);
        if fitting == 0 {
            return None;
        }
        Some(LookupRecords::many(
            options,
            self.additionals[..fitting].to_vec(),
        ))
    }
}

/// Builds one RRset; `None` when there is no data (an RRset is never empty).
///
/// Duplicate data is dropped (RFC 2181 §5: an RRset is a set), e.g. when two instances
/// share an address. This is linear in the records; `RecordSet::insert` checks each new
/// record against all previous ones, which made large sets quadratic to build.
pub fn record_set(
    name: &Name,
    ttl: u32,
    rdata: impl IntoIterator<Item = RData>,
) -> Option<RecordSet> {
    rrset_of(
        rdata
            .into_iter()
            .map(|data| Record::from_rdata(name.clone(), ttl, data))
            .collect(),
    )
}

/// An RRset of exactly one record.
pub fn single_record_set(record: Record) -> RecordSet {
    let mut rrset = RecordSet::with_ttl(record.name.clone(), record.record_type(), record.ttl);
    rrset.set_records(vec![record]);
    rrset
}

/// Builds one RRset from records that share owner and type (the first one's name and
/// TTL stand for the set), dropping records whose data repeats an earlier one.
pub fn rrset_of(mut records: Vec<Record>) -> Option<RecordSet> {
    let mut seen = HashSet::new();
    records.retain(|record| seen.insert(record.data.clone()));
    let first = records.first()?;
    let mut rrset = RecordSet::with_ttl(first.name.clone(), first.record_type(), first.ttl);
    rrset.set_records(records);
    Some(rrset)
}

/// Encodes header, question, the answer RRset and then each additional RRset into one
/// buffer, as the response encoder will, and records the length after the answer and
/// after each additional set.
///
/// The question goes in as opaque bytes: hickory copies the client's question verbatim
/// and never compresses later names against it, so neither may the measurement (and
/// so the question's case does not matter either).
///
/// On an encoding failure every size is `usize::MAX`, which only means "never add
/// additionals": the answer itself is still served and sized by the real encoder.
fn encoded_sizes(rrset: &RecordSet, additionals: &[Arc<RecordSet>]) -> (usize, Vec<usize>) {
    let mut ends = Vec::with_capacity(additionals.len());
    let answer_size = (|| {
        let mut question = Vec::with_capacity(64);
        Query::query(rrset.name().clone(), rrset.record_type())
            .emit(&mut BinEncoder::new(&mut question))?;
        let mut buffer = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut buffer);
        encoder.emit_vec(&[0; 12])?;
        encoder.emit_vec(&question)?;
        encoder.emit_all(rrset.records_without_rrsigs())?;
        let answer_size = encoder.len();
        for set in additionals {
            encoder.emit_all(set.records_without_rrsigs())?;
            ends.push(encoder.len());
        }
        Ok::<_, hickory_proto::ProtoError>(answer_size)
    })();
    match answer_size {
        Ok(size) => (size, ends),
        Err(_) => (usize::MAX, vec![usize::MAX; additionals.len()]),
    }
}
