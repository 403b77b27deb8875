//! Zone transfers out (DESIGN §6): AXFR and IXFR to the clients in
//! `dns.transfer.allow`, REFUSED to everyone else, and Knot as a secondary that follows
//! registrations through NOTIFY and IXFR. The Knot test is skipped, saying so, when
//! knotd is not installed (scripts/test installs it).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::knot_secondary::knot_secondary_config;
use common::*;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::json;

const ZONE: &str = "svc.internal.";

/// What a transfer brought: the response code of the first message, every record of
/// every message in order, and how many messages there were.
struct Transfer {
    rcode: ResponseCode,
    records: Vec<Record>,
    messages: usize,
}

impl Transfer {
    /// `owner type data` of every record, for membership checks.
    fn lines(&self) -> Vec<String> {
        self.records
            .iter()
            .map(|r| format!("{} {} {}", r.name, r.record_type(), rdata_text(&r.data)))
            .collect()
    }

    fn has(&self, owner: &str, record_type: RecordType, data: &str) -> bool {
        self.lines()
            .contains(&format!("{owner} {record_type} {data}"))
    }

    fn owners(&self) -> Vec<String> {
        self.records.iter().map(|r| r.name.to_string()).collect()
    }
}

fn serial_of(record: &Record) -> Option<u32> {
    match &record.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    }
}

/// AXFR (`client_serial` None) or IXFR over TCP, read to its end: for AXFR and an
/// AXFR-style IXFR the second SOA of the current serial, for an incremental IXFR the
/// third (RFC 1995 §4: the second record tells which).
fn transfer(server: SocketAddr, client_serial: Option<u32>) -> Transfer {
    let zone = Name::from_ascii(ZONE).unwrap();
    let mut message = Message::new(0x4242, MessageType::Query, OpCode::Query);
    let record_type = match client_serial {
        None => RecordType::AXFR,
        Some(serial) => {
            let soa = SOA::new(zone.clone(), zone.clone(), serial, 0, 0, 0, 0);
            message.add_authority(Record::from_rdata(zone.clone(), 0, RData::SOA(soa)));
            RecordType::IXFR
        }
    };
    message.add_query(Query::query(zone, record_type));
    let bytes = message.to_vec().unwrap();
    let mut stream = TcpStream::connect(server).expect("connect over TCP");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .unwrap();
    stream.write_all(&bytes).unwrap();
    let mut records: Vec<Record> = Vec::new();
    let mut messages = 0;
    let mut rcode = ResponseCode::NoError;
    loop {
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).expect("a message length");
        let mut body = vec![0; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut body).expect("a whole message");
        let response = Message::from_vec(&body).expect("a DNS message");
        assert_eq!(response.metadata.id, 0x4242);
        if messages == 0 {
            rcode = response.metadata.response_code;
        }
        messages += 1;
        records.extend(response.answers.iter().cloned());
        if rcode != ResponseCode::NoError {
            break;
        }
        let current = records
            .first()
            .and_then(serial_of)
            .expect("first record SOA");
        let incremental = records.get(1).and_then(serial_of).is_some();
        let closing = records
            .iter()
            .skip(1)
            .filter(|r| serial_of(r) == Some(current))
            .count();
        let single = records.len() == 1 && client_serial.is_some();
        if single || closing == if incremental { 2 } else { 1 } {
            break;
        }
    }
    Transfer {
        rcode,
        records,
        messages,
    }
}

fn current_serial(server: &Svcdns) -> u32 {
    let soa = server.query(ZONE, RecordType::SOA);
    soa.answers.first().and_then(serial_of).expect("an SOA")
}

fn with_transfer(settings: &str) -> Svcdns {
    Svcdns::with_dns_config(&[], &format!("transfer: {settings}"))
}

