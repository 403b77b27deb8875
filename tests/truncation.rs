//! Responses over the client's size limit: TC over UDP, complete over TCP, and
//! additional records trimmed by whole RRsets without TC (DESIGN §1, RFC 2181 §9).

mod common;

use std::collections::BTreeMap;

use common::*;
use hickory_proto::rr::RecordType;
use serde_json::json;

fn register_many(
    server: &Svcdns,
    service: &str,
    count: usize,
    addresses: impl Fn(usize) -> Vec<String>,
) {
    let mut connection = server.connect();
    for i in 0..count {
        let reply = connection.send(
            &json!({"op": "register", "service": service, "id": format!("{service}-{i}"),
            "addresses": addresses(i), "port": 8000 + i}),
        );
        assert_eq!(reply["ok"], true, "{reply}");
    }
}

#[test]
fn a_hundred_instances_truncate_over_udp_and_arrive_whole_over_tcp() {
    let server = Svcdns::start();
    register_many(&server, "big", 100, |i| {
        vec![format!("10.2.{}.{}", i / 250, i % 250 + 1)]
    });
    let name = "_big._tcp.svc.internal.";

    // Plain DNS (no EDNS): 512 bytes cannot hold 100 SRV records.
    let udp = server.query_over(name, RecordType::SRV, Transport::Udp(None));
    assert!(udp.metadata.truncation, "TC must be set");
    assert!(udp.answers.len() < 100);
    let bytes = udp.to_vec().unwrap();
    assert!(
        bytes.len() <= 512,
        "UDP reply of {} bytes without EDNS",
        bytes.len()
    );

    // EDNS with 1232 bytes: still too small, still TC.
    let edns = server.query_over(name, RecordType::SRV, Transport::Udp(Some(1232)));
    assert!(edns.metadata.truncation);

    // TCP: every SRV and every target address.
    let tcp = server.query_over(name, RecordType::SRV, Transport::Tcp);
    assert!(!tcp.metadata.truncation);
    assert_eq!(answers_of(&tcp, RecordType::SRV).len(), 100);
    assert_eq!(additional_names(&tcp).len(), 100);

    // The A query of the service truncates the same way and is complete over TCP.
    let a_udp = server.query_over("big.svc.internal.", RecordType::A, Transport::Udp(None));
    assert!(a_udp.metadata.truncation);
    let a_tcp = server.query_over("big.svc.internal.", RecordType::A, Transport::Tcp);
    assert_eq!(a_tcp.answers.len(), 100);
}

#[test]
fn a_large_edns_buffer_takes_the_whole_answer() {
    let server = Svcdns::start();
    // 60 SRV records (SRV targets are never compressed) need about 2.7 KB.
    register_many(&server, "big", 60, |i| vec![format!("10.2.0.{}", i + 1)]);
    let response = server.query_over(
        "_big._tcp.svc.internal.",
        RecordType::SRV,
        Transport::Udp(Some(4096)),
    );
    assert!(!response.metadata.truncation);
    assert_eq!(response.answers.len(), 60);
    assert!(response.to_vec().unwrap().len() <= 4096);
}

#[test]
fn additional_records_are_dropped_by_whole_rrsets_without_tc() {
    let server = Svcdns::start();
    // 8 SRV records fit in 512 bytes; 8 targets with two A records and an AAAA each do not.
    register_many(&server, "mid", 8, |i| {
        vec![
            format!("10.3.0.{}", 2 * i + 1),
            format!("10.3.0.{}", 2 * i + 2),
            format!("fd00::{:x}", i + 1),
        ]
    });
    let response = server.query_over(
        "_mid._tcp.svc.internal.",
        RecordType::SRV,
        Transport::Udp(None),
    );
    assert!(
        !response.metadata.truncation,
        "dropping additionals alone must not set TC"
    );
    assert_eq!(response.answers.len(), 8, "the answer section is complete");
    let additional = additional_names(&response);
    assert!(
        !additional.is_empty(),
        "as many additionals as fit are kept"
    );
    assert!(
        additional.len() < 16,
        "not all additionals fit in 512 bytes: {}",
        additional.len()
    );
    // Every RRset that is there is there whole.
    let mut sets: BTreeMap<(String, RecordType), usize> = BTreeMap::new();
    for record in response
        .additionals
        .iter()
        .filter(|r| r.record_type() != RecordType::OPT)
    {
        *sets
            .entry((record.name.to_string(), record.record_type()))
            .or_default() += 1;
    }
    for ((name, rtype), count) in sets {
        let expected = if rtype == RecordType::A { 2 } else { 1 };
        assert_eq!(count, expected, "{name} {rtype} is partial");
    }
    assert!(response.to_vec().unwrap().len() <= 512);

    // A mixed-case question compresses worse; the response must still fit without TC.
    let mixed = server.query_over(
        "_MID._Tcp.Svc.Internal.",
        RecordType::SRV,
        Transport::Udp(None),
    );
    assert!(!mixed.metadata.truncation);
    assert_eq!(mixed.answers.len(), 8);
    assert!(mixed.to_vec().unwrap().len() <= 512);
}
