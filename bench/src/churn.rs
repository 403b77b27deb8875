//! `bench/churn`: DNS latency while the registry churns. A prober queries steadily
//! (one query at a time, about 2,000 a second) while, in turn: nothing happens; 400
//! connections holding an ephemeral instance each close at once; 50,000 leases expire
//! while a client registers every 20 ms; one client re-registers the instances of a
//! 500-instance service as fast as it can; a client lists 100,000 instances.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::client::{self, pipeline, pipeline_parallel, Session};
use crate::dns::{name, Prober, Probes, Resolver};
use crate::registrations::address;
use crate::scale::dataset;
use crate::server::Server;
use crate::{ms, option, quantile, Table};

pub fn run(args: &[String]) {
    let leases: usize = option(args, "--leases", 50_000);
    let hammer_seconds: u64 = option(args, "--seconds", 5);
    let table = Table::new(
        "DNS latency during churn (the 3k dataset registered; probes of _web1._tcp SRV, web2 A and the churning service)",
        &["scenario", "probes", "p50 ms", "p99 ms", "max ms", "lost", "outcome"],
    );
    idle(&table);
    ephemeral_disconnects(&table);
    mass_expiry(&table, leases);
    hammer(&table, hammer_seconds);
    big_lists(&table);
}

fn server_with_dataset(name: &str) -> Server {
    let server = Server::start(name, "");
    pipeline_parallel(&server.unix, dataset(3000), 8).check("dataset");
    server
}

fn probe_names(extra: &[(&str, RecordType)]) -> Vec<(hickory_proto::rr::Name, RecordType)> {
    let mut names = vec![
        (name("_web1._tcp.svc.internal."), RecordType::SRV),
        (name("web2.svc.internal."), RecordType::A),
    ];
    names.extend(extra.iter().map(|(n, t)| (name(n), *t)));
    names
}

fn report(
    table: &Table,
    scenario: &str,
    probes: &Probes,
    from: Instant,
    to: Instant,
    outcome: String,
) {
    let (count, latencies, lost) = probes.window(from, to);
    table.row(&[
        scenario.to_string(),
        count.to_string(),
        ms(quantile(&latencies, 0.5)),
        ms(quantile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or(0)),
        lost.to_string(),
        outcome,
    ]);
}

fn idle(table: &Table) {
    let server = server_with_dataset("churn-idle");
    let prober = Prober::start(server.dns, probe_names(&[]));
    let from = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let to = Instant::now();
    report(
        table,
        "idle (baseline)",
        &prober.finish(),
        from,
        to,
        String::new(),
    );
}

