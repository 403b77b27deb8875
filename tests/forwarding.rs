//! Names outside our zones are forwarded to `forward.upstreams` (a second svcdns on
//! loopback serves as the upstream): answers, negative answers, failover, the cache,
//! and SERVFAIL with an Extended DNS Error when no upstream answers.

mod common;

use std::net::{SocketAddr, UdpSocket};

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::RecordType;
use serde_json::json;

const UPSTREAM_ZONE: &str =
    "origin: example.test.\nttl: 60\nrecords:\n  - {name: www, type: A, data: 10.7.0.1}\n";

fn upstream() -> Svcdns {
    Svcdns::with(&[("example.yaml", UPSTREAM_ZONE)], "")
}

fn forwarding_to(upstreams: &[SocketAddr], timeout: u64) -> Svcdns {
    let list: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    Svcdns::with(
        &[],
        &format!(
            "forward:\n  upstreams: [{}]\n  timeout: {timeout}\n",
            list.join(", ")
        ),
    )
}

/// A loopback UDP port where nothing answers (ICMP port unreachable).
fn closed_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

fn ask(server: &Svcdns, name: &str, record_type: RecordType) -> Message {
    server.query_recursive(name, record_type)
}

#[test]
fn names_outside_our_zones_are_forwarded_and_ours_are_not() {
    let upstream = upstream();
    let server = forwarding_to(&[upstream.dns], 2);
    server.register(json!({"op": "register", "service": "web", "id": "web-1",
        "addresses": ["10.0.0.5"], "port": 80}));

    let forwarded = ask(&server, "www.example.test.", RecordType::A);
    assert_eq!(rcode(&forwarded), ResponseCode::NoError);
    assert_eq!(answer_data(&forwarded), vec!["10.7.0.1"]);
    assert!(
        forwarded.metadata.recursion_available,
        "RA on forwarded answers"
    );
    assert!(!forwarded.metadata.authoritative, "not our data: no AA");

    let missing = ask(&server, "nope.example.test.", RecordType::A);
    assert_eq!(rcode(&missing), ResponseCode::NXDomain);

    // Our zone is answered here, with AA, never forwarded (the upstream has no such name).
    let ours = ask(&server, "web.svc.internal.", RecordType::A);
    assert_eq!(answer_data(&ours), vec!["10.0.0.5"]);
    assert!(ours.metadata.authoritative);
}

#[test]
fn answers_are_cached_for_their_ttl() {
    let mut upstream = upstream();
    let server = forwarding_to(&[upstream.dns], 1);
    assert_eq!(
        answer_data(&ask(&server, "www.example.test.", RecordType::A)),
        vec!["10.7.0.1"]
    );
    upstream.terminate();
    // The upstream is gone; the record's 60 s TTL keeps it in the cache.
    let cached = ask(&server, "www.example.test.", RecordType::A);
    assert_eq!(answer_data(&cached), vec!["10.7.0.1"]);
    assert!(cached.answers[0].ttl <= 60);
}

#[test]
fn a_dead_upstream_fails_over_to_the_next() {
    let upstream = upstream();
    let server = forwarding_to(&[closed_port(), upstream.dns], 1);
    let forwarded = ask(&server, "www.example.test.", RecordType::A);
    assert_eq!(answer_data(&forwarded), vec!["10.7.0.1"]);
}

#[test]
fn servfail_says_why_when_no_upstream_answers() {
    let dead = closed_port();
    let server = forwarding_to(&[dead], 1);
    let response = ask(&server, "www.example.test.", RecordType::A);
    assert_eq!(rcode(&response), ResponseCode::ServFail);
    let edns = response.edns.as_ref().expect("EDNS in the response");
    let extended = edns
        .options()
        .as_ref()
        .iter()
        .find_map(|(_, option)| match option {
            EdnsOption::Unknown(15, payload) => Some(payload.clone()),
            _ => None,
        })
        .expect("an Extended DNS Error (RFC 8914)");
    assert_eq!(
        u16::from_be_bytes([extended[0], extended[1]]),
        22,
        "No Reachable Authority"
    );
    let text = String::from_utf8_lossy(&extended[2..]).to_string();
    assert!(text.contains(&dead.to_string()), "{text}");
    let mut logs = String::new();
    assert!(eventually(WAIT, || {
        logs.push_str(&server.logs());
        logs.contains("forwarding failed")
    }));
    assert!(logs.contains(&dead.to_string()), "{logs}");
}

#[test]
fn without_upstreams_other_names_are_refused() {
    let server = Svcdns::start();
    let response = ask(&server, "www.example.test.", RecordType::A);
    assert_eq!(rcode(&response), ResponseCode::Refused);
}

#[test]
fn upstreams_can_come_from_a_resolv_conf() {
    let dir = tempfile::tempdir().unwrap();
    let resolv_conf = dir.path().join("resolv.conf");
    // resolv.conf has no ports: its nameservers are on 53, where nothing may listen in a
    // test; whatever the outcome, the name was forwarded, not refused.
    std::fs::write(
        &resolv_conf,
        "search example.test\nnameserver 127.0.0.1\noptions ndots:2\n",
    )
    .unwrap();
    let server = Svcdns::with(
        &[],
        &format!(
            "forward:\n  from_resolv_conf: {}\n  timeout: 1\n",
            resolv_conf.display()
        ),
    );
    let logs = server.logs_until("127.0.0.1:53");
    assert!(
        logs.contains("127.0.0.1:53"),
        "the upstream is logged at start: {logs}"
    );
    let response = ask(&server, "www.example.test.", RecordType::A);
    assert_ne!(rcode(&response), ResponseCode::Refused);

    let missing = dir.path().join("missing.conf");
    let error = match Svcdns::try_start(
        &[],
        &format!("forward:\n  from_resolv_conf: {}\n", missing.display()),
    ) {
        Ok(_) => panic!("started with a missing resolv.conf"),
        Err(stderr) => stderr,
    };
    assert!(error.contains("missing.conf"), "{error}");
}

#[test]
fn svcdns_is_never_its_own_upstream() {
    // The test harness listens on a free port; name a fixed one and forward to it. A
    // port found free can be taken by another test's server before ours binds it: then
    // try another.
    let server = (0..5)
        .find_map(|_| {
            let listen = closed_port();
            match Svcdns::try_listening_on(
                &listen.to_string(),
                &format!("forward:\n  upstreams: [\"{listen}\"]\n"),
            ) {
                Ok(server) => Some(server),
                Err(stderr) if stderr.contains("Address already in use") => None,
                Err(stderr) => panic!("svcdns did not start:\n{stderr}"),
            }
        })
        .expect("a free port within five tries");
    let logs = server.logs_until("forwarding to ourselves would loop");
    assert!(
        logs.contains("forwarding to ourselves would loop"),
        "{logs}"
    );
    let response = ask(&server, "www.example.test.", RecordType::A);
    assert_eq!(
        rcode(&response),
        ResponseCode::Refused,
        "no upstream left: REFUSED"
    );
}
