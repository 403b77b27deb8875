//! A svcdns process for one measurement: the release binary next to this one, on free
//! loopback ports, in a temporary directory of its own.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Server {
    child: Child,
    pub dir: PathBuf,
    pub dns: SocketAddr,
    pub unix: PathBuf,
}

impl Server {
    /// Starts svcdns with `extra` appended to its configuration (top-level keys).
    pub fn start(name: &str, extra: &str) -> Server {
        Server::start_with_dns(name, "", extra)
    }

    /// As [`Server::start`], with `dns_lines` (YAML lines, unindented) added to the
    /// `dns:` section.
    pub fn start_with_dns(name: &str, dns_lines: &str, extra: &str) -> Server {
        let dns_extra: String = dns_lines.lines().map(|l| format!("  {l}\n")).collect();
        let dir = std::env::temp_dir().join(format!("svcdns-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bench directory");
        let config = format!(
            "dns:\n  listen: [\"127.0.0.1:0\"]\n{dns_extra}registration:\n  unix: svcdns.sock\n  tcp: null\n  max_connections: 4096\nzones_dir: zones\n{extra}"
        );
        std::fs::write(dir.join("svcdns.yaml"), config).expect("config");
        Server::spawn(dir)
    }

    /// Stops the server (SIGTERM, as a supervisor does), starts it again in the same
    /// directory, and returns how long it took from the start to being ready.
    pub fn restart(&mut self) -> Duration {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let started = std::time::Instant::now();
        let dir = std::mem::take(&mut self.dir);
        let restarted = Server::spawn(dir);
        let took = started.elapsed();
        // The old value has no directory left to remove, and its process has exited.
        drop(std::mem::replace(self, restarted));
        took
    }

    fn spawn(dir: PathBuf) -> Server {
        let binary = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("svcdns")))
            .filter(|path| path.exists())
            .expect("the svcdns release binary next to svcdns-bench (cargo build --release)");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("svcdns.log"))
            .expect("log file");
        let mut child = Command::new(binary)
            .args(["serve", "--config", "svcdns.yaml"])
            .current_dir(&dir)
            .env("RUST_LOG", "warn,svcdns::registry=info,svcdns::store=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start svcdns");
        let stdout = child.stdout.take().expect("stdout");
        let (ready, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("svcdns ready") {
                    let _ = ready.send(line);
                }
            }
        });
        let line = ready_rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| {
                panic!(
                    "svcdns did not start; see {}",
                    dir.join("svcdns.log").display()
                )
            });
        let field = |key: &str| -> String {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
                .to_string()
        };
        Server {
            dns: field("dns")
                .split(',')
                .next()
                .unwrap_or_default()
                .parse()
                .expect("dns address"),
            unix: dir.join(field("unix")),
            child,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, in bytes.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }
}

/// CPU time process `pid` and its descendants (NSD answers in forked grandchildren)
/// have used so far (user + system), in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|other| Some((other, stat_fields(other).get(1)?.parse().ok()?)))
        .collect();
    let mut family = vec![pid];
    let mut index = 0;
    while let Some(&parent) = family.get(index) {
        family.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(child, _)| *child),
        );
        index += 1;
    }
    family.into_iter().map(own_cpu_seconds).sum()
}

/// The fields of `/proc/<pid>/stat` after the command name (which is in parentheses).
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

fn own_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
