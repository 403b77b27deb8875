//! The `svcdns` client subcommands against a running server.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

fn svcdns(server: &Svcdns, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(server.dir.path())
        .output()
        .expect("run svcdns")
}

/// The lines a child prints, as they come, so reads can time out instead of hanging.
fn lines_of(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

fn next_line(lines: &mpsc::Receiver<String>) -> String {
    lines
        .recv_timeout(WAIT)
        .expect("a line from the command within the time limit")
}

/// The child's exit status, once it has exited; fails with `what` if it has not
/// within [`WAIT`].
fn exited_within_wait(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let mut status = None;
    assert!(
        eventually(WAIT, || {
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "{what}"
    );
    status.expect("exited")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn register_list_deregister_over_the_default_socket_and_tcp() {
    let server = Svcdns::start();
    let out = svcdns(
        &server,
        &[
            "register",
            "web",
            "web-1",
            "-a",
            "10.0.0.5",
            "-a",
            "fd00::5",
            "-p",
            "8080",
            "-t",
            "v2",
            "-m",
            "version=2.1",
            "--ttl",
            "30",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        answer_data(&server.query("web-1.web.svc.internal.", RecordType::A)),
        vec!["10.0.0.5"]
    );
    assert_eq!(
        txt_strings(&server.query("web-1.web.svc.internal.", RecordType::TXT)),
        vec![vec!["version=2.1"]]
    );

    let tcp = server.registration_tcp.to_string();
    let out = svcdns(
        &server,
        &[
            "register", "web", "web-2", "-a", "10.0.0.6", "-p", "8081", "--tcp", &tcp,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = svcdns(&server, &["list", "web"]);
    let table = text(&out.stdout);
    assert!(
        table.lines().next().unwrap().starts_with("SERVICE"),
        "{table}"
    );
    assert!(
        table.contains("web-1") && table.contains("10.0.0.5,fd00::5") && table.contains("8080/tcp"),
        "{table}"
    );
    assert!(table.contains("permanent"), "{table}");

    let out = svcdns(&server, &["list", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["instances"].as_array().unwrap().len(), 2);

    let out = svcdns(&server, &["deregister", "web", "web-1"]);
    assert!(out.status.success());
    assert_eq!(
        rcode(&server.query("web-1.web.svc.internal.", RecordType::A)),
        ResponseCode::NXDomain
    );
}

#[test]
fn refusals_and_connection_failures_exit_non_zero_with_the_reason() {
    // An idle timeout longer than the test waits: the DNS port must not just time out.
    let server = Svcdns::with_dns_config(&[], "tcp_idle_timeout: 60");
    let out = svcdns(
        &server,
        &["register", "web", "bad_id", "-a", "10.0.0.5", "-p", "80"],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid_id") && stderr.contains("bad_id"),
        "{stderr}"
    );

    let out = svcdns(&server, &["list", "--socket", "/nonexistent/svcdns.sock"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/svcdns.sock"));

    // The DNS port given as the registration port: a prompt, clear failure.
    let mut child = Command::new(BIN)
        .args(["list", "--tcp", &server.dns.to_string()])
        .current_dir(server.dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = exited_within_wait(&mut child, "list --tcp DNS-PORT did not fail promptly");
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("registration port"), "{stderr}");

    // Port 0 is refused where the other ports are: by the command line, with the range.
    let out = svcdns(
        &server,
        &["register", "web", "a", "-a", "10.0.0.5", "-p", "0"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("1..=65535"),
        "{}",
        text(&out.stderr)
    );

    // A missing configuration file is named once, with the OS's reason once.
    let out = svcdns(&server, &["serve", "--config", "/nonexistent/svcdns.yaml"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("/nonexistent/svcdns.yaml"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}

/// Runs the CLI with `args` in the server's directory; returns it and the first line
/// it printed (once it has registered).
fn run_keepalive(server: &Svcdns, args: &[&str]) -> (std::process::Child, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(server.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let line = next_line(&lines);
    (child, line)
}

/// `svcdns register kept k-1 … --ttl TTL --keepalive`, as [`run_keepalive`].
fn keep_k1(server: &Svcdns, ttl: &str) -> (std::process::Child, String) {
    let registration = ["register", "kept", "k-1", "-a", "10.0.0.7", "-p", "80"];
    let args: Vec<&str> = registration
        .into_iter()
        .chain(["--ttl", ttl, "--keepalive"])
        .collect();
    run_keepalive(server, &args)
}

/// Sends the CLI `signal` and checks that it exits cleanly having deregistered: `name`
/// is gone from DNS at once.
fn stop_and_expect_deregistered(
    server: &Svcdns,
    mut child: std::process::Child,
    signal: &str,
    name: &str,
) {
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    let status = exited_within_wait(&mut child, &format!("the CLI did not exit after {signal}"));
    assert!(status.success(), "{status:?}");
    assert_eq!(
        rcode(&server.query(name, RecordType::A)),
        ResponseCode::NXDomain,
        "deregistered at once, not left to its lease"
    );
}

#[test]
fn keepalive_holds_the_lease_and_deregisters_on_interrupt() {
    let server = Svcdns::start();
    let (child, line) = keep_k1(&server, "1");
    assert!(line.starts_with("registered"), "{line}");
    // Three lease periods later it is still there: the CLI renewed it.
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(
        answer_data(&server.query("k-1.kept.svc.internal.", RecordType::A)),
        vec!["10.0.0.7"]
    );
    stop_and_expect_deregistered(&server, child, "-INT", "k-1.kept.svc.internal.");
}

#[test]
fn keepalive_outlives_its_connection_being_closed_as_idle() {
    // The server closes quiet connections after a second; the CLI renews every 3 s
    // (a third of its 9 s lease), so it finds its connection closed at every
    // renewal and at the end, and must carry on over new ones.
    let server = Svcdns::with_registration("idle_timeout: 1", &[]);
    let (child, line) = keep_k1(&server, "9");
    assert!(line.starts_with("registered"), "{line}");
    std::thread::sleep(Duration::from_millis(4500));
    let listed = server
        .connect()
        .send(&serde_json::json!({"op": "list", "service": "kept"}));
    let left = listed["instances"][0]["expires_in"].as_f64().unwrap_or(0.0);
    assert!(
        left > 6.0,
        "the lease was renewed at 3 s over a new connection: {listed}"
    );
    stop_and_expect_deregistered(&server, child, "-INT", "k-1.kept.svc.internal.");
}

#[test]
fn keepalive_holds_many_instances_on_one_connection() {
    let server = Svcdns::start();
    let instances: String = (0..50)
        .map(|i| {
            format!("- {{service: pool, id: p-{i}, addresses: [10.0.1.{i}], port: 80, ttl: 1}}\n")
        })
        .collect();
    std::fs::write(server.dir.path().join("instances.yaml"), instances).unwrap();
    let (child, line) = run_keepalive(&server, &["keepalive", "instances.yaml"]);
    assert_eq!(line, "registered 50 instances");
    // Three lease periods later they are all there: one connection renewed them all.
    std::thread::sleep(Duration::from_millis(3000));
    let listed = server
        .connect()
        .send(&serde_json::json!({"op": "list", "service": "pool"}));
    assert_eq!(
        listed["instances"].as_array().map(Vec::len),
        Some(50),
        "{listed}"
    );
    let open = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .map(|fds| fds.count())
        .unwrap_or(0);
    assert!(
        open < 20,
        "the CLI holds {open} descriptors for 50 instances"
    );
    stop_and_expect_deregistered(&server, child, "-TERM", "pool.svc.internal.");
}

#[test]
fn keepalive_of_a_file_with_a_refused_instance_keeps_none() {
    let server = Svcdns::start();
    let instances = "- {service: pool, id: p-1, addresses: [10.0.1.1], port: 80}\n\
                     - {service: pool, id: p-2, addresses: [10.0.1.2], port: 0}\n\
                     - {service: pool, id: p-3, addresses: [10.0.1.3], port: 80}\n";
    std::fs::write(server.dir.path().join("instances.yaml"), instances).unwrap();
    let output = Command::new(BIN)
        .args(["keepalive", "instances.yaml"])
        .current_dir(server.dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("p-2.pool") && stderr.contains("invalid_port"),
        "{stderr}"
    );
    let listed = server
        .connect()
        .send(&serde_json::json!({"op": "list", "service": "pool"}));
    assert_eq!(listed["instances"], serde_json::json!([]), "{listed}");
}

#[test]
fn watch_prints_the_present_instances_then_changes() {
    let server = Svcdns::start();
    server.register(serde_json::json!({"op": "register", "service": "web", "id": "web-1", "addresses": ["10.0.0.5"], "port": 80}));
    let mut child = Command::new(BIN)
        .args(["watch", "web"])
        .current_dir(server.dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let line = next_line(&lines);
    assert!(
        line.contains("\"present\"") && line.contains("web-1"),
        "{line}"
    );
    server.register(serde_json::json!({"op": "register", "service": "web", "id": "web-2", "addresses": ["10.0.0.6"], "port": 80}));
    let line = next_line(&lines);
    assert!(
        line.contains("\"register\"") && line.contains("web-2"),
        "{line}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn watch_fails_loudly_when_the_server_goes_away() {
    let mut server = Svcdns::start();
    let mut child = Command::new(BIN)
        .args(["watch"])
        .current_dir(server.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    // The watch is set up once a change reaches it.
    server.register(serde_json::json!({"op": "register", "service": "web", "id": "web-1", "addresses": ["10.0.0.5"], "port": 80}));
    assert!(next_line(&lines).contains("web-1"));
    server.terminate();
    let status = exited_within_wait(&mut child, "watch did not end when the server stopped");
    assert!(!status.success(), "watch must exit non-zero");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("server closed the watch"), "{stderr}");
}
