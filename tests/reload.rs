//! SIGHUP reloads `zones/` and the forward upstreams without dropping the registry;
//! a reload that the files or the registry cannot take changes nothing.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::json;

const ZONE_V1: &str = "origin: svc.internal.\nttl: 5\nrecords:\n  - {name: docs, type: A, data: 10.1.0.1}\nservices:\n  - {service: db, id: db-1, addresses: [10.0.0.9], port: 5432}\n";
const ZONE_V2: &str = "origin: svc.internal.\nttl: 30\nrecords:\n  - {name: docs, type: A, data: 10.1.0.2}\nservices:\n  - {service: cache, id: c-1, addresses: [10.0.0.8], port: 6379}\n";
const OTHER_ZONE: &str =
    "origin: other.test.\nrecords:\n  - {name: www, type: A, data: 10.2.0.1}\n";

fn write_zone(server: &Svcdns, file: &str, text: &str) {
    std::fs::write(server.dir.path().join("zones").join(file), text).expect("write zone file");
}

/// `(ttl, data)` of every answer.
fn answers(server: &Svcdns, name: &str, rtype: RecordType) -> Vec<(u32, String)> {
    let message = server.query(name, rtype);
    answers_of(&message, rtype)
        .iter()
        .map(|record| (record.ttl, rdata_text(&record.data)))
        .collect()
}

#[test]
fn a_reload_applies_zone_files_and_keeps_every_registration() {
    let server = Svcdns::with(&[("svc.yaml", ZONE_V1)], "");
    server.register(json!({"op": "register", "service": "web", "id": "web-1",
        "addresses": ["10.0.0.1"], "port": 80, "ttl": 600}));
    server
        .connect()
        .send(&json!({"op": "mark", "service": "web", "id": "web-1", "health": "critical"}));
    server.register(json!({"op": "register", "service": "web", "id": "web-2",
        "addresses": ["10.0.0.2"], "port": 80}));
    let mut watcher = server.connect();
    assert_eq!(watcher.send(&json!({"op": "watch"}))["ok"], true);
    assert_eq!(
        answers(&server, "docs.svc.internal.", RecordType::A),
        vec![(5, "10.1.0.1".to_string())]
    );
    let serial_before = server.serial("svc.internal.");

    write_zone(&server, "svc.yaml", ZONE_V2);
    write_zone(&server, "other.yaml", OTHER_ZONE);
    let logs = server.reload();
    assert!(logs.contains("reloaded the zones"), "{logs}");

    // The new files are served: records, default TTL, static services, a new zone.
    assert_eq!(
        answers(&server, "docs.svc.internal.", RecordType::A),
        vec![(30, "10.1.0.2".to_string())]
    );
    assert_eq!(
        answers(&server, "cache.svc.internal.", RecordType::A),
        vec![(30, "10.0.0.8".to_string())]
    );
    assert_eq!(
        rcode(&server.query("db.svc.internal.", RecordType::A)),
        ResponseCode::NXDomain,
        "a static service gone from the file is gone"
    );
    assert_eq!(
        answers(&server, "www.other.test.", RecordType::A),
        vec![(5, "10.2.0.1".to_string())]
    );
    assert!(
        server.serial("svc.internal.") > serial_before,
        "the serial moves"
    );

    // Registrations live on with their leases and health, under the new default TTL.
    assert_eq!(
        answers(&server, "web.svc.internal.", RecordType::A),
        vec![(30, "10.0.0.2".to_string())]
    );
    let list = server
        .connect()
        .send(&json!({"op": "list", "service": "web"}));
    let web_1 = &list["instances"][0];
    assert_eq!(web_1["health"], "critical", "{list}");
    assert!(
        web_1["expires_in"].as_f64().unwrap_or(0.0) > 500.0,
        "{list}"
    );
    let renewed = server
        .connect()
        .send(&json!({"op": "renew", "service": "web", "id": "web-1"}));
    assert_eq!(
        renewed["ok"], true,
        "the lease is still the writer's: {renewed}"
    );
    // Watchers carry on: they see the static services change.
    let event = watcher.read();
    assert_eq!(
        (event["event"].as_str(), event["service"].as_str()),
        (Some("deregister"), Some("db")),
        "{event}"
    );
    // The new zone takes registrations.
    let reply = server
        .connect()
        .send(&json!({"op": "register", "zone": "other.test.",
        "service": "api", "id": "api-1", "addresses": ["10.0.0.3"], "port": 1}));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(
        answers(&server, "api.other.test.", RecordType::A),
        vec![(5, "10.0.0.3".to_string())]
    );
}

