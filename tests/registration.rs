//! The registration protocol (DESIGN §2) over the real Unix socket and TCP port.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::{json, Value};

fn web(id: &str, address: &str) -> Value {
    json!({"op": "register", "service": "web", "id": id, "addresses": [address], "port": 8080})
}

fn instance_exists(server: &Svcdns, name: &str) -> bool {
    rcode(&server.query(name, RecordType::A)) == ResponseCode::NoError
}

#[test]
fn register_renew_deregister_list_over_unix_and_tcp() {
    let server = Svcdns::start();
    for (mut connection, id) in [(server.connect(), "web-1"), (server.connect_tcp(), "web-2")] {
        let reply = connection.send(&json!({"op": "register", "service": "web", "id": id,
            "addresses": ["10.0.0.5"], "port": 8080, "ttl": 30}));
        assert_eq!(
            reply,
            json!({"ok": true, "op": "register", "service": "web", "id": id,
            "zone": "svc.internal.", "ttl": 30})
        );
        let reply = connection.send(&json!({"op": "renew", "service": "web", "id": id}));
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(reply["ttl"], 30);
    }
    let list = server
        .connect()
        .send(&json!({"op": "list", "service": "web"}));
    let ids: Vec<&str> = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["web-1", "web-2"]);
    let first = &list["instances"][0];
    assert_eq!(first["addresses"], json!(["10.0.0.5"]));
    assert_eq!(first["port"], 8080);
    assert!(first["expires_in"].as_f64().unwrap() > 25.0);

    let reply = server
        .connect()
        .send(&json!({"op": "deregister", "service": "web", "id": "web-1"}));
    assert_eq!(reply["ok"], true);
    assert!(!instance_exists(&server, "web-1.web.svc.internal."));
    assert!(instance_exists(&server, "web-2.web.svc.internal."));
    let again = server
        .connect()
        .send(&json!({"op": "deregister", "service": "web", "id": "web-1"}));
    assert_eq!(again["error"]["code"], "not_found");
    let renew = server
        .connect()
        .send(&json!({"op": "renew", "service": "web", "id": "web-1"}));
    assert_eq!(renew["error"]["code"], "not_found");
}

#[test]
fn re_registering_replaces_the_instance() {
    let server = Svcdns::start();
    server.register(web("web-1", "10.0.0.5"));
    server.register(web("web-1", "10.0.0.7"));
    let response = server.query("web-1.web.svc.internal.", RecordType::A);
    assert_eq!(answer_data(&response), vec!["10.0.0.7"]);
    let list = server.connect().send(&json!({"op": "list"}));
    assert_eq!(list["instances"].as_array().unwrap().len(), 1);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Svcdns::start();
    let mut connection = server.connect();
    let mut batch = String::new();
    for i in 0..50 {
        batch.push_str(&format!("{}\n", web(&format!("web-{i}"), "10.0.0.5")));
        if i % 10 == 9 {
            batch.push_str("{\"op\":\"frobnicate\"}\n");
        }
    }
    batch.push_str("{\"op\":\"list\",\"service\":\"web\"}\n");
    connection.send_raw(batch.as_bytes());
    for i in 0..50 {
        let reply = connection.read();
        assert_eq!(
            reply["id"],
            format!("web-{i}"),
            "reply {i} out of order: {reply}"
        );
        if i % 10 == 9 {
            assert_eq!(connection.read()["error"]["code"], "unknown_op");
        }
    }
    let list = connection.read();
    assert_eq!(list["instances"].as_array().unwrap().len(), 50);
}

#[test]
fn leases_expire_within_ttl_plus_one_second() {
    let server = Svcdns::start();
    let started = Instant::now();
    server.register(json!({"op": "register", "service": "lease", "id": "l-1", "addresses": ["10.0.0.1"], "port": 1, "ttl": 1}));
    server.register(json!({"op": "register", "service": "lease", "id": "l-2", "addresses": ["10.0.0.2"], "port": 1, "ttl": 2}));
    server.register(json!({"op": "register", "service": "lease", "id": "forever", "addresses": ["10.0.0.3"], "port": 1}));
    assert!(instance_exists(&server, "l-1.lease.svc.internal."));
    assert!(eventually(Duration::from_secs(3), || !instance_exists(
        &server,
        "l-1.lease.svc.internal."
    )));
    assert!(
        started.elapsed() < Duration::from_secs(2) + Duration::from_millis(500),
        "l-1 outlived ttl + 1 s"
    );
    assert!(eventually(Duration::from_secs(4), || !instance_exists(
        &server,
        "l-2.lease.svc.internal."
    )));
    assert!(
        started.elapsed() < Duration::from_secs(3) + Duration::from_millis(500),
        "l-2 outlived ttl + 1 s"
    );
    // The permanent instance stays, and so does the service.
    assert!(instance_exists(&server, "forever.lease.svc.internal."));
    assert_eq!(
        answer_data(&server.query("lease.svc.internal.", RecordType::A)),
        vec!["10.0.0.3"]
    );
}