#[test]
fn axfr_gives_allowed_clients_every_record_of_the_zone() {
    let server = with_transfer(r#"{allow: ["127.0.0.0/8", "::1/128"]}"#);
    server.register(json!({"op": "register", "service": "web", "id": "web-1",
        "addresses": ["10.0.0.5", "fd00::5"], "port": 8080, "tags": ["v2"], "meta": {"version": "2.1"}}));
    server.register(json!({"op": "register", "service": "dns", "id": "d1",
        "addresses": ["10.0.0.9"], "port": 53, "proto": "udp"}));
    server.register(json!({"op": "register", "service": "web", "id": "web-9",
        "addresses": ["10.0.0.99"], "port": 8080}));
    server.register(json!({"op": "mark", "service": "web", "id": "web-9", "health": "critical"}));
    let serial = current_serial(&server);

    let axfr = transfer(server.dns, None);
    assert_eq!(axfr.rcode, ResponseCode::NoError);
    let first = axfr.records.first().expect("records");
    let last = axfr.records.last().expect("records");
    assert_eq!(first.record_type(), RecordType::SOA, "SOA first");
    assert_eq!(last.record_type(), RecordType::SOA, "SOA last");
    assert_eq!(serial_of(first), Some(serial), "the current serial");
    assert_eq!(serial_of(last), Some(serial));
    let soas = axfr
        .records
        .iter()
        .filter(|r| r.record_type() == RecordType::SOA);
    assert_eq!(soas.count(), 2, "{:#?}", axfr.lines());
    for (owner, record_type, data) in [
        ("svc.internal.", RecordType::NS, "ns.svc.internal."),
        ("ns.svc.internal.", RecordType::A, "127.0.0.1"),
        ("web.svc.internal.", RecordType::A, "10.0.0.5"),
        ("web.svc.internal.", RecordType::AAAA, "fd00::5"),
        ("web-1.web.svc.internal.", RecordType::A, "10.0.0.5"),
        ("web-1.web.svc.internal.", RecordType::AAAA, "fd00::5"),
        ("web-1.web.svc.internal.", RecordType::TXT, "version=2.1"),
        ("v2.web.svc.internal.", RecordType::A, "10.0.0.5"),
        (
            "_web._v2.svc.internal.",
            RecordType::SRV,
            "1 1 8080 web-1.web.svc.internal.",
        ),
        (
            "_web._tcp.svc.internal.",
            RecordType::SRV,
            "1 1 8080 web-1.web.svc.internal.",
        ),
        (
            "_web._tcp.svc.internal.",
            RecordType::PTR,
            "web-1._web._tcp.svc.internal.",
        ),
        (
            "web-1._web._tcp.svc.internal.",
            RecordType::SRV,
            "1 1 8080 web-1.web.svc.internal.",
        ),
        (
            "web-1._web._tcp.svc.internal.",
            RecordType::TXT,
            "version=2.1",
        ),
        (
            "_v2._sub._web._tcp.svc.internal.",
            RecordType::PTR,
            "web-1._web._tcp.svc.internal.",
        ),
        (
            "_services._dns-sd._udp.svc.internal.",
            RecordType::PTR,
            "_web._tcp.svc.internal.",
        ),
        (
            "_services._dns-sd._udp.svc.internal.",
            RecordType::PTR,
            "_dns._udp.svc.internal.",
        ),
        (
            "_dns._udp.svc.internal.",
            RecordType::SRV,
            "1 1 53 d1.dns.svc.internal.",
        ),
        ("d1._dns._udp.svc.internal.", RecordType::TXT, ""),
    ] {
        assert!(
            axfr.has(owner, record_type, data),
            "{owner} {record_type} {data} missing from {:#?}",
            axfr.lines()
        );
    }
    // The critical instance is in no answer, so in no record.
    let lines = axfr.lines();
    assert!(
        lines
            .iter()
            .all(|line| !line.contains("web-9") && !line.contains("10.0.0.99")),
        "{lines:#?}"
    );
    // One record per instance at each of its names: nothing twice.
    let mut unique = lines.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len() + 1,
        lines.len(),
        "only the SOA repeats: {lines:#?}"
    );
}

