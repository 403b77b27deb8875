//! The durable registry (`data_dir`): what was acknowledged survives `kill -9`, a torn
//! file never comes up silently empty, a full disk refuses changes but not answers,
//! leases get grace across a restart, and SOA serials never go backwards.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const DURABLE: &str = "data_dir: data\n";

fn durable() -> Svcdns {
    Svcdns::with(&[], DURABLE)
}

/// Whether `I.S.svc.internal.` has an address, asked over plain UDP.
fn resolves(server: &Svcdns, service: &str, id: &str) -> bool {
    let mut packet = vec![0x17, 0x17, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in [id, service, "svc", "internal"] {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    let reply = udp_exchange(server.dns, &packet, WAIT).expect("a DNS response");
    reply[3] & 0x0f == 0 && u16::from_be_bytes([reply[6], reply[7]]) > 0
}

fn listed_ids(server: &Svcdns) -> BTreeSet<String> {
    let list = server.connect().send(&json!({"op": "list"}));
    list["instances"]
        .as_array()
        .expect("a listing")
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["service"].as_str().unwrap_or(""),
                i["id"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn every_acknowledged_registration_survives_kill_9() {
    let mut server = durable();
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let acks = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    // Four clients stream pipelined registrations until the server dies under them.
    for client in 0..4 {
        let socket = server.socket.clone();
        let acked = acked.clone();
        let acks = acks.clone();
        let stop = stop.clone();
        clients.push(std::thread::spawn(move || {
            let stream = UnixStream::connect(&socket).expect("connect");
            stream.set_read_timeout(Some(WAIT)).unwrap();
            let mut writer = stream.try_clone().unwrap();
            let service = format!("svc{client}");
            let writing = {
                let service = service.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let request = json!({"op": "register", "service": service,
                            "id": format!("i{i}"), "addresses": [format!("10.{client}.{}.{}", i / 250, i % 250 + 1)],
                            "port": 80, "ttl": 600});
                        if writer.write_all(format!("{request}\n").as_bytes()).is_err() {
                            break;
                        }
                    }
                })
            };
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let reply: Value = serde_json::from_str(&line).expect("JSON reply");
                assert_eq!(reply["ok"], true, "{reply}");
                let id = reply["id"].as_str().unwrap_or_default().to_string();
                acked.lock().unwrap().push((service.clone(), id));
                acks.fetch_add(1, Ordering::Relaxed);
            }
            let _ = writing.join();
        }));
    }
    assert!(
        eventually(WAIT, || acks.load(Ordering::Relaxed) >= 4_000),
        "registrations are acknowledged"
    );
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("client thread");
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 4_000);

    server.restart().expect("restarts on its data_dir");
    let logs = server.logs_until("registry loaded");
    assert!(logs.contains("registry loaded"), "{logs}");
    let listed = listed_ids(&server);
    let missing: Vec<&(String, String)> = acked
        .iter()
        .filter(|(service, id)| !listed.contains(&format!("{service}/{id}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged registrations lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        missing.first()
    );
    let unresolved = acked
        .iter()
        .filter(|(service, id)| !resolves(&server, service, id))
        .count();
    assert_eq!(unresolved, 0, "every acknowledged instance answers in DNS");
}

#[test]
fn leases_get_their_remaining_time_plus_a_ttl_of_grace_and_ephemeral_and_static_instances_are_not_stored(
) {
    let zone = "origin: svc.internal.\nservices:\n  - {service: db, id: db-1, addresses: [10.0.0.9], port: 5432}\n";
    let mut server = Svcdns::with(&[("svc.yaml", zone)], DURABLE);
    server.register(json!({"op": "register", "service": "web", "id": "leased",
        "addresses": ["10.0.0.1"], "port": 80, "ttl": 3}));
    server.register(
        json!({"op": "register", "service": "web", "id": "permanent",
        "addresses": ["10.0.0.2"], "port": 80}),
    );
    server
        .connect()
        .send(&json!({"op": "mark", "service": "web", "id": "permanent", "health": "critical"}));
    let mut sidecar = server.connect();
    let reply = sidecar.send(
        &json!({"op": "register", "service": "web", "id": "ephemeral",
        "addresses": ["10.0.0.3"], "port": 80, "ephemeral": true}),
    );
    assert_eq!(reply["ok"], true);
    server.kill9();
    drop(sidecar);
    // The zone file loses its static service while the server is down.
    std::fs::write(
        server.dir.path().join("zones/svc.yaml"),
        "origin: svc.internal.\n",
    )
    .unwrap();

    server.restart().expect("restarts");
    assert_eq!(
        listed_ids(&server),
        BTreeSet::from(["web/leased".to_string(), "web/permanent".to_string()]),
        "ephemeral and static instances are not stored"
    );
    let list = server
        .connect()
        .send(&json!({"op": "list", "service": "web"}));
    let leased = &list["instances"][0];
    let left = leased["expires_in"].as_f64().expect("a lease");
    assert!(
        left > 3.0 && left <= 6.5,
        "remaining time plus one ttl of grace, not {left}: {list}"
    );
    assert_eq!(list["instances"][1]["health"], "critical", "{list}");
    assert!(resolves(&server, "web", "leased"));
    assert!(!resolves(&server, "web", "permanent"), "still critical");
    // Without renewals the lease runs out.
    assert!(
        eventually(Duration::from_secs(10), || !resolves(
            &server, "web", "leased"
        )),
        "the leased instance expires after its grace"
    );
}

#[test]
fn the_soa_serial_never_goes_backwards_across_restarts() {
    let mut server = durable();
    let first = server.serial("svc.internal.");
    // A burst of changes moves the serial well past the clock.
    for i in 0..300 {
        server.register(
            json!({"op": "register", "service": "web", "id": format!("i{i}"),
            "addresses": ["10.0.0.1"], "port": 80}),
        );
    }
    let before = server.serial("svc.internal.");
    assert!(before >= first + 300, "{first} -> {before}");
    for _ in 0..2 {
        server.restart().expect("restarts");
        let after = server.serial("svc.internal.");
        assert!(after > before, "serial went from {before} to {after}");
    }
}

#[test]
fn without_data_dir_the_log_says_the_registry_is_in_memory_only() {
    let server = Svcdns::start();
    let logs = server.logs_until("memory only");
    assert!(logs.contains("memory only"), "{logs}");
}

#[test]
fn a_torn_store_recovers_to_its_last_commit_or_refuses_to_start() {
    let mut server = durable();
    let mut registered = BTreeSet::new();
    for i in 0..200 {
        server.register(
            json!({"op": "register", "service": "web", "id": format!("i{i}"),
            "addresses": ["10.0.0.1"], "port": 80, "meta": {"pad": "x".repeat(200)}}),
        );
        registered.insert(format!("web/i{i}"));
    }
    server.kill9();
    let file = server.dir.path().join("data/registry.redb");
    let original = std::fs::read(&file).expect("the store file");
    let mut outcomes = Vec::new();
    for cut in [1, 100, 4096, original.len() / 3, original.len() - 512] {
        std::fs::write(&file, &original[..original.len() - cut]).unwrap();
        match server.restart() {
            Ok(()) => {
                assert_eq!(
                    listed_ids(&server),
                    registered,
                    "cut {cut}: came up, but not with the last commit"
                );
                outcomes.push(format!("cut {cut}: recovered"));
            }
            Err(stderr) => {
                assert!(
                    stderr.contains("registry.redb") && stderr.contains("damaged"),
                    "cut {cut}: refused without naming the file as damaged: {stderr}"
                );
                outcomes.push(format!("cut {cut}: refused"));
            }
        }
        server.kill9();
    }
    eprintln!("{outcomes:?}");
}

#[test]
fn a_full_disk_refuses_changes_keeps_answering_and_recovers() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs as data_dir needs root");
        return;
    }
    let mut server = durable();
    server.kill9();
    // The data_dir becomes a 1 MiB file system of its own.
    let data = server.dir.path().join("data");
    let _mount = Mount::tmpfs(&data, "1m");
    server.restart().expect("starts on the small file system");
    server.register(json!({"op": "register", "service": "web", "id": "before",
        "addresses": ["10.0.0.1"], "port": 80}));

    let fill = data.join("fill");
    let filled = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", fill.display()), "bs=4k"])
        .output()
        .expect("run dd");
    assert!(!filled.status.success(), "dd stops when the disk is full");
    let mut refused = None;
    for i in 0..200 {
        let reply = server
            .connect()
            .send(&json!({"op": "register", "service": "web",
            "id": format!("full{i}"), "addresses": ["10.0.0.2"], "port": 80,
            "meta": {"pad": "x".repeat(200)}}));
        if reply["ok"] != true {
            refused = Some((i, reply));
            break;
        }
    }
    let (first_refused, reply) = refused.expect("a full disk refuses registrations");
    assert_refused(&reply, "store_unavailable", "No space left");
    // The refused change is not made; DNS still answers what it had.
    assert!(!resolves(&server, "web", &format!("full{first_refused}")));
    assert!(resolves(&server, "web", "before"));

    std::fs::remove_file(&fill).unwrap();
    let mut accepted = None;
    assert!(
        eventually(WAIT, || {
            let reply = server
                .connect()
                .send(&json!({"op": "register", "service": "web",
                "id": "after", "addresses": ["10.0.0.3"], "port": 80}));
            accepted = Some(reply.clone());
            reply["ok"] == true
        }),
        "writes work again once there is room: {accepted:?}"
    );
    let acknowledged = listed_ids(&server);
    server.restart().expect("restarts");
    assert_eq!(listed_ids(&server), acknowledged);
    assert!(acknowledged.contains("web/after") && acknowledged.contains("web/before"));
    server.kill9();
}

