//! `bench/scale`: load time, memory and DNS throughput at 3k, 100k and 1M instances,
//! and the cost of one change in a registry of 10k services / a 10k-instance service.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::client::{self, pipeline_parallel, Session};
use crate::registrations::address;
use crate::server::Server;
use crate::{ms, option, quantile, Table};

/// The dataset of `../shared/bench/gen.py`: 1000 services `webS` x 3 instances.
pub const BASE_SERVICES: usize = 1000;
pub const BASE_INSTANCES: usize = 3;

pub fn run(args: &[String]) {
    let seconds: u64 = option(args, "--seconds", 5);
    let repeat: usize = option(args, "--repeat", 3);
    let sizes: Vec<usize> = option(args, "--sizes", "3000,100000,1000000".to_string())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let queries = QueryFiles::write();
    let has_dnsperf = Command::new("dnsperf").arg("-h").output().is_ok();
    if !has_dnsperf {
        eprintln!("dnsperf is not installed (apt-get install dnsperf): qps columns are left empty");
    }
    // Every size is loaded first and kept running; dnsperf then visits them in turn,
    // `repeat` rounds, so that the machine's drifts fall on every size alike.
    let mut loaded = Vec::new();
    for &total in &sizes {
        let server = Server::start(&format!("scale-{total}"), "");
        let empty_rss = server.rss();
        let started = Instant::now();
        let acks = pipeline_parallel(&server.unix, dataset(total), 8);
        let load = started.elapsed().as_secs_f64();
        acks.check("load");
        loaded.push(Loaded {
            total,
            load,
            empty_rss,
            server,
            qps: vec![Vec::new(); 3],
            cpu: 0.0,
            answered: 0.0,
        });
    }
    std::thread::sleep(Duration::from_secs(1));
    let files = [&queries.srv, &queries.a, &queries.mixed];
    for _ in 0..repeat {
        for (kind, file) in files.iter().enumerate() {
            for size in &mut loaded {
                let cpu_before = size.server.cpu_seconds();
                if let Some(qps) = has_dnsperf
                    .then(|| crate::dns::dnsperf(size.server.dns, file, seconds).map(|run| run.qps))
                    .flatten()
                {
                    size.qps[kind].push(qps);
                    size.answered += qps * seconds as f64;
                }
                size.cpu += size.server.cpu_seconds() - cpu_before;
            }
        }
    }
    let table = Table::new(
        &format!("Scale: the 3k dataset of ../shared/bench plus filler services of 10 instances; dnsperf -c 8 -q 500 -T 1 -l {seconds} on the 3k names; median of {repeat} runs, the sizes taking turns"),
        &["instances", "load s", "registrations/s", "RSS MiB", "bytes/instance", "qps SRV", "qps A", "qps mixed", "mixed vs first", "server CPU µs/query", "CPU vs first"],
    );
    let baseline = loaded.first().and_then(|size| median(&size.qps[2]));
    let cpu_per_query =
        |size: &Loaded| (size.answered > 0.0).then(|| size.cpu / size.answered * 1e6);
    let baseline_cpu = loaded.first().and_then(cpu_per_query);
    for size in &loaded {
        let rss = size.server.rss();
        let show = |q: Option<f64>| q.map_or("-".into(), |q| format!("{q:.0}"));
        let mixed = median(&size.qps[2]);
        let ratio = match (mixed, baseline) {
            (Some(m), Some(b)) if b > 0.0 => format!("{:.2}", m / b),
            _ => "-".into(),
        };
        let cpu = cpu_per_query(size);
        let cpu_ratio = match (cpu, baseline_cpu) {
            (Some(c), Some(b)) if b > 0.0 => format!("{:.2}", c / b),
            _ => "-".into(),
        };
        table.row(&[
            size.total.to_string(),
            format!("{:.2}", size.load),
            format!("{:.0}", size.total as f64 / size.load),
            format!("{:.0}", rss as f64 / 1048576.0),
            format!(
                "{:.0}",
                rss.saturating_sub(size.empty_rss) as f64 / size.total as f64
            ),
            show(median(&size.qps[0])),
            show(median(&size.qps[1])),
            show(mixed),
            ratio,
            cpu.map_or("-".into(), |c| format!("{c:.1}")),
            cpu_ratio,
        ]);
    }
    drop(loaded);
    change_latency(args);
}

/// Loads the dataset of `--size` instances, prints where the server listens, and keeps
/// it running until stdin closes.
pub fn hold(args: &[String]) {
    let total: usize = option(args, "--size", 3000);
    let server = Server::start(&format!("hold-{total}"), "");
    pipeline_parallel(&server.unix, dataset(total), 8).check("load");
    println!(
        "dns={} pid={} rss={}",
        server.dns,
        server.pid(),
        server.rss()
    );
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
        line.clear();
    }
}

