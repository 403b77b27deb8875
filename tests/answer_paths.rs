//! The fast path and hickory's Catalog give the same answers (DESIGN §5).
//!
//! Two servers with the same zone file and registrations: one answers on svcdns's own
//! wire path, the other (`dns.fast_path: false`) sends every query through the Catalog.
//! Every row of the naming table, negative answers, empty non-terminals, static names,
//! mixed case, with and without EDNS, over UDP and TCP, goes to both in lockstep, and
//! the responses are compared field by field. Where the fast path deliberately departs
//! from the Catalog (the Catalog's known faults, listed in `dns/front.rs`), separate
//! tests pin down what the fast path does.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;
use hickory_proto::op::Message;
use hickory_proto::rr::{RData, Record, RecordType};
use serde_json::json;

const ZONE: &str = r#"origin: svc.internal.
ttl: 30
soa: {mname: ns1.svc.internal., rname: hostmaster.svc.internal., minimum: 10}
ns: [ns1.svc.internal.]
records:
  - {name: ns1, type: A, data: 127.0.0.1}
  - {name: "@", type: TXT, data: "svcdns example zone"}
  - {name: "@", type: MX, data: "10 mail"}
  - {name: mail, type: A, data: 10.0.0.25}
  - {name: mail, type: AAAA, data: "fd00::25"}
  - {name: docs, type: CNAME, data: web.svc.internal.}
  - {name: old, type: CNAME, data: mail}
  - {name: printer.office, type: A, data: 10.9.0.1}
  - {name: _ldap._tcp.corp, type: SRV, data: "0 5 389 mail.svc.internal."}
services:
  - {service: db, id: db-1, addresses: [10.0.0.9], port: 5432, tags: [primary], meta: {engine: postgres}}
"#;

/// The two servers, loaded identically.
fn pair() -> (Svcdns, Svcdns) {
    let zones = [("svc.internal.yaml", ZONE)];
    let fast = Svcdns::with_dns_config(&zones, "");
    let catalog = Svcdns::with_dns_config(&zones, "fast_path: false");
    for server in [&fast, &catalog] {
        let mut connection = server.connect();
        for request in registrations() {
            let reply = connection.send(&request);
            assert_eq!(reply["ok"], true, "{reply}");
        }
    }
    (fast, catalog)
}

fn registrations() -> Vec<serde_json::Value> {
    let mut requests = vec![
        json!({"op": "register", "service": "web", "id": "web-1",
            "addresses": ["10.0.0.5", "fd00::5"], "port": 8080, "tags": ["v2", "canary"],
            "meta": {"version": "2.1", "owner": "team-a"}}),
        json!({"op": "register", "service": "web", "id": "web-2",
            "addresses": ["10.0.0.6", "10.0.0.7"], "port": 8081, "tags": ["v2"],
            "priority": 5, "weight": 20, "dns_ttl": 7}),
        json!({"op": "register", "service": "web", "id": "web-3",
            "addresses": ["fd00::3"], "port": 8082, "proto": "udp"}),
        json!({"op": "register", "service": "dns", "id": "resolver-1",
            "addresses": ["10.0.0.53"], "port": 53, "proto": "udp"}),
    ];
    // Enough for any UDP answer without EDNS to be truncated.
    for i in 0..60 {
        requests.push(
            json!({"op": "register", "service": "big", "id": format!("big-{i}"),
            "addresses": [format!("10.3.0.{}", i + 1)], "port": 9000 + i}),
        );
    }
    requests
}

