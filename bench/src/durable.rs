//! `bench/durable`: the durable store (`data_dir`) at scale. Registers `--count`
//! instances (default 1,000,000; half of them leased) over 8 connections, restarts the
//! server and times how long loading them takes; then runs `--cycles` register and
//! deregister cycles (default 1,000,000) over 1,000 keys and follows the file's size.

use std::path::Path;
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::client::{self, pipeline, pipeline_parallel};
use crate::dns::{name, Resolver};
use crate::registrations::address;
use crate::server::Server;
use crate::{option, Table};

const DURABLE: &str = "data_dir: data\n";
/// Connections the clients use, as in `bench/registrations`.
const CONNECTIONS: usize = 8;

pub fn run(args: &[String]) {
    let count: usize = option(args, "--count", 1_000_000);
    let cycles: usize = option(args, "--cycles", 1_000_000);
    load(count);
    churn(cycles);
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn store_size(server: &Server) -> u64 {
    std::fs::metadata(server.dir.join("data/registry.redb")).map_or(0, |m| m.len())
}

/// The `seconds` of the last line of the server's log that contains `message`.
pub fn logged_seconds(dir: &Path, message: &str) -> String {
    let log = std::fs::read_to_string(dir.join("svcdns.log")).unwrap_or_default();
    log.lines()
        .filter(|line| line.contains(message))
        .filter_map(|line| line.split("seconds=\"").nth(1)?.split('"').next())
        .next_back()
        .unwrap_or("?")
        .to_string()
}

fn load(count: usize) {
    let table = Table::new(
        &format!("Durable registry: {count} instances (10 per service, half leased for an hour) registered over {CONNECTIONS} connections, then a restart"),
        &[
            "instances",
            "registrations/s",
            "store MiB",
            "restart to ready s",
            "load s (log)",
            "of which reading the store s",
            "RSS after load MiB",
            "first and last service answer",
        ],
    );
    let mut server = Server::start("durable-load", DURABLE);
    let lines = (0..count)
        .map(|i| {
            let lease = if i % 2 == 0 { ",\"ttl\":3600" } else { "" };
            client::register(
                &format!("svc{}", i / 10),
                &format!("i{}", i % 10),
                address(i),
                8080,
                lease,
            )
        })
        .collect();
    let started = Instant::now();
    pipeline_parallel(&server.unix, lines, CONNECTIONS).check("registrations");
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let size = store_size(&server);
    let restart = server.restart();
    let mut resolver = Resolver::new(server.dns);
    let last = format!("svc{}.svc.internal.", (count.max(1) - 1) / 10);
    let answered = ["svc0.svc.internal.", last.as_str()]
        .iter()
        .all(|n| resolver.rcode(&name(n), RecordType::A) == Some(ResponseCode::NoError));
    table.row(&[
        count.to_string(),
        format!("{rate:.0}"),
        mib(size),
        format!("{:.2}", restart.as_secs_f64()),
        logged_seconds(&server.dir, "registry loaded"),
        logged_seconds(&server.dir, "read the store"),
        mib(server.rss()),
        if answered { "yes" } else { "NO" }.to_string(),
    ]);
}

fn churn(cycles: usize) {
    let table = Table::new(
        &format!("Durable store under churn: register then deregister, 1,000 keys, {CONNECTIONS} connections"),
        &["cycles done", "store MiB", "cycles/s"],
    );
    let server = Server::start("durable-churn", DURABLE);
    let step = (cycles / 4).max(1);
    let mut done = 0;
    table.row(&["0".to_string(), mib(store_size(&server)), "-".to_string()]);
    while done < cycles {
        let chunk = step.min(cycles - done);
        let started = Instant::now();
        // Each connection owns the keys congruent to it, so a key's register and
        // deregister stay in order.
        std::thread::scope(|scope| {
            for connection in 0..CONNECTIONS {
                let socket = server.unix.clone();
                scope.spawn(move || {
                    let lines = (0..chunk)
                        .filter(move |i| i % CONNECTIONS == connection)
                        .flat_map(move |i| {
                            let key = (done + i) % 1000;
                            let id = format!("k{key}");
                            [
                                client::register("churn", &id, address(key), 8080, ""),
                                format!(
                                    "{{\"op\":\"deregister\",\"service\":\"churn\",\"id\":\"{id}\"}}\n"
                                ),
                            ]
                        });
                    pipeline(&socket, lines).check("churn");
                });
            }
        });
        done += chunk;
        table.row(&[
            done.to_string(),
            mib(store_size(&server)),
            format!("{:.0}", chunk as f64 / started.elapsed().as_secs_f64()),
        ]);
    }
}
