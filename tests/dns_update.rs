//! Registration through DNS UPDATE (RFC 2136) with real clients: BIND's `nsupdate`
//! signing with TSIG, and dnspython sending an update lease (RFC 9664). What they write
//! is read back with `dig`, hickory's client and the registration socket's `list`.
//!
//! Where the RFC leaves room, the answers are BIND 9.18's and Knot 3.2's on the same
//! zone: a wrong secret gets NOTAUTH (BADSIG), an unknown key NOTAUTH (BADKEY), a zone
//! not served NOTAUTH, a name outside the zone NOTZONE, an unsigned update REFUSED
//! (BIND; Knot says NOTAUTH).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::bind_primary::BindPrimary;
use common::*;
use serde_json::json;

/// The key of every test: name, and the secret as `tsig-keygen` prints it.
const KEY: &str = "hmac-sha256:upd-key:Ly0y+VtSJ17dXR8aErXiONoocf7n2l6uDkMvE7Rk5tE=";
/// A key that may change service `web` only.
const WEB_KEY: &str = "hmac-sha256:web-key:c2VjcmV0LW9mLXRoZS13ZWIta2V5LTMyLWJ5dGVzISE=";
const KEYS_FILE: &str = r#"- name: upd-key
  algorithm: hmac-sha256
  secret: "Ly0y+VtSJ17dXR8aErXiONoocf7n2l6uDkMvE7Rk5tE="
  services: ["*"]
- name: web-key
  algorithm: hmac-sha256
  secret: "c2VjcmV0LW9mLXRoZS13ZWIta2V5LTMyLWJ5dGVzISE="
  services: ["web"]
"#;

/// A server that takes updates signed with the two keys; `extra` is top-level
/// configuration (e.g. `data_dir`).
fn server_with_keys(extra: &str) -> Svcdns {
    Svcdns::try_with_update_keys(extra, "", KEYS_FILE).expect("starts with a keys file")
}

/// Sends `commands` with `key` through nsupdate and checks that the update was made.
fn update_made(server: &Svcdns, key: &str, commands: &str) {
    let out = nsupdate(server.dns, Some(key), commands);
    assert!(!out.contains("failed"), "{commands}: {out}");
}

/// Sends `commands` with `key` through nsupdate and checks that it got REFUSED.
fn update_refused(server: &Svcdns, key: &str, commands: &str) {
    let out = nsupdate(server.dns, Some(key), commands);
    assert!(out.contains("update failed: REFUSED"), "{commands}: {out}");
}