#[test]
fn renewing_keeps_a_lease_alive() {
    let server = Svcdns::start();
    let mut connection = server.connect();
    connection.send(&json!({"op": "register", "service": "kept", "id": "k-1", "addresses": ["10.0.0.1"], "port": 1, "ttl": 1}));
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(400));
        let reply = connection.send(&json!({"op": "renew", "service": "kept", "id": "k-1"}));
        assert_eq!(reply["ok"], true, "renewal failed: {reply}");
    }
    assert!(
        instance_exists(&server, "k-1.kept.svc.internal."),
        "2.4 s of renewals should keep a 1 s lease"
    );
}

#[test]
fn ephemeral_instances_go_with_their_connection() {
    let server = Svcdns::start();
    let mut connection = server.connect();
    let reply = connection.send(&json!({"op": "register", "service": "side", "id": "s-1",
        "addresses": ["10.0.0.1"], "port": 1, "ephemeral": true}));
    assert_eq!(reply["ok"], true);
    server.register(json!({"op": "register", "service": "side", "id": "s-2", "addresses": ["10.0.0.2"], "port": 1}));
    assert!(instance_exists(&server, "s-1.side.svc.internal."));
    drop(connection);
    assert!(eventually(Duration::from_secs(2), || !instance_exists(
        &server,
        "s-1.side.svc.internal."
    )));
    assert!(
        instance_exists(&server, "s-2.side.svc.internal."),
        "other instances stay"
    );
}

#[test]
fn an_ephemeral_instance_taken_over_by_another_registration_survives_the_first_connection() {
    let server = Svcdns::start();
    let mut first = server.connect();
    first.send(&json!({"op": "register", "service": "side", "id": "s-1", "addresses": ["10.0.0.1"], "port": 1, "ephemeral": true}));
    // Another client re-registers it permanently; it no longer belongs to `first`.
    server.register(json!({"op": "register", "service": "side", "id": "s-1", "addresses": ["10.0.0.9"], "port": 1}));
    drop(first);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        answer_data(&server.query("s-1.side.svc.internal.", RecordType::A)),
        vec!["10.0.0.9"]
    );
}

