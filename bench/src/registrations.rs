//! `bench/registrations`: how fast acknowledged registrations go, over one and over
//! eight pipelined connections, and how soon an acknowledged registration answers.

use std::net::Ipv4Addr;
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::client::{self, pipeline_parallel, Session};
use crate::dns::{name, Resolver};
use crate::server::Server;
use crate::{ms, option, quantile, Table};

pub fn run(args: &[String]) {
    let count: usize = option(args, "--count", 200_000);
    // `--data-dir`: also with the durable store, each batch committed (fsync) before
    // its acknowledgements.
    let mut stores = vec![("memory", "")];
    if args.iter().any(|arg| arg == "--data-dir") {
        stores.push(("redb (data_dir)", "data_dir: data\n"));
    }
    let table = Table::new(
        &format!(
            "Acknowledged registrations ({count} instances, 10 per service, pipelined {} deep)",
            client::WINDOW
        ),
        &[
            "store",
            "connections",
            "seconds",
            "registrations/s",
            "ack p50 ms",
            "ack p99 ms",
            "refused",
        ],
    );
    for (store, extra) in stores {
        for connections in [1, 8] {
            registrations(&table, count, store, extra, connections);
        }
    }

    // Ack-to-visible: one registration at a time into a small service; as soon as the
    // acknowledgement arrives the same program asks DNS for the new instance. Several
    // runs, each on a fresh server, since single tail latencies are noisy here.
    let rounds: usize = option(args, "--visible", 3_000);
    let runs: usize = option(args, "--runs", 3);
    let table = Table::new(
        &format!("Acknowledged means resolvable ({rounds} re-registrations in a 20-instance service, one at a time; {runs} runs)"),
        &["run", "ack p50 ms", "ack p99 ms", "ack-to-visible p50 ms", "ack-to-visible p99 ms", "queries that did not see it yet"],
    );
    let mut p99s = Vec::new();
    for run in 1..=runs {
        let visible = ack_to_visible(rounds, run);
        p99s.push(quantile(&visible.visible_us, 0.99));
        table.row(&[
            run.to_string(),
            ms(quantile(&visible.ack_us, 0.5)),
            ms(quantile(&visible.ack_us, 0.99)),
            ms(quantile(&visible.visible_us, 0.5)),
            ms(quantile(&visible.visible_us, 0.99)),
            visible.not_yet.to_string(),
        ]);
    }
    p99s.sort_unstable();
    println!(
        "\nmedian ack-to-visible p99 over {runs} runs: {} ms",
        ms(p99s[p99s.len() / 2])
    );
}

/// Sorted latencies of one ack-to-visible run.
struct Visible {
    ack_us: Vec<u64>,
    visible_us: Vec<u64>,
    /// Queries, after an acknowledgement, that did not show the change yet.
    not_yet: usize,
}

fn ack_to_visible(rounds: usize, run: usize) -> Visible {
    let server = Server::start(&format!("visible-{run}"), "");
    let mut session = Session::open(&server.unix);
    let mut resolver = Resolver::new(server.dns);
    let mut out = Visible {
        ack_us: Vec::with_capacity(rounds),
        visible_us: Vec::with_capacity(rounds),
        not_yet: 0,
    };
    for i in 0..rounds {
        let id = format!("v{}", i % 20);
        // Replace one of 20 instances with a new address each round.
        let line = client::register("small", &id, address(i), 80, "");
        let sent = Instant::now();
        let reply = session.request(&line);
        assert!(reply.contains("\"ok\":true"), "{reply}");
        let acked = Instant::now();
        out.ack_us.push((acked - sent).as_micros() as u64);
        let wanted = address(i).to_string();
        let host = name(&format!("{id}.small.svc.internal."));
        loop {
            let response = resolver.query(&host, RecordType::A);
            let seen = response.as_ref().is_some_and(|r| {
                r.metadata.response_code == ResponseCode::NoError
                    && r.answers.iter().any(|a| a.data.to_string() == wanted)
            });
            if seen {
                break;
            }
            out.not_yet += 1;
        }
        out.visible_us.push(acked.elapsed().as_micros() as u64);
    }
    out.ack_us.sort_unstable();
    out.visible_us.sort_unstable();
    out
}

/// A distinct address for every index (10.0.0.1 onwards, record data only).
pub fn address(i: usize) -> Ipv4Addr {
    let n = i as u32 + 1;
    Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

/// One row: `count` registrations over `connections` pipelined connections.
fn registrations(table: &Table, count: usize, store: &str, extra: &str, connections: usize) {
    let server = Server::start(&format!("registrations-{connections}"), extra);
    let lines = (0..count)
        .map(|i| {
            let (service, instance) = (i / 10, i % 10);
            client::register(
                &format!("svc{service}"),
                &format!("i{instance}"),
                address(i),
                8080,
                "",
            )
        })
        .collect();
    let started = Instant::now();
    let mut acks = pipeline_parallel(&server.unix, lines, connections);
    let seconds = started.elapsed().as_secs_f64();
    acks.check("registrations");
    acks.latencies_us.sort_unstable();
    table.row(&[
        store.to_string(),
        connections.to_string(),
        format!("{seconds:.2}"),
        format!("{:.0}", count as f64 / seconds),
        ms(quantile(&acks.latencies_us, 0.5)),
        ms(quantile(&acks.latencies_us, 0.99)),
        acks.refused.to_string(),
    ]);
}
