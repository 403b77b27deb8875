//! svcdns as the only nameserver of a (network-namespaced) host, queried by the real
//! system resolver: glibc through `getent`, reading a resolv.conf with
//! `nameserver 127.0.0.1`, `search svc.internal` and `options ndots:2`. A second svcdns
//! in the same namespace is the upstream for other names. Needs root (to make the
//! namespace) and iproute2; otherwise the test says it was skipped, and why.
//!
//! Everything stays inside the namespace: its loopback, plus a documentation address
//! (192.0.2.1, RFC 5737; on a dummy interface, or on lo where the kernel has no dummy
//! interfaces) so that getaddrinfo's AI_ADDRCONFIG asks for A records. No packet leaves
//! it.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::json;

/// A network namespace with its own resolv.conf, removed whatever happens.
struct Namespace {
    name: String,
    etc: PathBuf,
}

impl Namespace {
    fn create(name: &str, resolv_conf: &str) -> Result<Namespace, String> {
        let namespace = Namespace {
            name: name.to_string(),
            etc: PathBuf::from("/etc/netns").join(name),
        };
        // `ip netns exec` puts /etc/netns/NAME/resolv.conf over /etc/resolv.conf.
        std::fs::create_dir_all(&namespace.etc).map_err(|e| e.to_string())?;
        std::fs::write(namespace.etc.join("resolv.conf"), resolv_conf)
            .map_err(|e| e.to_string())?;
        namespace.ip(&["netns", "add", name])?;
        namespace.exec(&["ip", "link", "set", "lo", "up"])?;
        // A dummy interface where the kernel has them; otherwise the address goes on lo,
        // which getaddrinfo counts just the same (it is not a loopback address).
        let on_dummy = namespace
            .exec(&["ip", "link", "add", "dummy0", "type", "dummy"])
            .and_then(|_| namespace.exec(&["ip", "addr", "add", "192.0.2.1/24", "dev", "dummy0"]))
            .and_then(|_| namespace.exec(&["ip", "link", "set", "dummy0", "up"]));
        if on_dummy.is_err() {
            namespace.exec(&["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"])?;
        }
        Ok(namespace)
    }

    fn ip(&self, args: &[&str]) -> Result<String, String> {
        run("ip", args)
    }

    /// Runs a command inside the namespace; its stdout, or why it failed.
    fn exec(&self, command: &[&str]) -> Result<String, String> {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(command);
        run("ip", &args)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Why this machine cannot run the test, if it cannot.
fn cannot_run() -> Option<String> {
    let uid = run("id", &["-u"]).unwrap_or_default();
    if uid.trim() != "0" {
        return Some("not root: creating a network namespace needs root".into());
    }
    if run("ip", &["-V"]).is_err() {
        return Some("`ip` (iproute2) is not installed".into());
    }
    None
}

#[test]
fn glibc_resolves_registered_services_short_names_and_forwarded_names() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let name = format!("svcdns-test-{}", std::process::id());
    let namespace = Namespace::create(
        &name,
        "nameserver 127.0.0.1\nsearch svc.internal\noptions ndots:2 timeout:2 attempts:2\n",
    )
    .expect("network namespace");

    let upstream_zone =
        "origin: example.test.\nttl: 60\nrecords:\n  - {name: www, type: A, data: 10.7.0.1}\n";
    let upstream = Svcdns::in_netns(
        &name,
        "127.0.0.2:5300",
        &[("example.yaml", upstream_zone)],
        "",
    )
    .expect("the upstream starts");
    let server = Svcdns::in_netns(
        &name,
        "127.0.0.1:53",
        &[],
        &format!("forward:\n  upstreams: [\"{}\"]\n", upstream.dns),
    )
    .expect("svcdns starts on port 53");
    server.register(json!({"op": "register", "service": "web", "id": "web-1",
        "addresses": ["10.0.0.5"], "port": 80}));

    let hosts = namespace
        .exec(&["getent", "hosts", "web.svc.internal"])
        .expect("getent hosts of a registered service");
    assert!(hosts.contains("10.0.0.5"), "{hosts}");
    let ahosts = namespace
        .exec(&["getent", "ahosts", "web-1.web.svc.internal"])
        .expect("getent ahosts of an instance");
    assert!(ahosts.contains("10.0.0.5"), "{ahosts}");
    // One dot, fewer than ndots:2: the search domain is tried first.
    let short = namespace
        .exec(&["getent", "hosts", "web-1.web"])
        .expect("a short name through the search list");
    assert!(short.contains("10.0.0.5"), "{short}");
    let outside = namespace
        .exec(&["getent", "hosts", "www.example.test"])
        .expect("a name outside our zones, forwarded");
    assert!(outside.contains("10.7.0.1"), "{outside}");
    // A name nobody has is "not found" (exit 2), not a temporary failure.
    let missing = Command::new("ip")
        .args([
            "netns",
            "exec",
            &name,
            "getent",
            "hosts",
            "nope.example.test",
        ])
        .status()
        .expect("getent");
    assert_eq!(missing.code(), Some(2), "not found, not a resolver failure");
    drop(server);
    drop(upstream);
    drop(namespace);
}
