//! One registration connection: requests read and queued at the registry as they
//! arrive, replies written in request order as their acknowledgements come back.
//!
//! Reading and replying are two halves joined by a bounded queue of pending replies,
//! so a client may pipeline up to [`PIPELINE_DEPTH`] requests; the registry's writer
//! then applies them in few batches, which is what makes one connection fast. A client
//! that stops reading replies stops being read once the queue is full.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::auth::LiveTokens;
use super::protocol::{self, handle_line, too_large, PendingReply, Session};
use crate::registry::{Label, Registry, WatchItem};

/// Requests a connection may have in flight before its replies are read.
pub const PIPELINE_DEPTH: usize = 256;

/// Longest a reply may wait for the client to take it. A client that stops reading
/// (a watcher with a full buffer, a pipeliner that never reads) is disconnected
/// rather than holding a task, a connection slot and the shutdown forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection shares.
pub struct Shared {
    pub registry: Registry,
    pub next_connection: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
    /// Connections that hold no ephemeral instance and no watch close after this long
    /// without a request.
    pub idle_timeout: Duration,
    /// Set when `registration.tokens_file` is: connections must authenticate.
    pub tokens: Option<Arc<LiveTokens>>,
    /// Longest request line accepted (`registration.max_line_bytes`). A registration
    /// is a few hundred bytes; the bound is what one client can make us buffer.
    pub max_line: usize,
}

/// Serves one connection until the client closes it, goes idle, stops taking replies,
/// or the server shuts down; then releases the ephemeral instances it registered.
pub async fn serve<S: AsyncRead + AsyncWrite>(shared: Arc<Shared>, stream: S) {
    let connection = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    debug!(connection, "registration connection opened");
    let (read, write) = tokio::io::split(stream);
    let (queue, pending) = mpsc::channel(PIPELINE_DEPTH);
    let (reading_done, reading_done_rx) = watch::channel(false);
    let mut session = Session::new(connection, shared.tokens.clone());
    let reading = async {
        let result = read_requests(&shared, &mut session, read, queue).await;
        let _ = reading_done.send(true);
        result
    };
    let replying = write_replies(&shared, write, pending, reading_done_rx);
    let (read_result, write_result) = tokio::join!(reading, replying);
    for error in [read_result.err(), write_result.err()]
        .into_iter()
        .flatten()
    {
        debug!(connection, %error, "registration connection ended with an error");
    }
    if session.registered {
        shared.registry.release_connection(connection);
    }
}

/// Reads request lines and queues their pending replies, until the client closes its
/// side, goes idle, the replying half stops, or the server shuts down. After a
/// `watch`, lines are read and ignored: that is how the end of a watcher is noticed.
async fn read_requests<R: AsyncRead + Unpin>(
    shared: &Shared,
    session: &mut Session,
    read: R,
    queue: mpsc::Sender<PendingReply>,
) -> io::Result<()> {
    let mut lines = LineReader::new(read, shared.max_line);
    let mut shutdown = shared.shutdown.clone();
    let mut watching = false;
    loop {
        // A connection that holds ephemeral instances or a watch lives as long as its
        // client: its end is noticed by EOF (and TCP keepalive), not by silence.
        let idle_limit = (!watching && !session.holds_ephemeral).then_some(shared.idle_timeout);
        let line = tokio::select! {
            line = lines.next() => line?,
            _ = sleep_or_never(idle_limit) => {
                let reply = protocol::idle_timeout(shared.idle_timeout);
                let _ = queue.send(PendingReply::Ready(reply)).await;
                return Ok(());
            }
            _ = queue.closed() => return Ok(()),
            _ = stopping(&mut shutdown) => return Ok(()),
        };
        let pending = match line {
            Line::End => return Ok(()),
            _ if watching => continue,
            Line::TooLong => PendingReply::Ready(too_large(shared.max_line)),
            Line::Complete(text) if text.trim_ascii().is_empty() => continue,
            Line::Complete(text) => handle_line(&shared.registry, session, text.trim_ascii()),
        };
        watching = matches!(pending, PendingReply::Watch(_));
        tokio::select! {
            sent = queue.send(pending) => if sent.is_err() { return Ok(()) },
            _ = stopping(&mut shutdown) => return Ok(()),
        }
    }
}

/// Resolves once `flag` is (or already was) set.
async fn stopping(flag: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, never held across an await.
    let _ = flag.wait_for(|set| *set).await.map(|_| ());
}

/// Sleeps for `limit`, or forever when there is none.
async fn sleep_or_never(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

/// Runs one write to the client, failing it after [`WRITE_TIMEOUT`] or as soon as the
/// server shuts down.
async fn bounded<T>(
    shutdown: &mut watch::Receiver<bool>,
    write: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::select! {
        result = tokio::time::timeout(WRITE_TIMEOUT, write) => result.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, "the client did not take its replies")
        })?,
        _ = stopping(shutdown) => Err(io::Error::other("shutting down")),
    }
}

