//! DNS over TCP (RFC 7766): our own accept loop, with a cap on connections, an idle
//! timeout, backoff when accepting fails (EMFILE must not spin a core), and pipelined
//! queries answered in order on each connection.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, warn};

use super::front::{Fallback, Reply, Responder, Transport};
use super::transfer::Reply as TransferReply;
use super::wire::Scratch;
use crate::metrics;

/// First pause after a failed accept; doubled on each failure in a row.
const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning about failed accepts or refused connections per this interval.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// Buffered bytes per connection and direction.
const CONNECTION_BUFFER: usize = 16 * 1024;

thread_local! {
    /// Scratch space for answers, one per runtime thread: connections borrow it only
    /// while an answer is written, never across an await.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// How TCP connections are served.
#[derive(Clone)]
pub struct TcpSettings {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// Longest a connection is served, however busy: no client keeps a slot forever.
    pub max_lifetime: Duration,
}

/// Accepts connections on `listener` until the task is aborted; aborting it also ends
/// every connection it started.
pub async fn serve(
    listener: TcpListener,
    responder: Arc<Responder>,
    fallback: Fallback,
    settings: TcpSettings,
) {
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let mut connections = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_START;
    let mut warnings = Throttle::default();
    loop {
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_START;
                accepted
            }
            Err(e) => {
                if warnings.ready() {
                    warn!(error = %e, pause_ms = backoff.as_millis() as u64, "accepting a DNS-over-TCP connection failed");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        // Over the cap the connection is closed at once: the client learns right away
        // and can retry, instead of waiting in the kernel's backlog.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::tcp_refused();
            if warnings.ready() {
                warn!(%peer, max = settings.max_connections, "DNS-over-TCP connection refused: dns.tcp_max_connections reached");
            }
            continue;
        };
        let responder = responder.clone();
        let fallback = fallback.clone();
        let limits = (settings.idle_timeout, settings.max_lifetime);
        connections.spawn(async move {
            if let Err(e) = connection(stream, peer, &responder, &fallback, limits).await {
                debug!(%peer, error = %e, "DNS-over-TCP connection ended");
            }
            drop(permit);
        });
    }
}

/// Serves one connection: reads queries as they come, answers each in order, and
/// flushes when no further query is already waiting (so a pipelined burst goes out in
/// few writes). Ends on EOF, after `idle_timeout` without a query, or when the client
/// does not take its responses within it.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    responder: &Responder,
    fallback: &Fallback,
    (idle_timeout, max_lifetime): (Duration, Duration),
) -> io::Result<()> {
    let closes_at = Instant::now() + max_lifetime;
    stream.set_nodelay(true)?;
    let (reader, writer) = stream.into_split();
    let mut reader = BufReader::with_capacity(CONNECTION_BUFFER, reader);
    let mut writer = BufWriter::with_capacity(CONNECTION_BUFFER, writer);
    let mut query = Vec::new();
    let mut response = Vec::new();
    loop {
        // The wait for the next query ends at the idle timeout or the end of the
        // connection's lifetime, whichever comes first.
        let wait = idle_timeout.min(closes_at.saturating_duration_since(Instant::now()));
        let len = match timeout(wait, reader.read_u16()).await {
            // `{"` starts a JSON line: a registration client sent to the DNS port by
            // mistake. Closing at once lets it fail now instead of after the timeout.
            Ok(Ok(len)) if len.to_be_bytes() == *b"{\"" => {
                debug!(%peer, "a registration request on the DNS port; closing");
                return Ok(());
            }
            Ok(Ok(len)) => usize::from(len),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        query.resize(len, 0);
        timeout(idle_timeout, reader.read_exact(&mut query))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "query not received in time"))??;
        let received_at = Instant::now();

        response.clear();
        let to_catalog = SCRATCH.with(|scratch| {
            match responder.respond(&query, Transport::Tcp, &mut scratch.borrow_mut()) {
                Reply::Send(bytes) => {
                    response.extend_from_slice(bytes);
                    false
                }
                Reply::Fallback => true,
                Reply::Ignore => false,
            }
        });
        if to_catalog {
            if let Some(transfer) = fallback.transfer(&query, peer) {
                send_transfer(&mut writer, transfer, received_at, idle_timeout).await?;
                continue;
            }
            if let Some(bytes) = fallback.answer(query.clone(), peer, Transport::Tcp).await {
                response = bytes;
            }
        }
        if !response.is_empty() {
            metrics::answered(&response, Transport::Tcp, received_at.elapsed());
        }
        let flush = reader.buffer().is_empty();
        send_in_time(&mut writer, &response, flush, idle_timeout).await?;
    }
}

/// Sends the messages of a zone transfer as they are made, then flushes. A client
/// that takes none of them for `idle_timeout` is given up.
async fn send_transfer<W: AsyncWriteExt + Unpin>(
    writer: &mut W,
    transfer: TransferReply,
    received_at: Instant,
    idle_timeout: Duration,
) -> io::Result<()> {
    let mut messages = match transfer {
        TransferReply::Single(message) => {
            metrics::answered(&message, Transport::Tcp, received_at.elapsed());
            return send_in_time(writer, &message, true, idle_timeout).await;
        }
        TransferReply::Stream(messages) => messages,
    };
    let mut first = true;
    while let Some(message) = messages.recv().await {
        if first {
            metrics::answered(&message, Transport::Tcp, received_at.elapsed());
            first = false;
        }
        send_in_time(writer, &message, false, idle_timeout).await?;
    }
    send_in_time(writer, &[], true, idle_timeout).await
}

async fn send_in_time<W: AsyncWriteExt + Unpin>(
    writer: &mut W,
    response: &[u8],
    flush: bool,
    idle_timeout: Duration,
) -> io::Result<()> {
    timeout(idle_timeout, send(writer, response, flush))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "responses not taken in time"))?
}

/// Writes `response` with its length prefix (none when it is empty), and flushes when
/// `flush`.
async fn send<W: AsyncWriteExt + Unpin>(
    writer: &mut W,
    response: &[u8],
    flush: bool,
) -> io::Result<()> {
    if !response.is_empty() {
        // Responses are at most 65535 bytes (the writer's and hickory's TCP limit).
        let len = u16::try_from(response.len()).unwrap_or(u16::MAX);
        writer.write_all(&len.to_be_bytes()).await?;
        writer.write_all(&response[..usize::from(len)]).await?;
    }
    if flush {
        writer.flush().await?;
    }
    Ok(())
}

/// Lets a repeated warning through at most once per [`WARNING_INTERVAL`].
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    fn ready(&mut self) -> bool {
        let now = Instant::now();
        let ready = self
            .last
            .is_none_or(|last| now.duration_since(last) >= WARNING_INTERVAL);
        if ready {
            self.last = Some(now);
        }
        ready
    }
}
