//! `bench/update`: DNS UPDATE (RFC 2136) signed with TSIG (hmac-sha256), as `nsupdate`
//! sends it, against svcdns, BIND9 (`named`) and Knot (`knotd`) in the same run, over
//! UDP and over TCP on loopback; then how soon an acknowledged update answers.
//!
//! ```sh
//! bench/update                                  # about 2.5 minutes on 2 cores
//! bench/update --clients 8 --seconds 5 --runs 3 --visible 500 --count 100000
//! bench/update --smoke --require knot,bind9     # a few seconds, for CI
//! ```
//!
//! Every update registers one new instance `N`, the same two records on every server:
//! `iN._benchK._tcp.svc.internal. 60 SRV 0 0 8080 iN.benchK.svc.internal.` and
//! `iN.benchK.svc.internal. 60 A 10.x.y.z` (svcdns names an instance's target `I.S.Z`,
//! so this is also where svcdns answers), with `K = N / 10000`: svcdns takes 50,000
//! instances per service by default (`registration.max_instances_per_service`) and
//! refuses more, which a run of 5 s can reach. The update is signed with the key `upd-key`
//! that every server is given; each response must be NOERROR and carry a valid TSIG
//! signature of that key, anything else (and no response within 2 s) is a failure.
//!
//! Load: `--clients` threads (default 8), each with its own UDP socket or its own TCP
//! connection, one update at a time (send, wait for the response, send the next: not
//! pipelined, as `nsupdate` does), for `--seconds` (default 5) or `--count` updates
//! (default 100,000), whichever comes first, per server, transport and run. Servers take turns; `--runs` (default 3) rounds, medians
//! given. The clients share the machine's cores with the server under test.
//!
//! Ack-to-visible: `--visible` (default 500) updates one at a time over UDP; from each
//! NOERROR, `iN.benchK.svc.internal. A` is asked over UDP again and again until it
//! answers the new address ("stale" counts the updates whose first such answer
//! still lacked it: a NOERROR sent before the change answers). Last, a sample of the instances acknowledged under load
//! is read back (SRV and A) and compared with what was sent.
//!
//! Servers: svcdns in memory and with `data_dir` (each change committed to disk
//! before its NOERROR); BIND9 with `update-policy { grant upd-key zonesub ANY; }` and
//! Knot with an `acl` of `action: update`, each with its defaults otherwise (journals
//! and zone files in a temporary directory; Knot's default `zonefile-sync: 0` writes
//! the zone file after every update, `--knot-zonefile-sync -1` keeps it to the
//! journal). Peers that are not installed are skipped unless named in `--require`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType, TSigner};

use crate::dns::{name, Resolver};
use crate::peers::{find_program, free_port, Peer};
use crate::registrations::address;
use crate::server::{cpu_seconds, Server};
use crate::{ms, option, quantile, Table};

const ZONE: &str = "svc.internal.";
const KEY_NAME: &str = "upd-key";
/// The key's secret, and the same in base64 for the servers' configurations
/// (`printf %s svcdns-bench-update-key-32-bytes | base64`).
const SECRET: &[u8; 32] = b"svcdns-bench-update-key-32-bytes";
const SECRET_BASE64: &str = "c3ZjZG5zLWJlbmNoLXVwZGF0ZS1rZXktMzItYnl0ZXM=";
const TTL: u32 = 60;
/// Instances per service (svcdns refuses more than 50,000 in one by default).
const PER_SERVICE: usize = 10_000;
const PORT: u16 = 8080;
/// How long a client waits for the response to an update.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an acknowledged update may take to answer before it counts as not seen.
const VISIBLE_LIMIT: Duration = Duration::from_secs(5);
/// Instances acknowledged under load read back per server.
const SPOT_CHECKS: usize = 200;

