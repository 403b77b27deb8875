//! Many nodes on one registry: a real 3-member etcd cluster on loopback ports and two
//! svcdns nodes sharing its prefix. Needs the `etcd` feature (scripts/test enables it)
//! and the `etcd` binary (Debian's etcd-server, which scripts/test installs); each test
//! says it was skipped, and why, when either is missing.

mod common;

#[cfg(feature = "etcd")]
mod tests {
    use std::time::{Duration, Instant};

    use hickory_proto::rr::RecordType;
    use serde_json::{json, Value};

    use crate::common::etcd_cluster::{etcd_missing, EtcdCluster};
    use crate::common::*;

    /// A svcdns node on the cluster, under `prefix`, whose ephemeral instances outlive
    /// it by `lease_ttl` seconds.
    fn node(etcd: &EtcdCluster, prefix: &str, lease_ttl: u64) -> Svcdns {
        Svcdns::with(&[], &etcd.svcdns_config(prefix, lease_ttl))
    }

    /// Whether to skip: says why when etcd is not here.
    fn skipped() -> bool {
        match etcd_missing() {
            Some(reason) => {
                eprintln!("skipped: {reason}");
                true
            }
            None => false,
        }
    }

    fn web(id: &str, address: &str) -> Value {
        json!({"op": "register", "service": "web", "id": id, "addresses": [address], "port": 80})
    }

