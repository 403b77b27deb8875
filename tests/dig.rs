//! The walkthrough of README.md with `dig`, the tool users reach for first.

mod common;

use common::*;
use serde_json::json;

#[test]
fn dig_sees_srv_with_glue_and_truncation_falls_back_to_tcp() {
    let server = Svcdns::start();
    server.register(json!({"op": "register", "service": "web", "id": "web-1", "addresses": ["10.0.0.5"], "port": 8080}));
    let out = dig(server.dns, &["+norec", "_web._tcp.svc.internal", "SRV"]);
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains("flags: qr aa;"), "authoritative, no RA: {out}");
    assert!(out.contains("1 1 8080 web-1.web.svc.internal."), "{out}");
    assert!(
        out.contains("ADDITIONAL SECTION") && out.contains("10.0.0.5"),
        "{out}"
    );

    let short = dig(server.dns, &["+short", "web.svc.internal", "A"]);
    assert_eq!(short.trim(), "10.0.0.5");
    let ptr = dig(server.dns, &["+short", "_web._tcp.svc.internal", "PTR"]);
    assert_eq!(ptr.trim(), "web-1._web._tcp.svc.internal.");

    let nx = dig(server.dns, &["nope.svc.internal", "A"]);
    assert!(
        nx.contains("status: NXDOMAIN") && nx.contains("AUTHORITY: 1"),
        "{nx}"
    );

    // 100 instances: dig gets TC over UDP without EDNS, and its TCP retry has them all.
    let mut connection = server.connect();
    for i in 0..100 {
        connection.send(&json!({"op": "register", "service": "big", "id": format!("b-{i}"), "addresses": ["10.2.0.1"], "port": 80}));
    }
    let truncated = dig(
        server.dns,
        &["+noedns", "+ignore", "_big._tcp.svc.internal", "SRV"],
    );
    assert!(truncated.contains(" tc"), "{truncated}");
    let retried = dig(server.dns, &["+noedns", "_big._tcp.svc.internal", "SRV"]);
    assert!(retried.contains("ANSWER: 100,"), "{retried}");
    assert!(retried.contains("(TCP)"), "{retried}");
}