pub fn run(args: &[String]) {
    let smoke = args.iter().any(|a| a == "--smoke");
    let clients: usize = option(args, "--clients", 8);
    let seconds: f64 = option(args, "--seconds", if smoke { 0.5 } else { 5.0 });
    let count: usize = option(args, "--count", 100_000);
    let runs: usize = option(args, "--runs", if smoke { 1 } else { 3 });
    let visible: usize = option(args, "--visible", if smoke { 20 } else { 500 });
    let knot_sync: i64 = option(args, "--knot-zonefile-sync", 0);
    let required: Vec<String> = option(args, "--require", String::new())
        .split(',')
        .filter(|peer| !peer.is_empty())
        .map(String::from)
        .collect();

    let dir = TempDir::new();
    let keys_file = dir.0.join("keys.yaml");
    std::fs::write(
        &keys_file,
        format!(
            "- name: {KEY_NAME}\n  algorithm: hmac-sha256\n  secret: \"{SECRET_BASE64}\"\n  services: [\"*\"]\n"
        ),
    )
    .expect("keys file");
    let update_keys = format!("update: {{keys_file: \"{}\"}}", keys_file.display());
    let mut contenders = vec![
        Contender::svcdns("svcdns", &update_keys, ""),
        Contender::svcdns("svcdns (data_dir)", &update_keys, "data_dir: data\n"),
    ];
    for peer in [PeerKind::Bind9, PeerKind::Knot] {
        match Contender::peer(peer, &dir.0, knot_sync) {
            Ok(contender) => contenders.push(contender),
            Err(why) if required.iter().any(|r| r == peer.name()) => {
                eprintln!("{}: required, but {why}", peer.name());
                // Exiting skips destructors: stop the servers and clean up first.
                drop(contenders);
                drop(dir);
                std::process::exit(1);
            }
            Err(why) => eprintln!("{}: skipped ({why})", peer.name()),
        }
    }

    let transports = [Transport::Udp, Transport::Tcp];
    // loads[contender][transport]: one per run.
    let mut loads: Vec<[Vec<Load>; 2]> = contenders.iter().map(|_| Default::default()).collect();
    let limit = Duration::from_secs_f64(seconds);
    for _ in 0..runs {
        for (t, transport) in transports.iter().enumerate() {
            for (c, contender) in contenders.iter().enumerate() {
                loads[c][t].push(contender.load(*transport, clients, limit, count));
            }
        }
    }

    let table = Table::new(
        &format!(
            "Signed DNS UPDATEs (TSIG hmac-sha256), each a new instance (SRV + A); {clients} clients, one update at a time each, {seconds} s or {count} updates per run; median of {runs} runs, servers taking turns"
        ),
        &[
            "server",
            "transport",
            "updates/s",
            "ack p50 ms",
            "ack p99 ms",
            "ack max ms",
            "failures",
            "server CPU µs/update",
        ],
    );
    let mut broken = Vec::new();
    for (contender, per_transport) in contenders.iter().zip(&loads) {
        for (transport, runs) in transports.iter().zip(per_transport) {
            let median_of = |figure: &dyn Fn(&Load) -> f64| {
                let mut values: Vec<f64> = runs.iter().map(figure).collect();
                values.sort_by(f64::total_cmp);
                values.get(values.len() / 2).copied().unwrap_or(0.0)
            };
            let failures: usize = runs.iter().map(|r| r.failures).sum();
            table.row(&[
                contender.name.clone(),
                transport.name().into(),
                format!("{:.0}", median_of(&|r| r.per_second())),
                format!("{:.2}", median_of(&|r| r.latency_ms(0.5))),
                format!("{:.2}", median_of(&|r| r.latency_ms(0.99))),
                format!("{:.2}", median_of(&|r| r.latency_ms(1.0))),
                failures.to_string(),
                format!("{:.0}", median_of(&|r| r.cpu_us_per_update())),
            ]);
            if let Some(first) = runs.iter().find_map(|r| r.first_failure.as_ref()) {
                eprintln!(
                    "{} over {}: {failures} failures, e.g. {first}",
                    contender.name,
                    transport.name()
                );
            }
            if runs.iter().any(|r| r.acked.is_empty()) {
                broken.push(format!(
                    "{} over {}: no update acknowledged in a run",
                    contender.name,
                    transport.name()
                ));
            }
        }
    }

    let table = Table::new(
        &format!(
            "Ack-to-visible: {visible} updates one at a time over UDP; from the NOERROR to the first UDP answer with the new A record (asked again at once until then; stale: the first answer lacked it)"
        ),
        &[
            "server",
            "p50 ms",
            "p99 ms",
            "max ms",
            "first query stale",
            "not seen within 5 s",
            "update failures",
        ],
    );
    for contender in &contenders {
        let seen = contender.visibility(visible);
        table.row(&[
            contender.name.clone(),
            ms(quantile(&seen.lags_us, 0.5)),
            ms(quantile(&seen.lags_us, 0.99)),
            ms(seen.lags_us.last().copied().unwrap_or(0)),
            seen.stale.to_string(),
            seen.missed.to_string(),
            seen.failures.to_string(),
        ]);
        if seen.missed > 0 || seen.lags_us.is_empty() {
            broken.push(format!("{}: acknowledged updates not seen", contender.name));
        }
    }

    let table = Table::new(
        &format!(
            "Read back: up to {SPOT_CHECKS} instances acknowledged under load, SRV and A over UDP, compared with what was sent"
        ),
        &["server", "instances read", "wrong or missing", "first difference"],
    );
    for (contender, per_transport) in contenders.iter().zip(&loads) {
        let acked: Vec<usize> = per_transport
            .iter()
            .flatten()
            .flat_map(|load| load.acked.iter().copied())
            .collect();
        let (read, wrong) = contender.read_back(&acked);
        table.row(&[
            contender.name.clone(),
            read.to_string(),
            wrong.len().to_string(),
            wrong.first().cloned().unwrap_or_else(|| "-".into()),
        ]);
        if !wrong.is_empty() {
            broken.push(format!("{}: {} wrong answers", contender.name, wrong.len()));
        }
    }
    drop(contenders);
    drop(dir);
    if !broken.is_empty() {
        eprintln!("bench/update: {}", broken.join("; "));
        std::process::exit(1);
    }
}

