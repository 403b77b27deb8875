//! The hickory-server `ZoneHandler` of a [`ServedZone`], for the queries the fast path
//! leaves to hickory's `Catalog` (see `front`): the same answers, as hickory records
//! sized for the transport the query came on.

use std::cell::RefCell;

use async_trait::async_trait;
use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, Name, Record, RecordType, TSigResponseContext};
use hickory_proto::serialize::binary::BinEncodable;
use hickory_server::dnssec::NxProofKind;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestInfo};
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, LookupControlFlow, LookupError, LookupOptions, LookupRecords,
    Nsec3QueryInfo, ZoneHandler, ZoneTransfer, ZoneType,
};

use super::fitter::Fitter;
use super::front::{response_limit, warn_huge_answer, Transport};
use super::wire::{WireName, OPT_LEN};
use super::zone::{Negative, ServedZone};

thread_local! {
    /// Scratch space for measuring responses, reused by every query on a thread.
    static MEASURE_BUFFER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(4096));
}

#[async_trait]
impl ZoneHandler for ServedZone {
    fn zone_type(&self) -> ZoneType {
        ZoneType::Primary
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::Deny
    }

    fn origin(&self) -> &LowerName {
        self.zone().lower_origin()
    }

    /// Used by the Catalog for the SOA of negative answers and the NS of SOA answers.
    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        _request_info: Option<&RequestInfo<'_>>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        let question = Query::query(Name::from(name.clone()), rtype);
        let answer = MEASURE_BUFFER
            .with(|buffer| self.fitted(name, rtype, &question, None, &mut buffer.borrow_mut()));
        LookupControlFlow::Break(answer.map(|a| lookup_of(a, lookup_options)))
    }

    async fn search(
        &self,
        request: &Request,
        lookup_options: LookupOptions,
    ) -> (LookupControlFlow<AuthLookup>, Option<TSigResponseContext>) {
        let info = match request.request_info() {
            Ok(info) => info,
            Err(e) => return (LookupControlFlow::Break(Err(e)), None),
        };
        let query = info.query;
        // Our data is all class IN; other classes are not ours to answer.
        if query.query_class() != DNSClass::IN {
            return (
                LookupControlFlow::Break(Err(LookupError::from(ResponseCode::Refused))),
                None,
            );
        }
        let question = Query::query(Name::from(query.name().clone()), query.query_type());
        let room = response_room(request);
        let answer = MEASURE_BUFFER.with(|buffer| {
            self.fitted(
                query.name(),
                query.query_type(),
                &question,
                Some(room),
                &mut buffer.borrow_mut(),
            )
        });
        if let Ok(answer) = &answer {
            if answer.truncated && request.protocol() != Protocol::Udp {
                let sent = answer.answers.len().saturating_sub(1);
                warn_huge_answer(query.name(), query.query_type(), answer.total, sent);
            }
        }
        (
            LookupControlFlow::Break(answer.map(|a| lookup_of(a, lookup_options))),
            None,
        )
    }

    async fn nsec_records(
        &self,
        _name: &LowerName,
        _lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        // Not a signed zone: there are no NSEC records to give.
        LookupControlFlow::Break(Ok(AuthLookup::Empty))
    }

    async fn nsec3_records(
        &self,
        _info: Nsec3QueryInfo<'_>,
        _lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        // Nor NSEC3 records.
        LookupControlFlow::Break(Ok(AuthLookup::Empty))
    }

    fn nx_proof_kind(&self) -> Option<&NxProofKind> {
        None
    }

    /// Zone transfers of our zones are answered by `transfer` before the Catalog sees
    /// them (the Catalog sends a zone as one message); what still reaches here (a name
    /// below a zone's apex, a TSIG-signed request, which we cannot verify) is refused.
    async fn zone_transfer(
        &self,
        _request: &Request,
        _lookup_options: LookupOptions,
        _now: u64,
    ) -> Option<(
        Result<ZoneTransfer, LookupError>,
        Option<TSigResponseContext>,
    )> {
        Some((Err(LookupError::from(ResponseCode::Refused)), None))
    }
}

/// A response's records, and what the response builder must know about them.
struct Answer {
    answers: Vec<Record>,
    additionals: Vec<Record>,
    /// The answer section did not fit the room (the response will carry TC).
    truncated: bool,
    /// Records of the complete answer, for messages about truncated answers.
    total: usize,
}

impl ServedZone {
    /// Answers `name`/`record_type` from the current snapshot as hickory records, in a
    /// response to `question` of at most `room` bytes (`None`: unlimited). `buffer` is
    /// scratch space. NODATA is `Err(NameExists)`, NXDOMAIN `Err(NXDomain)`, as the
    /// Catalog wants.
    fn fitted(
        &self,
        name: &LowerName,
        record_type: RecordType,
        question: &Query,
        room: Option<usize>,
        buffer: &mut Vec<u8>,
    ) -> Result<Answer, LookupError> {
        let wire = Name::from(name.clone())
            .to_bytes()
            .ok()
            .and_then(|bytes| WireName::from_wire(&bytes))
            .ok_or(LookupError::from(ResponseCode::FormErr))?;
        if !wire.is_within(self.zone().origin_wire()) {
            return Err(LookupError::from(ResponseCode::Refused));
        }
        let view = self.snapshot();
        let mut out = Fitter::new(buffer, question, room);
        let total = self
            .answer(&view, &wire, record_type, &mut out)
            .map_err(|negative| match negative {
                Negative::NoData => LookupError::NameExists,
                Negative::NxDomain => LookupError::from(ResponseCode::NXDomain),
                Negative::ServFail => LookupError::from(ResponseCode::ServFail),
            })?;
        let truncated = out.truncated();
        let (answers, additionals) = out.finish();
        Ok(Answer {
            answers,
            additionals,
            truncated,
            total,
        })
    }
}

fn lookup_of(answer: Answer, _options: LookupOptions) -> AuthLookup {
    AuthLookup::answers(
        LookupRecords::Section(answer.answers),
        Some(LookupRecords::Section(answer.additionals)),
    )
}

/// The most bytes the answer and additional sections may take in the response to
/// `request`, header and question included: the client's UDP limit (or 65535 on TCP),
/// less the OPT record the Catalog adds to answers to EDNS queries.
fn response_room(request: &Request) -> usize {
    let transport = match request.protocol() {
        Protocol::Udp => Transport::Udp,
        _ => Transport::Tcp,
    };
    let limit = response_limit(transport, request.edns.as_ref().map(|e| e.max_payload()));
    let opt = if request.edns.is_some() { OPT_LEN } else { 0 };
    limit - opt
}