#[test]
fn a_large_zone_goes_out_in_several_messages() {
    let server = with_transfer(r#"{allow: ["127.0.0.1/32"]}"#);
    let mut connection = server.connect();
    let instances = 2000;
    for i in 0..instances {
        let reply = connection.send(&json!({"op": "register", "service": format!("svc{}", i % 50),
            "id": format!("i{i}"), "addresses": [format!("10.1.{}.{}", i / 250, i % 250)], "port": 80}));
        assert_eq!(reply["ok"], true, "{reply}");
    }
    let axfr = transfer(server.dns, None);
    assert!(axfr.messages > 1, "{} messages", axfr.messages);
    let hosts = axfr
        .records
        .iter()
        .filter(|r| r.record_type() == RecordType::A && r.name.num_labels() == 4)
        .count();
    assert_eq!(hosts, instances, "an A record for every I.S.Z");
    assert_eq!(
        axfr.records.last().map(Record::record_type),
        Some(RecordType::SOA)
    );
}

#[test]
fn clients_outside_allow_are_refused() {
    // The tests query from 127.0.0.1.
    let server = with_transfer(r#"{allow: ["127.0.0.2/32"]}"#);
    let serial = current_serial(&server);
    assert_eq!(transfer(server.dns, None).rcode, ResponseCode::Refused);
    assert_eq!(
        transfer(server.dns, Some(serial)).rcode,
        ResponseCode::Refused
    );
    let ixfr_udp = udp_ixfr(server.dns, serial);
    assert_eq!(ixfr_udp.metadata.response_code, ResponseCode::Refused);
    assert!(ixfr_udp.answers.is_empty());

    // Without dns.transfer, nobody may.
    let closed = Svcdns::start();
    assert_eq!(transfer(closed.dns, None).rcode, ResponseCode::Refused);
    assert_eq!(transfer(closed.dns, Some(1)).rcode, ResponseCode::Refused);
}

#[test]
fn ixfr_gives_the_difference_and_the_whole_zone_from_an_unknown_serial() {
    let server = with_transfer(r#"{allow: ["127.0.0.1/32"]}"#);
    server.register(json!({"op": "register", "service": "web", "id": "web-1",
        "addresses": ["10.0.0.5"], "port": 8080}));
    server.register(json!({"op": "register", "service": "db", "id": "db-1",
        "addresses": ["10.0.0.7"], "port": 5432}));
    let before = current_serial(&server);
    // Up to date: the current SOA alone. It also makes sure the journal has `before`.
    let current = transfer(server.dns, Some(before));
    assert_eq!(current.records.len(), 1, "{:#?}", current.lines());
    assert_eq!(serial_of(&current.records[0]), Some(before));

    server.register(json!({"op": "register", "service": "web", "id": "web-2",
        "addresses": ["10.0.0.6"], "port": 8081}));
    server.register(json!({"op": "deregister", "service": "db", "id": "db-1"}));
    let after = current_serial(&server);
    assert_ne!(before, after);

    let ixfr = transfer(server.dns, Some(before));
    assert_eq!(ixfr.rcode, ResponseCode::NoError);
    let serials: Vec<Option<u32>> = ixfr.records.iter().map(serial_of).collect();
    assert_eq!(serials.first(), Some(&Some(after)));
    assert_eq!(
        serials.get(1),
        Some(&Some(before)),
        "incremental: {:#?}",
        ixfr.lines()
    );
    assert_eq!(serials.last(), Some(&Some(after)));
    // Versions may have been recorded one by one or together; either way, between the
    // SOAs: deletions of db-1's records and additions of web-2's, nothing of web-1.
    let mut deleting = true;
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    for record in &ixfr.records[2..ixfr.records.len() - 1] {
        if record.record_type() == RecordType::SOA {
            deleting = !deleting;
            continue;
        }
        let line = format!("{} {}", record.name, rdata_text(&record.data));
        if deleting {
            removed.push(line);
        } else {
            added.push(line);
        }
    }
    assert!(removed.iter().all(|l| l.contains("db")), "{removed:#?}");
    assert!(
        removed.contains(&"db-1.db.svc.internal. 10.0.0.7".to_string()),
        "{removed:#?}"
    );
    assert!(
        added
            .iter()
            .all(|l| l.contains("web-2") || l.contains("10.0.0.6")),
        "{added:#?}"
    );
    assert!(
        added.contains(&"web.svc.internal. 10.0.0.6".to_string()),
        "{added:#?}"
    );
    assert!(added.contains(&"_web._tcp.svc.internal. 1 1 8081 web-2.web.svc.internal.".to_string()));

    // From a serial the journal never had: the whole zone, AXFR-style.
    let whole = transfer(server.dns, Some(before.wrapping_sub(1000)));
    assert_eq!(whole.rcode, ResponseCode::NoError);
    assert_eq!(
        whole.records.get(1).and_then(serial_of),
        None,
        "not incremental"
    );
    assert!(whole.has("web-1.web.svc.internal.", RecordType::A, "10.0.0.5"));
    assert!(whole.has("web-2.web.svc.internal.", RecordType::A, "10.0.0.6"));
    assert!(!whole.owners().iter().any(|o| o.contains("db")));

    // Over UDP, IXFR gets the current SOA: the client retries over TCP.
    let udp = udp_ixfr(server.dns, before);
    assert_eq!(udp.metadata.response_code, ResponseCode::NoError);
    assert_eq!(udp.answers.len(), 1);
    assert_eq!(serial_of(&udp.answers[0]), Some(after));
}

#[test]
fn axfr_over_udp_is_not_implemented() {
    let server = with_transfer(r#"{allow: ["127.0.0.1/32"]}"#);
    let mut message = Message::new(7, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(
        Name::from_ascii(ZONE).unwrap(),
        RecordType::AXFR,
    ));
    let reply = udp_exchange(server.dns, &message.to_vec().unwrap(), WAIT).expect("a reply");
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
}

#[test]
fn bad_transfer_settings_stop_the_start() {
    let error = Svcdns::try_with_dns_config(&[], r#"transfer: {allow: ["10.0.0.0/33"]}"#)
        .map(|_| ())
        .expect_err("a bad prefix is refused");
    assert!(error.contains("10.0.0.0/33"), "{error}");
    assert!(error.contains("is not an IP prefix"), "{error}");
    let error = Svcdns::try_with_dns_config(&[], r#"transfer: {allow: [], notfy: []}"#)
        .map(|_| ())
        .expect_err("an unknown key is refused");
    assert!(error.contains("notfy"), "{error}");
}

fn udp_ixfr(server: SocketAddr, serial: u32) -> Message {
    let zone = Name::from_ascii(ZONE).unwrap();
    let mut message = Message::new(9, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(zone.clone(), RecordType::IXFR));
    let soa = SOA::new(zone.clone(), zone.clone(), serial, 0, 0, 0, 0);
    message.add_authority(Record::from_rdata(zone, 0, RData::SOA(soa)));
    let reply = udp_exchange(server, &message.to_vec().unwrap(), WAIT).expect("a reply");
    Message::from_vec(&reply).unwrap()
}

/// A knotd on a free loopback port, killed when dropped.
struct Knot {
    child: Child,
    address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Knot {
    /// A secondary of our zone at `primary`, listening on `port`, taking NOTIFY from
    /// loopback.
    fn secondary_of(primary: SocketAddr, port: u16) -> Knot {
        let dir = tempfile::tempdir().unwrap();
        let config = knot_secondary_config(dir.path(), port, primary, ZONE);
        let path = dir.path().join("knot.conf");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("knotd starts");
        Knot {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }
}

fn knotd_installed() -> bool {
    Command::new("knotd").arg("--version").output().is_ok()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn knot_as_a_secondary_follows_registrations_within_two_seconds() {
    if !knotd_installed() {
        eprintln!("skipped: knotd is not installed (apt-get install knot)");
        return;
    }
    let knot_port = free_udp_port();
    let server = with_transfer(&format!(
        r#"{{allow: ["127.0.0.1/32"], notify: ["127.0.0.1:{knot_port}"]}}"#
    ));
    server.register(json!({"op": "register", "service": "web", "id": "web-1",
        "addresses": ["10.0.0.5"], "port": 8080}));
    server.register(json!({"op": "register", "service": "api", "id": "api-1",
        "addresses": ["10.0.0.8"], "port": 443}));
    let knot = Knot::secondary_of(server.dns, knot_port);
    let knot_answers = |name: &str, data: &str| {
        let response = query(
            knot.address,
            name,
            RecordType::A,
            Transport::Udp(Some(1232)),
        );
        answer_data(&response) == vec![data.to_string()]
    };
    // Knot loads the zone by AXFR when it starts.
    assert!(
        eventually(WAIT, || std::panic::catch_unwind(|| knot_answers(
            "web-1.web.svc.internal.",
            "10.0.0.5"
        ))
        .unwrap_or(false)),
        "knot did not load the zone: {}",
        knot.log()
    );

    let two_seconds = Duration::from_secs(2);
    server.register(json!({"op": "register", "service": "web", "id": "web-2",
        "addresses": ["10.0.0.6"], "port": 8080}));
    assert!(
        eventually(two_seconds, || knot_answers(
            "web-2.web.svc.internal.",
            "10.0.0.6"
        )),
        "a registration reaches knot within 2 s: {}",
        knot.log()
    );
    server.register(json!({"op": "deregister", "service": "web", "id": "web-1"}));
    let gone = |name: &str| {
        let response = query(
            knot.address,
            name,
            RecordType::A,
            Transport::Udp(Some(1232)),
        );
        rcode(&response) == ResponseCode::NXDomain
    };
    assert!(
        eventually(two_seconds, || gone("web-1.web.svc.internal.")),
        "a deregistration reaches knot within 2 s: {}",
        knot.log()
    );
    server.register(json!({"op": "mark", "service": "web", "id": "web-2", "health": "critical"}));
    assert!(
        eventually(two_seconds, || gone("web-2.web.svc.internal.")),
        "a critical mark reaches knot within 2 s: {}",
        knot.log()
    );
    assert!(
        knot.log().contains("IXFR"),
        "knot followed by IXFR: {}",
        knot.log()
    );
    // Knot's copy answers what svcdns answers.
    assert_eq!(
        answer_data(&query(
            knot.address,
            "_services._dns-sd._udp.svc.internal.",
            RecordType::PTR,
            Transport::Tcp
        )),
        vec!["_api._tcp.svc.internal.".to_string()]
    );
}

#[test]
fn a_reload_changes_who_may_transfer() {
    let server = with_transfer(r#"{allow: ["127.0.0.2/32"]}"#);
    assert_eq!(transfer(server.dns, None).rcode, ResponseCode::Refused);
    let config_path = server.dir.path().join("svcdns.yaml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, config.replace("127.0.0.2/32", "127.0.0.1/32")).unwrap();
    let logs = server.reload();
    assert!(!logs.contains("takes effect at the next restart"), "{logs}");
    let axfr = transfer(server.dns, None);
    assert_eq!(axfr.rcode, ResponseCode::NoError);
    assert_eq!(
        axfr.records.last().map(Record::record_type),
        Some(RecordType::SOA)
    );
}
