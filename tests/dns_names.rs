//! Every row of the naming table (DESIGN §1), through the real binary and hickory's client.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::json;

const Z: &str = "svc.internal.";

fn web_service() -> Svcdns {
    let server = Svcdns::start();
    server.register(json!({"op": "register", "service": "web", "id": "web-1",
        "addresses": ["10.0.0.5", "fd00::5"], "port": 8080, "tags": ["v2", "canary"],
        "meta": {"version": "2.1", "owner": "team-a"}}));
    server.register(json!({"op": "register", "service": "web", "id": "web-2",
        "addresses": ["10.0.0.6"], "port": 8081, "tags": ["v2"], "priority": 5, "weight": 20}));
    server.register(
        json!({"op": "register", "service": "dns", "id": "resolver-1",
        "addresses": ["10.0.0.53"], "port": 53, "proto": "udp"}),
    );
    server
}

#[test]
fn srv_lists_every_instance_with_targets_and_glue() {
    let server = web_service();
    let response = server.query(&format!("_web._tcp.{Z}"), RecordType::SRV);
    assert_eq!(rcode(&response), ResponseCode::NoError);
    assert!(
        response.metadata.authoritative,
        "AA must be set for our zone"
    );
    assert_eq!(
        answer_data(&response),
        vec![
            "1 1 8080 web-1.web.svc.internal.".to_string(),
            "5 20 8081 web-2.web.svc.internal.".to_string(),
        ]
    );
    let mut glue = additional_names(&response);
    glue.sort();
    assert_eq!(
        glue,
        vec![
            ("web-1.web.svc.internal.".to_string(), RecordType::A),
            ("web-1.web.svc.internal.".to_string(), RecordType::AAAA),
            ("web-2.web.svc.internal.".to_string(), RecordType::A),
        ]
    );
    // UDP services live under _udp.
    let udp = server.query(&format!("_dns._udp.{Z}"), RecordType::SRV);
    assert_eq!(
        answer_data(&udp),
        vec!["1 1 53 resolver-1.dns.svc.internal.".to_string()]
    );
    assert_eq!(
        rcode(&server.query(&format!("_dns._tcp.{Z}"), RecordType::SRV)),
        ResponseCode::NXDomain
    );
}

#[test]
fn service_and_instance_addresses() {
    let server = web_service();
    let a = server.query(&format!("web.{Z}"), RecordType::A);
    assert_eq!(answer_data(&a), vec!["10.0.0.5", "10.0.0.6"]);
    let aaaa = server.query(&format!("web.{Z}"), RecordType::AAAA);
    assert_eq!(answer_data(&aaaa), vec!["fd00::5"]);
    let one = server.query(&format!("web-2.web.{Z}"), RecordType::A);
    assert_eq!(answer_data(&one), vec!["10.0.0.6"]);
    // Record TTL is the configured default.
    assert!(a.answers.iter().all(|r| r.ttl == 5), "{:?}", a.answers);
}

#[test]
fn instance_metadata_is_txt() {
    let server = web_service();
    let txt = server.query(&format!("web-1.web.{Z}"), RecordType::TXT);
    assert_eq!(txt_strings(&txt), vec![vec!["owner=team-a", "version=2.1"]]);
    // DNS-SD instance name: SRV and TXT (RFC 6763 §6).
    let dnssd = format!("web-1._web._tcp.{Z}");
    assert_eq!(
        txt_strings(&server.query(&dnssd, RecordType::TXT)),
        vec![vec!["owner=team-a", "version=2.1"]]
    );
    let srv = server.query(&dnssd, RecordType::SRV);
    assert_eq!(answer_data(&srv), vec!["1 1 8080 web-1.web.svc.internal."]);
    assert_eq!(additional_names(&srv).len(), 2, "A and AAAA of the target");
    // Without metadata, TXT is one empty string (RFC 6763 §6.1).
    let empty = server.query(&format!("web-2._web._tcp.{Z}"), RecordType::TXT);
    assert_eq!(txt_strings(&empty), vec![vec![String::new()]]);
}