/// A directory of this run's peers and key, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("svcdns-bench-update-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bench directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

/// Instance `n`'s SRV owner: `iN._benchK._tcp.ZONE`.
fn instance_name(n: usize) -> Name {
    name(&format!("i{n}._bench{}._tcp.{ZONE}", n / PER_SERVICE))
}

/// Instance `n`'s SRV target and address owner: `iN.benchK.ZONE`.
fn host_name(n: usize) -> Name {
    name(&format!("i{n}.bench{}.{ZONE}", n / PER_SERVICE))
}

/// The update registering instance `n`, unsigned.
fn update_message(id: u16, n: usize) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Update);
    message.add_query(Query::query(name(ZONE), RecordType::SOA));
    message.add_authority(Record::from_rdata(
        instance_name(n),
        TTL,
        RData::SRV(SRV::new(0, 0, PORT, host_name(n))),
    ));
    message.add_authority(Record::from_rdata(
        host_name(n),
        TTL,
        RData::A(A(address(n))),
    ));
    message
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// One client: a UDP socket or a TCP connection, sending one signed update at a time.
struct Updater {
    server: SocketAddr,
    transport: Transport,
    udp: Option<UdpSocket>,
    tcp: Option<TcpStream>,
    signer: TSigner,
    next_id: u16,
    buffer: Vec<u8>,
}

impl Updater {
    fn connect(server: SocketAddr, transport: Transport) -> Updater {
        let signer = TSigner::new(
            SECRET.to_vec(),
            TsigAlgorithm::HmacSha256,
            name(KEY_NAME),
            300,
        )
        .expect("an hmac-sha256 signer");
        let mut updater = Updater {
            server,
            transport,
            udp: None,
            tcp: None,
            signer,
            next_id: first_id(),
            buffer: vec![0; 65535],
        };
        match transport {
            Transport::Udp => {
                let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
                socket.connect(server).expect("connect a UDP socket");
                socket
                    .set_read_timeout(Some(RESPONSE_TIMEOUT))
                    .expect("timeout");
                updater.udp = Some(socket);
            }
            Transport::Tcp => updater.tcp = updater.open_tcp().ok(),
        }
        updater
    }

    fn open_tcp(&self) -> std::io::Result<TcpStream> {
        let stream = TcpStream::connect(self.server)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
        Ok(stream)
    }

