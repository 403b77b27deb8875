//! A site keeps its own resolver and delegates only our zone to svcdns: dnsmasq with
//! `server=/svc.internal/…` in front of svcdns resolves and caches our names. Skipped,
//! with the reason, when dnsmasq is not installed (scripts/test installs it).

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use serde_json::json;

/// A dnsmasq on a free loopback port, killed when dropped.
struct Dnsmasq {
    child: Child,
    address: SocketAddr,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dnsmasq {
    /// Forwards `svc.internal` to `svcdns` and nothing else (no upstreams, no hosts).
    /// The port is one that was free a moment ago: when dnsmasq cannot bind it after
    /// all (another program took it, for UDP or TCP), another one is tried. `Err` with
    /// what dnsmasq said when it never starts.
    fn delegating_to(svcdns: SocketAddr) -> Result<Dnsmasq, String> {
        let mut said = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("dnsmasq")
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--pid-file=",
                    "--user=root",
                    "--cache-size=100",
                    &format!("--port={port}"),
                    &format!("--server=/svc.internal/{}#{}", svcdns.ip(), svcdns.port()),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("running dnsmasq: {e}"))?;
            // dnsmasq binds before it goes on in the foreground: an exit within this
            // time is a failure to start.
            std::thread::sleep(Duration::from_millis(300));
            match child.try_wait() {
                Ok(None) => {
                    return Ok(Dnsmasq {
                        child,
                        address: SocketAddr::from(([127, 0, 0, 1], port)),
                    })
                }
                Ok(Some(status)) => {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = pipe.read_to_string(&mut stderr);
                    }
                    said = format!("dnsmasq on port {port} exited ({status}): {stderr}");
                    eprintln!("{said}; trying another port");
                }
                Err(e) => return Err(format!("waiting for dnsmasq: {e}")),
            }
        }
        Err(said)
    }
}

#[test]
fn dnsmasq_delegating_our_zone_resolves_and_caches_our_names() {
    if Command::new("dnsmasq").arg("--version").output().is_err() {
        eprintln!("skipped: dnsmasq is not installed (apt-get install dnsmasq-base)");
        return;
    }
    let mut server = Svcdns::start();
    server.register(json!({"op": "register", "service": "web", "id": "web-1",
        "addresses": ["10.0.0.5"], "port": 8080}));
    let dnsmasq = Dnsmasq::delegating_to(server.dns).unwrap_or_else(|e| panic!("{e}"));
    let resolves = || {
        ask(dnsmasq.address, "web.svc.internal.", RecordType::A)
            .is_some_and(|response| answer_data(&response) == vec!["10.0.0.5"])
    };
    assert!(
        eventually(WAIT, resolves),
        "dnsmasq resolves our name through svcdns; svcdns logged:\n{}",
        server.logs()
    );
    let srv =
        ask(dnsmasq.address, "_web._tcp.svc.internal.", RecordType::SRV).expect("an SRV answer");
    assert_eq!(answer_data(&srv), vec!["1 1 8080 web-1.web.svc.internal."]);

    // With svcdns gone, the cached answer is still served for its TTL (5 s here).
    server.terminate();
    assert!(resolves(), "dnsmasq answers from its cache");
    // A name only svcdns could know, never asked before, now gets no address: dnsmasq
    // either stays silent or fails, it does not guess.
    if let Some(uncached) = ask(dnsmasq.address, "web-1.web.svc.internal.", RecordType::A) {
        assert!(
            rcode(&uncached) != ResponseCode::NoError || uncached.answers.is_empty(),
            "{uncached:?}"
        );
    }
}

/// A query as a stub resolver sends it (RD set); `None` when no reply comes in 2 s.
fn ask(server: SocketAddr, name: &str, record_type: RecordType) -> Option<Message> {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    let reply = udp_exchange(server, &message.to_vec().unwrap(), Duration::from_secs(2))?;
    Message::from_vec(&reply).ok()
}