/// A file system mounted for a test, unmounted when dropped (also when it fails).
struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(at: &std::path::Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs at {}", at.display());
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs the `svcdns` command in the server's directory: success, and what it printed.
fn svcdns(server: &Svcdns, args: &[&str]) -> (bool, String) {
    let output = Command::new(BIN)
        .args(args)
        .current_dir(server.dir.path())
        .output()
        .expect("run svcdns");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

#[test]
fn a_snapshot_saved_from_a_running_server_restores_into_a_stopped_one() {
    let mut server = durable();
    server.register(json!({"op": "register", "service": "web", "id": "leased",
        "addresses": ["10.0.0.1"], "port": 80, "ttl": 100, "tags": ["v1"], "meta": {"k": "v"}}));
    server.register(json!({"op": "register", "service": "web", "id": "critical",
        "addresses": ["10.0.0.2"], "port": 80}));
    server
        .connect()
        .send(&json!({"op": "mark", "service": "web", "id": "critical", "health": "critical"}));
    let mut sidecar = server.connect();
    sidecar.send(
        &json!({"op": "register", "service": "web", "id": "ephemeral",
        "addresses": ["10.0.0.3"], "port": 80, "ephemeral": true}),
    );
    let serial_saved = server.serial("svc.internal.");

    let (ok, printed) = svcdns(&server, &["snapshot", "save", "backup.jsonl"]);
    assert!(ok && printed.contains("saved 2 instances"), "{printed}");
    server
        .connect()
        .send(&json!({"op": "deregister", "service": "web", "id": "leased"}));

    let (ok, printed) = svcdns(
        &server,
        &[
            "snapshot",
            "restore",
            "backup.jsonl",
            "--config",
            "svcdns.yaml",
        ],
    );
    assert!(!ok, "restore must refuse while the server runs: {printed}");
    assert!(printed.contains("a server is running"), "{printed}");

    server.terminate();
    let (ok, printed) = svcdns(
        &server,
        &[
            "snapshot",
            "restore",
            "backup.jsonl",
            "--config",
            "svcdns.yaml",
        ],
    );
    assert!(ok && printed.contains("restored 2 instances"), "{printed}");
    server.restart().expect("starts on the restored store");
    assert_eq!(
        listed_ids(&server),
        BTreeSet::from(["web/critical".to_string(), "web/leased".to_string()])
    );
    let list = server
        .connect()
        .send(&json!({"op": "list", "service": "web"}));
    assert_eq!(list["instances"][0]["health"], "critical", "{list}");
    assert_eq!(list["instances"][1]["tags"], json!(["v1"]), "{list}");
    assert!(
        list["instances"][1]["expires_in"].as_f64().unwrap_or(0.0) > 100.0,
        "{list}"
    );
    assert!(resolves(&server, "web", "leased"));
    assert!(
        server.serial("svc.internal.") > serial_saved,
        "the serial does not go backwards"
    );

    // A damaged backup is refused with its line, and the store is left alone.
    let backup = std::fs::read_to_string(server.dir.path().join("backup.jsonl")).unwrap();
    std::fs::write(
        server.dir.path().join("bad.jsonl"),
        backup.replace("10.0.0.1", "not-an-address"),
    )
    .unwrap();
    server.terminate();
    let (ok, printed) = svcdns(
        &server,
        &["snapshot", "restore", "bad.jsonl", "--data-dir", "data"],
    );
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("bad.jsonl:") && printed.contains("not-an-address"),
        "{printed}"
    );
    server.restart().expect("restarts");
    assert_eq!(listed_ids(&server).len(), 2);
}
