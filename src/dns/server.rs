//! Binding the DNS listeners: UDP and TCP on the same port of every listen address,
//! served by our own front (`udp`, `tcp`) with hickory's `Catalog` behind it.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::front::{Fallback, Responder};
use super::rate_limit::RateLimitSettings;
use super::tcp::{self, TcpSettings};
use super::udp::{self, UdpFront};

/// Tries to find a port free for both UDP and TCP when the configured port is 0.
const EPHEMERAL_PORT_TRIES: usize = 16;

/// A running DNS server and the addresses it actually listens on (port 0 resolved).
pub struct DnsServer {
    udp: UdpFront,
    tcp: Vec<JoinHandle<()>>,
    pub local_addrs: Vec<SocketAddr>,
}

/// How the DNS listeners run.
pub struct DnsSettings {
    pub listen: Vec<SocketAddr>,
    pub udp_threads: usize,
    pub tcp: TcpSettings,
    /// Response-rate limiting over UDP; `None`: off.
    pub rate_limit: Option<RateLimitSettings>,
}

impl DnsServer {
    /// Binds every address and starts serving. Must run inside a tokio runtime, which
    /// also runs the TCP connections and the Catalog.
    pub async fn start(
        settings: &DnsSettings,
        responder: Arc<Responder>,
        fallback: Fallback,
    ) -> io::Result<DnsServer> {
        let mut local_addrs = Vec::with_capacity(settings.listen.len());
        let mut udp_sockets = Vec::new();
        let mut tcp = Vec::new();
        for address in &settings.listen {
            let (udp, listener) = bind_pair(*address, settings.udp_threads).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen for DNS on {address}: {e}"))
            })?;
            local_addrs.push(listener.local_addr()?);
            udp_sockets.extend(udp);
            tcp.push(tokio::spawn(tcp::serve(
                listener,
                responder.clone(),
                fallback.clone(),
                settings.tcp.clone(),
            )));
        }
        let shared = udp::Shared::new(
            responder,
            fallback,
            tokio::runtime::Handle::current(),
            settings.rate_limit,
        );
        let udp = UdpFront::start(udp_sockets, shared)?;
        Ok(DnsServer {
            udp,
            tcp,
            local_addrs,
        })
    }

    /// Stops the listeners and waits for the UDP threads to finish.
    pub async fn shutdown(self) -> io::Result<()> {
        for listener in &self.tcp {
            listener.abort();
        }
        let udp = self.udp;
        tokio::task::spawn_blocking(move || udp.shutdown())
            .await
            .map_err(io::Error::other)
    }
}

/// Binds the UDP sockets and the TCP listener of one address on one port. TCP is bound
/// without SO_REUSEPORT, so a second server on the same port fails here instead of
/// silently sharing the UDP traffic. With port 0 the kernel picks the UDP port and TCP
/// takes the same number; if another program holds it for TCP, try again.
fn bind_pair(address: SocketAddr, udp_threads: usize) -> io::Result<(Vec<UdpSocket>, TcpListener)> {
    let mut last_error = None;
    let tries = if address.port() == 0 {
        EPHEMERAL_PORT_TRIES
    } else {
        1
    };
    for _ in 0..tries {
        let udp = udp::bind(address, udp_threads)?;
        let port = udp.first().map_or(address.port(), |s| {
            s.local_addr().map_or(address.port(), |a| a.port())
        });
        match std::net::TcpListener::bind(SocketAddr::new(address.ip(), port)) {
            Ok(listener) => {
                listener.set_nonblocking(true)?;
                return Ok((udp, TcpListener::from_std(listener)?));
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free port")))
}