/// A loaded server of one size, and what dnsperf saw of it.
struct Loaded {
    total: usize,
    load: f64,
    empty_rss: u64,
    server: Server,
    /// Per query file (SRV, A, mixed): queries per second of each run.
    qps: Vec<Vec<f64>>,
    cpu: f64,
    answered: f64,
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

/// Acknowledgement time of single changes in a big registry: one instance of a
/// 10k-instance service, and a new service among 10k.
fn change_latency(args: &[String]) {
    let rounds: usize = option(args, "--changes", 2000);
    let server = Server::start("changes", "");
    let mut lines: Vec<String> = (0..10_000)
        .map(|i| client::register("huge", &format!("h{i}"), address(i), 80, ""))
        .collect();
    lines.extend((0..10_000).map(|i| client::register(&format!("s{i}"), "i1", address(i), 80, "")));
    pipeline_parallel(&server.unix, lines, 8).check("setup");
    let mut session = Session::open(&server.unix);
    let mut timed = |line: String| {
        let sent = Instant::now();
        let reply = session.request(&line);
        assert!(reply.contains("\"ok\":true"), "{reply}");
        sent.elapsed().as_micros() as u64
    };
    let mut in_huge: Vec<u64> = (0..rounds)
        .map(|i| {
            // Moves instance h{i} to a new address: a change to a 10k-instance service.
            timed(client::register(
                "huge",
                &format!("h{}", i % 10_000),
                address(20_000 + i),
                80,
                "",
            ))
        })
        .collect();
    let mut new_services: Vec<u64> = (0..rounds)
        .map(|i| {
            timed(client::register(
                &format!("new{i}"),
                "i1",
                address(i),
                80,
                "",
            ))
        })
        .collect();
    in_huge.sort_unstable();
    new_services.sort_unstable();
    let table = Table::new(
        &format!("One change at a time ({rounds} each), with 10k services and a 10k-instance service registered"),
        &["change", "ack p50 ms", "ack p99 ms", "ack max ms"],
    );
    for (what, latencies) in [
        (
            "re-register an instance of the 10k-instance service",
            &in_huge,
        ),
        ("register a new service among 10k", &new_services),
    ] {
        table.row(&[
            what.to_string(),
            ms(quantile(latencies, 0.5)),
            ms(quantile(latencies, 0.99)),
            ms(*latencies.last().unwrap_or(&0)),
        ]);
    }
}

/// The 3k dataset, then filler services of 10 instances up to `total`.
pub fn dataset(total: usize) -> Vec<String> {
    let mut lines = Vec::with_capacity(total);
    for s in 0..BASE_SERVICES {
        for i in 0..BASE_INSTANCES {
            let address = Ipv4Addr::new(10, (s / 250 % 250) as u8, (s % 250) as u8, i as u8 + 1);
            lines.push(client::register(
                &format!("web{s}"),
                &format!("web{s}-{i}"),
                address,
                8080 + i as u16,
                ",\"meta\":{\"version\":\"1\"}",
            ));
        }
    }
    let filler = total.saturating_sub(lines.len());
    for n in 0..filler {
        lines.push(client::register(
            &format!("big{}", n / 10),
            &format!("big{}-{}", n / 10, n % 10),
            address(n),
            8080,
            ",\"meta\":{\"version\":\"1\"}",
        ));
    }
    lines
}

/// dnsperf's query files for the 3k names (as `gen.py` writes them).
pub struct QueryFiles {
    dir: PathBuf,
    pub srv: PathBuf,
    pub a: PathBuf,
    pub mixed: PathBuf,
}

impl QueryFiles {
    pub fn write() -> QueryFiles {
        let dir = std::env::temp_dir().join(format!("svcdns-bench-queries-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("query directory");
        let mut random = 1u64;
        let mut next = move |bound: usize| {
            random = random
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((random >> 33) as usize) % bound
        };
        let mut srv = String::new();
        let mut a = String::new();
        let mut mixed = String::new();
        for _ in 0..100_000 {
            srv.push_str(&format!(
                "_web{}._tcp.svc.internal. SRV\n",
                next(BASE_SERVICES)
            ));
            a.push_str(&format!("web{}.svc.internal. A\n", next(BASE_SERVICES)));
            let s = next(BASE_SERVICES);
            match next(10) {
                0..=5 => mixed.push_str(&format!("_web{s}._tcp.svc.internal. SRV\n")),
                6..=8 => mixed.push_str(&format!("web{s}.svc.internal. A\n")),
                _ => mixed.push_str(&format!("nx{s}.svc.internal. A\n")),
            }
        }
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("query file");
            path
        };
        QueryFiles {
            srv: write("q-srv.txt", &srv),
            a: write("q-a.txt", &a),
            mixed: write("q-mixed.txt", &mixed),
            dir,
        }
    }
}

impl Drop for QueryFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