#[test]
fn dns_sd_browsing_carries_everything_in_one_response() {
    let server = web_service();
    let browse = server.query(&format!("_web._tcp.{Z}"), RecordType::PTR);
    assert_eq!(
        answer_data(&browse),
        vec![
            "web-1._web._tcp.svc.internal.",
            "web-2._web._tcp.svc.internal."
        ]
    );
    let additional = additional_names(&browse);
    for expected in [
        ("web-1._web._tcp.svc.internal.", RecordType::SRV),
        ("web-1._web._tcp.svc.internal.", RecordType::TXT),
        ("web-1.web.svc.internal.", RecordType::A),
        ("web-1.web.svc.internal.", RecordType::AAAA),
        ("web-2._web._tcp.svc.internal.", RecordType::SRV),
        ("web-2._web._tcp.svc.internal.", RecordType::TXT),
        ("web-2.web.svc.internal.", RecordType::A),
    ] {
        assert!(
            additional.contains(&(expected.0.to_string(), expected.1)),
            "missing {expected:?} in {additional:?}"
        );
    }
    // Service type enumeration (RFC 6763 §9).
    let types = server.query(&format!("_services._dns-sd._udp.{Z}"), RecordType::PTR);
    assert_eq!(
        answer_data(&types),
        vec!["_dns._udp.svc.internal.", "_web._tcp.svc.internal."]
    );
    // Subtype browsing: only instances tagged canary.
    let canary = server.query(&format!("_canary._sub._web._tcp.{Z}"), RecordType::PTR);
    assert_eq!(answer_data(&canary), vec!["web-1._web._tcp.svc.internal."]);
    let v2 = server.query(&format!("_v2._sub._web._tcp.{Z}"), RecordType::PTR);
    assert_eq!(v2.answers.len(), 2);
}

#[test]
fn tag_forms_select_tagged_instances() {
    let server = web_service();
    // Consul's RFC 2782 form _S._T.Z.
    let srv = server.query(&format!("_web._canary.{Z}"), RecordType::SRV);
    assert_eq!(answer_data(&srv), vec!["1 1 8080 web-1.web.svc.internal."]);
    assert_eq!(additional_names(&srv).len(), 2);
    let both = server.query(&format!("_web._v2.{Z}"), RecordType::SRV);
    assert_eq!(both.answers.len(), 2);
    // T.S.Z addresses.
    let a = server.query(&format!("canary.web.{Z}"), RecordType::A);
    assert_eq!(answer_data(&a), vec!["10.0.0.5"]);
    let v2 = server.query(&format!("v2.web.{Z}"), RecordType::A);
    assert_eq!(answer_data(&v2), vec!["10.0.0.5", "10.0.0.6"]);
    // An unknown tag is no name at all.
    assert_eq!(
        rcode(&server.query(&format!("_web._blue.{Z}"), RecordType::SRV)),
        ResponseCode::NXDomain
    );
    assert_eq!(
        rcode(&server.query(&format!("blue.web.{Z}"), RecordType::A)),
        ResponseCode::NXDomain
    );
}

#[test]
fn nxdomain_and_nodata_carry_the_soa() {
    let server = web_service();
    for (name, rtype, expected) in [
        (
            format!("nothing.{Z}"),
            RecordType::A,
            ResponseCode::NXDomain,
        ),
        (
            format!("web-9.web.{Z}"),
            RecordType::A,
            ResponseCode::NXDomain,
        ),
        (
            format!("below.web-1.web.{Z}"),
            RecordType::A,
            ResponseCode::NXDomain,
        ),
        (format!("web.{Z}"), RecordType::TXT, ResponseCode::NoError),
        (format!("web.{Z}"), RecordType::MX, ResponseCode::NoError),
        (
            format!("_web._tcp.{Z}"),
            RecordType::A,
            ResponseCode::NoError,
        ),
        // Empty non-terminals: names that exist only because names below them do.
        (format!("_tcp.{Z}"), RecordType::A, ResponseCode::NoError),
        (format!("_udp.{Z}"), RecordType::SRV, ResponseCode::NoError),
        (format!("_canary.{Z}"), RecordType::A, ResponseCode::NoError),
        (
            format!("_sub._web._tcp.{Z}"),
            RecordType::PTR,
            ResponseCode::NoError,
        ),
        (
            format!("_dns-sd._udp.{Z}"),
            RecordType::PTR,
            ResponseCode::NoError,
        ),
    ] {
        let response = server.query(&name, rtype);
        assert_eq!(rcode(&response), expected, "{name} {rtype}");
        assert!(
            response.answers.is_empty(),
            "{name} {rtype}: {:?}",
            response.answers
        );
        assert!(response.metadata.authoritative, "{name} {rtype}");
        let soa: Vec<_> = response
            .authorities
            .iter()
            .filter(|r| r.record_type() == RecordType::SOA)
            .collect();
        assert_eq!(
            soa.len(),
            1,
            "{name} {rtype}: SOA in authority, got {:?}",
            response.authorities
        );
        assert_eq!(soa[0].name.to_string(), Z);
    }
}

