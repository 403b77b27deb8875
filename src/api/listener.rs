//! Registration listeners (Unix socket and TCP).
//!
//! Modelled on mini-redis `server.rs`: a semaphore bounds concurrent connections,
//! accept errors back off instead of killing the server, and every connection watches
//! one shutdown signal.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::warn;

use super::connection::{self, Shared};
use crate::registry::Registry;

/// The running registration listeners.
pub struct RegistrationServer {
    tasks: JoinSet<()>,
    shutdown: watch::Sender<bool>,
    /// The Unix socket path (removed again at shutdown).
    pub unix_addr: Option<PathBuf>,
    pub tcp_addr: Option<SocketAddr>,
}

struct Context {
    shared: Arc<Shared>,
    /// Bounds concurrent connections; each connection task holds one permit.
    limit: Arc<Semaphore>,
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
            shared: Arc::new(Shared {
                registry,
                next_connection: AtomicU64::new(1),
                shutdown: shutdown_rx,
            }),
            limit: Arc::new(Semaphore::new(max_connections)),
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
    let mut shutdown = context.shared.shutdown.clone();
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
                let shared = context.shared.clone();
                connections.spawn(async move {
                    connection::serve(shared, stream).await;
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
