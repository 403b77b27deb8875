//! The hickory-server `ZoneHandler` of a [`Zone`]: routes a query to the zone's
//! prepared answers, sized for the transport it came on.

use async_trait::async_trait;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, LowerName, RecordType, TSigResponseContext};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestInfo};
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, LookupControlFlow, LookupError, LookupOptions, ZoneHandler,
    ZoneTransfer, ZoneType,
};

use super::zone::{ResponseRoom, Zone};

/// Size of an OPT record without options (RFC 6891 §6.1.2): the Catalog adds one to
/// every response to an EDNS query.
const OPT_RECORD_LEN: usize = 11;
/// Without EDNS a UDP response may have 512 bytes (RFC 1035 §4.2.1).
const CLASSIC_UDP_LIMIT: usize = 512;
/// Largest DNS message over TCP (RFC 1035 §4.2.2).
const TCP_LIMIT: usize = 65_535;

#[async_trait]
impl ZoneHandler for Zone {
    fn zone_type(&self) -> ZoneType {
        ZoneType::Primary
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::Deny
    }

    fn origin(&self) -> &LowerName {
        self.lower_origin()
    }

    /// Used by the Catalog for the SOA of negative answers and the NS of SOA answers.
    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        _request_info: Option<&RequestInfo<'_>>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        self.answer(name, rtype, None, lookup_options)
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
        let room = response_room(request);
        (
            self.answer(
                query.name(),
                query.query_type(),
                Some(&room),
                lookup_options,
            ),
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

    /// Zone transfers are refused, as Knot does by default: the registry is the source
    /// of truth, and a transferred copy would go stale within a lease.
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

/// How large the response to `request` may be, and what to keep free in it.
fn response_room(request: &Request) -> ResponseRoom {
    let limit = match request.protocol() {
        Protocol::Udp => request.edns.as_ref().map_or(CLASSIC_UDP_LIMIT, |edns| {
            usize::from(edns.max_payload()).max(CLASSIC_UDP_LIMIT)
        }),
        _ => TCP_LIMIT,
    };
    // The OPT record the Catalog adds to answers to EDNS queries.
    let slack = if request.edns.is_some() {
        OPT_RECORD_LEN
    } else {
        0
    };
    ResponseRoom { limit, slack }
}