/// Writes replies in request order, flushing whenever no more are ready.
async fn write_replies<W: AsyncWrite + Unpin>(
    shared: &Shared,
    write: W,
    mut pending: mpsc::Receiver<PendingReply>,
    reading_done: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut out = BufWriter::new(write);
    let mut shutdown = shared.shutdown.clone();
    loop {
        let next = tokio::select! {
            next = pending.recv() => next,
            _ = stopping(&mut shutdown) => return Ok(()),
        };
        let Some(next) = next else {
            return bounded(&mut shutdown, out.flush()).await;
        };
        let line = match next {
            PendingReply::Ready(reply) => json_line(&reply)?,
            PendingReply::Change { op, key, ack } => {
                let reply = tokio::select! {
                    reply = protocol::change_reply(op, key, ack) => reply,
                    _ = stopping(&mut shutdown) => return Ok(()),
                };
                json_line(&reply)?
            }
            PendingReply::List(filter) => {
                let snapshot = shared.registry.snapshot();
                off_thread(move || protocol::listing_line("list", &snapshot, filter.as_ref())).await
            }
            PendingReply::Snapshot => {
                let snapshot = shared.registry.snapshot();
                off_thread(move || protocol::snapshot_line(&snapshot)).await
            }
            PendingReply::Watch(filter) => {
                return stream_events(shared, &mut out, filter, reading_done).await;
            }
        };
        bounded(&mut shutdown, out.write_all(&line)).await?;
        if pending.is_empty() {
            bounded(&mut shutdown, out.flush()).await?;
        }
    }
}

/// Sends the current instances, then every change, until the client goes away, stops
/// reading, the watcher lags, or the server shuts down.
async fn stream_events<W: AsyncWrite + Unpin>(
    shared: &Shared,
    out: &mut W,
    filter: Option<Label>,
    mut reading_done: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut shutdown = shared.shutdown.clone();
    let mut subscription = match shared.registry.watch(filter.clone()).await {
        Ok(subscription) => subscription,
        Err(_) => {
            let line = json_line(&protocol::unavailable("watch"))?;
            bounded(&mut shutdown, out.write_all(&line)).await?;
            return bounded(&mut shutdown, out.flush()).await;
        }
    };
    let snapshot = subscription.snapshot.clone();
    let first =
        off_thread(move || protocol::listing_line("watch", &snapshot, filter.as_ref())).await;
    bounded(&mut shutdown, out.write_all(&first)).await?;
    bounded(&mut shutdown, out.flush()).await?;
    loop {
        let item = tokio::select! {
            item = subscription.events.next() => item,
            _ = stopping(&mut reading_done) => return Ok(()),
            _ = stopping(&mut shutdown) => return Ok(()),
        };
        match item {
            WatchItem::Event(line) => {
                bounded(&mut shutdown, out.write_all(line.as_bytes())).await?;
                bounded(&mut shutdown, out.flush()).await?;
            }
            WatchItem::Lagged => {
                let line = json_line(&protocol::watch_lagged())?;
                bounded(&mut shutdown, out.write_all(&line)).await?;
                return bounded(&mut shutdown, out.flush()).await;
            }
            WatchItem::Closed => return bounded(&mut shutdown, out.flush()).await,
        }
    }
}

/// Serializes a possibly large snapshot off the async workers, which also answer DNS;
/// the snapshot is released there too.
async fn off_thread(work: impl FnOnce() -> Vec<u8> + Send + 'static) -> Vec<u8> {
    match tokio::task::spawn_blocking(work).await {
        Ok(line) => line,
        Err(_) => {
            let mut line = protocol::unavailable("list").to_string().into_bytes();
            line.push(b'\n');
            line
        }
    }
}

/// A reply as one line of JSON with its newline.
fn json_line(value: &Value) -> io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// One line of input.
enum Line<'a> {
    Complete(&'a [u8]),
    /// The line exceeded the limit; it was read to its end and dropped.
    TooLong,
    End,
}

/// Reads lines of at most `max` bytes. Cancel-safe: everything read is kept in `self`,
/// so a `next()` dropped half-way (by a `select!`) loses nothing.
struct LineReader<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    max: usize,
    too_long: bool,
    /// The previous call returned a whole line: start a new one.
    returned: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(read: R, max: usize) -> LineReader<R> {
        LineReader {
            reader: BufReader::new(read),
            line: Vec::new(),
            max,
            too_long: false,
            returned: false,
        }
    }

    async fn next(&mut self) -> io::Result<Line<'_>> {
        if self.returned {
            self.line.clear();
            self.too_long = false;
            self.returned = false;
        }
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                self.returned = true;
                return Ok(if self.too_long {
                    Line::TooLong
                } else if !self.line.is_empty() {
                    // A last line without a newline still counts.
                    Line::Complete(&self.line)
                } else {
                    Line::End
                });
            }
            let (chunk, complete) = match available.iter().position(|&b| b == b'\n') {
                Some(end) => (&available[..end], true),
                None => (available, false),
            };
            if !self.too_long {
                if self.line.len() + chunk.len() > self.max {
                    self.too_long = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            let consumed = chunk.len() + usize::from(complete);
            self.reader.consume(consumed);
            if complete {
                self.returned = true;
                return Ok(if self.too_long {
                    Line::TooLong
                } else {
                    Line::Complete(&self.line)
                });
            }
        }
    }
}
