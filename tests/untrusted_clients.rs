//! Registration clients that misbehave or are not allowed: they are told so, they
//! cannot lock others out, and they cannot hold the server up.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::rr::RecordType;
use serde_json::{json, Value};

const WEB_TOKEN: &str = "web-token-0123456789";
const ADMIN_TOKEN: &str = "admin-token-0123456789";

fn with_tokens() -> Svcdns {
    let tokens = format!(
        "- {{token: {WEB_TOKEN}, services: [\"web\", \"web-*\"]}}\n- {{token: {ADMIN_TOKEN}, services: [\"*\"]}}\n"
    );
    Svcdns::with_registration("tokens_file: tokens.yaml", &[("tokens.yaml", tokens)])
}

fn web(id: &str) -> Value {
    json!({"op": "register", "service": "web", "id": id, "addresses": ["10.0.0.1"], "port": 80})
}

/// The next line the server sends on `stream`, if one comes within [`WAIT`].
fn read_line(stream: &UnixStream) -> Option<String> {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(n) if n > 0 => Some(line),
        _ => None,
    }
}

/// Whether the server has closed `stream` (EOF within [`WAIT`]).
fn closed(stream: &mut UnixStream) -> bool {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).is_ok()
}

#[test]
fn with_tokens_only_authenticated_clients_write_and_only_their_services() {
    let server = with_tokens();
    let mut anonymous = server.connect();
    let reply = anonymous.send(&web("web-1"));
    assert_eq!(reply["error"]["code"], "unauthorized", "{reply}");
    let reply = anonymous.send(&json!({"op": "list"}));
    assert_eq!(reply["error"]["code"], "unauthorized", "{reply}");
    assert_eq!(anonymous.send(&json!({"op": "ping"}))["ok"], true);
    let reply = anonymous.send(&json!({"op": "auth", "token": "web-token-012345678X"}));
    assert_eq!(reply["error"]["code"], "unauthorized", "{reply}");

    let mut sidecar = server.connect();
    let reply = sidecar.send(&json!({"op": "auth", "token": WEB_TOKEN}));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["services"], json!(["web", "web-*"]));
    assert_eq!(sidecar.send(&web("web-1"))["ok"], true);
    let reply = sidecar.send(&json!({"op": "register", "service": "db", "id": "db-1",
        "addresses": ["10.0.0.2"], "port": 5432}));
    assert_refused(&reply, "forbidden", "db");

    let mut admin = server.connect();
    admin.send(&json!({"op": "auth", "token": ADMIN_TOKEN}));
    assert_eq!(
        admin.send(&json!({"op": "register", "service": "db", "id": "db-1",
        "addresses": ["10.0.0.2"], "port": 5432}))["ok"],
        true
    );
    // The sidecar cannot remove, renew or mark another service's instances.
    for op in ["deregister", "renew"] {
        let reply = sidecar.send(&json!({"op": op, "service": "db", "id": "db-1"}));
        assert_eq!(reply["error"]["code"], "forbidden", "{op}: {reply}");
    }
    let reply =
        sidecar.send(&json!({"op": "mark", "service": "db", "id": "db-1", "health": "critical"}));
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    // Reading is for every authenticated client.
    let list = sidecar.send(&json!({"op": "list"}));
    assert_eq!(
        list["instances"].as_array().map(Vec::len),
        Some(2),
        "{list}"
    );
    assert_eq!(
        answer_data(&server.query("db.svc.internal.", RecordType::A)),
        vec!["10.0.0.2"],
        "refused requests changed nothing"
    );

    // The CLI takes the token from --token or SVCDNS_TOKEN.
    let cli = |args: &[&str], token: Option<&str>| {
        let mut command = Command::new(BIN);
        command.args(args).current_dir(server.dir.path());
        command.env_remove("SVCDNS_TOKEN");
        if let Some(token) = token {
            command.env("SVCDNS_TOKEN", token);
        }
        command.output().expect("run svcdns")
    };
    let refused = cli(
        &["register", "web", "web-2", "-a", "10.0.0.3", "-p", "80"],
        None,
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unauthorized"));
    let done = cli(
        &["register", "web", "web-2", "-a", "10.0.0.3", "-p", "80"],
        Some(WEB_TOKEN),
    );
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let done = cli(&["deregister", "web", "web-2", "--token", WEB_TOKEN], None);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
}

