//! Scale and batching: pipelined registrations from many connections, batches that mix
//! changes, answers too large for one DNS message, sampled answers, watchers under
//! load and listings taken while writes go on. Deterministic: no timing assertions,
//! every wait bounded by `WAIT` (loopback only).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use serde_json::{json, Value};

/// Requests written before their replies are read: below the server's pipeline depth
/// (256), so neither side ever waits on the other's socket buffer.
const CHUNK: usize = 200;

fn register_request(service: &str, id: &str, address: &str, port: u16) -> Value {
    json!({"op": "register", "service": service, "id": id, "addresses": [address], "port": port})
}

fn tagged_register_request(service: &str, id: &str, address: &str, tag: &str) -> Value {
    json!({"op": "register", "service": service, "id": id, "addresses": [address], "port": 80,
        "tags": [tag]})
}

/// Writes `requests` in chunks of [`CHUNK`] lines, reading each chunk's replies before
/// the next; returns every reply, in order.
fn pipeline(connection: &mut Registration, requests: &[Value]) -> Vec<Value> {
    let mut replies = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(CHUNK) {
        let lines: String = chunk.iter().map(|r| format!("{r}\n")).collect();
        connection.send_raw(lines.as_bytes());
        for _ in chunk {
            replies.push(connection.read());
        }
    }
    replies
}

/// Pipelines `requests` and checks that every one was acknowledged, in order.
fn pipeline_ok(connection: &mut Registration, requests: &[Value]) {
    for (request, reply) in requests.iter().zip(pipeline(connection, requests)) {
        assert_eq!(reply["ok"], true, "{request} -> {reply}");
        assert_eq!(reply["id"], request["id"], "reply out of order: {reply}");
    }
}

