//! DNS over UDP on loopback: single queries, a prober that measures latency while
//! something else goes on, and dnsperf runs.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

/// How long a probe waits for its answer before it counts as lost.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Resolver {
    socket: UdpSocket,
    server: SocketAddr,
    next_id: u16,
    buffer: Vec<u8>,
}

impl Resolver {
    pub fn new(server: SocketAddr) -> Resolver {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
        socket
            .set_read_timeout(Some(PROBE_TIMEOUT))
            .expect("timeout");
        Resolver {
            socket,
            server,
            next_id: 1,
            buffer: vec![0; 65535],
        }
    }

    /// One query; the response, or `None` when none came within the timeout.
    pub fn query(&mut self, name: &Name, record_type: RecordType) -> Option<Message> {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(name.clone(), record_type));
        let bytes = message.to_vec().expect("encode a query");
        self.socket
            .send_to(&bytes, self.server)
            .expect("send a query");
        let deadline = Instant::now() + PROBE_TIMEOUT;
        while Instant::now() < deadline {
            let Ok((len, _)) = self.socket.recv_from(&mut self.buffer) else {
                return None;
            };
            // A late answer to an earlier, timed-out query is skipped.
            if let Ok(response) = Message::from_vec(&self.buffer[..len]) {
                if response.metadata.id == id {
                    return Some(response);
                }
            }
        }
        None
    }

    /// The response code of a query, `None` when lost.
    pub fn rcode(&mut self, name: &Name, record_type: RecordType) -> Option<ResponseCode> {
        self.query(name, record_type)
            .map(|m| m.metadata.response_code)
    }
}

pub fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("a valid name")
}

/// Latencies seen by a prober between two instants.
#[derive(Default, Debug)]
pub struct Probes {
    /// (when sent, round trip in microseconds); `None` for a lost query.
    samples: Vec<(Instant, Option<u64>)>,
}

impl Probes {
    /// The probes sent within `[from, to)`: (count, sorted latencies, lost).
    pub fn window(&self, from: Instant, to: Instant) -> (usize, Vec<u64>, usize) {
        let inside: Vec<&(Instant, Option<u64>)> = self
            .samples
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .collect();
        let mut latencies: Vec<u64> = inside.iter().filter_map(|(_, l)| *l).collect();
        latencies.sort_unstable();
        let lost = inside.iter().filter(|(_, l)| l.is_none()).count();
        (inside.len(), latencies, lost)
    }
}

/// Queries `names` round-robin, one at a time, from its own thread until stopped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Probes>,
}

impl Prober {
    pub fn start(server: SocketAddr, names: Vec<(Name, RecordType)>) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut resolver = Resolver::new(server);
            let mut probes = Probes::default();
            let mut i = 0;
            while !stopping.load(Ordering::Relaxed) {
                let (name, record_type) = &names[i % names.len()];
                i += 1;
                let sent = Instant::now();
                let answered = resolver.query(name, *record_type).is_some();
                let latency = answered.then(|| sent.elapsed().as_micros() as u64);
                probes.samples.push((sent, latency));
                // About 2,000 probes a second: enough samples, little load.
                std::thread::sleep(Duration::from_micros(400));
            }
            probes
        });
        Prober { stop, thread }
    }

    pub fn finish(self) -> Probes {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("prober")
    }
}

/// What one dnsperf run reported.
pub struct Run {
    pub qps: f64,
    /// Average latency, in seconds.
    pub latency_s: f64,
}

/// One dnsperf run against `server` (8 clients, 500 queries in flight, `seconds`
/// long), as every benchmark here drives it; `None` when dnsperf fails.
pub fn dnsperf(server: SocketAddr, queries: &Path, seconds: u64) -> Option<Run> {
    let output = Command::new("dnsperf")
        .args([
            "-s",
            &server.ip().to_string(),
            "-p",
            &server.port().to_string(),
            "-d",
        ])
        .arg(queries)
        .args([
            "-l",
            &seconds.to_string(),
            "-c",
            "8",
            "-q",
            "500",
            "-T",
            "1",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let value = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some(Run {
        qps: value("Queries per second:")?,
        latency_s: value("Average Latency (s):")?,
    })
}
