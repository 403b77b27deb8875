//! `bench/dns`: svcdns against established authoritative servers serving the same
//! records (the dataset of `../shared/bench`: 1000 services x 3 instances), driven by
//! dnsperf on loopback: SRV, A, and a mix with 10% NXDOMAIN; then svcdns again while a
//! client registers and deregisters 1,000 instances a second. Prints qps, latency, the
//! server's CPU per query (from /proc) and ratios to Knot, medians over rounds in which
//! the servers take turns.
//!
//! svcdns is loaded through its registration socket; the peers read a zone file of the
//! same records (same TTLs, priorities, weights and ports), so the answers match.
//! Peers that are not installed are skipped, unless named in `--require knot,nsd`: Knot (knotd), NSD (nsd), BIND9 (named), and
//! hickory-dns (its binary on PATH or in /opt/hickory/bin).

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{self, pipeline_parallel};
use crate::dns::dnsperf;
use crate::scale::{dataset, QueryFiles, BASE_INSTANCES, BASE_SERVICES};
use crate::server::{cpu_seconds, Server};
use crate::{option, Table};

/// Instance changes a second while the churn rows are measured.
const CHURN_PER_SECOND: usize = 1000;

pub fn run(args: &[String]) {
    let smoke = args.iter().any(|a| a == "--smoke");
    let seconds: u64 = option(args, "--seconds", if smoke { 1 } else { 8 });
    let rounds: usize = option(args, "--rounds", if smoke { 1 } else { 3 });
    // Peers that must run (a smoke run in CI checks that their setup still works).
    let required: Vec<String> = option(args, "--require", String::new())
        .split(',')
        .filter(|name| !name.is_empty())
        .map(String::from)
        .collect();
    if Command::new("dnsperf").arg("-h").output().is_err() {
        eprintln!("bench/dns needs dnsperf (apt-get install dnsperf)");
        std::process::exit(2);
    }
    let queries = QueryFiles::write();
    let zone_dir = std::env::temp_dir().join(format!("svcdns-bench-peers-{}", std::process::id()));
    std::fs::create_dir_all(&zone_dir).expect("peer directory");
    let zone_file = zone_dir.join("svc.internal.zone");
    std::fs::write(&zone_file, zone_text()).expect("zone file");

    let svcdns = Server::start("dns", "");
    pipeline_parallel(&svcdns.unix, dataset(BASE_SERVICES * BASE_INSTANCES), 8).check("dataset");
    let mut contenders: Vec<Contender> = vec![Contender::new("svcdns", svcdns.dns, svcdns.pid())];
    let mut peers: Vec<Peer> = Vec::new();
    for kind in [
        PeerKind::Knot,
        PeerKind::Nsd,
        PeerKind::Bind9,
        PeerKind::HickoryDns,
    ] {
        match Peer::start(kind, &zone_dir, &zone_file) {
            Ok(peer) => {
                contenders.push(Contender::new(kind.name(), peer.address, peer.pid()));
                peers.push(peer);
            }
            Err(why) if required.iter().any(|r| r == kind.name()) => {
                eprintln!("{}: required, but {why}", kind.name());
                std::process::exit(1);
            }
            Err(why) => eprintln!("{}: skipped ({why})", kind.name()),
        }
    }
    let mut churns = [Pacing::Bursts, Pacing::OneAtATime].map(|pacing| {
        (
            pacing,
            Contender::new(pacing.label(), svcdns.dns, svcdns.pid()),
        )
    });

    let files = [&queries.srv, &queries.a, &queries.mixed];
    for _ in 0..rounds {
        for (mix, file) in files.iter().enumerate() {
            for contender in &mut contenders {
                contender.measure(mix, file, seconds);
            }
        }
        for (pacing, churn) in &mut churns {
            let changing = Churner::start(&svcdns.unix, *pacing);
            for (mix, file) in files.iter().enumerate() {
                churn.measure(mix, file, seconds);
            }
            let changes = changing.stop();
            churn.changes_per_second.push(changes);
        }
    }
    contenders.extend(churns.into_iter().map(|(_, churn)| churn));

    let knot = contenders
        .iter()
        .find(|c| c.name == "knot")
        .map(|c| [0, 1, 2].map(|mix| c.median_qps(mix)));
    let table = Table::new(
        &format!(
            "DNS throughput, 1000 services x 3 instances; dnsperf -c 8 -q 500 -T 1 -l {seconds}; median of {rounds} rounds, servers taking turns; ratios to Knot in the same run"
        ),
        &[
            "server", "qps SRV", "qps A", "qps mixed", "vs Knot SRV", "vs Knot A", "vs Knot mixed",
            "avg latency ms (mixed)", "server CPU µs/query", "changes/s",
        ],
    );
    for contender in &contenders {
        let qps = [0, 1, 2].map(|mix| contender.median_qps(mix));
        let ratio = |mix: usize| match (qps[mix], knot.and_then(|k| k[mix])) {
            (Some(q), Some(k)) if k > 0.0 => format!("{:.2}", q / k),
            _ => "-".into(),
        };
        let show = |q: Option<f64>| q.map_or("-".into(), |q| format!("{q:.0}"));
        table.row(&[
            contender.name.clone(),
            show(qps[0]),
            show(qps[1]),
            show(qps[2]),
            ratio(0),
            ratio(1),
            ratio(2),
            median(&contender.latency_ms[2]).map_or("-".into(), |l| format!("{l:.3}")),
            contender
                .cpu_per_query_us()
                .map_or("-".into(), |c| format!("{c:.1}")),
            median(&contender.changes_per_second).map_or("-".into(), |c| format!("{c:.0}")),
        ]);
    }
    drop(peers);
    let _ = std::fs::remove_dir_all(&zone_dir);
    let failed: Vec<&str> = contenders
        .iter()
        .filter(|c| c.qps.iter().any(Vec::is_empty))
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        eprintln!("dnsperf gave no figures for: {}", failed.join(", "));
        std::process::exit(1);
    }
}