    /// Sends the update registering instance `n` and checks its response: NOERROR,
    /// signed by our key. Why not, otherwise.
    fn update(&mut self, n: usize) -> Result<(), String> {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        let mut message = update_message(id, n);
        let mut verifier = message
            .finalize(&self.signer, unix_time())
            .map_err(|e| format!("signing: {e}"))?
            .ok_or("signing gave no verifier")?;
        let request = message.to_vec().map_err(|e| format!("encoding: {e}"))?;
        let len = self.exchange(&request, id)?;
        let reply = &self.buffer[..len];
        let response = Message::from_vec(reply).map_err(|e| format!("response: {e}"))?;
        if response.metadata.response_code != ResponseCode::NoError {
            return Err(format!("{}", response.metadata.response_code));
        }
        verifier
            .verify(reply)
            .map_err(|e| format!("response's TSIG: {e}"))?;
        Ok(())
    }

    /// Sends `request` and reads the response with `id` into the buffer; its length.
    fn exchange(&mut self, request: &[u8], id: u16) -> Result<usize, String> {
        match self.transport {
            Transport::Udp => {
                let socket = self.udp.as_ref().expect("a UDP socket");
                socket.send(request).map_err(|e| format!("send: {e}"))?;
                let deadline = Instant::now() + RESPONSE_TIMEOUT;
                while Instant::now() < deadline {
                    let len = socket
                        .recv(&mut self.buffer)
                        .map_err(|_| "no response within 2 s".to_string())?;
                    // A late response to an earlier update is skipped.
                    if len >= 2 && self.buffer[..2] == id.to_be_bytes() {
                        return Ok(len);
                    }
                }
                Err("no response within 2 s".into())
            }
            Transport::Tcp => {
                let result = self.exchange_tcp(request);
                if result.is_err() {
                    // Whatever the connection's state, the next update starts afresh.
                    self.tcp = None;
                }
                let len = result?;
                if len < 2 || self.buffer[..2] != id.to_be_bytes() {
                    return Err("a response with another ID".into());
                }
                Ok(len)
            }
        }
    }

    fn exchange_tcp(&mut self, request: &[u8]) -> Result<usize, String> {
        if self.tcp.is_none() {
            self.tcp = Some(self.open_tcp().map_err(|e| format!("connect: {e}"))?);
        }
        let stream = self.tcp.as_mut().expect("connected");
        let mut framed = Vec::with_capacity(request.len() + 2);
        framed.extend_from_slice(&(request.len() as u16).to_be_bytes());
        framed.extend_from_slice(request);
        stream
            .write_all(&framed)
            .map_err(|e| format!("send: {e}"))?;
        let mut length = [0u8; 2];
        stream
            .read_exact(&mut length)
            .map_err(|e| format!("TCP response: {e}"))?;
        let len = usize::from(u16::from_be_bytes(length));
        stream
            .read_exact(&mut self.buffer[..len])
            .map_err(|e| format!("TCP response: {e}"))?;
        Ok(len)
    }
}

/// A message ID to start from, different for every client.
fn first_id() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    (NEXT.fetch_add(1, Ordering::Relaxed) as u16).wrapping_mul(7919)
}

/// What one load run saw.
#[derive(Default)]
struct Load {
    /// Instances acknowledged with NOERROR.
    acked: Vec<usize>,
    /// Send-to-response times of the acknowledged updates, sorted.
    latencies_us: Vec<u64>,
    failures: usize,
    first_failure: Option<String>,
    took: Duration,
    cpu_seconds: f64,
}

impl Load {
    fn per_second(&self) -> f64 {
        self.acked.len() as f64 / self.took.as_secs_f64().max(1e-9)
    }

    fn latency_ms(&self, q: f64) -> f64 {
        quantile(&self.latencies_us, q) as f64 / 1000.0
    }

    fn cpu_us_per_update(&self) -> f64 {
        self.cpu_seconds / self.acked.len().max(1) as f64 * 1e6
    }
}

/// Ack-to-visible lags.
struct Seen {
    lags_us: Vec<u64>,
    missed: usize,
    /// Updates whose first query after the NOERROR was answered without the record.
    stale: usize,
    failures: usize,
}

#[derive(Clone, Copy)]
enum PeerKind {
    Bind9,
    Knot,
}

