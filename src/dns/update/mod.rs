//! Registration through DNS itself: RFC 2136 UPDATE, signed with TSIG (RFC 8945),
//! with update leases (RFC 9664). `nsupdate`, external-dns, DHCP servers and SRP
//! clients all write this way, so they register services with no code of ours.
//!
//! An UPDATE is taken here, before hickory's Catalog, for two reasons: its response
//! must carry the granted lease in its OPT record, which the Catalog builds itself
//! (and signs before we could add to it), and the update must be one transaction of
//! the registry's writer, which hickory's `ZoneHandler::update` has no way to wait
//! for. hickory still parses the message and checks and makes the signatures.
//!
//! The order of the checks follows RFC 2136 §3: the signature first (no one learns
//! anything about our zones without a key), then the form of the zone, prerequisite
//! and update sections (FORMERR, NOTAUTH, NOTZONE), then, on the writer's thread,
//! the prerequisites and the changes themselves (see [`mapping`]). The response is
//! sent once the change is published (and committed, with `data_dir` or etcd), so a
//! NOERROR means every node it reached answers with it.

pub mod keys;
mod mapping;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType, TSigResponseContext};
use tracing::{info, warn};

use super::front::Responder;
use crate::api::auth::Grant;
use crate::metrics;
use crate::registry::model::MAX_LEASE_SECS;
use crate::registry::{Registry, RegistryError};
use crate::throttle::LogThrottle;
use keys::UpdateKeys;
use mapping::Update;

/// The DNS opcode of an UPDATE.
const OPCODE_UPDATE: u8 = 5;
/// EDNS payload we announce in responses (RFC 9715's safe size).
const RESPONSE_PAYLOAD: u16 = 1232;
/// At most one warning about refused unsigned or badly signed updates per this many
/// seconds: whoever sends them could otherwise fill the log.
const REFUSAL_WARNING_INTERVAL: u64 = 10;

/// Whether `packet` is an UPDATE request (not a response).
pub fn is_update(packet: &[u8]) -> bool {
    packet
        .get(2)
        .is_some_and(|&flags| flags & 0x80 == 0 && (flags >> 3) & 0x0f == OPCODE_UPDATE)
}

/// Takes UPDATE requests for our zones and makes them registry transactions.
pub struct Updates {
    /// The zones served now.
    responder: Arc<Responder>,
    registry: Registry,
    /// `None`: updates are off (`dns.update.keys_file` unset), all REFUSED.
    keys: ArcSwapOption<UpdateKeys>,
}

/// How a request ends.
struct Outcome {
    code: ResponseCode,
    /// Signs the response (present once the request's key is known).
    signer: Option<TSigResponseContext>,
    /// The lease and key lease granted (RFC 9664), for the response's OPT record.
    lease: Option<Lease>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Lease {
    lease: u32,
    key_lease: Option<u32>,
}

impl Outcome {
    fn unsigned(code: ResponseCode) -> Outcome {
        Outcome {
            code,
            signer: None,
            lease: None,
        }
    }
}

impl Updates {
    pub fn new(responder: Arc<Responder>, registry: Registry, keys: Option<UpdateKeys>) -> Updates {
        Updates {
            responder,
            registry,
            keys: ArcSwapOption::from(keys.map(Arc::new)),
        }
    }

    /// Takes updates signed with `keys` from now on (`None`: no more updates).
    pub fn replace_keys(&self, keys: Option<UpdateKeys>) {
        self.keys.store(keys.map(Arc::new));
    }

    /// The response to the UPDATE `packet`; `None` when it does not parse.
    pub async fn answer(&self, packet: &[u8], source: SocketAddr) -> Option<Vec<u8>> {
        let Ok(request) = Message::from_vec(packet) else {
            metrics::update_answered(u16::from(ResponseCode::FormErr));
            return None;
        };
        let outcome = self.process(&request, packet, source).await;
        metrics::update_answered(u16::from(outcome.code));
        Some(respond(&request, outcome))
    }

