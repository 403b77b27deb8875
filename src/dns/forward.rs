//! Forwarding: names outside our zones go to upstream resolvers (`forward:` in the
//! configuration, DESIGN §3), so that svcdns can be the only nameserver of a host or a
//! container.
//!
//! The work is hickory's: its forwarding zone handler and resolver send UDP and retry
//! over TCP on TC, fail over between upstreams, and cache answers for their TTL,
//! negative ones included. This module configures it, logs upstream failures, and says
//! why in an Extended DNS Error (RFC 8914) when every upstream failed.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{LowerName, RecordType, TSigResponseContext};
use hickory_server::dnssec::NxProofKind;
use hickory_server::resolver::config::{ConnectionConfig, NameServerConfig, ResolverOpts};
use hickory_server::server::{Request, RequestInfo};
use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, LookupControlFlow, LookupError, LookupOptions, Nsec3QueryInfo,
    ZoneHandler, ZoneType,
};
use tracing::{info, warn};

use crate::config::{self, ConfigError};
use crate::metrics;
use crate::throttle::LogThrottle;

/// At most one warning about failing upstreams per this many seconds.
const FAILURE_WARNING_INTERVAL: u64 = 10;
/// Answers kept in the forwarding cache.
const CACHE_SIZE: u64 = 10_000;
/// RFC 8914 option code, and the INFO-CODE for "No Reachable Authority".
const EDNS_EXTENDED_ERROR: u16 = 15;
const EDE_NO_REACHABLE_AUTHORITY: u16 = 22;

tokio::task_local! {
    /// Why forwarding the request being answered failed, for its Extended DNS Error.
    pub static FORWARDING_FAILURE: RefCell<Option<String>>;
}

/// Upstream resolvers and how long to wait for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstreams {
    pub addresses: Vec<SocketAddr>,
    pub timeout: Duration,
    /// Configured upstreams that are svcdns's own listen addresses, left out.
    pub ourselves: Vec<SocketAddr>,
}

impl Upstreams {
    /// `upstreams`, followed by the nameservers of `resolv_conf` (port 53), without
    /// repeats and without `ours`: forwarding to ourselves would loop.
    pub fn new(
        upstreams: &[SocketAddr],
        resolv_conf: Option<&Path>,
        timeout: Duration,
        ours: &[SocketAddr],
    ) -> Result<Upstreams, ConfigError> {
        let mut addresses: Vec<SocketAddr> = upstreams.to_vec();
        if let Some(path) = resolv_conf {
            let text = std::fs::read(path).map_err(|cause| ConfigError::Io {
                path: path.to_path_buf(),
                cause,
            })?;
            let (config, _) = hickory_server::resolver::system_conf::parse_resolv_conf(text)
                .map_err(|e| ConfigError::in_file(path, format!("not a resolv.conf: {e}")))?;
            addresses.extend(
                config
                    .name_servers()
                    .iter()
                    .map(|server| SocketAddr::new(server.ip, 53)),
            );
        }
        let mut unique = Vec::with_capacity(addresses.len());
        let mut ourselves = Vec::new();
        for address in addresses {
            let is_ours = ours.iter().any(|own| {
                own.port() == address.port()
                    && (own.ip() == address.ip()
                        || (own.ip().is_unspecified() && is_local(address.ip())))
            });
            if is_ours {
                ourselves.push(address);
            } else if !unique.contains(&address) {
                unique.push(address);
            }
        }
        Ok(Upstreams {
            addresses: unique,
            timeout,
            ourselves,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }
}

fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

/// The forwarding zone handler for the root, with our logging around hickory's.
pub struct Forwarder {
    inner: ForwardZoneHandler,
    upstreams: String,
}

impl Forwarder {
    /// The forwarder that `forward:` asks for (`ours`: svcdns's own DNS addresses,
    /// left out of the upstreams), or `None` when it names no upstream.
    pub fn from_config(
        config: &config::ForwardConfig,
        ours: &[SocketAddr],
    ) -> Result<Option<Forwarder>, ConfigError> {
        let upstreams = Upstreams::new(
            &config.upstreams,
            config.from_resolv_conf.as_deref(),
            Duration::from_secs(config.timeout),
            ours,
        )?;
        if !upstreams.ourselves.is_empty() {
            warn!(
                left_out = ?upstreams.ourselves,
                "forward upstreams that are svcdns's own DNS address are left out: forwarding to ourselves would loop"
            );
        }
        if upstreams.is_empty() {
            return Ok(None);
        }
        let forwarder = Forwarder::new(&upstreams).map_err(|message| ConfigError::Setting {
            key: "forward",
            message,
        })?;
        info!(upstreams = ?upstreams.addresses, "names outside our zones are forwarded");
        Ok(Some(forwarder))
    }

    pub fn new(upstreams: &Upstreams) -> Result<Forwarder, String> {
        let name_servers = upstreams
            .addresses
            .iter()
            .map(|address| {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut connection| {
                        connection.port = address.port();
                        connection
                    })
                    .collect();
                NameServerConfig::new(address.ip(), true, connections)
            })
            .collect();
        let mut options = ResolverOpts::default();
        options.timeout = upstreams.timeout;
        // One try per upstream: failover is trying the next one, not waiting again.
        options.attempts = 1;
        options.cache_size = CACHE_SIZE;
        // Names are forwarded as asked, never completed with a search list.
        options.ndots = 0;
        options.use_hosts_file = hickory_server::resolver::config::ResolveHosts::Never;
        options.preserve_intermediates = true;
        let config = ForwardConfig {
            name_servers,
            options: Some(options),
        };
        let inner = ForwardZoneHandler::builder_tokio(config).build()?;
        let upstreams = upstreams
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Forwarder { inner, upstreams })
    }