impl PeerKind {
    fn name(self) -> &'static str {
        match self {
            PeerKind::Bind9 => "bind9",
            PeerKind::Knot => "knot",
        }
    }
}

/// A server under test.
struct Contender {
    name: String,
    address: SocketAddr,
    pid: u32,
    /// The next instance number to register: each is new.
    next: AtomicUsize,
    /// Keeps the server running (a [`Server`] or a [`Peer`], each stopped when dropped).
    _process: Box<dyn std::any::Any + Sync>,
}

impl Contender {
    fn svcdns(label: &str, dns_lines: &str, extra: &str) -> Contender {
        let tag = if extra.is_empty() {
            "update"
        } else {
            "update-durable"
        };
        let server = Server::start_with_dns(tag, dns_lines, extra);
        Contender {
            name: label.into(),
            address: server.dns,
            pid: server.pid(),
            next: AtomicUsize::new(0),
            _process: Box::new(server),
        }
    }

    fn peer(kind: PeerKind, dir: &Path, knot_sync: i64) -> Result<Contender, String> {
        let home = dir.join(kind.name());
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        let h = home.display();
        let zone_file = home.join("svc.internal.zone");
        std::fs::write(
            &zone_file,
            format!(
                "$ORIGIN {ZONE}\n$TTL {TTL}\n@ SOA ns.{ZONE} hostmaster.{ZONE} 1 3600 600 86400 5\n@ NS ns.{ZONE}\nns A 127.0.0.1\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let port = free_port();
        let (program, config_file, config) = match kind {
            PeerKind::Bind9 => (
                "named",
                home.join("named.conf"),
                format!(
                    "options {{ directory \"{h}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; recursion no; pid-file \"{h}/named.pid\"; }};\ncontrols {{ }};\nkey \"{KEY_NAME}\" {{ algorithm hmac-sha256; secret \"{SECRET_BASE64}\"; }};\nzone \"svc.internal\" {{ type primary; file \"{}\"; update-policy {{ grant {KEY_NAME} zonesub ANY; }}; }};\n",
                    zone_file.display()
                ),
            ),
            PeerKind::Knot => (
                "knotd",
                home.join("knot.conf"),
                format!(
                    "server:\n    rundir: \"{h}\"\n    listen: 127.0.0.1@{port}\nkey:\n  - id: {KEY_NAME}\n    algorithm: hmac-sha256\n    secret: {SECRET_BASE64}\nacl:\n  - id: update\n    key: {KEY_NAME}\n    action: update\ndatabase:\n    storage: \"{h}\"\ntemplate:\n  - id: default\n    storage: \"{h}\"\n    file: \"{}\"\n    zonefile-sync: {knot_sync}\nzone:\n  - domain: {ZONE}\n    acl: update\n",
                    zone_file.display()
                ),
            ),
        };
        let binary =
            find_program(program, &[]).ok_or_else(|| format!("{program} is not installed"))?;
        std::fs::write(&config_file, config).map_err(|e| e.to_string())?;
        // named in the foreground, logging to stderr; knotd runs in the foreground anyway.
        let mut args: Vec<String> = Vec::new();
        if let PeerKind::Bind9 = kind {
            args.push("-g".into());
        }
        args.extend(["-c".into(), config_file.display().to_string()]);
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let peer = Peer::spawn(&binary, &args, &home, address)?;
        Ok(Contender {
            name: kind.name().into(),
            address,
            pid: peer.pid(),
            next: AtomicUsize::new(0),
            _process: Box::new(peer),
        })
    }

    /// `clients` clients sending updates one at a time each, for `limit` or `count`
    /// updates, whichever ends first.
    fn load(&self, transport: Transport, clients: usize, limit: Duration, count: usize) -> Load {
        let end = self.next.load(Ordering::Relaxed) + count;
        let start = Barrier::new(clients + 1);
        let merged = Mutex::new(Load::default());
        let cpu_before = cpu_seconds(self.pid);
        let started = std::thread::scope(|scope| {
            for _ in 0..clients {
                scope.spawn(|| {
                    let mut updater = Updater::connect(self.address, transport);
                    let mut mine = Load::default();
                    start.wait();
                    let deadline = Instant::now() + limit;
                    while Instant::now() < deadline {
                        let n = self.next.fetch_add(1, Ordering::Relaxed);
                        if n >= end {
                            break;
                        }
                        let sent = Instant::now();
                        match updater.update(n) {
                            Ok(()) => {
                                mine.latencies_us.push(sent.elapsed().as_micros() as u64);
                                mine.acked.push(n);
                            }
                            Err(why) => {
                                mine.failures += 1;
                                mine.first_failure.get_or_insert(why);
                            }
                        }
                    }
                    let mut all = merged.lock().expect("results");
                    all.acked.extend(mine.acked);
                    all.latencies_us.extend(mine.latencies_us);
                    all.failures += mine.failures;
                    if all.first_failure.is_none() {
                        all.first_failure = mine.first_failure;
                    }
                });
            }
            start.wait();
            Instant::now()
        });
        let mut load = merged.into_inner().expect("results");
        load.took = started.elapsed();
        load.cpu_seconds = cpu_seconds(self.pid) - cpu_before;
        load.latencies_us.sort_unstable();
        // Numbers taken past `end` were never sent.
        self.next.fetch_min(end, Ordering::Relaxed);
        load
    }

    /// `samples` updates one at a time over UDP, each followed by queries for its A
    /// record until it answers.
    fn visibility(&self, samples: usize) -> Seen {
        let mut updater = Updater::connect(self.address, Transport::Udp);
        let mut resolver = Resolver::new(self.address);
        let mut seen = Seen {
            lags_us: Vec::with_capacity(samples),
            missed: 0,
            stale: 0,
            failures: 0,
        };
        for _ in 0..samples {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            if updater.update(n).is_err() {
                seen.failures += 1;
                continue;
            }
            let acked = Instant::now();
            let host = host_name(n);
            let expected = address(n);
            for attempt in 0.. {
                let response = resolver.query(&host, RecordType::A);
                let answered = response.as_ref().is_some_and(|m| {
                    m.answers
                        .iter()
                        .any(|r| matches!(&r.data, RData::A(a) if a.0 == expected))
                });
                if answered {
                    seen.lags_us.push(acked.elapsed().as_micros() as u64);
                    break;
                }
                if attempt == 0 && response.is_some() {
                    seen.stale += 1;
                }
                if acked.elapsed() > VISIBLE_LIMIT {
                    seen.missed += 1;
                    break;
                }
            }
        }
        seen.lags_us.sort_unstable();
        seen
    }

    /// Reads back up to [`SPOT_CHECKS`] of the `acked` instances, spread over them:
    /// how many were read and what differed.
    fn read_back(&self, acked: &[usize]) -> (usize, Vec<String>) {
        let mut resolver = Resolver::new(self.address);
        let step = acked.len().div_ceil(SPOT_CHECKS).max(1);
        let mut wrong = Vec::new();
        let mut read = 0;
        for &n in acked.iter().step_by(step) {
            read += 1;
            let srv = resolver.query(&instance_name(n), RecordType::SRV);
            let want = SRV::new(0, 0, PORT, host_name(n));
            match srv.as_ref().map(|m| m.answers.as_slice()) {
                Some([record]) if record.data == RData::SRV(want.clone()) => {
                    if record.ttl != TTL {
                        wrong.push(format!("{} SRV TTL {}", instance_name(n), record.ttl));
                    }
                }
                answers => wrong.push(format!("{} SRV: {}", instance_name(n), describe(answers))),
            }
            let a = resolver.query(&host_name(n), RecordType::A);
            match a.as_ref().map(|m| m.answers.as_slice()) {
                Some([record]) if record.data == RData::A(A(address(n))) => {
                    if record.ttl != TTL {
                        wrong.push(format!("{} A TTL {}", host_name(n), record.ttl));
                    }
                }
                answers => wrong.push(format!("{} A: {}", host_name(n), describe(answers))),
            }
        }
        (read, wrong)
    }
}

fn describe(answers: Option<&[Record]>) -> String {
    match answers {
        None => "no response".into(),
        Some([]) => "no answer".into(),
        Some(records) => records
            .iter()
            .map(|r| format!("{} {}", r.ttl, r.data))
            .collect::<Vec<_>>()
            .join(", "),
    }
}
