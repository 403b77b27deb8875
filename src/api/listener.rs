//! Registration listeners (Unix socket and TCP) and the per-connection loop.
//!
//! Modelled on mini-redis `server.rs`: a semaphore bounds concurrent connections,
//! accept errors back off instead of killing the server, and every connection watches
//! one shutdown signal.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::protocol::{handle_line, too_large, wanted, Outcome, Session};
use crate::registry::{Event, Label, Registry};

/// Longest request line accepted. A registration is a few hundred bytes; 64 KiB leaves
/// room for large metadata while bounding what one client can make us buffer.
pub const MAX_LINE: usize = 64 * 1024;

/// The running registration listeners.
pub struct RegistrationServer {
    tasks: JoinSet<()>,
    shutdown: watch::Sender<bool>,
    /// The Unix socket path (removed again at shutdown).
    pub unix_addr: Option<PathBuf>,
    pub tcp_addr: Option<SocketAddr>,
}

struct Context {
    registry: Registry,
    /// Bounds concurrent connections; each connection task holds one permit.
    limit: Arc<Semaphore>,
    next_connection: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

impl RegistrationServer {
    pub async fn start(
        registry: Registry,
        unix: Option<&Path>,
        tcp: Option<SocketAddr>,
        max_connections: usize,
    ) -> io::Result<RegistrationServer> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let context = Arc::new(Context {
            registry,
            limit: Arc::new(Semaphore::new(max_connections)),
            next_connection: AtomicU64::new(1),
            shutdown: shutdown_rx,
        });
        let mut tasks = JoinSet::new();
        let mut server = RegistrationServer {
            tasks: JoinSet::new(),
            shutdown,
            unix_addr: None,
            tcp_addr: None,
        };
        if let Some(path) = unix {
            let listener = bind_unix(path)?;
            server.unix_addr = Some(path.to_path_buf());
            let context = context.clone();
            tasks.spawn(async move {
                accept_loop(context, || async {
                    listener.accept().await.map(|(s, _)| s)
                })
                .await
            });
        }
        if let Some(address) = tcp {
            if !address.ip().is_loopback() {
                warn!(%address, "the registration port is reachable from other hosts and has no authentication");
            }
            let listener = TcpListener::bind(address).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen for registrations on {address}: {e}"),
                )
            })?;
            server.tcp_addr = Some(listener.local_addr()?);
            tasks.spawn(async move {
                accept_loop(context, || async {
                    let (stream, _) = listener.accept().await?;
                    // Responses are small and latency matters more than packet count.
                    stream.set_nodelay(true)?;
                    Ok(stream)
                })
                .await
            });
        }
        server.tasks = tasks;
        Ok(server)
    }

    /// Stops accepting, ends every connection (ephemeral instances go with them) and
    /// removes the Unix socket file.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        if let Some(path) = &self.unix_addr {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds the Unix socket with mode 0660. A socket file left by a crashed svcdns is
/// replaced; one that a running server answers on is not.
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running server", path.display()),
            ));
        }
        std::fs::remove_file(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot remove stale socket {}: {e}", path.display()),
            )
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", path.display()),
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

async fn accept_loop<S, F, Fut>(context: Arc<Context>, mut accept: F)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<S>>,
{
    let mut connections = JoinSet::new();
    let mut shutdown = context.shutdown.clone();
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            permit = context.limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let stream = tokio::select! {
            stream = accept() => stream,
            _ = shutdown.changed() => break,
        };
        match stream {
            Ok(stream) => {
                backoff = Duration::from_millis(10);
                let context = context.clone();
                connections.spawn(async move {
                    serve_connection(&context, stream).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Typically EMFILE: wait for connections to close instead of spinning.
                warn!(error = %e, "accepting a registration connection failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
        // Reap finished connection tasks so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

/// Serves one connection: requests in order, replies in order, replies to pipelined
/// requests written together; then releases the connection's ephemeral instances.
async fn serve_connection<S: AsyncRead + AsyncWrite>(context: &Context, stream: S) {
    let (read, write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    let mut writer = BufWriter::new(write);
    let mut session = Session {
        id: context.next_connection.fetch_add(1, Ordering::Relaxed),
        ephemeral: Vec::new(),
    };
    let mut shutdown = context.shutdown.clone();
    let mut line = Vec::new();
    debug!(connection = session.id, "registration connection opened");
    let result: io::Result<()> = async {
        loop {
            let read = tokio::select! {
                read = read_line(&mut reader, &mut line, MAX_LINE) => read?,
                _ = shutdown.changed() => return Ok(()),
            };
            let outcome = match read {
                Line::End => return Ok(()),
                Line::TooLong => Outcome::Reply(too_large(MAX_LINE)),
                Line::Complete if line.trim_ascii().is_empty() => continue,
                Line::Complete => handle_line(&context.registry, &mut session, line.trim_ascii()),
            };
            match outcome {
                Outcome::Reply(reply) => {
                    write_json(&mut writer, &reply).await?;
                    if reader.buffer().is_empty() {
                        writer.flush().await?;
                    }
                }
                Outcome::Watch {
                    reply,
                    filter,
                    events,
                } => {
                    write_json(&mut writer, &reply).await?;
                    writer.flush().await?;
                    return stream_events(&mut reader, &mut writer, filter, events, &mut shutdown)
                        .await;
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        debug!(connection = session.id, error = %e, "registration connection ended with an error");
    }
    if !session.ephemeral.is_empty() {
        info!(
            connection = session.id,
            count = session.ephemeral.len(),
            "connection closed: removing its ephemeral instances"
        );
        context
            .registry
            .release_connection(session.id, &session.ephemeral);
    }
}

/// Sends change events to a watcher until it disconnects. Lines it sends meanwhile are
/// read and ignored, which is how its disconnect is noticed.
async fn stream_events<R, W>(
    reader: &mut R,
    writer: &mut W,
    filter: Option<Label>,
    mut events: broadcast::Receiver<Event>,
    shutdown: &mut watch::Receiver<bool>,
) -> io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut ignored = Vec::new();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) if wanted(&filter, &event) => {
                    write_json(writer, &serde_json::to_value(&event).unwrap_or(Value::Null)).await?;
                    writer.flush().await?;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let reply = serde_json::json!({"ok": false, "op": "watch", "error": {
                        "code": "watch_lagged",
                        "message": format!("the watcher fell {missed} events behind; watch again to resynchronise"),
                    }});
                    write_json(writer, &reply).await?;
                    writer.flush().await?;
                    return Ok(());
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            read = read_line(reader, &mut ignored, MAX_LINE) => {
                if matches!(read?, Line::End) {
                    return Ok(());
                }
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

async fn write_json<W: AsyncWrite + Unpin>(writer: &mut W, value: &Value) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    writer.write_all(&bytes).await
}

enum Line {
    Complete,
    /// The line exceeded the limit; it was read to its end and dropped.
    TooLong,
    End,
}

/// Reads one line into `out` (without the newline), never buffering more than `max`
/// bytes of it. A last line without a newline still counts.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    out: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    out.clear();
    let mut too_long = false;
    let mut seen_any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (too_long, seen_any) {
                (true, _) => Line::TooLong,
                (false, true) => Line::Complete,
                (false, false) => Line::End,
            });
        }
        seen_any = true;
        let (chunk, complete) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..end], true),
            None => (available, false),
        };
        if !too_long {
            if out.len() + chunk.len() > max {
                too_long = true;
                out.clear();
            } else {
                out.extend_from_slice(chunk);
            }
        }
        let consumed = chunk.len() + usize::from(complete);
        reader.consume(consumed);
        if complete {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}
