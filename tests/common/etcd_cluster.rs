//! A real etcd cluster on loopback ports, for tests and benchmarks (bench/src/etcd.rs
//! includes this file too): each member on its own client and peer port and data
//! directory, with fast elections, killed (and its directory removed) when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdCluster {
    pub members: Vec<Member>,
    dir: PathBuf,
    cluster: String,
    token: String,
}

pub struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Member {
    /// Kills the member at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }
}

/// A loopback TCP port free right now (UDP on it is almost always free too).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// Why etcd cannot run here, if it cannot (no `etcd` or `etcdctl` binary).
pub fn etcd_missing() -> Option<String> {
    for (binary, version) in [("etcd", "--version"), ("etcdctl", "version")] {
        let found = Command::new(binary)
            .arg(version)
            .output()
            .is_ok_and(|output| output.status.success());
        if !found {
            return Some(format!(
                "no {binary} binary (Debian's etcd-server and etcd-client; scripts/test installs them)"
            ));
        }
    }
    None
}

impl EtcdCluster {
    /// A fresh cluster of `size` members, once it takes writes.
    pub fn start(size: usize) -> EtcdCluster {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let unique = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("svcdns-etcd-{unique}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd directory");
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = EtcdCluster {
            members,
            dir,
            cluster,
            token: format!("svcdns-{unique}"),
        };
        for index in 0..size {
            etcd.start_member(index);
        }
        etcd.wait_healthy();
        etcd
    }

    /// (Re)starts member `index` on its ports and data directory.
    pub fn start_member(&mut self, index: usize) {
        let member = &mut self.members[index];
        let data = self.dir.join(&member.name);
        let log =
            std::fs::File::create(self.dir.join(format!("{}.log", member.name))).expect("etcd log");
        let client = format!("http://127.0.0.1:{}", member.client);
        let peer = format!("http://127.0.0.1:{}", member.peer);
        let child = Command::new("etcd")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            // Fast elections, so that losing a member costs a second, not ten.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run etcd");
        member.child = Some(child);
    }

    /// The client endpoints of `members`, as YAML list items (`"127.0.0.1:P", …`).
    fn endpoints_yaml(&self, members: &[usize]) -> String {
        members
            .iter()
            .map(|&i| format!("\"{}\"", self.members[i].endpoint()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Runs etcdctl against the running members; its standard output.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.running_endpoints()])
            .args(args)
            .output()
            .expect("run etcdctl");
        assert!(
            output.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The client endpoints of the members that run, comma-separated, as etcdctl
    /// takes them.
    fn running_endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until a write goes through the running members (a leader and a quorum).
    pub fn wait_healthy(&self) {
        let endpoints = self.running_endpoints();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let put = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &endpoints, "--command-timeout=1s"])
                .args(["put", "/health-check", "ok"])
                .output();
            if put.is_ok_and(|output| output.status.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the etcd cluster did not come up (logs in {:?})", self.dir);
    }

    /// svcdns configuration lines for this cluster.
    pub fn svcdns_config(&self, prefix: &str, lease_ttl: u64) -> String {
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.svcdns_config_on(&all, prefix, lease_ttl)
    }

    /// svcdns configuration lines for a node that knows only `members`.
    pub fn svcdns_config_on(&self, members: &[usize], prefix: &str, lease_ttl: u64) -> String {
        format!(
            "etcd:\n  endpoints: [{}]\n  prefix: {prefix}\n  lease_ttl: {lease_ttl}\n",
            self.endpoints_yaml(members)
        )
    }
}