    async fn process(&self, request: &Message, packet: &[u8], source: SocketAddr) -> Outcome {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let id = request.metadata.id;
        let Some(keys) = self.keys.load_full() else {
            warn_refused(source, "updates are off: dns.update.keys_file is not set");
            return Outcome::unsigned(ResponseCode::Refused);
        };
        let Some(tsig) = request.signature() else {
            warn_refused(source, "the update is not signed (TSIG)");
            return Outcome::unsigned(ResponseCode::Refused);
        };
        let Some(key) = keys.find(&tsig.name) else {
            warn_refused(source, &format!("unknown TSIG key {}", tsig.name));
            return Outcome {
                signer: Some(TSigResponseContext::unknown_key(id, now, tsig.name.clone())),
                ..Outcome::unsigned(ResponseCode::NotAuth)
            };
        };
        let Ok((_, _, valid)) = key.signer.verify_message_byte(packet, None, true) else {
            warn_refused(source, &format!("bad signature with key {}", tsig.name));
            return Outcome {
                signer: Some(TSigResponseContext::bad_signature(
                    id,
                    now,
                    key.signer.clone(),
                )),
                ..Outcome::unsigned(ResponseCode::NotAuth)
            };
        };
        let mac = tsig.data.mac.clone();
        if !valid.contains(&now) {
            warn_refused(
                source,
                &format!(
                    "signed at {} but it is {now}: clocks differ by more than the fudge",
                    tsig.data.time
                ),
            );
            return Outcome {
                signer: Some(TSigResponseContext::new(
                    id,
                    now,
                    key.signer.clone(),
                    mac,
                    Some(TsigError::BadTime),
                )),
                ..Outcome::unsigned(ResponseCode::NotAuth)
            };
        }
        let signer = Some(TSigResponseContext::new(
            id,
            now,
            key.signer.clone(),
            mac,
            None,
        ));
        let (update, lease) = match self.check(request, key.grant.clone()) {
            Ok(checked) => checked,
            Err((code, reason)) => {
                info!(client = %source, key = %tsig.name, rcode = ?code, reason, "update refused");
                return Outcome {
                    code,
                    signer,
                    lease: None,
                };
            }
        };
        let result = self
            .registry
            .transaction(Box::new(move |view| update.decide(view)))
            .await;
        let code = match result {
            Ok(()) => ResponseCode::NoError,
            Err(error) => {
                let code = match &error {
                    RegistryError::Declined { code, .. } => {
                        <ResponseCode as From<u16>>::from(*code)
                    }
                    RegistryError::StoreUnavailable(_)
                    | RegistryError::NotSeenYet { .. }
                    | RegistryError::Unavailable
                    | RegistryError::Failed(_) => ResponseCode::ServFail,
                    _ => ResponseCode::Refused,
                };
                info!(client = %source, key = %tsig.name, rcode = ?code, reason = %error, "update not made");
                code
            }
        };
        Outcome {
            code,
            signer,
            lease: lease.filter(|_| code == ResponseCode::NoError),
        }
    }

    /// RFC 2136 §3.1, §3.2.1-2 and §3.4.1: the zone is ours and every record of the
    /// prerequisite and update sections is well formed and within it. Returns the
    /// update and the lease granted, if one was asked for.
    fn check(
        &self,
        request: &Message,
        grant: Grant,
    ) -> Result<(Update, Option<Lease>), (ResponseCode, String)> {
        let formerr = |reason: String| (ResponseCode::FormErr, reason);
        let [zone_query] = request.queries.as_slice() else {
            return Err(formerr("the zone section must hold one zone".into()));
        };
        if zone_query.query_type() != RecordType::SOA || zone_query.query_class() != DNSClass::IN {
            return Err(formerr(
                "the zone section must be of type SOA, class IN".into(),
            ));
        }
        let zones = self.responder.zones();
        let Some(zone) = zones
            .iter()
            .find(|zone| zone.zone().origin() == zone_query.name())
            .cloned()
        else {
            return Err((
                ResponseCode::NotAuth,
                format!("{} is not a zone served here", zone_query.name()),
            ));
        };
        let origin = zone.zone().origin();
        let outside = |record: &Record| {
            (!origin.zone_of(&record.name)).then(|| {
                (
                    ResponseCode::NotZone,
                    format!("{} is outside zone {origin}", record.name),
                )
            })
        };
        // hickory reads any record with no RDATA as `Update0`: right for deletions and
        // existence prerequisites, malformed for data to add or compare.
        let no_data = |record: &Record| matches!(record.data, RData::Update0(_));
        let empty = |record: &Record| no_data(record) && record.ttl == 0;
        for record in &request.answers {
            if let Some(refusal) = outside(record) {
                return Err(refusal);
            }
            let well_formed = match record.dns_class {
                DNSClass::ANY | DNSClass::NONE => empty(record),
                DNSClass::IN => {
                    record.ttl == 0 && !is_meta(record.record_type()) && !no_data(record)
                }
                _ => false,
            };
            if !well_formed {
                return Err(formerr(format!(
                    "prerequisite {} {} is malformed",
                    record.name,
                    record.record_type()
                )));
            }
        }
        for record in &request.authorities {
            if let Some(refusal) = outside(record) {
                return Err(refusal);
            }
            let record_type = record.record_type();
            let well_formed = match record.dns_class {
                DNSClass::IN => {
                    !is_meta(record_type) && record_type != RecordType::ANY && !no_data(record)
                }
                DNSClass::ANY => empty(record) && !is_meta(record_type),
                DNSClass::NONE => {
                    record.ttl == 0 && !is_meta(record_type) && record_type != RecordType::ANY
                }
                _ => false,
            };
            if !well_formed {
                return Err(formerr(format!(
                    "update {} {} is malformed",
                    record.name, record_type
                )));
            }
        }
        // Granted as asked, within what a registration may have; the key lease is
        // echoed, since svcdns keeps no KEY records for it to govern.
        let lease = requested_lease(request)
            .map_err(formerr)?
            .map(|asked| Lease {
                lease: asked.lease.clamp(1, MAX_LEASE_SECS),
                key_lease: asked.key_lease,
            });
        let update = Update {
            zone,
            prerequisites: request.answers.clone(),
            changes: request.authorities.clone(),
            grant,
            lease: lease.map(|granted| granted.lease),
        };
        Ok((update, lease))
    }
}

/// The update lease a request asks for (RFC 9664 §4: 4 bytes, or 8 with the key lease).
fn requested_lease(request: &Message) -> Result<Option<Lease>, String> {
    let Some(option) = request
        .edns
        .as_ref()
        .and_then(|edns| edns.option(EdnsCode::UL))
    else {
        return Ok(None);
    };
    let EdnsOption::Unknown(_, data) = option else {
        return Ok(None);
    };
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
    };
    match data.len() {
        4 => Ok(word(0).map(|lease| Lease {
            lease,
            key_lease: None,
        })),
        8 => Ok(word(0).map(|lease| Lease {
            lease,
            key_lease: word(4),
        })),
        other => Err(format!(
            "the update lease option has {other} bytes; it must have 4 or 8"
        )),
    }
}