/// Every name of the naming table (README), with the types asked of it.
fn table() -> Vec<(&'static str, Vec<RecordType>)> {
    use RecordType::*;
    vec![
        ("web.svc.internal.", vec![A, AAAA, ANY, TXT, MX, SRV]),
        ("_web._tcp.svc.internal.", vec![SRV, PTR, A, ANY, TXT]),
        ("_web._udp.svc.internal.", vec![SRV, PTR]),
        ("_web._canary.svc.internal.", vec![SRV, PTR, A]),
        ("_web._v2.svc.internal.", vec![SRV]),
        ("canary.web.svc.internal.", vec![A, AAAA, SRV]),
        ("v2.web.svc.internal.", vec![A, AAAA]),
        ("web-1.web.svc.internal.", vec![A, AAAA, TXT, ANY, SRV]),
        ("web-2.web.svc.internal.", vec![A, AAAA, TXT]),
        ("web-1._web._tcp.svc.internal.", vec![SRV, TXT, A, ANY]),
        ("web-3._web._udp.svc.internal.", vec![SRV, TXT]),
        ("web-3._web._tcp.svc.internal.", vec![SRV]),
        ("_canary._sub._web._tcp.svc.internal.", vec![PTR, SRV]),
        ("_sub._web._tcp.svc.internal.", vec![PTR, A]),
        ("_nope._sub._web._tcp.svc.internal.", vec![PTR]),
        ("_services._dns-sd._udp.svc.internal.", vec![PTR, A]),
        ("_dns-sd._udp.svc.internal.", vec![PTR]),
        ("_tcp.svc.internal.", vec![A, SRV]),
        ("_udp.svc.internal.", vec![A]),
        ("_canary.svc.internal.", vec![A]),
        ("_dns._udp.svc.internal.", vec![SRV]),
        ("_dns._tcp.svc.internal.", vec![SRV]),
        ("db.svc.internal.", vec![A]),
        ("_db._primary.svc.internal.", vec![SRV]),
        ("db-1.db.svc.internal.", vec![TXT]),
        ("svc.internal.", vec![NS, MX, TXT, A, AAAA]),
        ("ns1.svc.internal.", vec![A, AAAA]),
        ("mail.svc.internal.", vec![A, AAAA, ANY]),
        ("docs.svc.internal.", vec![A, AAAA, CNAME, TXT]),
        ("old.svc.internal.", vec![A, CNAME]),
        ("office.svc.internal.", vec![A]),
        ("printer.office.svc.internal.", vec![A, TXT]),
        ("_ldap._tcp.corp.svc.internal.", vec![SRV]),
        ("nope.svc.internal.", vec![A, SRV]),
        ("a.b.c.d.e.svc.internal.", vec![A]),
        ("x.web-1.web.svc.internal.", vec![A]),
        ("_big._tcp.svc.internal.", vec![SRV, PTR]),
        ("big.svc.internal.", vec![A]),
    ]
}

/// A query as raw bytes: `name` exactly as given (case kept), EDNS with `payload` and
/// the DO bit when `edns` is set.
fn packet(id: u16, name: &str, record_type: RecordType, edns: Option<(u16, bool)>) -> Vec<u8> {
    let mut packet = id.to_be_bytes().to_vec();
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&u16::from(record_type).to_be_bytes());
    packet.extend_from_slice(&[0, 1]);
    if let Some((payload, dnssec_ok)) = edns {
        packet.extend_from_slice(&[0, 0, 41]);
        packet.extend_from_slice(&payload.to_be_bytes());
        packet.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    packet
}

fn tcp_exchange(server: SocketAddr, packet: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server).expect("connect over TCP");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    stream.write_all(&framed).unwrap();
    let mut len = [0; 2];
    stream.read_exact(&mut len).expect("response length");
    let mut response = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut response).expect("response");
    response
}

#[derive(Clone, Copy, Debug)]
enum Way {
    Udp(Option<(u16, bool)>),
    Tcp,
}

fn exchange(server: &Svcdns, packet: &[u8], way: Way) -> Message {
    let bytes = match way {
        Way::Udp(_) => udp_exchange(server.dns, packet, WAIT).expect("a UDP response"),
        Way::Tcp => tcp_exchange(server.dns, packet),
    };
    Message::from_vec(&bytes).expect("a response that parses")
}

/// A record as comparable text: owner in lowercase (the fast path answers in the
/// question's case, the Catalog in the zone's), SOA serials left out (each server
/// starts its own from the clock).
fn text(record: &Record) -> String {
    let data = match &record.data {
        RData::SOA(soa) => format!(
            "{} {} {} {} {} {}",
            soa.mname, soa.rname, soa.refresh, soa.retry, soa.expire, soa.minimum
        ),
        other => other.to_string(),
    };
    format!(
        "{} {} {} {}",
        record.name.to_lowercase(),
        record.ttl,
        record.record_type(),
        data.to_lowercase()
    )
}

