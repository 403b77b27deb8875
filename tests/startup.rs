//! Start-up and shutdown: bad files are refused with file, line and value; SIGTERM ends
//! the server cleanly.

mod common;

use std::process::Command;

use common::*;
use hickory_proto::rr::{RData, RecordType};

#[test]
fn a_static_zone_file_is_served() {
    let zone = r#"
origin: corp.example.
ttl: 60
soa: {mname: ns1.corp.example., rname: admin.corp.example., minimum: 30}
ns: [ns1]
records:
  - {name: ns1, type: A, data: 127.0.0.1}
  - {name: "@", type: MX, data: "10 mail"}
  - {name: mail, type: A, data: 10.0.0.25}
  - {name: mail, type: AAAA, data: "fd00::25"}
  - {name: docs, type: CNAME, data: mail}
  - {name: "@", type: TXT, data: ["v=spf1 -all", "second"]}
  - {name: _ldap._tcp, type: SRV, data: "0 5 389 mail.corp.example.", ttl: 120}
services:
  - {service: db, id: db-1, addresses: [10.0.0.9], port: 5432}
"#;
    let server = Svcdns::with(&[("corp.yaml", zone)], "");
    let mx = server.query("corp.example.", RecordType::MX);
    assert_eq!(answer_data(&mx), vec!["10 mail.corp.example."]);
    assert_eq!(additional_names(&mx).len(), 2, "the exchange's A and AAAA");
    assert_eq!(mx.answers[0].ttl, 60);
    let cname = server.query("docs.corp.example.", RecordType::A);
    assert_eq!(answer_data(&cname), vec!["10.0.0.25", "mail.corp.example."]);
    let srv = server.query("_ldap._tcp.corp.example.", RecordType::SRV);
    assert_eq!(srv.answers[0].ttl, 120);
    assert_eq!(
        txt_strings(&server.query("corp.example.", RecordType::TXT)),
        vec![vec!["v=spf1 -all", "second"]]
    );
    let ns = server.query("corp.example.", RecordType::NS);
    assert_eq!(answer_data(&ns), vec!["ns1.corp.example."]);
    let db = server.query("db.corp.example.", RecordType::A);
    assert_eq!(answer_data(&db), vec!["10.0.0.9"]);
    // Negative answers use the zone's SOA minimum.
    let missing = server.query("nothing.corp.example.", RecordType::A);
    let soa = &missing.authorities[0];
    assert_eq!(soa.ttl, 30);
    // The default zone exists alongside.
    assert_eq!(
        answers_of(
            &server.query("svc.internal.", RecordType::SOA),
            RecordType::SOA
        )
        .len(),
        1
    );
}

#[test]
fn broken_zone_files_are_refused_with_file_line_and_value() {
    let cases = [
        ("origin: a.example.\nrecords:\n  - {name: ok, type: A, data: 10.0.0.1}\n  - {name: web, type: A, data: 300.1.2.3}\n",
         "zones/bad.yaml:4:", "300.1.2.3"),
        ("origin: a.example.\nservices:\n  - service: db\n    id: db-1\n    addresses: [10.0.0.9]\n    port: 70000\n",
         "zones/bad.yaml:3:", "70000"),
        ("origin: a.example.\nttl: 5\nrecrods: []\n", "zones/bad.yaml:3:", "recrods"),
        ("origin: a.example.\nrecords:\n  - {name: x, type: LOC, data: foo}\n", "zones/bad.yaml:3:", "LOC"),
        ("origin: a.example.\nrecords: [\n", "zones/bad.yaml", ""),
        ("origin: a.example.\nrecords:\n  - {name: d, type: CNAME, data: x}\n  - {name: d, type: A, data: 10.0.0.1}\n", "zones/bad.yaml", "CNAME"),
        ("origin: a.example.\nrecords:\n  - {name: web.b.example., type: A, data: 10.0.0.1}\n",
         "zones/bad.yaml", "web.b.example. is outside the zone a.example."),
        ("origin: a.example.\nservices:\n  - {service: db, id: db-1, addresses: [10.0.0.9], port: 5432, ttl: 30}\n",
         "zones/bad.yaml:3:", "`ttl` does not apply to a static service"),
        ("origin: a.example.\nservices:\n  - {service: db, id: db-1, addresses: [10.0.0.9], port: 5432, ephemeral: true}\n",
         "zones/bad.yaml:3:", "`ephemeral` does not apply to a static service"),
    ];
    for (content, location, value) in cases {
        let error = match Svcdns::try_start(&[("bad.yaml", content)], "") {
            Ok(_) => panic!("started with a broken zone file:\n{content}"),
            Err(stderr) => stderr,
        };
        assert!(error.contains(location), "{error:?} should name {location}");
        assert!(error.contains(value), "{error:?} should quote {value}");
    }
}

