//! Registration listeners (Unix socket and TCP).
//!
//! Modelled on mini-redis `server.rs`: a semaphore bounds concurrent connections (a
//! client over the limit is told so and closed, never left in the backlog), accept
//! errors back off instead of killing the server, and every connection watches one
//! shutdown signal, which cuts them after a short grace whatever clients do.

use std::ffi::CString;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::warn;

use super::auth::{LiveTokens, Tokens};
use super::connection::{self, Shared};
use super::protocol;
use crate::config::{ConfigError, RegistrationConfig};
use crate::metrics;
use crate::registry::Registry;
use crate::throttle::LogThrottle;

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
    max_connections: usize,
}

/// How the registration listeners are set up.
pub struct RegistrationSettings {
    pub unix: Option<UnixSocket>,
    pub tcp: Option<SocketAddr>,
    /// Unix and TCP connections together, at most.
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// Shared with the reloader, which reads the file again on SIGHUP.
    pub tokens: Option<Arc<LiveTokens>>,
    pub max_line: usize,
}

/// The Unix socket's path and who may use it.
pub struct UnixSocket {
    pub path: PathBuf,
    pub mode: u32,
    /// Numeric owner and group to give the socket file, when set.
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

impl RegistrationSettings {
    /// The settings `registration:` asks for: reads the tokens file and looks up the
    /// socket's owner and group.
    pub fn from_config(config: &RegistrationConfig) -> Result<RegistrationSettings, ConfigError> {
        let setting = |key: &'static str, message: String| ConfigError::Setting { key, message };
        let tokens = match &config.tokens_file {
            Some(path) => Some(Arc::new(LiveTokens::from_pointee(Tokens::load(path)?))),
            None => None,
        };
        let unix = match &config.unix {
            Some(path) => Some(UnixSocket {
                path: path.clone(),
                mode: config
                    .socket_mode()
                    .map_err(|message| setting("registration.unix_mode", message))?,
                owner: config
                    .unix_owner
                    .as_deref()
                    .map(user_id)
                    .transpose()
                    .map_err(|message| setting("registration.unix_owner", message))?,
                group: config
                    .unix_group
                    .as_deref()
                    .map(group_id)
                    .transpose()
                    .map_err(|message| setting("registration.unix_group", message))?,
            }),
            None => None,
        };
        Ok(RegistrationSettings {
            unix,
            tcp: config.tcp,
            max_connections: config.max_connections,
            idle_timeout: Duration::from_secs(config.idle_timeout),
            tokens,
            max_line: config.max_line_bytes,
        })
    }
}

/// A user's id, from a number or a name.
fn user_id(name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let c_name = CString::new(name).map_err(|_| format!("{name:?} is not a user name"))?;
    // SAFETY: getpwnam reads the NUL-terminated name and returns a pointer to static
    // storage (or null), read at once, before any other call could reuse it; this runs
    // once, at start-up.
    let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
    if entry.is_null() {
        return Err(format!("no user {name:?}"));
    }
    // SAFETY: not null, so it points to a valid passwd record.
    Ok(unsafe { (*entry).pw_uid })
}

/// A group's id, from a number or a name.
fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let c_name = CString::new(name).map_err(|_| format!("{name:?} is not a group name"))?;
    // SAFETY: as for getpwnam in `user_id`.
    let entry = unsafe { libc::getgrnam(c_name.as_ptr()) };
    if entry.is_null() {
        return Err(format!("no group {name:?}"));
    }
    // SAFETY: not null, so it points to a valid group record.
    Ok(unsafe { (*entry).gr_gid })
}

/// Time the connections get to finish when the server stops, before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long a refused connection's one error line may take to go out.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

impl RegistrationServer {
    pub async fn start(
        registry: Registry,
        settings: RegistrationSettings,
    ) -> io::Result<RegistrationServer> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let context = Arc::new(Context {
            shared: Arc::new(Shared {
                registry,
                next_connection: AtomicU64::new(1),
                shutdown: shutdown_rx,
                idle_timeout: settings.idle_timeout,
                tokens: settings.tokens.clone(),
                max_line: settings.max_line,
            }),
            limit: Arc::new(Semaphore::new(settings.max_connections)),
            max_connections: settings.max_connections,
        });
        let mut tasks = JoinSet::new();
        let mut server = RegistrationServer {
            tasks: JoinSet::new(),
            shutdown,
            unix_addr: None,
            tcp_addr: None,
        };
        if let Some(socket) = &settings.unix {
            let listener = bind_unix(socket)?;
            server.unix_addr = Some(socket.path.clone());
            let context = context.clone();
            tasks.spawn(async move {
                accept_loop(context, || async {
                    listener.accept().await.map(|(s, _)| s)
                })
                .await
            });
        }
        if let Some(address) = settings.tcp {
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
                    // A peer that vanishes (host down, cable out) sends no FIN: keepalive
                    // probes notice within about a minute, and its ephemeral instances go.
                    let keepalive = TcpKeepalive::new()
                        .with_time(Duration::from_secs(30))
                        .with_interval(Duration::from_secs(10))
                        .with_retries(3);
                    SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
                    Ok(stream)
                })
                .await
            });
        }
        server.tasks = tasks;
        Ok(server)
    }

    /// Stops accepting, ends every connection (ephemeral instances go with them) and
    /// removes the Unix socket file. Connections get [`SHUTDOWN_GRACE`] to finish;
    /// whatever a client does, this returns then.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let finished = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, finished)
            .await
            .is_err()
        {
            warn!("registration connections did not finish in time; closing them");
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        if let Some(path) = &self.unix_addr {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds the Unix socket with its mode, owner and group. A socket file left by a
/// crashed svcdns is replaced; one that a running server answers on is not.
fn bind_unix(socket: &UnixSocket) -> io::Result<UnixListener> {
    let path = &socket.path;
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket.mode)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("setting the mode of {}: {e}", path.display()),
        )
    })?;
    if socket.owner.is_some() || socket.group.is_some() {
        std::os::unix::fs::chown(path, socket.owner, socket.group).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("giving {} its owner and group: {e}", path.display()),
            )
        })?;
    }
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
        let stream = tokio::select! {
            stream = accept() => stream,
            _ = shutdown.changed() => break,
        };
        match stream {
            Ok(stream) => {
                backoff = Duration::from_millis(10);
                match context.limit.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let shared = context.shared.clone();
                        connections.spawn(async move {
                            connection::serve(shared, stream).await;
                            drop(permit);
                        });
                    }
                    // Full: the client hears so at once and is closed, never left
                    // waiting in the backlog.
                    Err(_) => {
                        refuse(stream, context.max_connections);
                    }
                }
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

/// Sends a connection over the limit its one error line, then closes it.
fn refuse<S: AsyncWrite + Send + 'static>(stream: S, limit: usize) {
    static THROTTLE: LogThrottle = LogThrottle::new(10);
    if let Some(suppressed) = THROTTLE.admit() {
        warn!(
            max = limit,
            refused_since_last_warning = suppressed,
            "registration connection refused: registration.max_connections reached"
        );
    }
    metrics::registration_refused();
    let mut line = protocol::too_many_connections(limit)
        .to_string()
        .into_bytes();
    line.push(b'\n');
    tokio::spawn(async move {
        let mut stream = Box::pin(stream);
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
            stream.write_all(&line).await?;
            stream.shutdown().await
        })
        .await;
    });
}