fn section(records: &[Record]) -> Vec<String> {
    records.iter().map(text).collect()
}

/// Compares one response pair field by field; `what` names the query in messages.
fn compare(what: &str, fast: &Message, catalog: &Message, record_type: RecordType, over_udp: bool) {
    let (f, c) = (&fast.metadata, &catalog.metadata);
    assert_eq!(f.id, c.id, "{what}: id");
    assert_eq!(f.message_type, c.message_type, "{what}: QR");
    assert_eq!(f.op_code, c.op_code, "{what}: opcode");
    assert_eq!(f.authoritative, c.authoritative, "{what}: AA");
    assert_eq!(f.truncation, c.truncation, "{what}: TC");
    assert_eq!(f.recursion_desired, c.recursion_desired, "{what}: RD");
    assert_eq!(f.recursion_available, c.recursion_available, "{what}: RA");
    assert_eq!(f.authentic_data, c.authentic_data, "{what}: AD");
    assert_eq!(f.checking_disabled, c.checking_disabled, "{what}: CD");
    assert_eq!(f.response_code, c.response_code, "{what}: rcode");
    assert_eq!(fast.queries, catalog.queries, "{what}: question");

    let (fast_answers, catalog_answers) = (section(&fast.answers), section(&catalog.answers));
    if f.truncation {
        // The fast path compresses better and keeps the OPT record, so the records that
        // fit can differ at the margin; what it sends must be what the Catalog sends.
        assert!(
            catalog_answers.starts_with(&fast_answers) || fast_answers.starts_with(&catalog_answers),
            "{what}: truncated answers differ\nfast: {fast_answers:#?}\ncatalog: {catalog_answers:#?}"
        );
    } else {
        assert_eq!(fast_answers, catalog_answers, "{what}: answer section");
    }

    let mut catalog_authority = section(&catalog.authorities);
    if record_type == RecordType::SOA {
        // The Catalog adds the NS RRset to SOA answers; Knot does not, nor do we.
        catalog_authority.retain(|r| !r.contains(" NS "));
    }
    assert_eq!(
        section(&fast.authorities),
        catalog_authority,
        "{what}: authority section"
    );

    // Additional RRsets are dropped whole when they do not fit; better compression
    // lets the fast path keep more, never fewer or others.
    let (fast_additional, catalog_additional) =
        (section(&fast.additionals), section(&catalog.additionals));
    assert!(
        fast_additional.starts_with(&catalog_additional),
        "{what}: additional section\nfast: {fast_additional:#?}\ncatalog: {catalog_additional:#?}"
    );
    if !over_udp {
        // Over TCP nothing is left out for size: the sections must be the same.
        assert_eq!(
            fast_additional, catalog_additional,
            "{what}: additional section"
        );
    }

    match (&fast.edns, &catalog.edns) {
        (Some(f), Some(c)) => {
            assert_eq!(f.version(), c.version(), "{what}: EDNS version");
            assert_eq!(f.max_payload(), c.max_payload(), "{what}: EDNS payload");
        }
        (Some(_), None) => assert!(
            catalog.metadata.truncation,
            "{what}: the Catalog drops OPT only when it truncates"
        ),
        (None, Some(_)) => panic!("{what}: the fast path dropped the OPT record"),
        (None, None) => {}
    }
}

