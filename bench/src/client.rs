//! Registration clients: pipelined JSON lines over the Unix socket, with the time from
//! each request to its acknowledgement.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{sync_channel, TrySendError};
use std::time::{Duration, Instant};

/// Requests in flight per connection (the server takes up to 256).
pub const WINDOW: usize = 256;

/// A register request line for `id` of `service`.
pub fn register(service: &str, id: &str, address: Ipv4Addr, port: u16, extra: &str) -> String {
    format!(
        "{{\"op\":\"register\",\"service\":\"{service}\",\"id\":\"{id}\",\"addresses\":[\"{address}\"],\"port\":{port}{extra}}}\n"
    )
}

/// What came back for a stream of requests.
#[derive(Default)]
pub struct Acks {
    /// Request-to-acknowledgement times, in microseconds.
    pub latencies_us: Vec<u64>,
    pub refused: usize,
    pub first_refusal: Option<String>,
}

impl Acks {
    pub fn merge(&mut self, other: Acks) {
        self.latencies_us.extend(other.latencies_us);
        self.refused += other.refused;
        if self.first_refusal.is_none() {
            self.first_refusal = other.first_refusal;
        }
    }

    pub fn check(&self, what: &str) {
        if let Some(refusal) = &self.first_refusal {
            eprintln!("{what}: {} requests refused, e.g. {refusal}", self.refused);
        }
    }
}

pub fn connect(socket: &Path) -> UnixStream {
    let stream = UnixStream::connect(socket).expect("connect to the registration socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    stream
}

/// Sends `lines` on one connection with up to [`WINDOW`] unacknowledged, and waits for
/// every acknowledgement.
pub fn pipeline(socket: &Path, lines: impl Iterator<Item = String> + Send) -> Acks {
    let stream = connect(socket);
    let reader = stream.try_clone().expect("clone stream");
    let (sent, in_flight) = sync_channel::<Instant>(WINDOW);
    std::thread::scope(|scope| {
        let replies = scope.spawn(move || {
            let mut acks = Acks::default();
            let mut reader = BufReader::new(reader);
            let mut line = String::new();
            while let Ok(started) = in_flight.recv() {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    panic!("the server closed the connection");
                }
                acks.latencies_us.push(started.elapsed().as_micros() as u64);
                if !line.contains("\"ok\":true") {
                    acks.refused += 1;
                    acks.first_refusal
                        .get_or_insert_with(|| line.trim().to_string());
                }
            }
            acks
        });
        let mut writer = BufWriter::with_capacity(64 * 1024, &stream);
        for line in lines {
            match sent.try_send(Instant::now()) {
                Ok(()) => {}
                Err(TrySendError::Full(started)) => {
                    // The window is full: let the server see what is buffered, then wait.
                    writer.flush().expect("send requests");
                    sent.send(started).expect("reply reader");
                }
                Err(TrySendError::Disconnected(_)) => panic!("reply reader stopped"),
            }
            writer.write_all(line.as_bytes()).expect("send request");
        }
        writer.flush().expect("send requests");
        drop(sent);
        replies.join().expect("reply reader")
    })
}

/// Sends `lines` over `connections` connections at once (line i on connection i mod n).
pub fn pipeline_parallel(socket: &Path, lines: Vec<String>, connections: usize) -> Acks {
    let mut shares: Vec<Vec<String>> = (0..connections).map(|_| Vec::new()).collect();
    for (i, line) in lines.into_iter().enumerate() {
        shares[i % connections].push(line);
    }
    std::thread::scope(|scope| {
        let workers: Vec<_> = shares
            .into_iter()
            .map(|share| scope.spawn(move || pipeline(socket, share.into_iter())))
            .collect();
        let mut acks = Acks::default();
        for worker in workers {
            acks.merge(worker.join().expect("connection"));
        }
        acks
    })
}

/// One request at a time on an open connection: sends, waits for the reply.
pub struct Session {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    line: String,
}

impl Session {
    pub fn open(socket: &Path) -> Session {
        let stream = connect(socket);
        Session {
            reader: BufReader::new(stream.try_clone().expect("clone stream")),
            writer: stream,
            line: String::new(),
        }
    }

    /// Sends several request lines in one write, then reads as many replies.
    pub fn burst(&mut self, lines: &str, count: usize) {
        self.writer
            .write_all(lines.as_bytes())
            .expect("send requests");
        for _ in 0..count {
            self.line.clear();
            if self.reader.read_line(&mut self.line).unwrap_or(0) == 0 {
                panic!("the server closed the connection");
            }
        }
    }

    /// Sends one request line and returns the reply line.
    pub fn request(&mut self, line: &str) -> &str {
        self.writer
            .write_all(line.as_bytes())
            .expect("send request");
        self.line.clear();
        if self.reader.read_line(&mut self.line).unwrap_or(0) == 0 {
            panic!("the server closed the connection");
        }
        &self.line
    }
}
