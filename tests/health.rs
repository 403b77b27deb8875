//! Marking an instance critical (DESIGN §1: "an instance … marked critical disappears
//! from every answer at once") and healthy again, over the protocol and the CLI.

mod common;

use std::process::Command;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::{json, Value};

const ZONE: &str = "svc.internal.";

fn web(id: &str, address: &str) -> Value {
    json!({"op": "register", "service": "web", "id": id, "addresses": [address],
           "port": 8080, "ttl": 60, "tags": ["v2"], "meta": {"version": "2.1"}})
}

fn mark(server: &Svcdns, id: &str, health: &str) -> Value {
    server
        .connect()
        .send(&json!({"op": "mark", "service": "web", "id": id, "health": health}))
}

/// The sorted data of the answers of one type.
fn answers(server: &Svcdns, name: &str, rtype: RecordType) -> Vec<String> {
    let message = server.query(&format!("{name}.{ZONE}"), rtype);
    let mut data: Vec<String> = answers_of(&message, rtype)
        .iter()
        .map(|record| rdata_text(&record.data))
        .collect();
    data.sort();
    data
}

fn rcode_of(server: &Svcdns, name: &str, rtype: RecordType) -> ResponseCode {
    rcode(&server.query(&format!("{name}.{ZONE}"), rtype))
}