/// Polls `host` A until it is NXDOMAIN; the time it took.
fn until_gone(resolver: &mut Resolver, host: &str, limit: Duration) -> Option<Duration> {
    let host = name(host);
    let started = Instant::now();
    while started.elapsed() < limit {
        if resolver.rcode(&host, RecordType::A) == Some(ResponseCode::NXDomain) {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn shown(gone: Option<Duration>) -> String {
    gone.map_or("not gone within the limit".into(), |d| {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    })
}

fn ephemeral_disconnects(table: &Table) {
    let server = server_with_dataset("churn-ephemeral");
    let sessions: Vec<Session> = (0..400)
        .map(|i| {
            let mut session = Session::open(&server.unix);
            let line = client::register(
                "eph",
                &format!("e{i}"),
                address(i),
                80,
                ",\"ephemeral\":true",
            );
            assert!(session.request(&line).contains("\"ok\":true"));
            session
        })
        .collect();
    let prober = Prober::start(
        server.dns,
        probe_names(&[("e1.eph.svc.internal.", RecordType::A)]),
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut resolver = Resolver::new(server.dns);
    let from = Instant::now();
    drop(sessions);
    let gone = until_gone(&mut resolver, "eph.svc.internal.", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let to = Instant::now();
    report(
        table,
        "400 ephemeral instances' connections close at once",
        &prober.finish(),
        from,
        to,
        format!("all 400 gone from DNS after {}", shown(gone)),
    );
}

fn mass_expiry(table: &Table, leases: usize) {
    let server = server_with_dataset("churn-expiry");
    let ttl = 3;
    let prober = Prober::start(
        server.dns,
        probe_names(&[("lease0.svc.internal.", RecordType::A)]),
    );
    let ticking = AtomicBool::new(true);
    let ticks = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        // A client registering every 20 ms throughout.
        scope.spawn(|| {
            let mut session = Session::open(&server.unix);
            while ticking.load(Ordering::Relaxed) {
                let n = ticks.fetch_add(1, Ordering::Relaxed);
                let line = client::register("tick", &format!("t{}", n % 50), address(n), 80, "");
                assert!(session.request(&line).contains("\"ok\":true"));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let lines = (0..leases)
            .map(|i| {
                let extra = format!(",\"ttl\":{ttl}");
                client::register(
                    &format!("lease{}", i / 10),
                    &format!("l{}", i % 10),
                    address(i),
                    80,
                    &extra,
                )
            })
            .collect();
        let registered = Instant::now();
        pipeline_parallel(&server.unix, lines, 8).check("leases");
        let loaded = registered.elapsed();
        let mut resolver = Resolver::new(server.dns);
        let last = format!("lease{}.svc.internal.", (leases - 1) / 10);
        // Every lease ends between `ttl` and `ttl + loaded` after `registered`.
        let from = registered + Duration::from_secs(ttl) - Duration::from_millis(500);
        let gone = until_gone(&mut resolver, &last, Duration::from_secs(ttl + 15));
        let first_gone = resolver.rcode(&name("lease0.svc.internal."), RecordType::A);
        std::thread::sleep(Duration::from_millis(300));
        let to = Instant::now();
        ticking.store(false, Ordering::Relaxed);
        let probes = prober.finish();
        report(
            table,
            &format!("{leases} leases (ttl {ttl} s) expire while a client registers every 20 ms"),
            &probes,
            from,
            to,
            format!(
                "registered in {:.2} s; the last lease gone from DNS {} after its deadline; the first one gone too: {}",
                loaded.as_secs_f64(),
                shown(gone.map(|g| g.saturating_sub(Duration::from_secs(ttl)))),
                first_gone == Some(ResponseCode::NXDomain)
            ),
        );
    });
}

fn hammer(table: &Table, seconds: u64) {
    let server = server_with_dataset("churn-hammer");
    let lines: Vec<String> = (0..500)
        .map(|i| client::register("hammer", &format!("h{i}"), address(i), 80, ""))
        .collect();
    pipeline(&server.unix, lines.into_iter()).check("hammer setup");
    let prober = Prober::start(
        server.dns,
        probe_names(&[
            ("h1.hammer.svc.internal.", RecordType::A),
            ("_hammer._tcp.svc.internal.", RecordType::SRV),
        ]),
    );
    std::thread::sleep(Duration::from_millis(300));
    let from = Instant::now();
    let until = from + Duration::from_secs(seconds);
    let mut n = 0usize;
    let changes = std::iter::from_fn(|| {
        n += 1;
        (Instant::now() < until).then(|| {
            client::register(
                "hammer",
                &format!("h{}", n % 500),
                address(1000 + n),
                80,
                "",
            )
        })
    });
    let mut acks = pipeline(&server.unix, changes);
    let to = Instant::now();
    acks.check("hammer");
    acks.latencies_us.sort_unstable();
    let rate = acks.latencies_us.len() as f64 / (to - from).as_secs_f64();
    report(
        table,
        "one client re-registers a 500-instance service's instances, pipelined",
        &prober.finish(),
        from,
        to,
        format!(
            "{rate:.0} changes/s, ack p99 {} ms",
            ms(quantile(&acks.latencies_us, 0.99))
        ),
    );
}

fn big_lists(table: &Table) {
    let server = server_with_dataset("churn-list");
    let lines = (0..100_000)
        .map(|i| {
            client::register(
                &format!("listed{}", i / 10),
                &format!("l{}", i % 10),
                address(i),
                80,
                "",
            )
        })
        .collect();
    pipeline_parallel(&server.unix, lines, 8).check("list setup");
    let prober = Prober::start(server.dns, probe_names(&[]));
    std::thread::sleep(Duration::from_millis(300));
    let from = Instant::now();
    let mut session = Session::open(&server.unix);
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let reply = session.request("{\"op\":\"list\"}\n");
        assert!(reply.contains("\"ok\":true"), "list failed");
        sizes.push(reply.len());
    }
    let to = Instant::now();
    report(
        table,
        "a client lists all 103,000 instances, 3 times",
        &prober.finish(),
        from,
        to,
        format!(
            "{:.0} ms per list of {:.1} MB",
            (to - from).as_secs_f64() * 1000.0 / 3.0,
            sizes.iter().sum::<usize>() as f64 / 3.0 / 1e6
        ),
    );
}