/// One server as measured: qps and latency per mix and round, CPU over all runs.
struct Contender {
    name: String,
    address: SocketAddr,
    pid: u32,
    qps: [Vec<f64>; 3],
    latency_ms: [Vec<f64>; 3],
    cpu_seconds: f64,
    answered: f64,
    changes_per_second: Vec<f64>,
}

impl Contender {
    fn new(name: &str, address: SocketAddr, pid: u32) -> Contender {
        Contender {
            name: name.to_string(),
            address,
            pid,
            qps: Default::default(),
            latency_ms: Default::default(),
            cpu_seconds: 0.0,
            answered: 0.0,
            changes_per_second: Vec::new(),
        }
    }

    fn measure(&mut self, mix: usize, queries: &Path, seconds: u64) {
        let cpu_before = cpu_seconds(self.pid);
        if let Some(run) = dnsperf(self.address, queries, seconds) {
            self.qps[mix].push(run.qps);
            self.latency_ms[mix].push(run.latency_s * 1000.0);
            self.answered += run.qps * seconds as f64;
            self.cpu_seconds += cpu_seconds(self.pid) - cpu_before;
        } else {
            eprintln!("{}: dnsperf failed", self.name);
        }
    }

    fn median_qps(&self, mix: usize) -> Option<f64> {
        median(&self.qps[mix])
    }

    fn cpu_per_query_us(&self) -> Option<f64> {
        (self.answered > 0.0).then(|| self.cpu_seconds / self.answered * 1e6)
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted.get(sorted.len() / 2).copied()
}

/// How the churning client sends its changes.
#[derive(Clone, Copy)]
enum Pacing {
    /// Each 10 ms step's changes in one write (pipelined), then their acks.
    Bursts,
    /// Each change waits for the previous one's ack: a wake-up of the connection and of
    /// the writer per change, the costliest way to send the same changes.
    OneAtATime,
}

impl Pacing {
    fn label(self) -> &'static str {
        match self {
            Pacing::Bursts => "svcdns + 1k changes/s (10 ms bursts)",
            Pacing::OneAtATime => "svcdns + 1k changes/s (one at a time)",
        }
    }
}

