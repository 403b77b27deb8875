//! `bench/etcd`: the registry on etcd (DESIGN §6), with a 3-member etcd cluster on
//! loopback and two svcdns nodes sharing it.
//! - Ack on node A to visible on node B: one registration at a time on A, while a
//!   watcher on B (its events follow B's snapshot) notes when each arrives.
//! - Registrations/s through etcd over 8 pipelined connections, permanent and leased,
//!   beside etcd's own put rate from 8 clients putting one key at a time (etcd's JSON
//!   gateway, so no client library is needed here).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::client::{self, pipeline_parallel, Session};
use crate::durable::logged_seconds;
use crate::registrations::address;
use crate::server::Server;
use crate::{ms, option, quantile, Table};

// Shared with the tests; the bench uses only part of it.
#[allow(dead_code)]
#[path = "../../tests/common/etcd_cluster.rs"]
mod etcd_cluster;

use etcd_cluster::{etcd_missing, EtcdCluster};

const CONNECTIONS: usize = 8;

pub fn run(args: &[String]) {
    if let Some(reason) = etcd_missing() {
        eprintln!("bench/etcd needs etcd: {reason}");
        std::process::exit(1);
    }
    let rounds: usize = option(args, "--visible", 500);
    let count: usize = option(args, "--count", 20_000);
    let total: usize = option(args, "--load", 100_000);
    let etcd = EtcdCluster::start(3);
    let config = etcd.svcdns_config("/bench/", 10);
    let a = Server::start("etcd-a", &config);
    let mut b = Server::start("etcd-b", &config);
    cross_node(&a, &b, rounds);
    throughput(&etcd, &a, count);
    load(&a, &mut b, total);
}

/// Fills the registry up to `total` instances through A, then restarts B, which
/// reads them all from etcd before it answers.
fn load(a: &Server, b: &mut Server, total: usize) {
    let table = Table::new(
        &format!("Restarting a node with {total} instances in etcd"),
        &[
            "instances",
            "restart to ready s",
            "load s (log)",
            "RSS after load MiB",
        ],
    );
    let lines: Vec<String> = (0..total)
        .map(|i| {
            client::register(
                &format!("load-{}", i / 10),
                &format!("l-{i}"),
                address(i),
                80,
                "",
            )
        })
        .collect();
    pipeline_parallel(&a.unix, lines, CONNECTIONS).check("filling the registry");
    let took = b.restart();
    let listed = Session::open(&b.unix)
        .request("{\"op\":\"list\",\"service\":\"load-0\"}\n")
        .matches("\"id\"")
        .count();
    assert_eq!(listed, 10, "the restarted node serves what etcd holds");
    table.row(&[
        total.to_string(),
        format!("{:.2}", took.as_secs_f64()),
        logged_seconds(&b.dir, "registry loaded"),
        format!("{:.1}", b.rss() as f64 / (1024.0 * 1024.0)),
    ]);
}

/// Ack on A to the event on B, one registration at a time.
fn cross_node(a: &Server, b: &Server, rounds: usize) {
    let table = Table::new(
        &format!("Registry on etcd (3 members): {rounds} registrations on node A, one at a time, seen by a watcher on node B"),
        &["ack on A p50 ms", "ack on A p99 ms", "ack on A to visible on B p50 ms", "p99 ms", "max ms", "never seen"],
    );
    let mut watcher = client::connect(&b.unix);
    watcher
        .write_all(b"{\"op\":\"watch\",\"service\":\"xnode\"}\n")
        .expect("watch on B");
    let mut reader = BufReader::new(watcher.try_clone().expect("clone"));
    // The first line lists what is there: from then on, the watcher sees every change.
    let mut listing = String::new();
    reader
        .read_line(&mut listing)
        .expect("the watch's first line");
    let (seen, seen_rx) = std::sync::mpsc::channel::<(usize, Instant)>();
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            let arrived = Instant::now();
            if !line.contains("\"event\":\"register\"") {
                continue;
            }
            let id = line
                .split("\"id\":\"x-")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .and_then(|n| n.parse().ok());
            if let Some(id) = id {
                let _ = seen.send((id, arrived));
            }
        }
    });
    let mut session = Session::open(&a.unix);
    let mut acked = Vec::with_capacity(rounds);
    let mut ack_us = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let line = client::register("xnode", &format!("x-{i}"), address(i), 80, "");
        let sent = Instant::now();
        let reply = session.request(&line);
        assert!(reply.contains("\"ok\":true"), "refused: {reply}");
        let now = Instant::now();
        ack_us.push(now.duration_since(sent).as_micros() as u64);
        acked.push(now);
    }
    let mut visible_us = Vec::with_capacity(rounds);
    let deadline = Instant::now() + Duration::from_secs(10);
    while visible_us.len() < rounds {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((id, arrived)) = seen_rx.recv_timeout(left) else {
            break;
        };
        if let Some(&ack) = acked.get(id) {
            // B may apply it before A's reply reaches the client: that counts as 0.
            visible_us.push(arrived.saturating_duration_since(ack).as_micros() as u64);
        }
    }
    ack_us.sort_unstable();
    visible_us.sort_unstable();
    table.row(&[
        ms(quantile(&ack_us, 0.5)),
        ms(quantile(&ack_us, 0.99)),
        ms(quantile(&visible_us, 0.5)),
        ms(quantile(&visible_us, 0.99)),
        ms(visible_us.last().copied().unwrap_or(0)),
        (rounds - visible_us.len()).to_string(),
    ]);
}