fn short(server: &Svcdns, name: &str, rtype: &str) -> Vec<String> {
    let mut lines: Vec<String> = dig(server.dns, &["+short", name, rtype])
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

const ADD_WEB1: &str = r#"
update add web1._http._tcp.svc.internal. 60 SRV 0 5 8080 host1.svc.internal.
update add web1._http._tcp.svc.internal. 60 TXT "path=/api" "v=2"
update add _http._tcp.svc.internal. 60 PTR web1._http._tcp.svc.internal.
update add _canary._sub._http._tcp.svc.internal. 60 PTR web1._http._tcp.svc.internal.
update add host1.svc.internal. 60 A 10.0.0.5
"#;

#[test]
fn nsupdate_registers_a_dns_sd_service_and_changes_and_removes_it() {
    let server = server_with_keys("");
    update_made(&server, KEY, ADD_WEB1);

    // Acknowledged means visible: no waiting.
    assert_eq!(
        short(&server, "_http._tcp.svc.internal", "SRV"),
        ["0 5 8080 web1.http.svc.internal."]
    );
    assert_eq!(short(&server, "web1.http.svc.internal", "A"), ["10.0.0.5"]);
    assert_eq!(short(&server, "http.svc.internal", "A"), ["10.0.0.5"]);
    assert_eq!(
        short(&server, "web1._http._tcp.svc.internal", "TXT"),
        ["\"path=/api\" \"v=2\""]
    );
    assert_eq!(
        short(&server, "_canary._sub._http._tcp.svc.internal", "PTR"),
        ["web1._http._tcp.svc.internal."]
    );
    let listed = server
        .connect()
        .send(&json!({"op": "list", "service": "http"}));
    let instance = &listed["instances"][0];
    assert_eq!(instance["id"], "web1", "{listed}");
    assert_eq!(instance["port"], 8080, "{listed}");
    assert_eq!(instance["tags"], json!(["canary"]), "{listed}");
    assert_eq!(instance["meta"]["path"], "/api", "{listed}");
    assert!(
        instance.get("ttl").is_none_or(|ttl| ttl.is_null()),
        "no lease: {listed}"
    );

    // A second address at the instance's own address name, one TXT replaced.
    update_made(
        &server,
        KEY,
        "update add web1.http.svc.internal. 60 A 10.0.0.6\n\
         update delete web1._http._tcp.svc.internal. TXT\n\
         update add web1._http._tcp.svc.internal. 60 TXT \"path=/v3\"",
    );
    assert_eq!(
        short(&server, "web1.http.svc.internal", "A"),
        ["10.0.0.5", "10.0.0.6"]
    );
    assert_eq!(
        short(&server, "web1._http._tcp.svc.internal", "TXT"),
        ["\"path=/v3\""]
    );

    // One address deleted, then the SRV: the instance is gone from every name.
    update_made(
        &server,
        KEY,
        "update delete web1.http.svc.internal. A 10.0.0.5",
    );
    assert_eq!(short(&server, "web1.http.svc.internal", "A"), ["10.0.0.6"]);
    update_made(
        &server,
        KEY,
        "update delete web1._http._tcp.svc.internal. SRV",
    );
    let srv = dig(server.dns, &["_http._tcp.svc.internal", "SRV"]);
    assert!(srv.contains("status: NXDOMAIN"), "{srv}");
    assert!(short(&server, "web1.http.svc.internal", "A").is_empty());
    // Deleting what is not there is no error (RFC 2136 §3.4.2).
    update_made(
        &server,
        KEY,
        "update delete web1._http._tcp.svc.internal. SRV",
    );
}

#[test]
fn a_failed_prerequisite_or_a_bad_change_changes_nothing() {
    let server = server_with_keys("");
    update_made(&server, KEY, ADD_WEB1);
    let before = server.serial("svc.internal.");

    let cases = [
        // The name exists, so "nxdomain" fails: YXDOMAIN.
        (
            "prereq nxdomain web1._http._tcp.svc.internal.\nupdate add web1.http.svc.internal. 60 A 10.0.0.7",
            "YXDOMAIN",
        ),
        (
            "prereq yxdomain nothing.http.svc.internal.\nupdate add web1.http.svc.internal. 60 A 10.0.0.7",
            "NXDOMAIN",
        ),
        (
            "prereq nxrrset web1._http._tcp.svc.internal. SRV\nupdate add web1.http.svc.internal. 60 A 10.0.0.7",
            "YXRRSET",
        ),
        // The SRV is there, with another port: value-dependent prerequisites compare data.
        (
            "prereq yxrrset web1._http._tcp.svc.internal. SRV 0 5 9999 web1.http.svc.internal.\nupdate add web1.http.svc.internal. 60 A 10.0.0.7",
            "NXRRSET",
        ),
        // The first change alone would do, the second is refused: neither is made.
        (
            "update add web1.http.svc.internal. 60 A 10.0.0.7\nupdate add svc.internal. 60 MX 10 mail.svc.internal.",
            "REFUSED",
        ),
        // The first instance's change is made on the writer, then the second's is
        // refused there (port 0): the first is rolled back.
        (
            "update add web1.http.svc.internal. 60 A 10.0.0.7\nupdate add zero._http._tcp.svc.internal. 60 SRV 0 0 0 zero.http.svc.internal.\nupdate add zero.http.svc.internal. 60 A 10.0.0.9",
            "REFUSED",
        ),
        // An instance without a port cannot be registered.
        (
            "update add lone._http._tcp.svc.internal. 60 TXT \"a=b\"",
            "REFUSED",
        ),
        ("update add web1.example.org. 60 A 10.0.0.7", "NOTZONE"),
        // A pointer out of the zone names no instance of ours (and crashes nothing).
        (
            "update add _canary._sub._http._tcp.svc.internal. 60 PTR org.\nupdate add _http._tcp.svc.internal. 60 PTR a.b.c.example.org.",
            "REFUSED",
        ),
    ];
    for (commands, rcode) in cases {
        let out = nsupdate(server.dns, Some(KEY), commands);
        assert!(
            out.contains(&format!("update failed: {rcode}")),
            "{commands}: {out}"
        );
        assert_eq!(
            short(&server, "web1.http.svc.internal", "A"),
            ["10.0.0.5"],
            "{commands}"
        );
    }
    assert_eq!(
        server.serial("svc.internal."),
        before,
        "nothing changed, the serial did not move"
    );

    // The same prerequisites, when they hold, let the change through.
    update_made(
        &server,
        KEY,
        "prereq yxrrset web1._http._tcp.svc.internal. SRV 0 5 8080 web1.http.svc.internal.\n\
         prereq nxdomain other._http._tcp.svc.internal.\n\
         prereq yxrrset web1.http.svc.internal. A\n\
         update add web1.http.svc.internal. 60 A 10.0.0.7",
    );
    assert_eq!(
        short(&server, "web1.http.svc.internal", "A"),
        ["10.0.0.5", "10.0.0.7"]
    );
    assert!(server.serial("svc.internal.") > before);
}

#[test]
fn unsigned_badly_signed_and_unauthorised_updates_are_refused() {
    let server = server_with_keys(HTTP);
    let add = "update add web2._web._tcp.svc.internal. 60 SRV 0 0 80 web2.web.svc.internal.\n\
               update add web2.web.svc.internal. 60 A 10.0.0.8";
    let wrong_secret = "hmac-sha256:upd-key:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let unknown_key = "hmac-sha256:nobody:Ly0y+VtSJ17dXR8aErXiONoocf7n2l6uDkMvE7Rk5tE=";
    for (key, expected) in [
        (None, "update failed: REFUSED"),
        (Some(wrong_secret), "NOTAUTH(BADSIG)"),
        (Some(unknown_key), "NOTAUTH(BADKEY)"),
    ] {
        let out = nsupdate(server.dns, key, add);
        assert!(out.contains(expected), "{key:?}: {out}");
        assert!(short(&server, "web2.web.svc.internal", "A").is_empty());
    }
    // A key limited to `web` registers web, but may not touch another service, even
    // one the registration socket registered, nor write names outside `web`.
    server.register(json!({"op": "register", "service": "db", "id": "db1", "addresses": ["10.0.1.1"], "port": 5432}));
    update_made(&server, WEB_KEY, add);
    assert_eq!(short(&server, "web2.web.svc.internal", "A"), ["10.0.0.8"]);
    // Each outcome is counted once, by its response code.
    let page = scrape(&server);
    for (rcode, expected) in [("NOERROR", 1.0), ("REFUSED", 1.0), ("NOTAUTH", 2.0)] {
        let sample = format!("svcdns_dns_updates_total{{rcode=\"{rcode}\"}}");
        assert_eq!(metric_value(&page, &sample), expected, "{sample}\n{page}");
    }
    update_refused(
        &server,
        WEB_KEY,
        "update delete db1._db._tcp.svc.internal. SRV",
    );
    assert_eq!(short(&server, "db1.db.svc.internal", "A"), ["10.0.1.1"]);
    update_refused(
        &server,
        WEB_KEY,
        "update add www.svc.internal. 60 A 10.0.0.1",
    );
    // A zone we do not serve.
    let out = nsupdate(
        server.dns,
        Some(KEY),
        "zone example.org\nupdate add a.example.org. 60 A 10.0.0.1",
    );
    assert!(out.contains("update failed: NOTAUTH"), "{out}");
    // The server goes on answering.
    assert_eq!(short(&server, "web.svc.internal", "A"), ["10.0.0.8"]);

    // Without a keys file, updates are off.
    let plain = Svcdns::start();
    update_refused(&plain, KEY, add);
    assert!(short(&plain, "web2.web.svc.internal", "A").is_empty());
}

/// Records that are not instances, at names of every kind.
const WRITE_OTHERS: &str = r#"
update add www.svc.internal. 60 A 10.0.0.1
update add www.svc.internal. 60 A 10.0.0.2
update add _acme-challenge.www.svc.internal. 30 TXT "challenge-token"
update add alias.svc.internal. 60 CNAME www.svc.internal.
update add mail.svc.internal. 60 MX 10 www.svc.internal.
update add a.b.deep.svc.internal. 60 AAAA fd00::1
"#;

#[test]
fn other_records_are_kept_as_written_and_hold_their_names_against_services() {
    let server =
        Svcdns::try_with_update_keys("", r#"transfer: {allow: ["127.0.0.1/32"]}"#, KEYS_FILE)
            .expect("starts");
    update_made(&server, KEY, WRITE_OTHERS);
    assert_eq!(
        short(&server, "www.svc.internal", "A"),
        ["10.0.0.1", "10.0.0.2"]
    );
    assert_eq!(
        short(&server, "_acme-challenge.www.svc.internal", "TXT"),
        ["\"challenge-token\""]
    );
    // The CNAME is followed within the zone, as for a zone file's.
    assert_eq!(
        short(&server, "alias.svc.internal", "A"),
        ["10.0.0.1", "10.0.0.2", "www.svc.internal."]
    );
    assert_eq!(
        short(&server, "mail.svc.internal", "MX"),
        ["10 www.svc.internal."]
    );
    assert_eq!(short(&server, "a.b.deep.svc.internal", "AAAA"), ["fd00::1"]);
    // Names above a written one exist without data; names beside it do not.
    let above = dig(server.dns, &["b.deep.svc.internal", "A"]);
    assert!(
        above.contains("status: NOERROR") && above.contains("ANSWER: 0"),
        "{above}"
    );
    let beside = dig(server.dns, &["c.deep.svc.internal", "A"]);
    assert!(beside.contains("status: NXDOMAIN"), "{beside}");
    // Secondaries get them too.
    let axfr = dig(server.dns, &["svc.internal", "AXFR"]);
    for line in [
        "_acme-challenge.www.svc.internal. 30 IN TXT",
        "alias.svc.internal.\t60\tIN\tCNAME",
    ] {
        assert!(
            axfr.replace(' ', "\t").contains(&line.replace(' ', "\t")),
            "{line}: {axfr}"
        );
    }

    // `www` is taken: no service of that name, and no record under a service's names.
    let mut socket = server.connect();
    let reply = socket.send(&json!({"op": "register", "service": "www", "id": "a", "addresses": ["10.0.0.9"], "port": 80}));
    assert_refused(&reply, "name_conflict", "DNS UPDATE");
    server.register(json!({"op": "register", "service": "db", "id": "db1", "addresses": ["10.0.1.1"], "port": 5432}));
    update_refused(&server, KEY, "update add db.svc.internal. 60 A 10.0.0.9");
    assert_eq!(short(&server, "db.svc.internal", "A"), ["10.0.1.1"]);

    // An instance's SRV may point to a host whose addresses an earlier update wrote.
    update_made(
        &server,
        KEY,
        "update add db2._db._tcp.svc.internal. 60 SRV 0 0 5432 www.svc.internal.",
    );
    assert_eq!(
        short(&server, "db2.db.svc.internal", "A"),
        ["10.0.0.1", "10.0.0.2"]
    );

    // RFC 2136 §3.4.2.2: data beside a CNAME is ignored, not an error.
    update_made(&server, KEY, "update add alias.svc.internal. 60 A 10.9.9.9");
    assert!(!short(&server, "alias.svc.internal", "A").contains(&"10.9.9.9".to_string()));

    // Deleting one record, then a whole name.
    update_made(
        &server,
        KEY,
        "update delete www.svc.internal. A 10.0.0.1\nupdate delete alias.svc.internal.",
    );
    assert_eq!(short(&server, "www.svc.internal", "A"), ["10.0.0.2"]);
    let gone = dig(server.dns, &["alias.svc.internal", "A"]);
    assert!(gone.contains("status: NXDOMAIN"), "{gone}");
    // The zone's own records are the zone file's.
    update_refused(
        &server,
        KEY,
        "update add svc.internal. 60 NS ns9.svc.internal.",
    );
}

#[test]
fn an_update_is_durable_once_acknowledged_and_kept_in_backups() {
    let mut server = server_with_keys("data_dir: data\n");
    update_made(&server, KEY, ADD_WEB1);
    update_made(&server, KEY, WRITE_OTHERS);
    server.kill9();
    server.restart().expect("restarts on its data_dir");
    assert_eq!(short(&server, "web1.http.svc.internal", "A"), ["10.0.0.5"]);
    assert_eq!(
        short(&server, "mail.svc.internal", "MX"),
        ["10 www.svc.internal."]
    );

    let dir = server.dir.path().to_path_buf();
    let run = |args: &[&str]| {
        let output = Command::new(BIN)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run svcdns");
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let saved = run(&["snapshot", "save", "backup.jsonl"]);
    // host1 (the SRV target) is kept at its name too, beside WRITE_OTHERS' five names.
    assert!(
        saved.contains("saved 1 instances and 6 names' records"),
        "{saved}"
    );
    server.terminate();
    let restored = run(&[
        "snapshot",
        "restore",
        "backup.jsonl",
        "--data-dir",
        "restored",
    ]);
    assert!(
        restored.contains("restored 1 instances and 6 names' records"),
        "{restored}"
    );
    let config = server.dir.path().join("svcdns.yaml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("data_dir: data", "data_dir: restored"),
    )
    .expect("config");
    server.restart().expect("starts on the restored store");
    assert_eq!(short(&server, "web1.http.svc.internal", "A"), ["10.0.0.5"]);
    assert_eq!(
        short(&server, "_acme-challenge.www.svc.internal", "TXT"),
        ["\"challenge-token\""]
    );
}

/// dnspython (Debian's python3-dnspython) sends an update with an update lease
/// option; prints the RCODE and the lease option of the response.
const LEASED_UPDATE: &str = r#"
import struct, sys, dns.update, dns.query, dns.tsigkeyring, dns.edns, dns.rcode
port, lease = int(sys.argv[1]), int(sys.argv[2])
keyring = dns.tsigkeyring.from_text({"upd-key.": "Ly0y+VtSJ17dXR8aErXiONoocf7n2l6uDkMvE7Rk5tE="})
update = dns.update.UpdateMessage("svc.internal.", keyring=keyring, keyalgorithm="hmac-sha256")
update.delete("printer._ipp._tcp.svc.internal.")
update.add("printer._ipp._tcp.svc.internal.", 30, "SRV", "0 0 631 host.svc.internal.")
update.add("printer._ipp._tcp.svc.internal.", 30, "TXT", "rp=ipp/print")
update.add("_ipp._tcp.svc.internal.", 30, "PTR", "printer._ipp._tcp.svc.internal.")
update.add("host.svc.internal.", 30, "AAAA", "fd00::9")
if len(sys.argv) > 3:
    update.add(sys.argv[3], 30, "TXT", "other")
update.use_edns(0, 0, 1232, options=[dns.edns.GenericOption(2, struct.pack("!II", lease, 7 * 86400))])
response = dns.query.udp(update, "127.0.0.1", port=port, timeout=5)
leases = [o.data.hex() for o in response.options if o.otype == 2]
print(dns.rcode.to_text(response.rcode()), *leases)
"#;

/// Sends LEASED_UPDATE with `lease`, and a TXT at each of `others` too.
fn leased_update(server: &Svcdns, lease: u32, others: &[&str]) -> String {
    let mut args = vec![lease.to_string()];
    args.extend(others.iter().map(|other| other.to_string()));
    dnspython(server, LEASED_UPDATE, &args)
}

/// Runs a dnspython `script` (Debian's python3-dnspython) with the server's DNS port
/// and `args` as its arguments; what it printed.
fn dnspython(server: &Svcdns, script: &str, args: &[String]) -> String {
    let output = Command::new("/usr/bin/python3")
        .args(["-c", script, &server.dns.port().to_string()])
        .args(args)
        .output()
        .expect("python3 must be installed, with python3-dnspython");
    assert!(
        output.status.success(),
        "dnspython: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Adds one record given in presentation form (RFC 3597's `\# 3 abcdef` for any
/// type), or `empty`: no RDATA at all.
const GENERIC_ADD: &str = r#"
import sys, dns.update, dns.query, dns.tsigkeyring, dns.rcode, dns.rdata, dns.rdataclass, dns.rdatatype
port, name, rtype, data = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
keyring = dns.tsigkeyring.from_text({"upd-key.": "Ly0y+VtSJ17dXR8aErXiONoocf7n2l6uDkMvE7Rk5tE="})
update = dns.update.UpdateMessage("svc.internal.", keyring=keyring, keyalgorithm="hmac-sha256")
if data == "empty":
    rdata = dns.rdata.GenericRdata(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), b"")
else:
    rdata = dns.rdata.from_text("IN", rtype, data)
update.add(name, 60, rdata)
print(dns.rcode.to_text(dns.query.tcp(update, "127.0.0.1", port=port, timeout=5).rcode()))
"#;

#[test]
fn records_without_data_are_malformed_and_unknown_types_are_kept_opaque() {
    let server = server_with_keys("");
    let add = |name: &str, rtype: &str, data: &str| {
        let args = [name, rtype, data].map(str::to_string);
        dnspython(&server, GENERIC_ADD, &args)
    };
    assert_eq!(add("empty.svc.internal.", "A", "empty"), "FORMERR");
    assert_eq!(add("empty.svc.internal.", "TYPE65280", "empty"), "FORMERR");
    let gone = dig(server.dns, &["empty.svc.internal", "A"]);
    assert!(gone.contains("status: NXDOMAIN"), "{gone}");
    // A type neither svcdns nor hickory knows is kept and answered as it came.
    assert_eq!(
        add("opaque.svc.internal.", "TYPE65280", r"\# 3 abcdef"),
        "NOERROR"
    );
    let out = dig(server.dns, &["+short", "opaque.svc.internal", "TYPE65280"]);
    assert_eq!(out.trim(), r"\# 3 ABCDEF");
}

#[test]
fn an_update_lease_is_granted_renewed_by_the_next_update_and_runs_out() {
    let server = server_with_keys("");
    // Granted as asked, key lease echoed (RFC 9664 §4.2): 3 s and 7 days.
    assert_eq!(leased_update(&server, 3, &[]), "NOERROR 0000000300093a80");
    let name = "printer.ipp.svc.internal";
    assert_eq!(short(&server, name, "AAAA"), ["fd00::9"]);
    let listed = server
        .connect()
        .send(&json!({"op": "list", "service": "ipp"}));
    assert_eq!(
        listed["instances"][0]["ttl"], 3,
        "a leased registration: {listed}"
    );
    let serial_before = server.serial("svc.internal.");

    // Refreshed every second (the same update again) it outlives its lease...
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(leased_update(&server, 3, &[]), "NOERROR 0000000300093a80");
        assert_eq!(short(&server, name, "AAAA"), ["fd00::9"], "renewed");
    }
    // ...without changing the zone: a refresh moves no serial.
    assert_eq!(server.serial("svc.internal."), serial_before);

    // Left alone, it expires like any leased registration.
    assert!(
        eventually(WAIT, || short(&server, name, "AAAA").is_empty()),
        "the lease ran out"
    );
    let srv = dig(server.dns, &["_ipp._tcp.svc.internal", "SRV"]);
    assert!(srv.contains("status: NXDOMAIN"), "{srv}");
    // The host's address went with its instance: nothing outlives the lease.
    let host = dig(server.dns, &["host.svc.internal", "AAAA"]);
    assert!(host.contains("status: NXDOMAIN"), "{host}");
    // A record that could not expire with the lease is refused, not kept forever.
    assert_eq!(
        leased_update(&server, 3, &["note.svc.internal."]),
        "REFUSED"
    );
    assert!(short(&server, name, "AAAA").is_empty(), "refused whole");
}

#[test]
fn sighup_reads_the_keys_file_again_and_a_bad_one_stops_the_start() {
    let server = server_with_keys("");
    let add = "update add w._web._tcp.svc.internal. 60 SRV 0 0 80 w.web.svc.internal.\n\
               update add w.web.svc.internal. 60 A 10.0.0.8";
    update_made(&server, WEB_KEY, add);
    // web-key withdrawn: its next update is from an unknown key.
    let only_upd_key: String = KEYS_FILE
        .lines()
        .take(4)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(server.dir.path().join("keys.yaml"), only_upd_key).expect("keys file");
    let logs = server.reload();
    assert!(
        logs.contains("reloaded the DNS UPDATE keys keys=1"),
        "{logs}"
    );
    let out = nsupdate(
        server.dns,
        Some(WEB_KEY),
        "update delete w._web._tcp.svc.internal. SRV",
    );
    assert!(out.contains("NOTAUTH(BADKEY)"), "{out}");
    assert_eq!(short(&server, "w.web.svc.internal", "A"), ["10.0.0.8"]);

    let md5 = "- {name: k, algorithm: hmac-md5, secret: \"Ly0y+VtSJ17dXR8aErXiONoocf7n2l6uDkMvE7Rk5tE=\", services: [web]}\n";
    let Err(stderr) = Svcdns::try_with_update_keys("", "", md5) else {
        panic!("a bad keys file stops the start");
    };
    assert!(
        stderr.contains("keys.yaml") && stderr.contains("hmac-md5"),
        "{stderr}"
    );
}

#[test]
fn a_reload_may_not_hide_written_records_nor_remove_their_zone() {
    let server = server_with_keys("");
    let zones = server.dir.path().join("zones");
    let write = |file: &str, text: &str| std::fs::write(zones.join(file), text).expect("zone file");
    write(
        "svc.yaml",
        "origin: svc.internal.\nrecords:\n  - {name: docs, type: A, data: 10.1.0.1}\n",
    );
    write("other.yaml", "origin: other.test.\nrecords: []\n");
    assert!(server.reload().contains("reloaded the zones"));
    update_made(&server, KEY, "update add www.svc.internal. 60 A 10.0.0.1");
    update_made(
        &server,
        KEY,
        "zone other.test\nupdate add www.other.test. 60 A 10.3.0.1",
    );

    // The file gives records to the written name, or to a name below it.
    for records in [
        "  - {name: www, type: A, data: 10.9.9.9}\n",
        "  - {name: a.www, type: TXT, data: below}\n",
    ] {
        write(
            "svc.yaml",
            &format!("origin: svc.internal.\nrecords:\n{records}"),
        );
        let logs = server.reload();
        assert!(
            logs.contains("reload refused") && logs.contains("www.svc.internal."),
            "{logs}"
        );
        assert_eq!(short(&server, "www.svc.internal", "A"), ["10.0.0.1"]);
        assert_eq!(short(&server, "docs.svc.internal", "A"), ["10.1.0.1"]);
    }

    // The zone holding written records loses its file.
    write("svc.yaml", "origin: svc.internal.\nrecords: []\n");
    std::fs::remove_file(zones.join("other.yaml")).expect("remove");
    let logs = server.reload();
    assert!(
        logs.contains("reload refused") && logs.contains("other.test.") && logs.contains("1 names"),
        "{logs}"
    );
    assert_eq!(short(&server, "www.other.test", "A"), ["10.3.0.1"]);

    // Once the written records are gone, both reloads go through.
    update_made(
        &server,
        KEY,
        "zone other.test\nupdate delete www.other.test.",
    );
    update_made(&server, KEY, "update delete www.svc.internal.");
    write(
        "svc.yaml",
        "origin: svc.internal.\nrecords:\n  - {name: www, type: A, data: 10.9.9.9}\n",
    );
    assert!(server.reload().contains("reloaded the zones"));
    assert_eq!(short(&server, "www.svc.internal", "A"), ["10.9.9.9"]);
}

/// What `dig` says of `name`/`rtype`: the status and the answer records, sorted.
fn answer_of(server: std::net::SocketAddr, name: &str, rtype: &str) -> (String, Vec<String>) {
    let out = dig(server, &["+noall", "+comments", "+answer", name, rtype]);
    let status = out
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or("no answer")
        .to_string();
    let mut records: Vec<String> = out
        .lines()
        .filter(|line| !line.starts_with(';') && !line.trim().is_empty())
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    records.sort();
    (status, records)
}

#[test]
fn updates_are_answered_as_bind_answers_them_where_the_rfc_leaves_room() {
    let server = server_with_keys("");
    let secret = "Ly0y+VtSJ17dXR8aErXiONoocf7n2l6uDkMvE7Rk5tE=";
    let bind = BindPrimary::start("svc.internal", "upd-key", secret);
    // (what, the update, the query that shows its effect)
    let cases = [
        (
            "a CNAME added beside data is ignored",
            "update add h1.svc.internal. 60 A 10.0.0.1\nupdate add h1.svc.internal. 60 CNAME other.svc.internal.",
            "h1.svc.internal ANY",
        ),
        (
            "data added beside a CNAME is ignored; the CNAME is followed",
            "update add c1.svc.internal. 60 CNAME h1.svc.internal.\nupdate add c1.svc.internal. 60 A 10.9.9.9",
            "c1.svc.internal A",
        ),
        (
            "deleting what is not there",
            "update delete nothere.svc.internal. A 10.0.0.1",
            "nothere.svc.internal A",
        ),
        (
            "a value-dependent prerequisite with another value",
            "prereq yxrrset h1.svc.internal. A 10.0.0.2\nupdate add h2.svc.internal. 60 A 10.0.0.2",
            "h2.svc.internal A",
        ),
        (
            "nxrrset on a set that exists",
            "prereq nxrrset h1.svc.internal. A\nupdate add h2.svc.internal. 60 A 10.0.0.2",
            "h2.svc.internal A",
        ),
        (
            "a name below another makes it exist",
            "update add a.b.svc.internal. 60 A 10.0.0.3",
            "b.svc.internal A",
        ),
        (
            "yxdomain on an empty non-terminal fails (it has no records)",
            "prereq yxdomain b.svc.internal.\nupdate add h3.svc.internal. 60 A 10.0.0.3",
            "h3.svc.internal A",
        ),
        (
            "the same record added twice is one",
            "update add h4.svc.internal. 60 A 10.0.0.4\nupdate add h4.svc.internal. 60 A 10.0.0.4",
            "h4.svc.internal A",
        ),
        (
            "a new TTL for a set applies to all of it",
            "update add h4.svc.internal. 30 A 10.0.0.5",
            "h4.svc.internal A",
        ),
        (
            "an NS at the apex",
            "update add svc.internal. 60 NS ns2.svc.internal.",
            "svc.internal NS",
        ),
        (
            "deleting one record of a set",
            "update delete h4.svc.internal. A 10.0.0.4",
            "h4.svc.internal A",
        ),
        (
            "deleting a whole name",
            "update delete h1.svc.internal.",
            "h1.svc.internal A",
        ),
        ("a record with TTL 0", "update add t0.svc.internal. 0 A 10.0.0.6", "t0.svc.internal A"),
    ];
    for (what, commands, query) in cases {
        let ours = nsupdate(server.dns, Some(KEY), commands);
        let theirs = nsupdate(bind.dns, Some(KEY), commands);
        assert_eq!(ours.trim(), theirs.trim(), "{what}: svcdns vs BIND");
        let (name, rtype) = query.split_once(' ').expect("name and type");
        assert_eq!(
            answer_of(server.dns, name, rtype),
            answer_of(bind.dns, name, rtype),
            "{what}: what {query} answers afterwards, svcdns vs BIND"
        );
    }
}