/// Registers and deregisters instances of a service of their own at
/// [`CHURN_PER_SECOND`], paced in 10 ms steps, until stopped.
struct Churner {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<f64>,
}

impl Churner {
    fn start(socket: &Path, pacing: Pacing) -> Churner {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let socket = socket.to_path_buf();
        let thread = std::thread::spawn(move || {
            let mut session = client::Session::open(&socket);
            let started = Instant::now();
            let mut changes = 0usize;
            let step = Duration::from_millis(10);
            let per_step = CHURN_PER_SECOND / 100;
            let mut next = Instant::now();
            let mut burst = String::new();
            while !flag.load(Ordering::Relaxed) {
                burst.clear();
                for _ in 0..per_step {
                    let id = changes / 2 % 500;
                    let line = if changes.is_multiple_of(2) {
                        client::register(
                            "churn",
                            &format!("churn-{id}"),
                            crate::registrations::address(id),
                            9000,
                            "",
                        )
                    } else {
                        format!("{{\"op\":\"deregister\",\"service\":\"churn\",\"id\":\"churn-{id}\"}}\n")
                    };
                    match pacing {
                        Pacing::Bursts => burst.push_str(&line),
                        Pacing::OneAtATime => {
                            session.request(&line);
                        }
                    }
                    changes += 1;
                }
                if !burst.is_empty() {
                    session.burst(&burst, per_step);
                }
                next += step;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            changes as f64 / started.elapsed().as_secs_f64()
        });
        Churner { stop, thread }
    }

    /// Stops and returns the changes a second achieved.
    fn stop(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0.0)
    }
}

/// The dataset as a zone file, record for record what svcdns serves for it.
fn zone_text() -> String {
    let mut zone = String::from(
        "$ORIGIN svc.internal.\n$TTL 5\n@ SOA ns.svc.internal. hostmaster.svc.internal. 1 3600 600 86400 5\n@ NS ns.svc.internal.\nns A 127.0.0.1\n",
    );
    for s in 0..BASE_SERVICES {
        for i in 0..BASE_INSTANCES {
            let address = format!("10.{}.{}.{}", s / 250 % 250, s % 250, i + 1);
            let _ = writeln!(zone, "web{s} A {address}");
            let _ = writeln!(zone, "web{s}-{i}.web{s} A {address}");
            let _ = writeln!(zone, "web{s}-{i}.web{s} TXT \"version=1\"");
            let _ = writeln!(
                zone,
                "_web{s}._tcp SRV 1 1 {} web{s}-{i}.web{s}.svc.internal.",
                8080 + i
            );
        }
    }
    zone
}

#[derive(Clone, Copy)]
enum PeerKind {
    Knot,
    Nsd,
    Bind9,
    HickoryDns,
}

impl PeerKind {
    fn name(self) -> &'static str {
        match self {
            PeerKind::Knot => "knot",
            PeerKind::Nsd => "nsd",
            PeerKind::Bind9 => "bind9",
            PeerKind::HickoryDns => "hickory-dns",
        }
    }
}