#[test]
fn a_registration_port_off_loopback_without_tokens_is_refused_at_start() {
    let error = match Svcdns::try_start(&[], "") {
        Ok(server) => {
            let config = server.dir.path().join("svcdns.yaml");
            let text = std::fs::read_to_string(&config).unwrap();
            std::fs::write(&config, text.replace("tcp: 127.0.0.1:0", "tcp: 0.0.0.0:0")).unwrap();
            let mut server = server;
            server.restart().expect_err("must refuse to start")
        }
        Err(stderr) => panic!("{stderr}"),
    };
    assert!(
        error.contains("0.0.0.0") && error.contains("tokens_file"),
        "{error}"
    );
}

#[test]
fn over_the_connection_limit_a_client_is_told_and_closed_not_left_waiting() {
    let server = Svcdns::with_registration("max_connections: 3", &[]);
    let mut held: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(&server.socket).unwrap())
        .collect();
    // Let the server take them.
    let mut probe = UnixStream::connect(&server.socket).unwrap();
    let line = read_line(&probe).expect("a refusal, not silence");
    assert!(line.contains("too_many_connections"), "{line}");
    assert!(closed(&mut probe));
    // One held connection goes; a new client is served again.
    drop(held.pop());
    assert!(
        eventually(WAIT, || {
            let mut client = Registration::unix(&server.socket);
            client.send(&json!({"op": "ping"}))["ok"] == true
        }),
        "a slot frees when a connection closes"
    );
}