#[test]
fn a_reload_that_cannot_apply_changes_nothing() {
    let server = Svcdns::with(&[("svc.yaml", ZONE_V1), ("other.yaml", OTHER_ZONE)], "");
    server.register(json!({"op": "register", "service": "web", "id": "web-1",
        "addresses": ["10.0.0.1"], "port": 80}));
    server.register(
        json!({"op": "register", "zone": "other.test.", "service": "api",
        "id": "api-1", "addresses": ["10.0.0.3"], "port": 1}),
    );
    let served = |server: &Svcdns| {
        (
            answers(server, "docs.svc.internal.", RecordType::A),
            answers(server, "web.svc.internal.", RecordType::A),
            answers(server, "api.other.test.", RecordType::A),
            server.serial("svc.internal."),
        )
    };
    let before = served(&server);

    // A file that does not parse: named with its line.
    write_zone(&server, "svc.yaml", "origin: svc.internal.\nrecords: [\n");
    let logs = server.reload();
    assert!(logs.contains("reload refused, nothing changed"), "{logs}");
    assert!(logs.contains("svc.yaml:"), "{logs}");
    assert_eq!(served(&server), before);

    // A static record that would take a registered service's name.
    write_zone(
        &server,
        "svc.yaml",
        "origin: svc.internal.\nrecords:\n  - {name: web, type: A, data: 10.9.9.9}\n",
    );
    let logs = server.reload();
    assert!(logs.contains("reload refused"), "{logs}");
    assert!(
        logs.contains("web-1") && logs.contains("web.svc.internal."),
        "{logs}"
    );
    assert_eq!(served(&server), before);

    // A zone file removed while instances are registered in the zone.
    write_zone(&server, "svc.yaml", ZONE_V1);
    std::fs::remove_file(server.dir.path().join("zones/other.yaml")).unwrap();
    let logs = server.reload();
    assert!(logs.contains("reload refused"), "{logs}");
    assert!(
        logs.contains("other.test.") && logs.contains("1 instances"),
        "{logs}"
    );
    assert_eq!(served(&server), before);

    // Once the instance is gone, the zone can go.
    server
        .connect()
        .send(&json!({"op": "deregister", "zone": "other.test.",
        "service": "api", "id": "api-1"}));
    let logs = server.reload();
    assert!(logs.contains("reloaded the zones"), "{logs}");
    assert_eq!(
        rcode(&server.query("www.other.test.", RecordType::A)),
        ResponseCode::Refused,
        "a zone that is gone is no longer ours"
    );
    let refused = server
        .connect()
        .send(&json!({"op": "register", "zone": "other.test.",
        "service": "api", "id": "api-1", "addresses": ["10.0.0.3"], "port": 1}));
    assert_eq!(refused["error"]["code"], "unknown_zone", "{refused}");
    // And it can come back.
    write_zone(&server, "other.yaml", OTHER_ZONE);
    assert!(server.reload().contains("reloaded the zones"));
    assert_eq!(
        answers(&server, "www.other.test.", RecordType::A),
        vec![(5, "10.2.0.1".to_string())]
    );
}

#[test]
fn a_reload_picks_up_new_forward_upstreams() {
    let upstream = Svcdns::with(&[("other.yaml", OTHER_ZONE)], "");
    let server = Svcdns::start();
    assert_eq!(
        rcode(&server.query_recursive("www.other.test.", RecordType::A)),
        ResponseCode::Refused
    );
    let config_path = server.dir.path().join("svcdns.yaml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        format!(
            "{config}forward:\n  upstreams: [\"{}\"]\n  timeout: 1\n",
            upstream.dns
        ),
    )
    .unwrap();
    let logs = server.reload();
    assert!(logs.contains("reloaded the zones"), "{logs}");
    assert_eq!(
        answer_data(&server.query_recursive("www.other.test.", RecordType::A)),
        vec!["10.2.0.1"]
    );

    // A setting a reload cannot apply is named, not silently ignored.
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        config.replace("dns:\n", "dns:\n  udp_threads: 1\n"),
    )
    .unwrap();
    let logs = server.reload();
    assert!(
        logs.contains("dns (other than ttl, max_answer_records, transfer and update) changed"),
        "{logs}"
    );
}