    /// The ids of the instances a `list` or `snapshot` reply holds.
    fn ids(reply: &Value) -> Vec<&str> {
        reply["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["id"].as_str())
            .collect()
    }

    fn addresses(server: &Svcdns) -> Vec<String> {
        let mut found = answer_data(&server.query("web.svc.internal.", RecordType::A));
        found.sort();
        found
    }

    /// Waits until `server` answers `expected` for web's A records; how long it took.
    fn answers_within(server: &Svcdns, expected: &[&str], limit: Duration) -> Duration {
        let started = Instant::now();
        let found = eventually(limit, || addresses(server) == expected);
        assert!(
            found,
            "expected {expected:?} within {limit:?}, got {:?}",
            addresses(server)
        );
        started.elapsed()
    }

    #[test]
    fn writes_on_one_node_answer_on_the_other() {
        if skipped() {
            return;
        }
        let etcd = EtcdCluster::start(3);
        let a = node(&etcd, "/both/", 2);
        let b = node(&etcd, "/both/", 2);
        let mut on_a = a.connect();
        assert_eq!(on_a.send(&web("web-1", "10.0.0.1"))["ok"], true);
        // Acknowledged on A means answered by A at once; B follows within moments.
        assert_eq!(addresses(&a), ["10.0.0.1"]);
        answers_within(&b, &["10.0.0.1"], Duration::from_secs(2));

        let mut on_b = b.connect();
        assert_eq!(on_b.send(&web("web-2", "10.0.0.2"))["ok"], true);
        assert_eq!(addresses(&b), ["10.0.0.1", "10.0.0.2"]);
        answers_within(&a, &["10.0.0.1", "10.0.0.2"], Duration::from_secs(2));
        let reply = on_b.send(&json!({"op": "deregister", "service": "web", "id": "web-1"}));
        assert_eq!(reply["ok"], true, "{reply}");
        answers_within(&a, &["10.0.0.2"], Duration::from_secs(2));

        // A health mark and a lease travel too.
        let reply = on_a
            .send(&json!({"op": "mark", "service": "web", "id": "web-2", "health": "critical"}));
        assert_eq!(reply["ok"], true, "{reply}");
        answers_within(&b, &[], Duration::from_secs(2));
        let mut leased = web("web-3", "10.0.0.3");
        leased["ttl"] = json!(2);
        assert_eq!(on_b.send(&leased)["ok"], true);
        answers_within(&a, &["10.0.0.3"], Duration::from_secs(2));
        // Renewed through A (the lease is etcd's), it outlives its first TTL.
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(800));
            let reply = on_a.send(&json!({"op": "renew", "service": "web", "id": "web-3"}));
            assert_eq!(reply["ok"], true, "{reply}");
        }
        assert_eq!(addresses(&b), ["10.0.0.3"]);
        // Left alone, it expires on both.
        answers_within(&a, &[], Duration::from_secs(5));
        answers_within(&b, &[], Duration::from_secs(2));
        // A restarted node serves the whole registry.
        let mut b = b;
        b.restart().expect("restart b");
        let list = b.connect().send(&json!({"op": "list"}));
        assert_eq!(ids(&list), ["web-2"], "{list}");
        assert_eq!(list["instances"][0]["health"], "critical");
    }

    #[test]
    fn what_dns_update_writes_on_one_node_answers_on_the_other() {
        if skipped() {
            return;
        }
        let etcd = EtcdCluster::start(3);
        let keys = "- {name: k, algorithm: hmac-sha256, secret: \"Ly0y+VtSJ17dXR8aErXiONoocf7n2l6uDkMvE7Rk5tE=\", services: [\"*\"]}\n";
        let config = etcd.svcdns_config("/update/", 2);
        let a = Svcdns::try_with_update_keys(&config, "", keys).expect("node A starts");
        let b = node(&etcd, "/update/", 2);
        let key = Some("hmac-sha256:k:Ly0y+VtSJ17dXR8aErXiONoocf7n2l6uDkMvE7Rk5tE=");
        let out = nsupdate(
            a.dns,
            key,
            "update add w1._web._tcp.svc.internal. 60 SRV 0 0 80 w1.web.svc.internal.\n\
             update add w1.web.svc.internal. 60 A 10.0.0.1\n\
             update add www.svc.internal. 60 A 10.0.0.7",
        );
        assert!(!out.contains("failed"), "{out}");
        // Acknowledged on A means answered by A at once; B follows.
        assert_eq!(addresses(&a), ["10.0.0.1"]);
        answers_within(&b, &["10.0.0.1"], Duration::from_secs(2));
        let www = || answer_data(&b.query("www.svc.internal.", RecordType::A));
        assert!(
            eventually(Duration::from_secs(2), || www() == ["10.0.0.7"]),
            "{:?}",
            www()
        );

        let out = nsupdate(a.dns, key, "update delete www.svc.internal. A");
        assert!(!out.contains("failed"), "{out}");
        assert!(
            eventually(Duration::from_secs(2), || www().is_empty()),
            "{:?}",
            www()
        );
        // A restarted node reads the written records back from etcd.
        let out = nsupdate(a.dns, key, "update add www.svc.internal. 60 A 10.0.0.8");
        assert!(!out.contains("failed"), "{out}");
        let c = node(&etcd, "/update/", 2);
        let www_c = answer_data(&c.query("www.svc.internal.", RecordType::A));
        assert_eq!(www_c, ["10.0.0.8"]);
    }

    #[test]
    fn a_node_that_missed_changes_past_a_compaction_reads_the_registry_again() {
        if skipped() {
            return;
        }
        // B knows only member 2; while member 2 is down, A (on members 0 and 1)
        // writes, and etcd compacts its history past what B has seen.
        let mut etcd = EtcdCluster::start(3);
        let a = Svcdns::with(&[], &etcd.svcdns_config_on(&[0, 1], "/compact/", 2));
        let b = Svcdns::with(&[], &etcd.svcdns_config_on(&[2], "/compact/", 2));
        a.register(web("web-1", "10.0.0.1"));
        a.register(web("web-2", "10.0.0.2"));
        answers_within(&b, &["10.0.0.1", "10.0.0.2"], Duration::from_secs(2));
        etcd.members[2].kill();
        let mut on_a = a.connect();
        let reply = on_a.send(&web("web-3", "10.0.0.3"));
        assert_eq!(reply["ok"], true, "{reply}");
        let reply = on_a.send(&json!({"op": "deregister", "service": "web", "id": "web-1"}));
        assert_eq!(reply["ok"], true, "{reply}");
        let status = etcd.etcdctl(&["put", "/compact-marker", "x", "-w", "json"]);
        let revision = status
            .split("\"revision\":")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .expect("a revision");
        etcd.etcdctl(&["compact", revision, "--physical"]);
        // B still answers from what it had.
        assert_eq!(addresses(&b), ["10.0.0.1", "10.0.0.2"]);
        etcd.start_member(2);
        answers_within(&b, &["10.0.0.2", "10.0.0.3"], Duration::from_secs(15));
        assert!(
            b.logs_until("read the registry again")
                .contains("read the registry again"),
            "B reloaded rather than resumed"
        );
    }

    #[test]
    fn a_node_starts_from_a_registry_larger_than_one_etcd_response() {
        if skipped() {
            return;
        }
        // 12,000 instances take about 4 MiB of JSON: more than gRPC takes in one
        // response, so the node must read the prefix in pages.
        let etcd = EtcdCluster::start(3);
        let a = node(&etcd, "/large/", 2);
        let requests: Vec<Value> = (0..12_000)
            .map(|i| {
                json!({"op": "register", "service": format!("s{}", i / 100), "id": format!("i-{i}"),
                    "addresses": [format!("10.1.{}.{}", i / 250, i % 250 + 1)], "port": 80,
                    "meta": {"notes": "x".repeat(200)}})
            })
            .collect();
        let replies = a.connect().pipelined(&requests);
        assert!(replies.iter().all(|reply| reply["ok"] == true));
        let b = node(&etcd, "/large/", 2);
        let list = b.connect().send(&json!({"op": "list"}));
        assert_eq!(list["instances"].as_array().map(Vec::len), Some(12_000));
        assert_eq!(
            answer_data(&b.query("i-11999.s119.svc.internal.", RecordType::A)),
            ["10.1.47.250"]
        );
    }

    #[test]
    fn a_dead_node_takes_its_ephemeral_instances_along_and_the_other_keeps_answering() {
        if skipped() {
            return;
        }
        let etcd = EtcdCluster::start(3);
        let mut a = node(&etcd, "/eph/", 2);
        let b = node(&etcd, "/eph/", 2);
        let mut holder = a.connect();
        let mut ephemeral = web("web-e", "10.0.0.5");
        ephemeral["ephemeral"] = json!(true);
        assert_eq!(holder.send(&ephemeral)["ok"], true);
        b.register(web("web-p", "10.0.0.6"));
        answers_within(&b, &["10.0.0.5", "10.0.0.6"], Duration::from_secs(2));
        // A backup holds no ephemeral instance: a restore could not bring its
        // connection back.
        let backup = b.connect().send(&json!({"op": "snapshot"}));
        assert_eq!(ids(&backup), ["web-p"], "{backup}");
        a.kill9();
        // Gone from B once A's lease runs out (2 s), not before it could.
        let took = answers_within(&b, &["10.0.0.6"], Duration::from_secs(6));
        assert!(took >= Duration::from_millis(500), "removed after {took:?}");

        // A node that closes cleanly removes its ephemeral instances at once.
        let c = node(&etcd, "/eph/", 30);
        let mut held = c.connect();
        ephemeral["id"] = json!("web-c");
        assert_eq!(held.send(&ephemeral)["ok"], true);
        answers_within(&b, &["10.0.0.5", "10.0.0.6"], Duration::from_secs(2));
        drop(held);
        answers_within(&b, &["10.0.0.6"], Duration::from_secs(2));
    }

    #[test]
    fn losing_an_etcd_member_changes_nothing_and_losing_etcd_stops_only_writes() {
        if skipped() {
            return;
        }
        let mut etcd = EtcdCluster::start(3);
        // A's lease outlives the test: only A itself can remove its ephemeral ones.
        let a = node(&etcd, "/loss/", 60);
        let b = node(&etcd, "/loss/", 2);
        a.register(web("web-1", "10.0.0.1"));
        let mut holder = a.connect();
        let mut ephemeral = web("web-e", "10.0.0.9");
        ephemeral["ephemeral"] = json!(true);
        assert_eq!(holder.send(&ephemeral)["ok"], true);
        etcd.members[0].kill();
        let mut on_a = a.connect();
        let reply = on_a.send(&web("web-2", "10.0.0.2"));
        assert_eq!(reply["ok"], true, "with 2 of 3 members: {reply}");
        answers_within(
            &b,
            &["10.0.0.1", "10.0.0.2", "10.0.0.9"],
            Duration::from_secs(3),
        );

        // No quorum: writes fail with the reason, DNS answers from the last snapshot.
        etcd.members[1].kill();
        let reply = on_a.send(&web("web-3", "10.0.0.3"));
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["error"]["code"], "store_unavailable", "{reply}");
        assert_eq!(addresses(&a), ["10.0.0.1", "10.0.0.2", "10.0.0.9"]);
        assert_eq!(addresses(&b), ["10.0.0.1", "10.0.0.2", "10.0.0.9"]);
        // A connection that closes now: its instance goes once etcd takes it, even
        // though the first commits fail for longer than a batch is retried (6 s).
        drop(holder);
        std::thread::sleep(Duration::from_secs(7));

        // Back to a quorum: the nodes resume their watches and writes go through.
        etcd.start_member(0);
        etcd.start_member(1);
        etcd.wait_healthy();
        let started = Instant::now();
        let written = eventually(Duration::from_secs(10), || {
            a.connect().send(&web("web-3", "10.0.0.3"))["ok"] == true
        });
        assert!(written, "no write went through after the quorum came back");
        answers_within(
            &b,
            &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
            Duration::from_secs(10).saturating_sub(started.elapsed()) + Duration::from_secs(2),
        );
    }
}

#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_tests_need_the_etcd_feature() {
    eprintln!("skipped: svcdns was built without the etcd feature (scripts/test enables it)");
}