/// Types that are never data (RFC 6895 §3.1): OPT, TKEY, TSIG, IXFR, AXFR, MAILA, MAILB.
fn is_meta(record_type: RecordType) -> bool {
    matches!(u16::from(record_type), 41 | 249..=254)
}

/// The response to `request`: its zone section, the RCODE, the granted lease, and a
/// TSIG signature made with the request's key.
fn respond(request: &Message, outcome: Outcome) -> Vec<u8> {
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Update);
    response.metadata.response_code = outcome.code;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(RESPONSE_PAYLOAD);
        if let Some(Lease { lease, key_lease }) = outcome.lease {
            let mut data = lease.to_be_bytes().to_vec();
            if let Some(key_lease) = key_lease {
                data.extend_from_slice(&key_lease.to_be_bytes());
            }
            edns.options_mut()
                .insert(EdnsOption::Unknown(u16::from(EdnsCode::UL), data));
        }
        response.set_edns(edns);
    }
    let Ok(unsigned) = response.to_vec() else {
        return Vec::new();
    };
    let Some(signer) = outcome.signer else {
        return unsigned;
    };
    match signer.sign(&unsigned) {
        Ok(signature) => {
            response.set_signature(signature);
            response.to_vec().unwrap_or(unsigned)
        }
        Err(_) => unsigned,
    }
}

/// Says, at most once per interval, that an update was refused before it could be
/// read: unsigned, an unknown key or a bad signature.
fn warn_refused(source: SocketAddr, reason: &str) {
    static THROTTLE: LogThrottle = LogThrottle::new(REFUSAL_WARNING_INTERVAL);
    if let Some(suppressed) = THROTTLE.admit() {
        warn!(client = %source, reason, similar_since_last_warning = suppressed, "update refused");
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::rdata::opt::EdnsOption;

    use super::*;

    fn with_lease_option(data: &[u8]) -> Message {
        let mut message = Message::new(1, MessageType::Query, OpCode::Update);
        let mut edns = Edns::new();
        edns.options_mut()
            .insert(EdnsOption::Unknown(u16::from(EdnsCode::UL), data.to_vec()));
        message.set_edns(edns);
        message
    }

    #[test]
    fn an_update_lease_has_4_or_8_bytes() {
        assert_eq!(
            requested_lease(&with_lease_option(&[0, 0, 0, 30])),
            Ok(Some(Lease {
                lease: 30,
                key_lease: None
            }))
        );
        assert_eq!(
            requested_lease(&with_lease_option(&[0, 0, 0, 30, 0, 1, 0, 0])),
            Ok(Some(Lease {
                lease: 30,
                key_lease: Some(65536)
            }))
        );
        let error = requested_lease(&with_lease_option(&[0, 0, 30])).unwrap_err();
        assert!(error.contains("3 bytes"), "{error}");
        let without = Message::new(1, MessageType::Query, OpCode::Update);
        assert_eq!(requested_lease(&without), Ok(None));
    }

    #[test]
    fn only_update_requests_are_taken() {
        let mut update = Message::new(7, MessageType::Query, OpCode::Update)
            .to_vec()
            .unwrap();
        assert!(is_update(&update));
        update[2] |= 0x80;
        assert!(!is_update(&update), "a response");
        let query = Message::new(7, MessageType::Query, OpCode::Query)
            .to_vec()
            .unwrap();
        assert!(!is_update(&query));
        assert!(!is_update(&[0, 1]));
    }
}
