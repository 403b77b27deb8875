//! Hostile and broken input never stops svcdns from serving (bounded loops, loopback only).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use serde_json::json;

/// Deterministic pseudo-random bytes (xorshift64*), so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn valid_query(id: u16) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.add_query(Query::query(
        Name::from_ascii("web.svc.internal.").unwrap(),
        RecordType::A,
    ));
    message.to_vec().unwrap()
}

fn still_answers(server: &Svcdns) {
    let response = server.query("web.svc.internal.", RecordType::A);
    assert_eq!(answer_data(&response), vec!["10.0.0.5"]);
}

#[test]
fn random_and_truncated_udp_packets_never_crash_the_server() {
    let mut server = Svcdns::start();
    server.register(json!({"op": "register", "service": "web", "id": "web-1", "addresses": ["10.0.0.5"], "port": 80}));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = Rng(0x5eed_cafe);
    for round in 0..4 {
        for _ in 0..500 {
            let len = (rng.next() % 600) as usize;
            let mut packet = rng.bytes(len);
            // Half of them look like queries (QR=0, opcode 0, one question) so they
            // reach the parser's deeper paths instead of failing on the header.
            if round % 2 == 0 && packet.len() >= 12 {
                packet[2] &= 0x01;
                packet[3] = 0;
                packet[4] = 0;
                packet[5] = 1;
            }
            socket.send_to(&packet, server.dns).unwrap();
        }
        still_answers(&server);
    }
    // Every prefix of a valid query.
    let query = valid_query(7);
    for cut in 0..query.len() {
        socket.send_to(&query[..cut], server.dns).unwrap();
    }
    still_answers(&server);
    assert!(server.is_running());

    // A header claiming two questions gets FORMERR, not silence or a crash.
    let mut two = Message::query();
    two.add_query(Query::query(
        Name::from_ascii("web.svc.internal.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("web.svc.internal.").unwrap(),
        RecordType::AAAA,
    ));
    // A real client asks again when a datagram goes unanswered; after the flood the
    // server may still be dropping queries for its slow path (it logs that it does).
    let reply = (0..3)
        .find_map(|_| udp_exchange(server.dns, &two.to_vec().unwrap(), WAIT / 3))
        .unwrap_or_else(|| {
            panic!(
                "no reply in three tries; the server logged:\n{}",
                server.logs()
            )
        });
    assert_eq!(
        Message::from_vec(&reply).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
    still_answers(&server);
}

#[test]
fn broken_dns_over_tcp_never_crashes_the_server() {
    let mut server = Svcdns::start();
    server.register(json!({"op": "register", "service": "web", "id": "web-1", "addresses": ["10.0.0.5"], "port": 80}));
    let mut rng = Rng(42);
    for _ in 0..20 {
        let mut stream = TcpStream::connect(server.dns).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let len = (rng.next() % 300) as usize;
        let mut frame = (len as u16).to_be_bytes().to_vec();
        frame.extend(rng.bytes(len));
        let _ = stream.write_all(&frame);
        let mut sink = [0u8; 512];
        let _ = stream.read(&mut sink);
    }
    // A frame that announces more than it sends, then hangs up.
    let mut stream = TcpStream::connect(server.dns).unwrap();
    stream.write_all(&[0x01, 0x00, 0xde, 0xad]).unwrap();
    drop(stream);
    still_answers(&server);
    let tcp = server.query_over("web.svc.internal.", RecordType::A, Transport::Tcp);
    assert_eq!(answer_data(&tcp), vec!["10.0.0.5"]);
    assert!(server.is_running());
}

#[test]
fn garbage_on_the_registration_socket_keeps_registrations() {
    let mut server = Svcdns::start();
    server.register(json!({"op": "register", "service": "web", "id": "web-1", "addresses": ["10.0.0.5"], "port": 80}));
    let mut rng = Rng(7);
    for _ in 0..20 {
        let mut connection = server.connect_tcp();
        let mut junk = rng.bytes(2000);
        junk.push(b'\n');
        connection.send_raw(&junk);
        let reply = connection.read();
        assert_eq!(reply["ok"], false);
    }
    still_answers(&server);
    assert!(server.is_running());
}

/// Queries of the plain shape the fast path answers, for names in and around our zone
/// that the naming table parses (labels from a small alphabet of real and odd labels,
/// any case), every query type, EDNS of any size, version and flags: every one gets a
/// well-formed response with its ID that fits the size asked for.
#[test]
fn odd_queries_in_our_zone_get_well_formed_answers() {
    let server = Svcdns::start();
    server.register(json!({"op": "register", "service": "web", "id": "web-1",
        "addresses": ["10.0.0.5", "fd00::5"], "port": 80, "tags": ["blue"], "meta": {"a": "b"}}));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let alphabet: [&[u8]; 14] = [
        b"web",
        b"WEB",
        b"web-1",
        b"_web",
        b"_tcp",
        b"_udp",
        b"_sub",
        b"_blue",
        b"blue",
        b"_services",
        b"_dns-sd",
        b"\xff\x00.",
        b"x",
        b"svc",
    ];
    let types = [1u16, 28, 33, 12, 16, 6, 2, 5, 255, 0, 65535, 41, 252, 99];
    let mut rng = Rng(0xd15c0);
    let mut buffer = vec![0; 65535];
    for id in 0..1500u16 {
        let mut packet = id.to_be_bytes().to_vec();
        let edns = !rng.next().is_multiple_of(3);
        packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
        for _ in 0..rng.next() % 6 {
            let label = alphabet[(rng.next() % alphabet.len() as u64) as usize];
            packet.push(label.len() as u8);
            packet.extend_from_slice(label);
        }
        packet.extend_from_slice(b"\x03svc\x08internal\x00");
        packet.extend_from_slice(&types[(rng.next() % types.len() as u64) as usize].to_be_bytes());
        packet.extend_from_slice(&[0, 1]);
        let mut limit = 512;
        if edns {
            let payload = (rng.next() % 70_000) as u16;
            limit = usize::from(payload).clamp(512, 4096);
            let version = if rng.next().is_multiple_of(8) { 1 } else { 0 };
            packet.extend_from_slice(&[0, 0, 41]);
            packet.extend_from_slice(&payload.to_be_bytes());
            packet.extend_from_slice(&[0, version, (rng.next() as u8) & 0x80, 0, 0, 0]);
        }
        socket.send_to(&packet, server.dns).unwrap();
        let (len, _) = socket
            .recv_from(&mut buffer)
            .expect("a response to every query");
        assert!(
            len <= limit,
            "{len} bytes for a limit of {limit}: {packet:02x?}"
        );
        let response = Message::from_vec(&buffer[..len])
            .unwrap_or_else(|e| panic!("response to {packet:02x?} does not parse: {e}"));
        assert_eq!(response.metadata.id, id);
    }
    still_answers(&server);
}

#[test]
fn compression_loops_and_oversized_datagrams_are_refused_or_dropped() {
    let mut server = Svcdns::start();
    server.register(json!({"op": "register", "service": "web", "id": "web-1", "addresses": ["10.0.0.5"], "port": 80}));
    // A question name that points at itself, and two names pointing at each other.
    let self_loop = [
        0x01, 0x02, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1,
    ];
    let mut two_loop = vec![0x01, 0x03, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0];
    two_loop.extend_from_slice(&[0xc0, 0x12, 0, 1, 0, 1, 0xc0, 0x0c, 0, 1, 0, 1]);
    for packet in [&self_loop[..], &two_loop[..]] {
        // FORMERR when a reply is possible, or nothing; never a hang or a crash.
        if let Some(reply) = udp_exchange(server.dns, packet, Duration::from_millis(500)) {
            assert_eq!(reply[3] & 0x0f, 1, "FORMERR, not {reply:?}");
            assert_eq!(&reply[..2], &packet[..2], "the query's id");
        }
        still_answers(&server);
    }
    // A datagram far larger than any query is dropped without an answer.
    let mut huge = valid_query(9);
    huge.resize(9000, 0);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(&huge, server.dns).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buffer = [0u8; 512];
    assert!(
        socket.recv_from(&mut buffer).is_err(),
        "no answer to 9000 bytes"
    );
    still_answers(&server);
    assert!(server.is_running());
}
