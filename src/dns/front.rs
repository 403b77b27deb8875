//! What every DNS packet meets first, on either transport: plain queries for names in
//! our zones are answered here, from the published snapshot straight into wire bytes;
//! everything else goes to hickory's `Catalog` (DESIGN §5).
//!
//! The fast path takes no lock and allocates nothing: the question is read in place,
//! the snapshot is an `ArcSwap` load, and the answer is rendered into the thread's
//! [`Scratch`], compressed against the question. Its answers are those of the Catalog
//! path (a test compares them, `tests/answer_paths.rs`), except where the Catalog is
//! wrong: the OPT record stays in truncated replies (RFC 6891 §7), REFUSED and BADVERS
//! carry no AA, UDP replies never exceed 4096 bytes, SOA answers carry no NS RRset in
//! the authority section, and the DO bit is echoed (RFC 3225 §3), as Knot does.

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{Catalog, MessageResponse};
use tracing::warn;

use super::forward::{with_extended_error, FORWARDING_FAILURE};
use super::records;
use super::transfer::{Reply as TransferReply, Transfers};
use super::update::{self, Updates};
use super::wire::{
    Packet, ResponseWriter, Scratch, Section, WireName, CLASSIC_UDP_LIMIT, CLASS_IN, HEADER_LEN,
    MAX_UDP_RESPONSE, TYPE_OPT,
};
use super::zone::{Negative, ServedZone};
use crate::throttle::LogThrottle;

/// Largest DNS message over TCP (RFC 1035 §4.2.2).
pub const TCP_LIMIT: usize = 65_535;
/// At most one warning about answers too large for TCP per this many seconds.
const HUGE_ANSWER_WARNING_INTERVAL: u64 = 10;

const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_REFUSED: u8 = 5;
/// BADVERS (16) is all in the OPT record's extended bits (RFC 6891 §6.1.3).
const EXTENDED_RCODE_BADVERS: u8 = 1;

/// Query types the fast path leaves to [`Fallback`]: zone transfers (answered by
/// `transfer`), OPT, TKEY, TSIG and the obsolete mail types (RFC 6895 §3.1: meta and
/// query types), which hickory handles.
fn for_hickory(record_type: u16) -> bool {
    matches!(record_type, TYPE_OPT | 249..=254)
}

/// The transport a query came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn protocol(self) -> Protocol {
        match self {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        }
    }
}

/// The most bytes a response may have: 65535 over TCP; over UDP the client's EDNS
/// payload size (`edns_payload`), at least 512 and at most [`MAX_UDP_RESPONSE`], or 512
/// without EDNS.
pub fn response_limit(transport: Transport, edns_payload: Option<u16>) -> usize {
    match (transport, edns_payload) {
        (Transport::Tcp, _) => TCP_LIMIT,
        (Transport::Udp, None) => CLASSIC_UDP_LIMIT,
        (Transport::Udp, Some(payload)) => {
            usize::from(payload).clamp(CLASSIC_UDP_LIMIT, MAX_UDP_RESPONSE)
        }
    }
}

/// What to do with a packet.
pub enum Reply<'s> {
    /// Send these bytes back.
    Send(&'s [u8]),
    /// Hand the packet to the Catalog ([`Fallback::answer`]).
    Fallback,
    /// Send nothing: not a query.
    Ignore,
}

/// Answers plain queries for our zones from the published snapshots.
pub struct Responder {
    /// Replaced whole when a reload changes the zones.
    zones: ArcSwap<Vec<Arc<ServedZone>>>,
    /// When false every query goes to the Catalog (`dns.fast_path: false`).
    enabled: bool,
}

impl Responder {
    pub fn new(zones: Vec<Arc<ServedZone>>, enabled: bool) -> Responder {
        Responder {
            zones: ArcSwap::from_pointee(zones),
            enabled,
        }
    }

    /// The zones answered now.
    pub fn zones(&self) -> Arc<Vec<Arc<ServedZone>>> {
        self.zones.load_full()
    }

    /// Answers from `zones` from now on.
    pub fn replace_zones(&self, zones: Vec<Arc<ServedZone>>) {
        self.zones.store(Arc::new(zones));
    }

    /// Answers `packet` into `scratch`, or says who else must.
    pub fn respond<'s>(
        &self,
        packet: &[u8],
        transport: Transport,
        scratch: &'s mut Scratch,
    ) -> Reply<'s> {
        let query = match Packet::parse(packet) {
            Packet::Query(query) => query,
            Packet::Ignore => return Reply::Ignore,
            Packet::Other => return Reply::Fallback,
        };
        if !self.enabled || for_hickory(query.record_type) {
            return Reply::Fallback;
        }
        // Names outside our zones are the Catalog's (forwarded or REFUSED).
        let zones = self.zones.load();
        let Some(zone) = zone_of(&zones, &query.name) else {
            return Reply::Fallback;
        };
        let limit = response_limit(transport, query.edns.map(|edns| edns.payload));
        let mut out = ResponseWriter::new(scratch, &query, limit);
        if query.edns.is_some_and(|edns| edns.version > 0) {
            out.clear_authoritative();
            return Reply::Send(out.finish(EXTENDED_RCODE_BADVERS));
        }
        if query.class != CLASS_IN {
            // Our data is all class IN; other classes are not ours to answer.
            out.clear_authoritative();
            out.set_rcode(RCODE_REFUSED);
            return Reply::Send(out.finish(0));
        }
        let view = zone.snapshot();
        let record_type = RecordType::from(query.record_type);
        match zone.answer(&view, &query.name, record_type, &mut out) {
            Ok(total) => {
                if out.is_truncated() && transport == Transport::Tcp {
                    warn_huge_answer(&query.name, record_type, total, out.answers());
                }
            }
            Err(Negative::ServFail) => out.set_rcode(RCODE_SERVFAIL),
            Err(negative) => {
                if negative == Negative::NxDomain {
                    out.set_rcode(RCODE_NXDOMAIN);
                }
                // The SOA tells resolvers how long to cache the absence (RFC 2308 §3).
                out.begin(Section::Authority);
                records::write(&mut out, zone.soa(&view));
            }
        }
        Reply::Send(out.finish(0))
    }
}