/// A peer server process, stopped when dropped.
/// A peer server process, killed when dropped.
pub struct Peer {
    child: Child,
    pub address: SocketAddr,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Threads each peer answers with: one per CPU, as svcdns does.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn find_program(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A loopback port free for both UDP and TCP right now.
pub fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
        let port = udp.local_addr().expect("local address").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Peer {
    fn start(kind: PeerKind, dir: &Path, zone_file: &Path) -> Result<Peer, String> {
        let port = free_port();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let home = dir.join(kind.name());
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        let zone = zone_file.display();
        let threads = cpus();
        let h = home.display();
        let (program, args, config): (&str, Vec<String>, String) = match kind {
            PeerKind::Knot => (
                "knotd",
                vec!["-c".into(), format!("{h}/knot.conf")],
                format!(
                    "server:\n    rundir: \"{h}\"\n    listen: 127.0.0.1@{port}\n    udp-workers: {threads}\n    tcp-workers: 1\ndatabase:\n    storage: \"{h}\"\ntemplate:\n  - id: default\n    storage: \"{h}\"\n    file: \"{zone}\"\n    zonefile-sync: -1\n    journal-content: none\nzone:\n  - domain: svc.internal.\n"
                ),
            ),
            PeerKind::Nsd => (
                "nsd",
                vec!["-d".into(), "-c".into(), format!("{h}/nsd.conf")],
                format!(
                    "server:\n    ip-address: 127.0.0.1@{port}\n    server-count: {threads}\n    username: \"\"\n    zonesdir: \"{h}\"\n    database: \"\"\n    pidfile: \"{h}/nsd.pid\"\n    xfrdfile: \"{h}/xfrd.state\"\n    zonelistfile: \"{h}/zone.list\"\n    logfile: \"{h}/log\"\n    rrl-ratelimit: 0\nremote-control:\n    control-enable: no\nzone:\n    name: svc.internal.\n    zonefile: \"{zone}\"\n"
                ),
            ),
            PeerKind::Bind9 => (
                "named",
                vec!["-g".into(), "-n".into(), threads.to_string(), "-c".into(), format!("{h}/named.conf")],
                format!(
                    "options {{ directory \"{h}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; recursion no; pid-file \"{h}/named.pid\"; }};\ncontrols {{ }};\nzone \"svc.internal\" {{ type primary; file \"{zone}\"; }};\n"
                ),
            ),
            PeerKind::HickoryDns => (
                "hickory-dns",
                vec!["-q".into(), "-c".into(), format!("{h}/hickory.toml"), "-p".into(), port.to_string()],
                format!(
                    "listen_addrs_ipv4 = [\"127.0.0.1\"]\ndrop_privileges = false\n[[zones]]\nzone = \"svc.internal\"\nzone_type = \"Primary\"\nfile = \"{zone}\"\n"
                ),
            ),
        };
        let binary = find_program(program, &["/opt/hickory/bin"])
            .ok_or_else(|| format!("{program} is not installed"))?;
        let config_name = args
            .iter()
            .find(|a| a.starts_with(&*h.to_string()))
            .cloned()
            .unwrap_or_default();
        std::fs::write(&config_name, config).map_err(|e| e.to_string())?;
        Peer::spawn(&binary, &args, &home, address)
    }

    /// Runs `binary` with `args` in `home`, its output in `home/log.txt`, and waits
    /// until it answers `svc.internal.`'s SOA on `address`; the end of its log if it
    /// exits or does not answer within 20 s.
    pub fn spawn(
        binary: &Path,
        args: &[String],
        home: &Path,
        address: SocketAddr,
    ) -> Result<Peer, String> {
        let log_file = home.join("log.txt");
        let log = std::fs::File::create(&log_file).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .args(args)
            .current_dir(home)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut peer = Peer { child, address };
        let log_tail = || {
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            tail.join(" / ")
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = peer.child.try_wait() {
                return Err(format!("exited ({status}): {}", log_tail()));
            }
            if answers_once(address) {
                return Ok(peer);
            }
            if Instant::now() > deadline {
                return Err(format!("did not answer on {address}: {}", log_tail()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Whether `address` answers the zone's SOA (NOERROR, one answer: the zone is loaded)
/// within 200 ms.
fn answers_once(address: SocketAddr) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let query =
        b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03svc\x08internal\x00\x00\x06\x00\x01";
    let mut buffer = [0; 512];
    let _ = socket.send_to(query, address);
    matches!(socket.recv_from(&mut buffer), Ok((len, _)) if len > 12 && buffer[3] & 0x0F == 0 && buffer[7] == 1)
}
