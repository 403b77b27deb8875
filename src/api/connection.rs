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

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::protocol::{self, handle_line, too_large, PendingReply};
use crate::registry::{Label, Registry, WatchItem};

/// Longest request line accepted. A registration is a few hundred bytes; 64 KiB leaves
/// room for large metadata while bounding what one client can make us buffer.
pub const MAX_LINE: usize = 64 * 1024;

/// Requests a connection may have in flight before its replies are read.
pub const PIPELINE_DEPTH: usize = 256;

/// What every connection shares.
pub struct Shared {
    pub registry: Registry,
    pub next_connection: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
}

/// Serves one connection until the client closes it or the server shuts down; then
/// releases the ephemeral instances it registered.
pub async fn serve<S: AsyncRead + AsyncWrite>(shared: Arc<Shared>, stream: S) {
    let connection = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    debug!(connection, "registration connection opened");
    let (read, write) = tokio::io::split(stream);
    let (queue, pending) = mpsc::channel(PIPELINE_DEPTH);
    let (reading_done, reading_done_rx) = watch::channel(false);
    let mut registered = false;
    let reading = async {
        let result = read_requests(&shared, connection, read, queue, &mut registered).await;
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
    if registered {
        shared.registry.release_connection(connection);
    }
}

/// Reads request lines and queues their pending replies, until the client closes its
/// side, the replying half stops, or the server shuts down. After a `watch`, lines are
/// read and ignored: that is how the end of a watcher is noticed. Sets `registered`
/// once a registration was queued (the connection's ephemeral instances then need
/// releasing, whether or not their replies could be written).
async fn read_requests<R: AsyncRead + Unpin>(
    shared: &Shared,
    connection: u64,
    read: R,
    queue: mpsc::Sender<PendingReply>,
    registered: &mut bool,
) -> io::Result<()> {
    let mut lines = LineReader::new(read, MAX_LINE);
    let mut shutdown = shared.shutdown.clone();
    let mut watching = false;
    loop {
        let line = tokio::select! {
            line = lines.next() => line?,
            _ = queue.closed() => return Ok(()),
            _ = shutdown.changed() => return Ok(()),
        };
        let pending = match line {
            Line::End => return Ok(()),
            _ if watching => continue,
            Line::TooLong => PendingReply::Ready(too_large(MAX_LINE)),
            Line::Complete(text) if text.trim_ascii().is_empty() => continue,
            Line::Complete(text) => handle_line(&shared.registry, connection, text.trim_ascii()),
        };
        watching = matches!(pending, PendingReply::Watch(_));
        *registered |= matches!(pending, PendingReply::Change { op: "register", .. });
        if queue.send(pending).await.is_err() {
            return Ok(());
        }
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
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(next) = next else {
            return out.flush().await;
        };
        match next {
            PendingReply::Ready(reply) => write_json(&mut out, &reply).await?,
            PendingReply::Change { op, key, ack } => {
                let reply = protocol::change_reply(op, key, ack).await;
                write_json(&mut out, &reply).await?;
            }
            PendingReply::List(filter) => {
                let snapshot = shared.registry.snapshot();
                let line =
                    off_thread(move || protocol::listing_line("list", &snapshot, filter.as_ref()))
                        .await;
                out.write_all(&line).await?;
            }
            PendingReply::Snapshot => {
                let snapshot = shared.registry.snapshot();
                let line = off_thread(move || protocol::snapshot_line(&snapshot)).await;
                out.write_all(&line).await?;
            }
            PendingReply::Watch(filter) => {
                return stream_events(shared, &mut out, filter, reading_done).await;
            }
        }
        if pending.is_empty() {
            out.flush().await?;
        }
    }
}

/// Sends the current instances, then every change, until the client goes away, the
/// watcher lags, or the server shuts down.
async fn stream_events<W: AsyncWrite + Unpin>(
    shared: &Shared,
    out: &mut W,
    filter: Option<Label>,
    mut reading_done: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut subscription = match shared.registry.watch(filter.clone()).await {
        Ok(subscription) => subscription,
        Err(_) => {
            write_json(out, &protocol::unavailable("watch")).await?;
            return out.flush().await;
        }
    };
    let snapshot = subscription.snapshot.clone();
    let first =
        off_thread(move || protocol::listing_line("watch", &snapshot, filter.as_ref())).await;
    out.write_all(&first).await?;
    out.flush().await?;
    let mut shutdown = shared.shutdown.clone();
    loop {
        let item = tokio::select! {
            item = subscription.events.next() => item,
            _ = reading_done.wait_for(|done| *done) => return Ok(()),
            _ = shutdown.changed() => return Ok(()),
        };
        match item {
            WatchItem::Event(line) => {
                out.write_all(line.as_bytes()).await?;
                out.flush().await?;
            }
            WatchItem::Lagged => {
                write_json(out, &protocol::watch_lagged()).await?;
                return out.flush().await;
            }
            WatchItem::Closed => return out.flush().await,
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

async fn write_json<W: AsyncWrite + Unpin>(out: &mut W, value: &Value) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    out.write_all(&bytes).await
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