/// Registrations/s through etcd, and etcd's own put rate, in the same run.
fn throughput(etcd: &EtcdCluster, a: &Server, count: usize) {
    let table = Table::new(
        &format!("Writes through etcd: {count} each, {CONNECTIONS} clients"),
        &[
            "writer",
            "seconds",
            "writes/s",
            "ack p50 ms",
            "ack p99 ms",
            "refused",
        ],
    );
    for (kind, extra) in [
        ("svcdns, permanent", ""),
        ("svcdns, leased (ttl 300)", ",\"ttl\":300"),
    ] {
        let service = if extra.is_empty() { "perm" } else { "leased" };
        let lines: Vec<String> = (0..count)
            .map(|i| {
                client::register(
                    &format!("{service}-{}", i / 10),
                    &format!("i-{i}"),
                    address(i),
                    80,
                    extra,
                )
            })
            .collect();
        let started = Instant::now();
        let mut acks = pipeline_parallel(&a.unix, lines, CONNECTIONS);
        let seconds = started.elapsed().as_secs_f64();
        acks.check(kind);
        acks.latencies_us.sort_unstable();
        table.row(&[
            kind.to_string(),
            format!("{seconds:.2}"),
            format!("{:.0}", count as f64 / seconds),
            ms(quantile(&acks.latencies_us, 0.5)),
            ms(quantile(&acks.latencies_us, 0.99)),
            acks.refused.to_string(),
        ]);
    }
    let endpoint = etcd.members[0].endpoint();
    let started = Instant::now();
    let latencies = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|worker| {
                let endpoint = endpoint.clone();
                scope.spawn(move || put_loop(&endpoint, worker, count / CONNECTIONS))
            })
            .collect();
        let mut all = Vec::new();
        for worker in workers {
            all.extend(worker.join().expect("put loop"));
        }
        all
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = latencies;
    latencies.sort_unstable();
    table.row(&[
        "etcd put, one key per request".to_string(),
        format!("{seconds:.2}"),
        format!("{:.0}", latencies.len() as f64 / seconds),
        ms(quantile(&latencies, 0.5)),
        ms(quantile(&latencies, 0.99)),
        "0".to_string(),
    ]);
}

/// `count` puts, one at a time, over one HTTP/1.1 connection to etcd's JSON gateway;
/// each one's latency in microseconds.
fn put_loop(endpoint: &str, worker: usize, count: usize) -> Vec<u64> {
    let mut stream = TcpStream::connect(endpoint).expect("connect to etcd");
    stream.set_nodelay(true).expect("nodelay");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut latencies = Vec::with_capacity(count);
    let value = base64(&[b'v'; 200]);
    for i in 0..count {
        let key = base64(format!("/etcd-bench/{worker}/{i}").as_bytes());
        let body = format!("{{\"key\":\"{key}\",\"value\":\"{value}\"}}");
        let request = format!(
            "POST /v3/kv/put HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let sent = Instant::now();
        stream.write_all(request.as_bytes()).expect("send put");
        let mut length = 0;
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).expect("read reply");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some(value) = header
                .to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
            {
                length = value.parse().unwrap_or(0);
            }
            assert!(
                !header.starts_with("HTTP/1.1") || header.contains(" 200"),
                "etcd refused a put: {header}"
            );
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("read reply body");
        latencies.push(sent.elapsed().as_micros() as u64);
    }
    latencies
}

/// Standard base64, as etcd's JSON gateway takes keys and values.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