#[test]
fn names_are_case_insensitive_and_the_question_is_echoed() {
    let server = web_service();
    let response = server.query("WEB-1.Web.SVC.Internal.", RecordType::A);
    assert_eq!(answer_data(&response), vec!["10.0.0.5"]);
    assert_eq!(
        response.queries[0].name().to_string(),
        "WEB-1.Web.SVC.Internal."
    );
    let srv = server.query("_WEB._TCP.svc.internal.", RecordType::SRV);
    assert_eq!(srv.answers.len(), 2);
}

#[test]
fn address_order_rotates_between_responses() {
    let server = Svcdns::start();
    server.register(json!({"op": "register", "service": "pool", "id": "p-1",
        "addresses": ["10.1.0.1", "10.1.0.2", "10.1.0.3"], "port": 80}));
    let mut firsts = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let response = server.query(&format!("pool.{Z}"), RecordType::A);
        assert_eq!(response.answers.len(), 3);
        firsts.insert(response.answers[0].data.to_string());
    }
    assert_eq!(
        firsts.len(),
        3,
        "each address should lead some response: {firsts:?}"
    );
}

#[test]
fn any_gets_a_minimal_answer_and_other_zones_are_refused() {
    let server = web_service();
    let any = server.query(&format!("web.{Z}"), RecordType::ANY);
    assert_eq!(rcode(&any), ResponseCode::NoError);
    let types: std::collections::BTreeSet<_> =
        any.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(types.len(), 1, "RFC 8482: one RRset, got {:?}", any.answers);

    let outside = server.query("example.com.", RecordType::A);
    assert_eq!(rcode(&outside), ResponseCode::Refused);
    assert!(outside.answers.is_empty());
}

#[test]
fn apex_soa_and_ns() {
    let server = Svcdns::start();
    let soa = server.query(Z, RecordType::SOA);
    assert_eq!(answers_of(&soa, RecordType::SOA).len(), 1);
    let ns = server.query(Z, RecordType::NS);
    assert_eq!(answer_data(&ns), vec!["ns.svc.internal."]);
    // The name server's address comes along, and is where svcdns listens.
    let glue = server.query(&format!("ns.{Z}"), RecordType::A);
    assert_eq!(answer_data(&glue), vec!["127.0.0.1"]);
}

#[test]
fn soa_serial_grows_with_every_change() {
    let server = Svcdns::start();
    let serial = |server: &Svcdns| match &server.query(Z, RecordType::SOA).answers[0].data {
        hickory_proto::rr::RData::SOA(soa) => soa.serial,
        other => panic!("not a SOA: {other:?}"),
    };
    let before = serial(&server);
    server.register(json!({"op": "register", "service": "a", "id": "a-1", "addresses": ["10.0.0.1"], "port": 1}));
    assert!(serial(&server) > before);
}

#[test]
fn per_instance_dns_ttl() {
    let server = Svcdns::start();
    server.register(json!({"op": "register", "service": "slow", "id": "s-1",
        "addresses": ["10.0.0.1"], "port": 1, "dns_ttl": 60}));
    server.register(json!({"op": "register", "service": "slow", "id": "s-2",
        "addresses": ["10.0.0.2"], "port": 1, "dns_ttl": 30}));
    let one = server.query(&format!("s-1.slow.{Z}"), RecordType::A);
    assert_eq!(one.answers[0].ttl, 60);
    // An RRset has one TTL: the smallest of the instances it draws from.
    let all = server.query(&format!("slow.{Z}"), RecordType::A);
    assert!(all.answers.iter().all(|r| r.ttl == 30), "{:?}", all.answers);
}