/// The instances of a `list` reply.
fn listed(reply: &Value) -> &Vec<Value> {
    reply["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("not a listing: {reply}"))
}

#[test]
fn acknowledged_means_resolvable_under_concurrent_pipelined_load() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 300;
    let server = Svcdns::start();
    let address = |thread: usize, i: usize| format!("10.{thread}.{}.{}", i / 250, i % 250 + 1);
    let workers: Vec<_> = (0..THREADS)
        .map(|thread| {
            // Svcdns is not Sync (its log receiver): threads take its addresses.
            let (socket, dns) = (server.socket.clone(), server.dns);
            std::thread::spawn(move || {
                let mut connection = Registration::unix(&socket);
                let lines: String = (0..PER_THREAD)
                    .map(|i| {
                        let id = format!("t{thread}-{i}");
                        let tag = format!("t{thread}");
                        let request =
                            tagged_register_request("load", &id, &address(thread, i), &tag);
                        format!("{request}\n")
                    })
                    .collect();
                connection.send_raw(lines.as_bytes());
                for i in 0..PER_THREAD {
                    let id = format!("t{thread}-{i}");
                    let reply = connection.read();
                    assert_eq!(reply["ok"], true, "{id}: {reply}");
                    assert_eq!(reply["id"], id.as_str(), "reply out of order: {reply}");
                    // Acknowledged means already published: no wait, no retry.
                    let name = format!("{id}.load.svc.internal.");
                    let response = query(dns, &name, RecordType::A, Transport::Udp(Some(1232)));
                    assert_eq!(
                        rcode(&response),
                        ResponseCode::NoError,
                        "{name} right after its acknowledgement"
                    );
                    assert_eq!(answer_data(&response), vec![address(thread, i)], "{name}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a registering thread failed");
    }

    // The whole service does not fit one DNS message: hickory compresses only the first
    // 120 names of a message, so past them an A record takes ~32 bytes and an SRV with
    // its target ~64. Count it per thread, by tag (300 records fit), and as a listing.
    for thread in 0..THREADS {
        let tag = format!("t{thread}");
        let a = server.query_over(
            &format!("{tag}.load.svc.internal."),
            RecordType::A,
            Transport::Tcp,
        );
        assert!(!a.metadata.truncation, "{tag}");
        let expected: BTreeSet<String> = (0..PER_THREAD).map(|i| address(thread, i)).collect();
        let got: BTreeSet<String> = answer_data(&a).into_iter().collect();
        assert_eq!(a.answers.len(), PER_THREAD, "{tag}");
        assert_eq!(got, expected, "{tag}");
        let srv = server.query_over(
            &format!("_load._{tag}.svc.internal."),
            RecordType::SRV,
            Transport::Tcp,
        );
        assert!(!srv.metadata.truncation, "{tag}");
        assert_eq!(answers_of(&srv, RecordType::SRV).len(), PER_THREAD, "{tag}");
    }
    let total = THREADS * PER_THREAD;
    let srv = server.query_over("_load._tcp.svc.internal.", RecordType::SRV, Transport::Tcp);
    assert!(
        srv.metadata.truncation,
        "{total} SRV records cannot fit 65535 bytes"
    );
    let sent = srv.answers.len();
    assert!(sent > 100 && sent < total, "{sent} SRV records sent");
    let list = server
        .connect()
        .send(&json!({"op": "list", "service": "load"}));
    assert_eq!(listed(&list).len(), total);
}

#[test]
fn mixed_changes_in_one_batch_keep_order_per_connection() {
    let server = Svcdns::start();
    server.register(register_request("mixed", "other", "10.9.9.9", 80));
    let mut requests = Vec::new();
    for i in 0..50 {
        let id = format!("m-{i}");
        requests.push(register_request(
            "mixed",
            &id,
            &format!("10.1.0.{}", i + 1),
            80,
        ));
        requests.push(json!({"op": "deregister", "service": "mixed", "id": id}));
        requests.push(register_request(
            "mixed",
            &id,
            &format!("10.2.0.{}", i + 1),
            80,
        ));
        if i == 25 {
            requests.push(json!({"op": "deregister", "service": "mixed", "id": "never"}));
        }
    }
    let mut connection = server.connect();
    let lines: String = requests.iter().map(|r| format!("{r}\n")).collect();
    assert!(requests.len() < 256, "within the pipeline depth");
    connection.send_raw(lines.as_bytes());
    for request in &requests {
        let reply = connection.read();
        assert_eq!(
            reply["op"], request["op"],
            "out of order: {request} -> {reply}"
        );
        if request["id"] == "never" {
            assert_eq!(reply["ok"], false, "{reply}");
            assert_eq!(reply["error"]["code"], "not_found", "{reply}");
        } else {
            assert_eq!(reply["ok"], true, "{request} -> {reply}");
            assert_eq!(reply["id"], request["id"], "out of order: {reply}");
        }
    }

    for i in 0..50 {
        let name = format!("m-{i}.mixed.svc.internal.");
        let response = server.query(&name, RecordType::A);
        assert_eq!(
            answer_data(&response),
            vec![format!("10.2.0.{}", i + 1)],
            "{name}"
        );
    }
    let all = server.query_over("mixed.svc.internal.", RecordType::A, Transport::Tcp);
    assert_eq!(
        all.answers.len(),
        51,
        "50 re-registered plus the untouched one"
    );
    let list = connection.send(&json!({"op": "list", "service": "mixed"}));
    assert_eq!(listed(&list).len(), 51);
}

#[test]
fn huge_answers_keep_tc_over_tcp_and_are_logged() {
    const COUNT: usize = 2000;
    let server = Svcdns::start();
    let requests: Vec<Value> = (0..COUNT)
        .map(|i| {
            let address = format!("10.4.{}.{}", i / 250, i % 250 + 1);
            register_request("huge", &format!("h-{i}"), &address, 80)
        })
        .collect();
    pipeline_ok(&mut server.connect(), &requests);

    // Past the 120 names hickory compresses per message, an SRV record with its
    // (never compressed) target takes ~64 bytes: 2000 need over 120 KB.
    let srv = server.query_over("_huge._tcp.svc.internal.", RecordType::SRV, Transport::Tcp);
    assert_eq!(rcode(&srv), ResponseCode::NoError);
    assert!(
        srv.metadata.truncation,
        "an answer cut to fit 65535 bytes must carry TC"
    );
    let sent = answers_of(&srv, RecordType::SRV).len();
    assert!(sent > 100 && sent < COUNT, "{sent} SRV records sent");
    assert!(srv.to_vec().unwrap().len() <= 65535);

    let mut logs = String::new();
    let logged = eventually(WAIT, || {
        logs.push_str(&server.logs());
        logs.push('\n');
        logs.lines().any(|line| {
            line.contains("answer does not fit a 65535-byte DNS message")
                && line.contains("_huge._tcp.svc.internal")
        })
    });
    assert!(logged, "no warning naming the name in the log:\n{logs}");

    // 2000 A records fit one TCP message: 120 of 16 bytes, then ~32 bytes each (the
    // owner name is written in full past hickory's 120 compressed names), ~64 KB.
    let a = server.query_over("huge.svc.internal.", RecordType::A, Transport::Tcp);
    assert!(!a.metadata.truncation);
    assert_eq!(answers_of(&a, RecordType::A).len(), COUNT);
    let distinct: BTreeSet<String> = answer_data(&a).into_iter().collect();
    assert_eq!(distinct.len(), COUNT);
}

#[test]
fn max_answer_records_samples_large_answers() {
    let server = Svcdns::with_dns_config(&[], "max_answer_records: 3");
    let requests: Vec<Value> = (0..20)
        .map(|i| register_request("many", &format!("n-{i}"), &format!("10.5.0.{}", i + 1), 80))
        .chain([
            register_request("pair", "p-1", "10.6.0.1", 80),
            register_request("pair", "p-2", "10.6.0.2", 80),
        ])
        .collect();
    pipeline_ok(&mut server.connect(), &requests);
    let all: BTreeSet<String> = (0..20).map(|i| format!("10.5.0.{}", i + 1)).collect();

    let mut seen_addresses = BTreeSet::new();
    let mut seen_targets = BTreeSet::new();
    for _ in 0..30 {
        let a = server.query("many.svc.internal.", RecordType::A);
        assert!(!a.metadata.truncation);
        let addresses: BTreeSet<String> = answer_data(&a).into_iter().collect();
        assert_eq!(a.answers.len(), 3, "{:?}", answer_data(&a));
        assert_eq!(addresses.len(), 3, "distinct: {addresses:?}");
        assert!(addresses.is_subset(&all), "{addresses:?}");
        seen_addresses.extend(addresses);

        let srv = server.query("_many._tcp.svc.internal.", RecordType::SRV);
        assert!(!srv.metadata.truncation);
        let targets: BTreeSet<String> = answers_of(&srv, RecordType::SRV)
            .iter()
            .map(|r| match &r.data {
                RData::SRV(srv) => srv.target.to_string(),
                other => panic!("not an SRV: {other}"),
            })
            .collect();
        assert_eq!(srv.answers.len(), 3, "{:?}", answer_data(&srv));
        assert_eq!(targets.len(), 3, "distinct: {targets:?}");
        // The additional section has exactly the chosen targets' addresses.
        let additional: BTreeSet<(String, RecordType)> =
            additional_names(&srv).into_iter().collect();
        let expected: BTreeSet<(String, RecordType)> =
            targets.iter().map(|t| (t.clone(), RecordType::A)).collect();
        assert_eq!(additional, expected);
        assert_eq!(additional_names(&srv).len(), 3, "one A per target");
        for record in srv
            .additionals
            .iter()
            .filter(|r| r.record_type() == RecordType::A)
        {
            let id = record.name.to_string();
            let id = id.split('.').next().unwrap();
            let n: usize = id.strip_prefix("n-").unwrap().parse().unwrap();
            assert_eq!(rdata_text(&record.data), format!("10.5.0.{}", n + 1));
        }
        seen_targets.extend(targets);
    }
    assert!(
        seen_addresses.len() > 3,
        "30 samples of 3 out of 20 were all the same: {seen_addresses:?}"
    );
    assert!(
        seen_targets.len() > 3,
        "30 samples of 3 out of 20 were all the same: {seen_targets:?}"
    );

    // At most 3 instances: all of them.
    let a = server.query("pair.svc.internal.", RecordType::A);
    assert_eq!(answer_data(&a), vec!["10.6.0.1", "10.6.0.2"]);
    let srv = server.query("_pair._tcp.svc.internal.", RecordType::SRV);
    assert_eq!(
        answer_data(&srv),
        vec![
            "1 1 80 p-1.pair.svc.internal.",
            "1 1 80 p-2.pair.svc.internal."
        ]
    );
    // An instance's own name is not sampled, and TCP samples the same way.
    let one = server.query("n-7.many.svc.internal.", RecordType::A);
    assert_eq!(answer_data(&one), vec!["10.5.0.8"]);
    let tcp = server.query_over("many.svc.internal.", RecordType::A, Transport::Tcp);
    assert_eq!(tcp.answers.len(), 3);
}

#[test]
fn filtered_watchers_only_see_their_service() {
    const BUSY: usize = 20_000;
    let server = Svcdns::start();
    let mut unfiltered = server.connect();
    let reply = unfiltered.send(&json!({"op": "watch"}));
    assert_eq!(reply["ok"], true, "{reply}");
    let mut quiet = server.connect();
    let reply = quiet.send(&json!({"op": "watch", "service": "quiet"}));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(listed(&reply).len(), 0);

    let requests: Vec<Value> = (0..BUSY)
        .map(|i| {
            let address = format!("10.{}.{}.{}", 7 + i / 62500, i / 250 % 250, i % 250 + 1);
            register_request("busy", &format!("b-{i}"), &address, 80)
        })
        .collect();
    let mut writer = server.connect();
    pipeline_ok(&mut writer, &requests);
    let reply = writer.send(&register_request("quiet", "q-1", "10.99.0.1", 80));
    assert_eq!(reply["ok"], true, "{reply}");

    // The filtered watcher's next line is q-1: nothing of busy, no watch_lagged.
    let event = quiet.read();
    assert_eq!(event["event"], "register", "{event}");
    assert_eq!(event["service"], "quiet", "{event}");
    assert_eq!(event["id"], "q-1", "{event}");
    assert_eq!(event["instance"]["addresses"], json!(["10.99.0.1"]));
    // And nothing between q-1 and the next change of its service.
    let reply = writer.send(&json!({"op": "deregister", "service": "quiet", "id": "q-1"}));
    assert_eq!(reply["ok"], true, "{reply}");
    let event = quiet.read();
    assert_eq!(
        (event["event"].as_str(), event["id"].as_str()),
        (Some("deregister"), Some("q-1")),
        "{event}"
    );

    // The unfiltered watcher, never read, fell over 4096 events behind: it gets what
    // was queued (and what its socket buffered), then watch_lagged, then EOF.
    let mut events = 0;
    let lagged = loop {
        let line = unfiltered.read();
        if line.get("event").is_some() {
            assert_eq!(line["service"], "busy", "{line}");
            events += 1;
            assert!(
                events < BUSY,
                "all {BUSY} events arrived: the watcher was not cut off"
            );
            continue;
        }
        break line;
    };
    assert_eq!(lagged["ok"], false, "{lagged}");
    assert_eq!(lagged["error"]["code"], "watch_lagged", "{lagged}");
    assert!(events >= 4096, "only {events} events before watch_lagged");
}

#[test]
fn list_reads_a_consistent_snapshot_while_writes_go_on() {
    const COUNT: usize = 2000;
    let server = Svcdns::start();
    let ids: Vec<String> = (0..COUNT).map(|i| format!("l-{i:04}")).collect();
    let requests: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            register_request(
                "listed",
                id,
                &format!("10.8.{}.{}", i / 250, i % 250 + 1),
                80,
            )
        })
        .collect();
    pipeline_ok(&mut server.connect(), &requests);

    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicUsize::new(0));
    let churn = {
        let (socket, stop, changes) = (server.socket.clone(), stop.clone(), changes.clone());
        std::thread::spawn(move || {
            let mut connection = Registration::unix(&socket);
            let started = Instant::now();
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < WAIT {
                let requests: Vec<Value> = (0..50)
                    .map(|i| {
                        let address = format!("10.9.{}.{}", round % 250, i + 1);
                        register_request("churn", &format!("c-{i}"), &address, 81)
                    })
                    .collect();
                pipeline_ok(&mut connection, &requests);
                changes.fetch_add(requests.len(), Ordering::Relaxed);
                round += 1;
            }
        })
    };
    assert!(
        eventually(WAIT, || changes.load(Ordering::Relaxed) > 0),
        "the churn thread registers nothing"
    );
    let started = Instant::now();
    let mut lists = 0;
    let mut connection = server.connect();
    while lists < 5 || started.elapsed() < Duration::from_secs(1) {
        let reply = connection.send(&json!({"op": "list", "service": "listed"}));
        assert_eq!(reply["ok"], true, "{reply}");
        let got: Vec<&str> = listed(&reply)
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(got.len(), COUNT, "list {lists}");
        assert_eq!(got, ids, "list {lists}: every instance, sorted by id");
        assert!(listed(&reply).iter().all(|i| i["service"] == "listed"));
        // Unfiltered, the churning service is whole too: it only replaces its 50.
        let everything = connection.send(&json!({"op": "list"}));
        assert_eq!(listed(&everything).len(), COUNT + 50, "list {lists}");
        lists += 1;
    }
    let during = changes.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    churn.join().expect("the churn thread failed");
    assert!(during > 0);
    let reply = connection.send(&json!({"op": "list", "service": "churn"}));
    assert_eq!(listed(&reply).len(), 50);
}