#[test]
fn bad_requests_get_stable_codes_and_change_nothing() {
    let server = Svcdns::start();
    server.register(web("web-1", "10.0.0.5"));
    let mut connection = server.connect();
    let cases: Vec<(&str, &str)> = vec![
        ("{not json", "invalid_json"),
        ("[1,2]", "invalid_request"),
        ("{\"service\":\"web\"}", "missing_field"),
        ("{\"op\":\"explode\"}", "unknown_op"),
        ("{\"op\":\"register\",\"service\":\"web_1\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":1}", "invalid_service"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"-a\",\"addresses\":[\"10.0.0.1\"],\"port\":1}", "invalid_id"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a.b\",\"addresses\":[\"10.0.0.1\"],\"port\":1}", "invalid_id"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":70000}", "invalid_port"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":0}", "invalid_port"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":\"http\"}", "invalid_port"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.300\"],\"port\":1}", "invalid_address"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"0.0.0.0\"],\"port\":1}", "invalid_address"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[],\"port\":1}", "missing_field"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":1,\"proto\":\"sctp\"}", "invalid_proto"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":1,\"ttl\":0}", "invalid_ttl"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":1,\"tags\":[\"v 2\"]}", "invalid_tag"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":1,\"tags\":[\"tcp\"]}", "invalid_tag"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":1,\"meta\":{\"a=b\":\"c\"}}", "invalid_meta"),
        // DNS-SD keys are case-insensitive (RFC 6763 §6.4).
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":1,\"meta\":{\"Version\":\"1\",\"version\":\"2\"}}", "invalid_meta"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":1,\"colour\":\"red\"}", "unknown_field"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":1,\"zone\":\"other.example.\"}", "unknown_zone"),
        // The tag/id label collision: `web-1.web.Z` cannot be both an instance and a tag.
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":1,\"tags\":[\"web-1\"]}", "label_conflict"),
        ("{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":1,\"tags\":[\"a\"]}", "label_conflict"),
    ];
    for (line, code) in &cases {
        connection.send_raw(format!("{line}\n").as_bytes());
        let reply = connection.read();
        assert_eq!(reply["ok"], false, "{line} -> {reply}");
        assert_eq!(reply["error"]["code"], *code, "{line} -> {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty(), "{line}: empty message");
    }
    // Messages name the field and the value.
    connection.send_raw(b"{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":70000}\n");
    assert_eq!(
        connection.read()["error"]["message"],
        "port 70000 is out of range 1-65535"
    );
    // Each range as it is: a lease of at least a second, a record TTL of 0 allowed.
    connection.send_raw(b"{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":1,\"ttl\":0}\n");
    assert_eq!(
        connection.read()["error"]["message"],
        "ttl 0 is out of range 1-86400"
    );
    connection.send_raw(b"{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.1\"],\"port\":1,\"dns_ttl\":90000}\n");
    assert_eq!(
        connection.read()["error"]["message"],
        "dns_ttl 90000 is out of range 0-86400"
    );
    connection.send_raw(b"{\"op\":\"register\",\"service\":\"web\",\"id\":\"a\",\"addresses\":[\"10.0.0.300\"],\"port\":1}\n");
    let message = connection.read()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("10.0.0.300") && message.contains("address"),
        "{message}"
    );

    // A tag that is another instance's id is refused the other way round too.
    server.register(json!({"op": "register", "service": "api", "id": "x", "addresses": ["10.0.0.1"], "port": 1, "tags": ["blue"]}));
    let reply = connection.send(&json!({"op": "register", "service": "api", "id": "blue", "addresses": ["10.0.0.2"], "port": 1}));
    assert_eq!(reply["error"]["code"], "label_conflict");

    // The same connection still works, and nothing above changed the registry.
    let list = connection.send(&json!({"op": "list", "service": "web"}));
    assert_eq!(list["instances"].as_array().unwrap().len(), 1);
    assert_eq!(
        answer_data(&server.query("web.svc.internal.", RecordType::A)),
        vec!["10.0.0.5"]
    );
}

#[test]
fn oversized_lines_are_refused_and_the_connection_goes_on() {
    let server = Svcdns::start();
    let mut connection = server.connect();
    let huge = format!(
        "{{\"op\":\"register\",\"service\":\"web\",\"pad\":\"{}\"}}\n",
        "x".repeat(200_000)
    );
    connection.send_raw(huge.as_bytes());
    assert_eq!(connection.read()["error"]["code"], "request_too_large");
    let reply = connection.send(&web("web-1", "10.0.0.5"));
    assert_eq!(reply["ok"], true);
}

#[test]
fn watch_streams_changes() {
    let server = Svcdns::start();
    server.register(web("web-1", "10.0.0.5"));
    let mut watcher = server.connect();
    let reply = watcher.send(&json!({"op": "watch", "service": "web"}));
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["instances"].as_array().unwrap().len(), 1);

    server.register(json!({"op": "register", "service": "other", "id": "o-1", "addresses": ["10.0.0.1"], "port": 1}));
    server.register(web("web-2", "10.0.0.6"));
    let event = watcher.read();
    assert_eq!(event["event"], "register", "{event}");
    assert_eq!(
        event["id"], "web-2",
        "events of other services are filtered out: {event}"
    );
    assert_eq!(event["instance"]["addresses"], json!(["10.0.0.6"]));

    server
        .connect()
        .send(&json!({"op": "deregister", "service": "web", "id": "web-1"}));
    let event = watcher.read();
    assert_eq!(
        (
            event["event"].as_str(),
            event["reason"].as_str(),
            event["id"].as_str()
        ),
        (Some("deregister"), Some("deregistered"), Some("web-1"))
    );

    server.register(json!({"op": "register", "service": "web", "id": "web-3", "addresses": ["10.0.0.7"], "port": 1, "ttl": 1}));
    assert_eq!(watcher.read()["id"], "web-3");
    let event = watcher.read();
    assert_eq!(
        (event["reason"].as_str(), event["id"].as_str()),
        (Some("expired"), Some("web-3"))
    );
}

#[test]
fn static_services_and_zone_names_conflicts() {
    let zone = "origin: svc.internal.\nrecords:\n  - {name: mail, type: A, data: 10.0.0.25}\nservices:\n  - {service: db, id: db-1, addresses: [10.0.0.9], port: 5432}\n";
    let server = Svcdns::with(&[("svc.internal.yaml", zone)], "");
    assert_eq!(
        answer_data(&server.query("_db._tcp.svc.internal.", RecordType::SRV)),
        vec!["1 1 5432 db-1.db.svc.internal."]
    );
    // A service may not take over the names of a static record.
    let reply = server.connect().send(&json!({"op": "register", "service": "mail", "id": "m-1", "addresses": ["10.0.0.1"], "port": 25}));
    assert_eq!(reply["error"]["code"], "name_conflict", "{reply}");
    assert_eq!(
        answer_data(&server.query("mail.svc.internal.", RecordType::A)),
        vec!["10.0.0.25"]
    );
}

