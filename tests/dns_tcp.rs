//! DNS over TCP on svcdns's own accept loop: pipelined queries answered in order, the
//! idle timeout, the connection cap, and bad input that must not take the server down.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use serde_json::json;

fn query_packet(id: u16, name: &str, record_type: u16) -> Vec<u8> {
    let mut packet = id.to_be_bytes().to_vec();
    packet.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0]);
    packet.extend_from_slice(&record_type.to_be_bytes());
    packet.extend_from_slice(&[0, 1]);
    packet
}

fn framed(packet: &[u8]) -> Vec<u8> {
    let mut bytes = (packet.len() as u16).to_be_bytes().to_vec();
    bytes.extend_from_slice(packet);
    bytes
}

fn read_response(stream: &mut TcpStream) -> Message {
    let mut len = [0; 2];
    stream.read_exact(&mut len).expect("response length");
    let mut body = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut body).expect("response body");
    Message::from_vec(&body).expect("response parses")
}

fn connect(server: &Svcdns) -> TcpStream {
    let stream = TcpStream::connect(server.dns).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// Whether the server has closed `stream` (EOF or reset on read).
fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
    }
}

#[test]
fn pipelined_queries_are_answered_in_order() {
    let server = Svcdns::start();
    server.register(json!({"op": "register", "service": "web", "id": "web-1",
        "addresses": ["10.0.0.5"], "port": 8080}));
    // Fast-path answers, NXDOMAIN, and queries only the Catalog answers (a name outside
    // our zones, a zone transfer), interleaved in one write.
    let queries: Vec<(String, u16, ResponseCode)> = (0..60)
        .map(|i| match i % 4 {
            0 => (
                "_web._tcp.svc.internal.".to_string(),
                33,
                ResponseCode::NoError,
            ),
            1 => (format!("nope{i}.svc.internal."), 1, ResponseCode::NXDomain),
            2 => ("example.com.".to_string(), 1, ResponseCode::Refused),
            _ => ("svc.internal.".to_string(), 252, ResponseCode::Refused),
        })
        .collect();
    let mut burst = Vec::new();
    for (id, (name, record_type, _)) in queries.iter().enumerate() {
        burst.extend(framed(&query_packet(id as u16, name, *record_type)));
    }
    let mut stream = connect(&server);
    stream.write_all(&burst).unwrap();
    for (id, (name, _, expected)) in queries.iter().enumerate() {
        let response = read_response(&mut stream);
        assert_eq!(response.metadata.id, id as u16, "responses in query order");
        assert_eq!(rcode(&response), *expected, "{name}");
    }
}

#[test]
fn idle_connections_are_closed() {
    let server = Svcdns::with_dns_config(&[], "tcp_idle_timeout: 1");
    let mut stream = connect(&server);
    stream
        .write_all(&framed(&query_packet(1, "svc.internal.", 6)))
        .unwrap();
    assert_eq!(rcode(&read_response(&mut stream)), ResponseCode::NoError);
    let started = Instant::now();
    assert!(closed(&mut stream), "the server closes an idle connection");
    assert!(started.elapsed() < WAIT);
}

#[test]
fn connections_over_the_cap_are_closed_and_room_comes_back() {
    let server = Svcdns::with_dns_config(&[], "tcp_max_connections: 2");
    let ask = |stream: &mut TcpStream| {
        stream
            .write_all(&framed(&query_packet(9, "svc.internal.", 6)))
            .unwrap();
        read_response(stream)
    };
    let mut first = connect(&server);
    let mut second = connect(&server);
    ask(&mut first);
    ask(&mut second);
    let mut third = connect(&server);
    assert!(closed(&mut third), "a third connection is closed at once");
    drop(first);
    // The freed slot is taken by the next connection (once the server saw the close).
    assert!(eventually(WAIT, || {
        let mut next = connect(&server);
        next.write_all(&framed(&query_packet(9, "svc.internal.", 6)))
            .is_ok()
            && !closed_or_answered(&mut next)
    }));
    assert!(server
        .logs_until("dns.tcp_max_connections reached")
        .contains("dns.tcp_max_connections reached"));
    assert_eq!(rcode(&ask(&mut second)), ResponseCode::NoError);
}

/// True when the connection was closed instead of answered.
fn closed_or_answered(stream: &mut TcpStream) -> bool {
    let mut len = [0; 2];
    stream.read_exact(&mut len).is_err()
}

#[test]
fn bad_messages_over_tcp_do_not_hurt_the_server() {
    let server = Svcdns::start();
    // A header and garbage: FORMERR with the same ID, and the connection stays usable.
    let mut stream = connect(&server);
    let mut junk = vec![0xAB, 0xCD, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    junk.extend_from_slice(&[0x3F; 20]);
    stream.write_all(&framed(&junk)).unwrap();
    let response = read_response(&mut stream);
    assert_eq!(response.metadata.id, 0xABCD);
    assert_eq!(rcode(&response), ResponseCode::FormErr);
    stream
        .write_all(&framed(&query_packet(2, "svc.internal.", 6)))
        .unwrap();
    assert_eq!(rcode(&read_response(&mut stream)), ResponseCode::NoError);

    // A length prefix with too few bytes behind it, then a close.
    let mut short = connect(&server);
    short.write_all(&[0x01, 0x00, 1, 2, 3]).unwrap();
    drop(short);
    // A connection that sends nothing and one cut mid-prefix.
    let silent = connect(&server);
    let mut half = connect(&server);
    half.write_all(&[0x00]).unwrap();
    drop(half);
    std::thread::sleep(Duration::from_millis(100));
    drop(silent);

    let answer = server.query_over("svc.internal.", RecordType::SOA, Transport::Tcp);
    assert_eq!(rcode(&answer), ResponseCode::NoError);
}

#[test]
fn running_out_of_file_descriptors_neither_spins_nor_stops_the_server() {
    let server = Svcdns::with_open_files_limit(64);
    // Connections past the descriptors left make accept fail with EMFILE; the kernel
    // still completes their handshakes, so they keep the accept loop failing.
    let held: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect(server.dns).ok())
        .collect();
    assert!(held.len() > 64, "only {} connections opened", held.len());
    let before = server.cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let used = server.cpu_ticks() - before;
    // A loop retrying at once burns all 200 ticks of the 2 s; backing off, a handful.
    assert!(
        used < 100,
        "{used} ticks of CPU in 2 s while out of descriptors"
    );
    let logs = server.logs_until("accepting a DNS-over-TCP connection failed");
    assert!(
        logs.contains("accepting a DNS-over-TCP connection failed"),
        "{logs}"
    );
    assert!(
        logs.contains("open files limit"),
        "the limit is logged at start: {logs}"
    );
    // UDP is untouched, and TCP recovers once descriptors are free again.
    assert_eq!(
        rcode(&server.query("svc.internal.", RecordType::SOA)),
        ResponseCode::NoError
    );
    drop(held);
    assert!(eventually(WAIT, || {
        let Ok(mut stream) = TcpStream::connect(server.dns) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        stream
            .write_all(&framed(&query_packet(3, "svc.internal.", 6)))
            .is_ok()
            && !closed_or_answered(&mut stream)
    }));
}
