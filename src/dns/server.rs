//! Binding the DNS listeners: UDP and TCP on the same port of every listen address.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::zone_handler::Catalog;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

/// Responses queued per DNS/TCP connection (hickory-dns's default).
const TCP_RESPONSE_BUFFER: usize = 32;
/// Tries to find a port free for both UDP and TCP when the configured port is 0.
const EPHEMERAL_PORT_TRIES: usize = 16;

/// A running DNS server and the addresses it actually listens on (port 0 resolved).
pub struct DnsServer {
    server: Server<Catalog>,
    pub local_addrs: Vec<SocketAddr>,
}

impl DnsServer {
    /// Binds every address and starts serving `catalog`. Must run inside a tokio runtime.
    pub async fn start(
        listen: &[SocketAddr],
        catalog: Catalog,
        tcp_idle_timeout: Duration,
    ) -> io::Result<DnsServer> {
        let mut server = Server::new(catalog);
        let mut local_addrs = Vec::with_capacity(listen.len());
        for address in listen {
            let (udp, tcp) = bind_pair(*address).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen for DNS on {address}: {e}"))
            })?;
            local_addrs.push(udp.local_addr()?);
            server.register_socket(udp);
            server.register_listener(tcp, tcp_idle_timeout, TCP_RESPONSE_BUFFER);
        }
        Ok(DnsServer {
            server,
            local_addrs,
        })
    }

    /// Stops the listeners and waits for them to finish.
    pub async fn shutdown(mut self) -> io::Result<()> {
        self.server
            .shutdown_gracefully()
            .await
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

/// Binds UDP and TCP on one port. With port 0 the kernel picks the UDP port and TCP
/// takes the same number; if another program holds it for TCP, try again.
async fn bind_pair(address: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    if address.port() != 0 {
        return Ok((
            UdpSocket::bind(address).await?,
            TcpListener::bind(address).await?,
        ));
    }
    let mut last_error = None;
    for _ in 0..EPHEMERAL_PORT_TRIES {
        let udp = UdpSocket::bind(address).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free port")))
}