#[test]
fn registrations_in_a_second_zone() {
    let zone = "origin: prod.example.\nttl: 30\n";
    let server = Svcdns::with(&[("prod.yaml", zone)], "");
    let reply = server
        .connect()
        .send(&json!({"op": "register", "service": "web", "id": "w-1",
        "addresses": ["10.0.0.5"], "port": 80, "zone": "PROD.example"}));
    assert_eq!(reply["zone"], "prod.example.", "{reply}");
    let response = server.query("w-1.web.prod.example.", RecordType::A);
    assert_eq!(answer_data(&response), vec!["10.0.0.5"]);
    assert_eq!(response.answers[0].ttl, 30, "the zone's TTL applies");
    assert_eq!(
        rcode(&server.query("w-1.web.svc.internal.", RecordType::A)),
        ResponseCode::NXDomain
    );
}

/// Services and tags also appear as `_S` and `_T` labels, so they may have 62 bytes, one
/// less than a DNS label; ids 63. What is acknowledged answers in DNS.
#[test]
fn service_and_tag_labels_leave_room_for_their_underscore() {
    let server = Svcdns::start();
    let mut connection = server.connect();
    let register = |connection: &mut Registration, service: &str, id: &str, tag: &str| {
        connection.send(&json!({"op": "register", "service": service, "id": id,
            "addresses": ["10.0.0.1"], "port": 80, "tags": [tag]}))
    };
    let long = |n: usize| "s".repeat(n);
    let refused = register(&mut connection, &long(63), "a", "t");
    assert_eq!(refused["error"]["code"], "invalid_service", "{refused}");
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("62 bytes"));
    let refused = register(&mut connection, "web", "a", &long(63));
    assert_eq!(refused["error"]["code"], "invalid_tag", "{refused}");

    let service = long(62);
    let tag = "t".repeat(62);
    let id = "i".repeat(63);
    let accepted = register(&mut connection, &service, &id, &tag);
    assert_eq!(accepted["ok"], true, "{accepted}");
    let srv = server.query(&format!("_{service}._tcp.svc.internal."), RecordType::SRV);
    assert_eq!(
        answer_data(&srv),
        vec![format!("1 1 80 {id}.{service}.svc.internal.")]
    );
    let by_tag = server.query(&format!("_{service}._{tag}.svc.internal."), RecordType::SRV);
    assert_eq!(by_tag.answers.len(), 1);
}

/// Changes are logged at INFO one line each, and a burst is summed up instead of
/// flooding the log.
#[test]
fn changes_are_logged_one_by_one_and_bursts_summed_up() {
    let server = Svcdns::start();
    server.register(json!({"op": "register", "service": "web", "id": "web-1",
        "addresses": ["10.0.0.5"], "port": 80}));
    let mut connection = server.connect();
    let reply = connection.send(&json!({"op": "deregister", "service": "web", "id": "web-1"}));
    assert_eq!(reply["ok"], true);
    let mut logs = String::new();
    assert!(eventually(WAIT, || {
        logs.push_str(&server.logs());
        logs.contains("instance deregistered")
    }));
    let registered = logs
        .lines()
        .find(|line| line.contains("instance registered"))
        .unwrap_or_else(|| panic!("no registration line in {logs}"));
    assert!(
        registered.contains("service=web") && registered.contains("id=web-1"),
        "{registered}"
    );

    let burst: String = (0..300)
        .map(|i| format!("{{\"op\":\"register\",\"service\":\"burst\",\"id\":\"b-{i}\",\"addresses\":[\"10.1.0.1\"],\"port\":80}}\n"))
        .collect();
    connection.send_raw(burst.as_bytes());
    for _ in 0..300 {
        assert_eq!(connection.read()["ok"], true);
    }
    let mut logs = String::new();
    assert!(
        eventually(WAIT, || {
            logs.push_str(&server.logs());
            logs.contains("more changes in the last second")
        }),
        "no summary line in {logs}"
    );
    let one_by_one = logs.matches("instance registered").count();
    assert!(
        one_by_one <= 20,
        "{one_by_one} registration lines for a burst"
    );
}
