//! `bench/soak`: everything at once for `--seconds` (default 300), loopback only,
//! stopping by itself. Leased registrations churn (and expire), ephemeral connections
//! open and drop, dnsperf sends pipelined queries at full rate, and a checker registers
//! one instance at a time and asks DNS for it at once. Reports resident memory after
//! warm-up and at the end (it must stay flat), errors (zero) and acknowledged
//! registrations that DNS answered NXDOMAIN (zero). A check query that gets no answer
//! at all is counted apart: at full dnsperf rate the kernel drops some datagrams.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::client::{self, Session};
use crate::dns::{dnsperf, name, Resolver};
use crate::registrations::address;
use crate::server::Server;
use crate::{option, Table};

/// Everything the load threads count.
#[derive(Default)]
struct Counts {
    leased: AtomicUsize,
    ephemeral_connections: AtomicUsize,
    checked: AtomicUsize,
    missing: AtomicUsize,
    /// Checker queries with no answer within a second (UDP under full dnsperf load).
    lost: AtomicUsize,
    errors: AtomicUsize,
}

pub fn run(args: &[String]) {
    let seconds: u64 = option(args, "--seconds", 300);
    let extra = if args.iter().any(|a| a == "--data-dir") {
        "data_dir: data\n"
    } else {
        ""
    };
    let server = Server::start("soak", extra);
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let table = Table::new(
        &format!("Soak: {seconds} s of leased churn, ephemeral connections, dnsperf and ack-then-query checks at once"),
        &[
            "seconds",
            "leased registrations",
            "ephemeral connections",
            "ack-then-query checks",
            "acknowledged but not in DNS",
            "check queries lost",
            "errors",
            "dnsperf queries/s",
            "RSS after warm-up MiB",
            "RSS at end MiB",
        ],
    );
    let started = Instant::now();
    let threads = vec![
        spawn_loop(&stop, &counts, &server, churn_leases),
        spawn_loop(&stop, &counts, &server, ephemeral_connections),
        spawn_loop(&stop, &counts, &server, ack_then_query),
    ];
    // Warm up, so that the first figure already holds the working set.
    std::thread::sleep(Duration::from_secs((seconds / 10).clamp(1, 30)));
    let rss_start = server.rss();
    let queries = std::env::temp_dir().join(format!("svcdns-soak-{}.txt", std::process::id()));
    let lines: String = (0..300)
        .map(|i| {
            format!(
                "lease{}.svc.internal A\n_check._tcp.svc.internal SRV\n",
                i % 50
            )
        })
        .collect();
    std::fs::write(&queries, lines).expect("query file");
    let remaining = seconds.saturating_sub(started.elapsed().as_secs()).max(1);
    let qps = dnsperf(server.dns, &queries, remaining)
        .map_or("no dnsperf".to_string(), |run| format!("{:.0}", run.qps));
    let _ = std::fs::remove_file(&queries);
    // dnsperf ran to the end; let the other loads run out too.
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        if thread.join().is_err() {
            counts.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mib = |bytes: u64| format!("{:.1}", bytes as f64 / (1024.0 * 1024.0));
    table.row(&[
        format!("{:.0}", started.elapsed().as_secs_f64()),
        counts.leased.load(Ordering::Relaxed).to_string(),
        counts
            .ephemeral_connections
            .load(Ordering::Relaxed)
            .to_string(),
        counts.checked.load(Ordering::Relaxed).to_string(),
        counts.missing.load(Ordering::Relaxed).to_string(),
        counts.lost.load(Ordering::Relaxed).to_string(),
        counts.errors.load(Ordering::Relaxed).to_string(),
        qps,
        mib(rss_start),
        mib(server.rss()),
    ]);
}

/// Where a load thread sends its traffic.
struct Target {
    unix: PathBuf,
    dns: SocketAddr,
}

type Load = fn(&Target, &Counts, &AtomicBool);

fn spawn_loop(
    stop: &Arc<AtomicBool>,
    counts: &Arc<Counts>,
    server: &Server,
    load: Load,
) -> std::thread::JoinHandle<()> {
    let stop = stop.clone();
    let counts = counts.clone();
    let target = Target {
        unix: server.unix.clone(),
        dns: server.dns,
    };
    std::thread::spawn(move || load(&target, &counts, &stop))
}

/// 50 services of 20 instances with 2 s leases, re-registered in bursts so that some
/// lapse and expire between rounds.
fn churn_leases(server: &Target, counts: &Counts, stop: &AtomicBool) {
    let mut session = Session::open(&server.unix);
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let mut burst = String::new();
        for i in 0..500 {
            let n = (round * 500 + i) % 1000;
            burst.push_str(&client::register(
                &format!("lease{}", n % 50),
                &format!("i{}", n / 50),
                address(n),
                8080,
                ",\"ttl\":2",
            ));
        }
        session.burst(&burst, 500);
        counts.leased.fetch_add(500, Ordering::Relaxed);
        round += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Connections that each register a few ephemeral instances and drop.
fn ephemeral_connections(server: &Target, counts: &Counts, stop: &AtomicBool) {
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let mut session = Session::open(&server.unix);
        let burst: String = (0..5)
            .map(|i| {
                client::register(
                    "sidecar",
                    &format!("c{}-{i}", n % 200),
                    address(i),
                    9000,
                    ",\"ephemeral\":true",
                )
            })
            .collect();
        session.burst(&burst, 5);
        drop(session);
        n += 1;
        counts.ephemeral_connections.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One registration at a time, each looked up in DNS as soon as it is acknowledged.
fn ack_then_query(server: &Target, counts: &Counts, stop: &AtomicBool) {
    let mut session = Session::open(&server.unix);
    let mut resolver = Resolver::new(server.dns);
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("k{}", n % 500);
        let reply = session
            .request(&client::register("check", &id, address(n), 80, ""))
            .to_string();
        if !reply.contains("\"ok\":true") {
            counts.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match resolver.rcode(&name(&format!("{id}.check.svc.internal.")), RecordType::A) {
            Some(ResponseCode::NoError) => {}
            Some(_) => {
                counts.missing.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                counts.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        counts.checked.fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
}
