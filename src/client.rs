//! A client for the registration protocol, used by the CLI subcommands.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

/// Where the registration API listens, and the token to present there.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub address: Address,
    /// Sent as `{"op":"auth"}` first on every connection, when the server wants one.
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.address {
            Address::Unix(path) => write!(f, "{}", path.display()),
            Address::Tcp(address) => write!(f, "tcp {address}"),
        }
    }
}

/// A refusal from the server, with its stable code.
#[derive(Debug, Error)]
#[error("{code}: {message}")]
pub struct ServerError {
    pub code: String,
    pub message: String,
}

type BoxedRead = Box<dyn AsyncRead + Unpin + Send>;
type BoxedWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// Requests sent ahead of their replies by [`Connection::pipeline`]: within what the
/// server reads ahead (256), and small enough that neither side's socket buffer fills
/// while the other is not reading.
const PIPELINE_WINDOW: usize = 128;

/// One pipelined request's outcome: its reply, or the server's refusal.
pub type Outcome = std::result::Result<Value, ServerError>;

pub struct Connection {
    reader: BufReader<BoxedRead>,
    writer: BoxedWrite,
    line: String,
    endpoint: Endpoint,
}

impl Connection {
    /// Connects, and authenticates when the endpoint has a token.
    pub async fn open(endpoint: &Endpoint) -> Result<Connection> {
        let (reader, writer): (BoxedRead, BoxedWrite) = match &endpoint.address {
            Address::Unix(path) => {
                let stream = UnixStream::connect(path).await.with_context(|| {
                    format!(
                        "cannot connect to svcdns at {} (is `svcdns serve` running here?)",
                        path.display()
                    )
                })?;
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
            Address::Tcp(address) => {
                let stream = TcpStream::connect(address)
                    .await
                    .with_context(|| format!("cannot connect to svcdns at {address}"))?;
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
        };
        let mut connection = Connection {
            reader: BufReader::new(reader),
            writer,
            line: String::new(),
            endpoint: endpoint.clone(),
        };
        if let Some(token) = &endpoint.token {
            connection
                .request(&serde_json::json!({"op": "auth", "token": token}))
                .await
                .context("authenticating with the token given")?;
        }
        Ok(connection)
    }

    /// Sends one request and returns its reply, or the server's refusal as a
    /// [`ServerError`] inside the `anyhow::Error`.
    pub async fn request(&mut self, request: &Value) -> Result<Value> {
        let mut bytes = serde_json::to_vec(request)?;
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .await
            .context("sending the request")?;
        self.writer.flush().await?;
        match self.next_message().await? {
            Some(reply) => check(reply),
            None => match &self.endpoint.address {
                Address::Tcp(address) => bail!(
                    "{address} closed the connection without a reply: is it svcdns's registration port (registration.tcp, default 127.0.0.1:8054) and not its DNS port?"
                ),
                Address::Unix(_) => bail!("the server closed the connection without a reply"),
            },
        }
    }

    /// Sends `requests` pipelined, a window at a time, and returns each one's outcome
    /// in order: its reply or the server's refusal of it. Fails as a whole when the
    /// connection is lost. Many requests cost a few round trips, not one each.
    pub async fn pipeline(&mut self, requests: &[Value]) -> Result<Vec<Outcome>> {
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut bytes = Vec::new();
        for window in requests.chunks(PIPELINE_WINDOW) {
            bytes.clear();
            for request in window {
                serde_json::to_writer(&mut bytes, request)?;
                bytes.push(b'\n');
            }
            self.writer
                .write_all(&bytes)
                .await
                .context("sending requests")?;
            self.writer.flush().await.context("sending requests")?;
            for _ in window {
                let reply = self
                    .next_message()
                    .await?
                    .context("the server closed the connection")?;
                match check(reply).map_err(|e| e.downcast::<ServerError>()) {
                    Ok(reply) => outcomes.push(Ok(reply)),
                    Err(Ok(refusal)) if refusal.code == "idle_timeout" => {
                        return Err(refusal.into())
                    }
                    Err(Ok(refusal)) => outcomes.push(Err(refusal)),
                    Err(Err(other)) => return Err(other),
                }
            }
        }
        Ok(outcomes)
    }

    /// As [`Connection::pipeline`], but if the connection is gone (closed as idle, or
    /// broken), opens a new one and sends them all again, once. For requests that
    /// mean the same on any connection and may be repeated: those about leased or
    /// permanent instances, not ephemeral ones.
    pub async fn pipeline_reconnecting(&mut self, requests: &[Value]) -> Result<Vec<Outcome>> {
        match self.pipeline(requests).await {
            Err(e) if connection_lost(&e) => {
                *self = Connection::open(&self.endpoint)
                    .await
                    .context("connecting again")?;
                self.pipeline(requests).await
            }
            result => result,
        }
    }

    /// The next line from the server (for watch streams); `None` at end of stream.
    pub async fn next_message(&mut self) -> Result<Option<Value>> {
        self.line.clear();
        let read = self
            .reader
            .read_line(&mut self.line)
            .await
            .context("reading the reply")?;
        if read == 0 {
            return Ok(None);
        }
        let value = serde_json::from_str(self.line.trim_end())
            .context("the server sent a line that is not JSON")?;
        Ok(Some(value))
    }
}

/// Whether `error` means the connection is no longer usable, rather than a refusal
/// of the request.
fn connection_lost(error: &anyhow::Error) -> bool {
    match error.downcast_ref::<ServerError>() {
        Some(refusal) => refusal.code == "idle_timeout",
        None => true,
    }
}

/// Turns an `{"ok":false,…}` reply into an error.
pub fn check(reply: Value) -> Result<Value> {
    if reply.get("ok") == Some(&Value::Bool(true)) {
        return Ok(reply);
    }
    let error = reply.get("error");
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    Err(ServerError {
        code: field("code"),
        message: field("message"),
    }
    .into())
}