/// The zone `name` is in; the deepest one when zones nest.
fn zone_of<'z>(zones: &'z [Arc<ServedZone>], name: &WireName) -> Option<&'z ServedZone> {
    zones
        .iter()
        .filter(|zone| name.is_within(zone.zone().origin_wire()))
        .max_by_key(|zone| zone.zone().origin_wire().len())
        .map(|zone| &**zone)
}

/// An answer that does not fit even a TCP message goes out with TC, and no client can
/// get the rest: say so in the log, at most once per interval, with what was dropped.
pub fn warn_huge_answer(
    name: &dyn fmt::Display,
    record_type: RecordType,
    total: usize,
    sent: usize,
) {
    static THROTTLE: LogThrottle = LogThrottle::new(HUGE_ANSWER_WARNING_INTERVAL);
    let Some(suppressed) = THROTTLE.admit() else {
        return;
    };
    warn!(
        name = %name,
        r#type = %record_type,
        records = total,
        sent,
        similar_since_last_warning = suppressed,
        "answer does not fit a 65535-byte DNS message: sent truncated (TC); set dns.max_answer_records to answer large sets with a sample"
    );
}

/// The Catalog, for every query the fast path leaves: other opcodes and classes, names
/// outside our zones, zone transfers, signed or otherwise unusual messages.
#[derive(Clone)]
pub struct Fallback {
    /// Replaced whole when a reload changes the zones or the upstreams.
    catalog: Arc<ArcSwap<Catalog>>,
    /// Zone transfers, answered before the Catalog sees them (see `transfer`).
    transfers: Option<Arc<Transfers>>,
    /// DNS UPDATE, taken before the Catalog sees it (see `update`).
    updates: Option<Arc<Updates>>,
}

impl Fallback {
    pub fn new(catalog: Catalog) -> Fallback {
        Fallback {
            catalog: Arc::new(ArcSwap::from_pointee(catalog)),
            transfers: None,
            updates: None,
        }
    }

    /// Takes UPDATE requests with `updates`.
    pub fn with_updates(mut self, updates: Arc<Updates>) -> Fallback {
        self.updates = Some(updates);
        self
    }

    /// Answers zone transfer requests with `transfers`.
    pub fn with_transfers(mut self, transfers: Arc<Transfers>) -> Fallback {
        self.transfers = Some(transfers);
        self
    }

    /// The answer to a zone transfer request over TCP, if `packet` is one.
    pub fn transfer(&self, packet: &[u8], source: SocketAddr) -> Option<TransferReply> {
        self.transfers.as_ref()?.tcp(packet, source)
    }

    /// Answers with `catalog` from now on; requests under way finish with the old one.
    pub fn replace_catalog(&self, catalog: Catalog) {
        self.catalog.store(Arc::new(catalog));
    }

    /// The Catalog's response to `packet` from `source`, if it gives one. A message that
    /// does not parse gets FORMERR, as hickory's own server answers it.
    pub async fn answer(
        &self,
        packet: Vec<u8>,
        source: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        if transport == Transport::Udp {
            if let Some(reply) = self.transfers.as_ref().and_then(|t| t.udp(&packet, source)) {
                return Some(reply);
            }
        }
        if let Some(updates) = self.updates.as_ref().filter(|_| update::is_update(&packet)) {
            return match updates.answer(&packet, source).await {
                Some(response) => Some(response),
                None => format_error(&packet),
            };
        }
        let request = match Request::from_bytes(packet.clone(), source, transport.protocol()) {
            Ok(request) => request,
            Err(_) => return format_error(&packet),
        };
        let captured = Captured {
            transport,
            response: Arc::new(Mutex::new(None)),
        };
        let catalog = self.catalog.load_full();
        let failure = FORWARDING_FAILURE
            .scope(RefCell::new(None), async {
                catalog
                    .handle_request::<_, TokioTime>(&request, captured.clone())
                    .await;
                FORWARDING_FAILURE.with(|failure| failure.take())
            })
            .await;
        let response = captured.response.lock().ok()?.take()?;
        Some(match failure {
            Some(reason) => with_extended_error(response, &reason),
            None => response,
        })
    }
}

/// FORMERR for a message whose header is readable: same ID and opcode, no sections.
fn format_error(packet: &[u8]) -> Option<Vec<u8>> {
    let header = packet.get(..HEADER_LEN)?;
    let opcode = header[2] & 0x78;
    let mut response = vec![0; HEADER_LEN];
    response[..2].copy_from_slice(&header[..2]);
    response[2] = 0x80 | opcode;
    response[3] = 1;
    Some(response)
}

/// A `ResponseHandler` that keeps the encoded response for the caller to send.
#[derive(Clone)]
struct Captured {
    transport: Transport,
    response: Arc<Mutex<Option<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for Captured {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let limit = response_limit(self.transport, response.edns().map(|e| e.max_payload()));
        let mut bytes = Vec::with_capacity(CLASSIC_UDP_LIMIT);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(limit as u16);
        let info = response.destructive_emit(&mut encoder)?;
        if let Ok(mut slot) = self.response.lock() {
            *slot = Some(bytes);
        }
        Ok(info)
    }
}