#[test]
fn record_ttls_never_outlive_the_lease() {
    let server = Svcdns::start();
    // A lease shorter than the zone's default TTL (5 s) and than its own dns_ttl.
    server.register(json!({"op": "register", "service": "brief", "id": "b-1",
        "addresses": ["10.0.0.1"], "port": 1, "ttl": 3, "dns_ttl": 60}));
    server.register(json!({"op": "register", "service": "brief", "id": "b-2",
        "addresses": ["10.0.0.2"], "port": 1, "ttl": 2}));
    let pinned = server.query(&format!("b-1.brief.{Z}"), RecordType::A);
    assert_eq!(pinned.answers[0].ttl, 3);
    let defaulted = server.query(&format!("b-2.brief.{Z}"), RecordType::A);
    assert_eq!(defaulted.answers[0].ttl, 2);
    let srv = server.query(&format!("_brief._tcp.{Z}"), RecordType::SRV);
    assert!(srv.answers.iter().all(|r| r.ttl == 2), "{:?}", srv.answers);
    assert!(
        srv.additionals.iter().all(|r| r.ttl <= 3),
        "{:?}",
        srv.additionals
    );
}

#[test]
fn changes_are_visible_in_dns_when_acknowledged() {
    let server = Svcdns::start();
    let mut connection = server.connect();
    for round in 0..20 {
        let id = format!("i-{round}");
        let reply = connection.send(&json!({"op": "register", "service": "fast", "id": id,
            "addresses": ["10.9.0.1"], "port": 1}));
        assert_eq!(reply["ok"], true);
        // No sleep: the acknowledgement promises the record is already served.
        let response = server.query(&format!("{id}.fast.{Z}"), RecordType::A);
        assert_eq!(rcode(&response), ResponseCode::NoError, "round {round}");
        assert_eq!(response.answers.len(), 1, "round {round}");
        let reply = connection.send(&json!({"op": "deregister", "service": "fast", "id": id}));
        assert_eq!(reply["ok"], true);
        let gone = server.query(&format!("{id}.fast.{Z}"), RecordType::A);
        assert_eq!(rcode(&gone), ResponseCode::NXDomain, "round {round}");
    }
    // With every instance gone the service's names are gone too, ENTs included.
    assert_eq!(
        rcode(&server.query(&format!("_fast._tcp.{Z}"), RecordType::SRV)),
        ResponseCode::NXDomain
    );
    assert_eq!(
        rcode(&server.query(&format!("_tcp.{Z}"), RecordType::A)),
        ResponseCode::NXDomain
    );
    assert_eq!(
        rcode(&server.query(&format!("_services._dns-sd._udp.{Z}"), RecordType::PTR)),
        ResponseCode::NXDomain
    );
}

#[test]
fn an_address_shared_by_two_instances_is_one_record() {
    let server = Svcdns::start();
    for id in ["a-1", "a-2"] {
        server.register(json!({"op": "register", "service": "shared", "id": id,
            "addresses": ["10.4.0.1"], "port": 80}));
    }
    // An RRset is a set (RFC 2181 §5): one A record, two SRV records.
    assert_eq!(
        answer_data(&server.query(&format!("shared.{Z}"), RecordType::A)),
        vec!["10.4.0.1"]
    );
    assert_eq!(
        server
            .query(&format!("_shared._tcp.{Z}"), RecordType::SRV)
            .answers
            .len(),
        2
    );
}

#[test]
fn the_dns_sd_service_list_keeps_its_ancestors_alive() {
    let server = Svcdns::start();
    // Nothing registered: no service list, so no `_udp.Z` either.
    for name in [format!("_udp.{Z}"), format!("_dns-sd._udp.{Z}")] {
        assert_eq!(
            rcode(&server.query(&name, RecordType::A)),
            ResponseCode::NXDomain,
            "{name}"
        );
    }
    // One tcp service: `_services._dns-sd._udp.Z` lists it, so `_udp.Z` and
    // `_dns-sd._udp.Z` exist as empty non-terminals although no service uses udp.
    server.register(json!({"op": "register", "service": "only-tcp", "id": "t-1",
        "addresses": ["10.0.0.1"], "port": 80}));
    assert_eq!(
        answer_data(&server.query(&format!("_services._dns-sd._udp.{Z}"), RecordType::PTR)),
        vec![format!("_only-tcp._tcp.{Z}")]
    );
    for name in [format!("_udp.{Z}"), format!("_dns-sd._udp.{Z}")] {
        let response = server.query(&name, RecordType::A);
        assert_eq!(rcode(&response), ResponseCode::NoError, "{name}");
        assert!(response.answers.is_empty(), "{name}");
    }
}