#[test]
fn both_paths_answer_the_naming_table_alike() {
    let (fast, catalog) = pair();
    let ways = [
        Way::Udp(None),
        Way::Udp(Some((1232, false))),
        Way::Udp(Some((4096, false))),
        Way::Udp(Some((512, false))),
        Way::Tcp,
    ];
    let mut id = 0u16;
    let mut compared = 0;
    for (name, types) in table() {
        for record_type in types {
            for (variant, asked) in [name.to_string(), mixed_case(name)].into_iter().enumerate() {
                for way in ways {
                    // Mixed case once per name and type is enough.
                    if variant == 1 && !matches!(way, Way::Udp(Some((1232, _)))) {
                        continue;
                    }
                    id = id.wrapping_add(1);
                    let edns = match way {
                        Way::Udp(edns) => edns,
                        Way::Tcp => Some((1232, false)),
                    };
                    let query = packet(id, &asked, record_type, edns);
                    let what = format!("{asked} {record_type} {way:?}");
                    let from_fast = exchange(&fast, &query, way);
                    let from_catalog = exchange(&catalog, &query, way);
                    compare(
                        &what,
                        &from_fast,
                        &from_catalog,
                        record_type,
                        matches!(way, Way::Udp(_)),
                    );
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 400, "only {compared} queries compared");
}

#[test]
fn soa_answers_agree_but_for_the_catalogs_ns_in_authority() {
    let (fast, catalog) = pair();
    let query = packet(7, "svc.internal.", RecordType::SOA, Some((1232, false)));
    let from_fast = exchange(&fast, &query, Way::Udp(None));
    let from_catalog = exchange(&catalog, &query, Way::Udp(None));
    compare("SOA", &from_fast, &from_catalog, RecordType::SOA, true);
    assert!(
        from_fast.authorities.is_empty(),
        "{:?}",
        from_fast.authorities
    );
}

/// "Svc.INTERNAL." style: every other letter upper case.
fn mixed_case(name: &str) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

#[test]
fn owner_names_keep_the_questions_case() {
    let (fast, _catalog) = pair();
    let asked = "_WeB._TcP.sVc.InTeRnAl.";
    let response = exchange(
        &fast,
        &packet(1, asked, RecordType::SRV, None),
        Way::Udp(None),
    );
    assert!(!response.answers.is_empty());
    for record in &response.answers {
        assert_eq!(record.name.to_string(), asked);
    }
}

#[test]
fn truncated_udp_replies_keep_their_opt_record() {
    let (fast, _catalog) = pair();
    let query = packet(
        2,
        "_big._tcp.svc.internal.",
        RecordType::SRV,
        Some((512, true)),
    );
    let response = exchange(&fast, &query, Way::Udp(None));
    assert!(response.metadata.truncation);
    let edns = response
        .edns
        .as_ref()
        .expect("OPT kept in the TC reply (RFC 6891 §7)");
    assert!(edns.flags().dnssec_ok, "DO echoed (RFC 3225 §3)");
    assert!(udp_exchange(fast.dns, &query, WAIT).expect("reply").len() <= 512);
}

#[test]
fn udp_replies_never_exceed_4096_bytes() {
    let (fast, catalog) = pair();
    for server in [&fast, &catalog] {
        let query = packet(
            3,
            "_big._tcp.svc.internal.",
            RecordType::PTR,
            Some((65000, false)),
        );
        let bytes = udp_exchange(server.dns, &query, WAIT).expect("reply");
        assert!(bytes.len() <= 4096, "{} bytes", bytes.len());
        if std::ptr::eq(server, &fast) {
            let response = Message::from_vec(&bytes).unwrap();
            assert_eq!(response.edns.map(|e| e.max_payload()), Some(4096));
        }
        // Over TCP the same answer is whole.
        let whole = Message::from_vec(&tcp_exchange(server.dns, &query)).unwrap();
        assert!(!whole.metadata.truncation);
        assert_eq!(whole.answers.len(), 60);
    }
}

#[test]
fn refused_and_badvers_are_not_authoritative() {
    let (fast, _catalog) = pair();
    let mut chaos = packet(4, "web.svc.internal.", RecordType::A, None);
    let class_at = chaos.len() - 2;
    chaos[class_at..].copy_from_slice(&[0, 3]);
    let refused = exchange(&fast, &chaos, Way::Udp(None));
    assert_eq!(rcode(&refused), hickory_proto::op::ResponseCode::Refused);
    assert!(!refused.metadata.authoritative);

    let mut version_one = packet(5, "web.svc.internal.", RecordType::A, Some((1232, false)));
    let version_at = version_one.len() - 5;
    version_one[version_at] = 1;
    let bytes = udp_exchange(fast.dns, &version_one, WAIT).expect("reply");
    let response = Message::from_vec(&bytes).unwrap();
    // BADVERS is 16, which hickory also knows as BADSIG.
    assert_eq!(u16::from(rcode(&response)), 16);
    assert!(!response.metadata.authoritative);
    assert_eq!(response.edns.map(|e| e.version()), Some(0));
}
