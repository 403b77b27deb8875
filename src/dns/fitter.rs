//! The Catalog path's sink: answers as hickory records, fitted to the response hickory
//! will encode from them.

use hickory_proto::op::Query;
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use super::records::{rdata_of, Rdata, Rec, Sink};
use super::wire::{NameRef, HEADER_LEN};

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
    fn push_answer(&mut self, record: Record) -> bool {
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
    fn push_additional_set(&mut self, records: Vec<Record>) -> bool {
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

impl Sink for Fitter<'_> {
    fn answer(&mut self, record: Rec<'_>) -> bool {
        self.push_answer(to_record(record))
    }

    fn additional_set<'r>(&mut self, records: impl IntoIterator<Item = Rec<'r>>) -> bool {
        if self.full {
            return false;
        }
        self.push_additional_set(records.into_iter().map(to_record).collect())
    }

    fn set_answer_ttl(&mut self, first: usize, ttl: u32) {
        for record in self.answers.iter_mut().skip(first) {
            record.ttl = ttl;
        }
    }

    fn answers_len(&self) -> usize {
        self.answers.len()
    }
}

/// A hickory record for one of ours.
pub fn to_record(record: Rec<'_>) -> Record {
    let rdata = match record.data {
        Rdata::A(address) => RData::A(A(address)),
        Rdata::Aaaa(address) => RData::AAAA(AAAA(address)),
        Rdata::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(priority, weight, port, to_name(target))),
        Rdata::Ptr(target) => RData::PTR(PTR(to_name(target))),
        Rdata::Txt(meta) => {
            let strings: Vec<&[u8]> = if meta.is_empty() {
                vec![&[]]
            } else {
                meta.strings().collect()
            };
            RData::TXT(TXT::from_bytes(strings))
        }
        Rdata::Soa(soa) => RData::SOA(SOA::new(
            to_name(NameRef::wire(soa.mname)),
            to_name(NameRef::wire(soa.rname)),
            soa.serial,
            soa.refresh,
            soa.retry,
            soa.expire,
            soa.minimum,
        )),
        Rdata::Static(record) => return record.record.clone(),
        Rdata::Raw { record_type, rdata } => rdata_of(record_type, rdata),
    };
    Record::from_rdata(to_name(record.owner), record.ttl, rdata)
}

/// A hickory name for one of ours. Our names are made of validated labels within 255
/// bytes (admission checks), so building one cannot fail in practice; the root stands
/// in if it ever did.
fn to_name(name: NameRef<'_>) -> Name {
    let mut built = Name::from_labels(name.to_labels()).unwrap_or_else(|_| Name::root());
    built.set_fqdn(true);
    built
}

/// Length of `name` on the wire, uncompressed.
fn wire_len(name: &Name) -> usize {
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