#[test]
fn bad_configuration_is_refused() {
    for (extra, expected) in [
        ("colour: blue\n", "unknown field `colour`"),
        (
            "forward:\n  timeout: 0\n",
            "forward.timeout 0 must be 1-60 seconds",
        ),
        ("http:\n  listen: localhost\n", "invalid socket address"),
        // A data_dir that is a file, not a directory.
        ("data_dir: svcdns.yaml\n", "data_dir svcdns.yaml"),
        ("default_zone: \"bad..zone\"\n", "default_zone"),
    ] {
        let error = match Svcdns::try_start(&[], extra) {
            Ok(_) => panic!("started with config {extra:?}"),
            Err(stderr) => stderr,
        };
        assert!(
            error.contains("svcdns.yaml"),
            "{error:?} should name the file"
        );
        assert!(
            error.contains(expected),
            "{error:?} should contain {expected:?}"
        );
    }
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut server = Svcdns::start();
    assert!(server.socket.exists());
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(!server.socket.exists(), "the Unix socket file is removed");
}

#[test]
fn a_second_server_on_the_same_socket_is_refused() {
    let server = Svcdns::start();
    let output = Command::new(BIN)
        .args(["serve", "--config", "svcdns.yaml"])
        .current_dir(server.dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use"), "{stderr}");
    // The first server is unharmed.
    assert_eq!(
        answers_of(
            &server.query("svc.internal.", RecordType::SOA),
            RecordType::SOA
        )
        .len(),
        1
    );
}

#[test]
fn the_soa_block_applies_without_an_ns_list() {
    let zone =
        "origin: a.example.\nttl: 60\nsoa: {rname: admin.a.example., minimum: 30, refresh: 1200}\n";
    let server = Svcdns::with(&[("a.yaml", zone)], "");
    let response = server.query("a.example.", RecordType::SOA);
    let Some(RData::SOA(soa)) = response.answers.first().map(|r| &r.data) else {
        panic!("no SOA: {response:?}");
    };
    assert_eq!(soa.minimum, 30);
    assert_eq!(soa.refresh, 1200);
    assert_eq!(soa.rname.to_ascii(), "admin.a.example.");
    assert_eq!(
        soa.mname.to_ascii(),
        "ns.a.example.",
        "the default name server"
    );
    // Negative answers are cached for the SOA's minimum (RFC 2308 §5).
    let missing = server.query("nope.a.example.", RecordType::A);
    assert_eq!(missing.authorities.first().map(|r| r.ttl), Some(30));
}

#[test]
fn logs_to_a_pipe_are_plain_text() {
    let server = Svcdns::start();
    server.register(
        serde_json::json!({"op": "register", "service": "web", "id": "web-1",
        "addresses": ["10.0.0.5"], "port": 80}),
    );
    let logs = server.logs_until("instance registered");
    assert!(logs.contains("serving"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI escapes in logs that go to a pipe: {logs:?}"
    );
}

#[test]
fn the_example_configuration_in_contrib_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/svcdns.yaml");
    let config = svcdns::config::Config::load(&path).expect("contrib/svcdns.yaml loads");
    assert_eq!(config.dns.listen[0].port(), 53);
}