    /// Logs a failure (at most once per interval) and records it for the response.
    fn failed(&self, name: &LowerName, record_type: RecordType, error: &LookupError) {
        let reason = format!("no upstream answered ({}): {error}", self.upstreams);
        let _ = FORWARDING_FAILURE.try_with(|slot| *slot.borrow_mut() = Some(reason));
        static THROTTLE: LogThrottle = LogThrottle::new(FAILURE_WARNING_INTERVAL);
        let Some(suppressed) = THROTTLE.admit() else {
            return;
        };
        warn!(
            name = %name,
            r#type = %record_type,
            upstreams = %self.upstreams,
            error = %error,
            similar_since_last_warning = suppressed,
            "forwarding failed: SERVFAIL"
        );
    }
}

#[async_trait]
impl ZoneHandler for Forwarder {
    fn zone_type(&self) -> ZoneType {
        ZoneType::External
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::Deny
    }

    fn origin(&self) -> &LowerName {
        self.inner.origin()
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        request_info: Option<&RequestInfo<'_>>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        self.inner
            .lookup(name, rtype, request_info, lookup_options)
            .await
    }

    async fn search(
        &self,
        request: &Request,
        lookup_options: LookupOptions,
    ) -> (LookupControlFlow<AuthLookup>, Option<TSigResponseContext>) {
        metrics::forwarded();
        let (flow, signature) = self.inner.search(request, lookup_options).await;
        if let LookupControlFlow::Continue(Err(error)) | LookupControlFlow::Break(Err(error)) =
            &flow
        {
            if !error.is_nx_domain() && !error.is_no_records_found() {
                metrics::forward_failed();
                if let Ok(info) = request.request_info() {
                    self.failed(info.query.name(), info.query.query_type(), error);
                }
            }
        }
        (flow, signature)
    }

    async fn nsec_records(
        &self,
        name: &LowerName,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        self.inner.nsec_records(name, lookup_options).await
    }

    async fn nsec3_records(
        &self,
        info: Nsec3QueryInfo<'_>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        self.inner.nsec3_records(info, lookup_options).await
    }

    fn nx_proof_kind(&self) -> Option<&NxProofKind> {
        self.inner.nx_proof_kind()
    }
}

/// Adds an Extended DNS Error saying `reason` to a SERVFAIL response with EDNS; other
/// responses are returned as they are.
pub fn with_extended_error(response: Vec<u8>, reason: &str) -> Vec<u8> {
    let Ok(mut message) = Message::from_vec(&response) else {
        return response;
    };
    if message.metadata.response_code != ResponseCode::ServFail {
        return response;
    }
    let Some(edns) = message.edns.as_mut() else {
        return response;
    };
    let mut payload = EDE_NO_REACHABLE_AUTHORITY.to_be_bytes().to_vec();
    // EXTRA-TEXT is for people; keep it short enough for any UDP response.
    payload.extend(reason.bytes().take(200));
    edns.options_mut()
        .insert(EdnsOption::Unknown(EDNS_EXTENDED_ERROR, payload));
    message.to_vec().unwrap_or(response)
}