#[test]
fn idle_connections_are_closed_but_not_those_holding_ephemeral_instances_or_watches() {
    let server = Svcdns::with_registration("idle_timeout: 1", &[]);
    let mut idle = UnixStream::connect(&server.socket).unwrap();
    let mut sidecar = Registration::unix(&server.socket);
    let reply = sidecar.send(&json!({"op": "register", "service": "web", "id": "eph",
        "addresses": ["10.0.0.1"], "port": 80, "ephemeral": true}));
    assert_eq!(reply["ok"], true);
    let mut watcher = Registration::unix(&server.socket);
    assert_eq!(watcher.send(&json!({"op": "watch"}))["ok"], true);

    let started = Instant::now();
    let line = read_line(&idle).expect("a closing line");
    assert!(line.contains("idle_timeout"), "{line}");
    assert!(closed(&mut idle));
    assert!(started.elapsed() < Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    // The ephemeral instance is still there, so its connection is.
    assert_eq!(
        answer_data(&server.query("eph.web.svc.internal.", RecordType::A)),
        vec!["10.0.0.1"]
    );
    assert_eq!(sidecar.send(&json!({"op": "ping"}))["ok"], true);
    // The watcher still gets events.
    server.register(
        json!({"op": "register", "service": "db", "id": "d", "addresses": ["10.0.0.2"], "port": 1}),
    );
    assert_eq!(watcher.read()["id"], "d");
}

#[test]
fn sigterm_completes_while_clients_do_not_read() {
    let mut server = Svcdns::start();
    // A watcher that never reads, and a pipeliner that never reads its replies.
    let mut watcher = UnixStream::connect(&server.socket).unwrap();
    watcher.write_all(b"{\"op\":\"watch\"}\n").unwrap();
    let mut pipeliner = UnixStream::connect(&server.socket).unwrap();
    pipeliner
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let pad = "x".repeat(200);
    for i in 0..20_000 {
        let line = format!(
            "{}\n",
            json!({"op": "register", "service": "web", "id": format!("i{i}"),
                "addresses": ["10.0.0.1"], "port": 80, "meta": {"pad": pad}})
        );
        if pipeliner.write_all(line.as_bytes()).is_err() {
            break; // its buffers are full: the server has stopped reading it
        }
    }
    let started = Instant::now();
    let status = server.terminate();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(status.success(), "{status:?}");
    drop((watcher, pipeliner));
}

#[test]
fn the_socket_gets_the_configured_mode() {
    let server = Svcdns::with_registration("unix_mode: \"0600\"", &[]);
    let mode = std::fs::metadata(&server.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn instance_limits_refuse_new_instances_but_not_replacements() {
    let server = Svcdns::with_registration("max_instances_per_service: 3", &[]);
    for i in 0..3 {
        server.register(web(&format!("web-{i}")));
    }
    let mut client = server.connect();
    let reply = client.send(&web("web-3"));
    assert_refused(&reply, "too_many_instances", "max_instances_per_service");
    // Replacing one is not adding one; another service has its own count.
    assert_eq!(client.send(&web("web-2"))["ok"], true);
    assert_eq!(
        client.send(&json!({"op": "register", "service": "db", "id": "db-1",
        "addresses": ["10.0.0.2"], "port": 1}))["ok"],
        true
    );
    client.send(&json!({"op": "deregister", "service": "web", "id": "web-0"}));
    assert_eq!(client.send(&web("web-3"))["ok"], true);

    let server = Svcdns::with_registration("max_instances: 2", &[]);
    server.register(web("a"));
    server.register(
        json!({"op": "register", "service": "db", "id": "b", "addresses": ["10.0.0.2"], "port": 1}),
    );
    let reply = server.connect().send(&web("c"));
    assert_refused(&reply, "too_many_instances", "max_instances");
}

#[test]
fn metadata_is_bounded_as_a_whole() {
    let server = Svcdns::start();
    let meta: serde_json::Map<String, Value> = (0..30)
        .map(|i| (format!("key{i}"), json!("v".repeat(200))))
        .collect();
    let reply = server
        .connect()
        .send(&json!({"op": "register", "service": "web", "id": "big",
        "addresses": ["10.0.0.1"], "port": 80, "meta": meta}));
    assert_refused(&reply, "invalid_meta", "4096");
}

#[test]
fn a_dns_tcp_connection_is_closed_at_the_end_of_its_lifetime_however_busy() {
    use std::net::TcpStream;
    let server = Svcdns::with_dns_config(&[], "tcp_max_lifetime: 1\ntcp_idle_timeout: 30");
    let mut stream = TcpStream::connect(server.dns).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut message = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(b"\x03svc\x08internal\x00\x00\x06\x00\x01");
    let mut query = (message.len() as u16).to_be_bytes().to_vec();
    query.extend_from_slice(&message);
    let started = Instant::now();
    let mut answered = 0;
    loop {
        let sent = stream.write_all(&query);
        let mut length = [0u8; 2];
        if sent.is_err() || stream.read_exact(&mut length).is_err() {
            break;
        }
        let mut response = vec![0; usize::from(u16::from_be_bytes(length))];
        if stream.read_exact(&mut response).is_err() {
            break;
        }
        answered += 1;
        assert!(started.elapsed() < Duration::from_secs(8), "never closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answered >= 3, "answered {answered} before closing");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// Sends `count` A queries for `name` from one socket bound to `from`, then collects
/// the responses: (full answers, truncated answers).
fn burst_of_queries(server: SocketAddr, from: &str, count: u16) -> (usize, usize) {
    let socket = UdpSocket::bind(format!("{from}:0")).expect("bind a client address");
    let mut message = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(b"\x03web\x03svc\x08internal\x00\x00\x01\x00\x01");
    for id in 0..count {
        message[..2].copy_from_slice(&id.to_be_bytes());
        socket.send_to(&message, server).expect("send");
    }
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let (mut full, mut truncated) = (0, 0);
    let mut buffer = [0u8; 4096];
    while let Ok((len, _)) = socket.recv_from(&mut buffer) {
        if len < 12 {
            continue;
        }
        if buffer[2] & 0x02 != 0 {
            truncated += 1;
        } else {
            full += 1;
        }
    }
    (full, truncated)
}

#[test]
fn response_rate_limiting_slips_and_drops_past_the_rate_per_client_network() {
    let limited = Svcdns::with_dns_config(
        &[],
        "udp_threads: 1\nrate_limit: {responses_per_second: 20, slip: 2}",
    );
    limited.register(web("web-1"));
    let (full, truncated) = burst_of_queries(limited.dns, "127.0.0.1", 200);
    assert!(
        (20..=40).contains(&full),
        "about the rate in full answers, not {full}"
    );
    let limited_count = 200 - full;
    assert!(
        truncated + 10 >= limited_count / 2 && truncated <= limited_count / 2 + 10,
        "every second limited response slips: {truncated} of {limited_count}"
    );
    // Another network has its own bucket; TCP is never limited.
    let (other_full, _) = burst_of_queries(limited.dns, "127.0.1.1", 5);
    assert_eq!(other_full, 5);
    let over_tcp = limited.query_over("web.svc.internal.", RecordType::A, Transport::Tcp);
    assert_eq!(answer_data(&over_tcp), vec!["10.0.0.1"]);

    // Off by default: every query answered.
    let open = Svcdns::with_dns_config(&[], "udp_threads: 1");
    open.register(web("web-1"));
    assert_eq!(burst_of_queries(open.dns, "127.0.0.1", 200), (200, 0));
}

#[test]
fn instance_and_request_size_limits_follow_the_configuration() {
    let server = Svcdns::with_registration(
        "max_tags: 2\n  max_addresses: 1\n  max_meta_bytes: 64\n  max_line_bytes: 1024",
        &[],
    );
    let mut client = server.connect();
    let with = |extra: Value| {
        let mut request = web("web-1");
        for (key, value) in extra.as_object().unwrap() {
            request[key] = value.clone();
        }
        request
    };
    let reply = client.send(&with(json!({"tags": ["a", "b", "c"]})));
    assert_refused(&reply, "invalid_tag", "registration.max_tags");
    let reply = client.send(&with(json!({"addresses": ["10.0.0.1", "10.0.0.2"]})));
    assert_refused(&reply, "invalid_address", "registration.max_addresses");
    let reply = client.send(&with(json!({"meta": {"notes": "x".repeat(70)}})));
    assert_refused(&reply, "invalid_meta", "registration.max_meta_bytes");
    let reply = client.send(&with(json!({"meta": {"padding": "x".repeat(1100)}})));
    assert_refused(&reply, "request_too_large", "1024");
    // Nothing refused got in; what fits does, on the same connection.
    assert_eq!(client.send(&json!({"op": "list"}))["instances"], json!([]));
    let reply = client.send(&with(json!({"tags": ["a", "b"], "meta": {"v": "1"}})));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(
        answer_data(&server.query("a.web.svc.internal.", RecordType::A)),
        vec!["10.0.0.1"]
    );
}

#[test]
fn a_connection_holds_at_most_its_share_of_ephemeral_instances() {
    let server = Svcdns::with_registration("max_instances_per_connection: 2", &[]);
    let ephemeral = |id: &str| {
        let mut request = web(id);
        request["ephemeral"] = json!(true);
        request
    };
    let mut holder = server.connect();
    assert_eq!(holder.send(&ephemeral("e1"))["ok"], true);
    assert_eq!(holder.send(&ephemeral("e2"))["ok"], true);
    let reply = holder.send(&ephemeral("e3"));
    assert_refused(&reply, "too_many_instances", "max_instances_per_connection");
    // Registering one it holds again is not holding another; leased and permanent
    // instances are not held by the connection.
    assert_eq!(holder.send(&ephemeral("e1"))["ok"], true);
    let mut leased = web("leased");
    leased["ttl"] = json!(60);
    assert_eq!(holder.send(&leased)["ok"], true);
    assert_eq!(holder.send(&web("permanent"))["ok"], true);
    // An instance it no longer holds, deregistered or taken over by another
    // registration, frees its place.
    holder.send(&json!({"op": "deregister", "service": "web", "id": "e2"}));
    assert_eq!(holder.send(&ephemeral("e3"))["ok"], true);
    let mut other = server.connect();
    assert_eq!(other.send(&web("e1"))["ok"], true);
    assert_eq!(holder.send(&ephemeral("e4"))["ok"], true);
    let reply = holder.send(&ephemeral("e5"));
    assert_refused(&reply, "too_many_instances", "max_instances_per_connection");
    // Each connection has its own share.
    assert_eq!(other.send(&ephemeral("f1"))["ok"], true);
    assert_eq!(other.send(&ephemeral("f2"))["ok"], true);
    drop(holder);
    let gone = eventually(WAIT, || {
        answer_data(&server.query("e3.web.svc.internal.", RecordType::A)).is_empty()
    });
    assert!(gone, "the closed connection's instances are released");
    let mut names = answer_data(&server.query("web.svc.internal.", RecordType::A));
    names.dedup();
    assert_eq!(
        names,
        vec!["10.0.0.1"],
        "e1, f1, f2 and the others still answer"
    );
    let list = server.connect().send(&json!({"op": "list"}));
    let mut ids: Vec<&str> = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["e1", "f1", "f2", "leased", "permanent"]);
}

#[test]
fn limits_outside_their_range_stop_the_start_with_the_reason() {
    for (line, expected) in [
        (
            "max_tags: 1000",
            "registration.max_tags is 1000; it must be 0-256",
        ),
        (
            "max_line_bytes: 10",
            "registration.max_line_bytes is 10; it must be 1024-1048576",
        ),
        (
            "max_instances_per_connection: 0",
            "max_instances_per_connection is 0; it must be at least 1",
        ),
        (
            "max_meta_bytes: 70000",
            "max_meta_bytes is 70000; it must be 0-16384",
        ),
    ] {
        let Err(stderr) = Svcdns::try_with_registration(line, &[]) else {
            panic!("starts with {line:?}");
        };
        assert!(stderr.contains(expected), "{line}: {stderr}");
    }
}

#[test]
fn sighup_reads_the_tokens_file_again_and_a_withdrawn_token_stops_writing() {
    const NEW_TOKEN: &str = "new-web-token-0123456789";
    let server = with_tokens();
    let tokens = server.dir.path().join("tokens.yaml");
    let mut sidecar = server.connect();
    sidecar.send(&json!({"op": "auth", "token": WEB_TOKEN}));
    assert_eq!(sidecar.send(&web("web-1"))["ok"], true);

    std::fs::write(
        &tokens,
        format!("- {{token: {NEW_TOKEN}, services: [\"web\"]}}\n"),
    )
    .unwrap();
    let logs = server.reload();
    assert!(logs.contains("reloaded the registration tokens"), "{logs}");
    let reply = sidecar.send(&web("web-2"));
    assert_refused(&reply, "unauthorized", "withdrawn");
    let mut again = server.connect();
    let reply = again.send(&json!({"op": "auth", "token": WEB_TOKEN}));
    assert_eq!(reply["error"]["code"], "unauthorized", "{reply}");
    let reply = sidecar.send(&json!({"op": "auth", "token": NEW_TOKEN}));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(sidecar.send(&web("web-2"))["ok"], true);

    // A bad file is refused whole: the tokens in force stay.
    std::fs::write(&tokens, "- {token: short, services: [web]}\n").unwrap();
    let logs = server.reload();
    assert!(
        logs.contains("reload refused") && logs.contains("tokens.yaml"),
        "{logs}"
    );
    let mut later = server.connect();
    assert_eq!(
        later.send(&json!({"op": "auth", "token": NEW_TOKEN}))["ok"],
        true
    );
    assert_eq!(later.send(&web("web-3"))["ok"], true);
    // What the withdrawn token registered stays: withdrawing a token stops writes,
    // it does not remove instances.
    let mut addresses = answer_data(&server.query("web.svc.internal.", RecordType::A));
    addresses.dedup();
    assert_eq!(addresses, vec!["10.0.0.1"]);
    let list = later.send(&json!({"op": "list"}));
    assert_eq!(
        list["instances"].as_array().map(Vec::len),
        Some(3),
        "{list}"
    );
}
