//! The operations endpoint (`http.listen`): `/metrics` counts what really happened
//! (queries sent here, registrations made here), `/health` and `/ready` answer probes.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};

use common::*;
use hickory_proto::rr::RecordType;
use serde_json::json;

/// The sum of every sample of `name` whose labels contain all of `labels`.
fn sum(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_count_queries_registrations_and_instances() {
    let server = Svcdns::with(&[], HTTP);
    let before = scrape(&server);
    let a_noerror = r#"svcdns_dns_responses_total{transport="udp",type="A",rcode="NOERROR"}"#;
    assert_eq!(metric_value(&before, a_noerror), 0.0, "{before}");

    server.register(json!({"op": "register", "service": "web", "id": "web-1",
        "addresses": ["10.0.0.1"], "port": 80}));
    server.register(json!({"op": "register", "service": "web", "id": "web-2",
        "addresses": ["10.0.0.2"], "port": 80, "ttl": 1}));
    let refused = server
        .connect()
        .send(&json!({"op": "register", "service": "web",
        "id": "web-3", "addresses": ["10.0.0.3"], "port": 70000}));
    assert_eq!(refused["error"]["code"], "invalid_port");
    server
        .connect()
        .send(&json!({"op": "mark", "service": "web", "id": "web-1",
        "health": "critical"}));

    for _ in 0..7 {
        server.query("web.svc.internal.", RecordType::A);
    }
    for _ in 0..3 {
        server.query("nothing.svc.internal.", RecordType::SRV);
    }
    server.query_over("web.svc.internal.", RecordType::A, Transport::Tcp);
    // Outside our zones with no upstreams: REFUSED, through the Catalog.
    server.query("example.com.", RecordType::TXT);
    assert!(
        eventually(WAIT, || server.connect().send(&json!({"op": "list"}))
            ["instances"]
            .as_array()
            .is_some_and(|all| all.len() == 1)),
        "web-2's lease of 1 s did not run out"
    );

    let page = scrape(&server);
    assert_eq!(metric_value(&page, a_noerror), 7.0, "{page}");
    assert_eq!(
        metric_value(
            &page,
            r#"svcdns_dns_responses_total{transport="udp",type="SRV",rcode="NXDOMAIN"}"#
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &page,
            r#"svcdns_dns_responses_total{transport="tcp",type="A",rcode="NOERROR"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &page,
            r#"svcdns_dns_responses_total{transport="udp",type="TXT",rcode="REFUSED"}"#
        ),
        1.0
    );
    // Every response has its latency in the histogram, and only those.
    for transport in ["udp", "tcp"] {
        let responses = sum(
            &page,
            "svcdns_dns_responses_total",
            &[&format!("transport=\"{transport}\"")],
        );
        let observed = metric_value(
            &page,
            &format!("svcdns_dns_response_duration_seconds_count{{transport=\"{transport}\"}}"),
        );
        assert_eq!(observed, responses, "{transport}: {page}");
    }
    let inf = metric_value(
        &page,
        r#"svcdns_dns_response_duration_seconds_bucket{transport="udp",le="+Inf"}"#,
    );
    assert_eq!(inf, 11.0, "{page}");

    for (sample, expected) in [
        (
            r#"svcdns_registration_requests_total{op="register",outcome="ok"}"#,
            2.0,
        ),
        (
            r#"svcdns_registration_requests_total{op="register",outcome="error"}"#,
            1.0,
        ),
        (
            r#"svcdns_registration_requests_total{op="mark",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"svcdns_registration_errors_total{code="invalid_port"}"#,
            1.0,
        ),
        (r#"svcdns_registry_changes_total{reason="registered"}"#, 2.0),
        (r#"svcdns_registry_changes_total{reason="expired"}"#, 1.0),
        (r#"svcdns_registry_changes_total{reason="critical"}"#, 1.0),
        (r#"svcdns_instances{health="healthy"}"#, 0.0),
        (r#"svcdns_instances{health="critical"}"#, 1.0),
        ("svcdns_services", 1.0),
    ] {
        assert_eq!(metric_value(&page, sample), expected, "{sample}\n{page}");
    }
    assert!(
        page.contains("# TYPE svcdns_dns_response_duration_seconds histogram"),
        "{page}"
    );
}

#[test]
fn metrics_count_forwarded_queries_and_upstream_failures() {
    // An upstream that never answers: a bound UDP socket nobody reads.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = format!(
        "{HTTP}forward:\n  upstreams: [\"{}\"]\n  timeout: 1\n",
        silent.local_addr().unwrap()
    );
    let server = Svcdns::with(&[], &config);
    let response = server.query_recursive("example.com.", RecordType::A);
    assert_eq!(rcode(&response), hickory_proto::op::ResponseCode::ServFail);
    let page = scrape(&server);
    assert!(
        metric_value(&page, "svcdns_forwarded_queries_total") >= 1.0,
        "{page}"
    );
    assert!(
        metric_value(&page, "svcdns_forward_failures_total") >= 1.0,
        "{page}"
    );
    assert_eq!(
        metric_value(
            &page,
            r#"svcdns_dns_responses_total{transport="udp",type="A",rcode="SERVFAIL"}"#
        ),
        metric_value(&page, "svcdns_forward_failures_total"),
        "{page}"
    );
}

#[test]
fn health_and_ready_answer_probes_and_other_requests_are_refused() {
    let server = Svcdns::with(&[], HTTP);
    let address = server.http.expect("http address");
    assert_eq!(http(address, "GET", "/health"), (200, "ok\n".to_string()));
    assert_eq!(http(address, "GET", "/ready"), (200, "ready\n".to_string()));
    assert_eq!(http(address, "HEAD", "/ready").0, 200);
    assert_eq!(http(address, "GET", "/nothing").0, 404);
    assert_eq!(http(address, "POST", "/metrics").0, 405);
    // Not HTTP at all: the connection is closed and the endpoint keeps serving.
    let mut garbage = TcpStream::connect(address).unwrap();
    garbage.set_read_timeout(Some(WAIT)).unwrap();
    garbage.write_all(b"\x00\x01\x02 not http\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = garbage.read_to_end(&mut sink);
    assert_eq!(http(address, "GET", "/health").0, 200);
}

#[test]
fn without_http_listen_there_is_no_endpoint() {
    let server = Svcdns::start();
    assert_eq!(server.http, None);
}