/// `(id, health)` of every listed instance of web.
fn listed(server: &Svcdns) -> Vec<(String, String)> {
    let list = server
        .connect()
        .send(&json!({"op": "list", "service": "web"}));
    list["instances"]
        .as_array()
        .expect("a listing")
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap_or_default().to_string(),
                i["health"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_critical_instance_leaves_every_answer_and_stays_registered() {
    let server = Svcdns::start();
    server.register(web("web-1", "10.0.0.1"));
    server.register(web("web-2", "10.0.0.2"));
    assert_eq!(
        answers(&server, "web", RecordType::A),
        vec!["10.0.0.1", "10.0.0.2"]
    );

    let reply = mark(&server, "web-1", "critical");
    assert_eq!(
        reply,
        json!({"ok": true, "op": "mark", "zone": ZONE, "service": "web", "id": "web-1",
               "health": "critical"})
    );
    // Acknowledged means out of every answer: each name the instance was in.
    assert_eq!(answers(&server, "web", RecordType::A), vec!["10.0.0.2"]);
    assert_eq!(answers(&server, "v2.web", RecordType::A), vec!["10.0.0.2"]);
    let srv = answers(&server, "_web._tcp", RecordType::SRV);
    assert_eq!(srv.len(), 1, "{srv:?}");
    assert!(srv[0].contains("web-2.web.svc.internal."), "{srv:?}");
    assert_eq!(answers(&server, "_web._v2", RecordType::SRV), srv);
    assert_eq!(
        answers(&server, "_web._tcp", RecordType::PTR),
        vec!["web-2._web._tcp.svc.internal."]
    );
    assert_eq!(
        answers(&server, "_v2._sub._web._tcp", RecordType::PTR),
        vec!["web-2._web._tcp.svc.internal."]
    );
    for name in ["web-1.web", "web-1._web._tcp"] {
        assert_eq!(
            rcode_of(&server, name, RecordType::A),
            ResponseCode::NXDomain,
            "{name}"
        );
    }
    assert_eq!(
        listed(&server),
        vec![
            ("web-1".to_string(), "critical".to_string()),
            ("web-2".to_string(), "healthy".to_string())
        ]
    );

    // It keeps its lease and its labels while critical.
    let renewed = server
        .connect()
        .send(&json!({"op": "renew", "service": "web", "id": "web-1"}));
    assert_eq!(renewed["ttl"], 60, "{renewed}");
    let conflict = server
        .connect()
        .send(&json!({"op": "register", "service": "web",
        "id": "web-3", "addresses": ["10.0.0.3"], "port": 1, "tags": ["web-1"]}));
    assert_eq!(conflict["error"]["code"], "label_conflict", "{conflict}");

    // Every instance critical: the service has no names at all, not even in DNS-SD.
    mark(&server, "web-2", "critical");
    assert_eq!(
        rcode_of(&server, "web", RecordType::A),
        ResponseCode::NXDomain
    );
    assert_eq!(
        rcode_of(&server, "_web._tcp", RecordType::SRV),
        ResponseCode::NXDomain
    );
    assert!(answers(&server, "_services._dns-sd._udp", RecordType::PTR).is_empty());
    assert_eq!(listed(&server).len(), 2);

    // Back: the same records as before.
    let reply = mark(&server, "web-1", "healthy");
    assert_eq!(reply["health"], "healthy", "{reply}");
    assert_eq!(answers(&server, "web", RecordType::A), vec!["10.0.0.1"]);
    let txt = txt_strings(&server.query("web-1.web.svc.internal.", RecordType::TXT));
    assert_eq!(txt, vec![vec!["version=2.1".to_string()]]);

    // Marking as it already is changes nothing and is not an error.
    assert_eq!(mark(&server, "web-1", "healthy")["ok"], true);
    // Deregistering a critical instance removes it.
    let gone = server
        .connect()
        .send(&json!({"op": "deregister", "service": "web", "id": "web-2"}));
    assert_eq!(gone["ok"], true, "{gone}");
    assert_eq!(
        listed(&server),
        vec![("web-1".to_string(), "healthy".to_string())]
    );
}

#[test]
fn registering_again_makes_an_instance_healthy() {
    let server = Svcdns::start();
    server.register(web("web-1", "10.0.0.1"));
    mark(&server, "web-1", "critical");
    server.register(web("web-1", "10.0.0.9"));
    assert_eq!(answers(&server, "web", RecordType::A), vec!["10.0.0.9"]);
    assert_eq!(
        listed(&server),
        vec![("web-1".to_string(), "healthy".to_string())]
    );
}

#[test]
fn a_critical_instance_still_expires() {
    let server = Svcdns::start();
    server.register(json!({"op": "register", "service": "web", "id": "web-1",
        "addresses": ["10.0.0.1"], "port": 1, "ttl": 1}));
    mark(&server, "web-1", "critical");
    assert!(
        eventually(WAIT, || listed(&server).is_empty()),
        "the lease of a critical instance ran out but it is still listed"
    );
}

#[test]
fn bad_marks_are_refused_with_stable_codes() {
    let server = Svcdns::start();
    server.register(web("web-1", "10.0.0.1"));
    let cases = [
        (
            json!({"op": "mark", "service": "web", "id": "web-9", "health": "critical"}),
            "not_found",
        ),
        (
            json!({"op": "mark", "service": "web", "id": "web-1", "health": "sick"}),
            "invalid_health",
        ),
        (
            json!({"op": "mark", "service": "web", "id": "web-1", "health": 1}),
            "invalid_health",
        ),
        (
            json!({"op": "mark", "service": "web", "id": "web-1"}),
            "missing_field",
        ),
        (
            json!({"op": "mark", "service": "web", "id": "web-1", "health": "critical", "ttl": 5}),
            "unknown_field",
        ),
    ];
    for (request, code) in cases {
        let reply = server.connect().send(&request);
        assert_eq!(reply["error"]["code"], code, "{request} -> {reply}");
    }
    assert_eq!(answers(&server, "web", RecordType::A), vec!["10.0.0.1"]);
}

#[test]
fn watchers_see_health_changes() {
    let server = Svcdns::start();
    server.register(web("web-1", "10.0.0.1"));
    let mut watcher = server.connect();
    let first = watcher.send(&json!({"op": "watch", "service": "web"}));
    assert_eq!(first["instances"][0]["health"], "healthy", "{first}");
    mark(&server, "web-1", "critical");
    let event = watcher.read();
    assert_eq!(
        (
            event["event"].as_str(),
            event["reason"].as_str(),
            event["instance"]["health"].as_str()
        ),
        (Some("health"), Some("critical"), Some("critical")),
        "{event}"
    );
    mark(&server, "web-1", "healthy");
    let event = watcher.read();
    assert_eq!(
        (
            event["reason"].as_str(),
            event["instance"]["health"].as_str()
        ),
        (Some("healthy"), Some("healthy")),
        "{event}"
    );
}

#[test]
fn svcdns_mark_takes_an_instance_out_and_back() {
    let server = Svcdns::start();
    server.register(web("web-1", "10.0.0.1"));
    server.register(web("web-2", "10.0.0.2"));
    let run = |args: &[&str]| {
        let output = Command::new(BIN)
            .args(args)
            .current_dir(server.dir.path())
            .output()
            .expect("run svcdns");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), stdout, stderr)
    };
    let (ok, stdout, stderr) = run(&["mark", "web", "web-1", "critical"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("web-1.web is critical"), "{stdout}");
    assert_eq!(answers(&server, "web", RecordType::A), vec!["10.0.0.2"]);
    let (_, table, _) = run(&["list", "web"]);
    let row = table
        .lines()
        .find(|line| line.starts_with("web ") && line.contains("web-1"))
        .unwrap_or_else(|| panic!("web-1 is listed: {table}"));
    assert!(row.contains("critical"), "{table}");

    let (ok, stdout, _) = run(&["mark", "web", "web-1", "healthy"]);
    assert!(ok && stdout.contains("healthy"), "{stdout}");
    assert_eq!(
        answers(&server, "web", RecordType::A),
        vec!["10.0.0.1", "10.0.0.2"]
    );

    let (ok, _, stderr) = run(&["mark", "web", "web-9", "critical"]);
    assert!(!ok);
    assert!(
        stderr.contains("not_found") || stderr.contains("not registered"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["mark", "web", "web-1", "sick"]);
    assert!(!ok);
    assert!(
        stderr.contains("healthy") && stderr.contains("critical"),
        "{stderr}"
    );
}
