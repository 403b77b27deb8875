//! Test harness: runs the real `svcdns` binary on free loopback ports in a temporary
//! directory, talks to its registration socket with plain JSON lines, and queries its
//! DNS with hickory's client (or raw packets where a test needs to craft them).

#![allow(dead_code)]

pub mod bind_primary;
pub mod etcd_cluster;
pub mod http;
pub mod knot_secondary;

pub use etcd_cluster::free_port;
// Each test file builds its own copy of this module; most scrape no metrics.
#[allow(unused_imports)]
pub use http::{http, metric_value, scrape, HTTP};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hickory_net::client::Client;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::DnsHandle;
use hickory_proto::op::{DnsRequestOptions, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_svcdns");
/// Bound on every wait in the tests, so a broken server fails a test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Svcdns {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub dns: SocketAddr,
    pub registration_tcp: SocketAddr,
    pub socket: PathBuf,
    /// The operations endpoint, when the configuration sets `http.listen`.
    pub http: Option<SocketAddr>,
    stderr: Option<mpsc::Receiver<String>>,
}

/// How a test server is started; see the constructors of [`Svcdns`].
#[derive(Default)]
struct Launch<'a> {
    zones: &'a [(&'a str, &'a str)],
    /// Extra keys of the `dns:` section, one per line.
    dns_lines: &'a str,
    /// Extra top-level configuration.
    extra_config: &'a str,
    open_files: Option<u32>,
    /// A network namespace to run in.
    netns: Option<&'a str>,
    /// DNS listen address (default: a free loopback port).
    listen: Option<&'a str>,
}

/// Which way a DNS query travels.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    /// UDP with EDNS advertising this payload size, or without EDNS (`None`).
    Udp(Option<u16>),
    Tcp,
}

impl Svcdns {
    pub fn start() -> Svcdns {
        Svcdns::with(&[], "")
    }

    /// A server whose `registration:` section also has `settings` (YAML lines, each
    /// after the first indented by two spaces; the harness writes that section
    /// itself), with `files` beside its configuration.
    pub fn with_registration(settings: &str, files: &[(&str, String)]) -> Svcdns {
        Svcdns::try_with_registration(settings, files)
            .unwrap_or_else(|stderr| panic!("does not start with {settings:?}: {stderr}"))
    }

    /// As [`Svcdns::with_registration`]; what it printed when it does not start.
    pub fn try_with_registration(
        settings: &str,
        files: &[(&str, String)],
    ) -> Result<Svcdns, String> {
        let mut server = Svcdns::with(&[], "");
        for (name, text) in files {
            std::fs::write(server.dir.path().join(name), text).expect("write a file");
        }
        let config = server.dir.path().join("svcdns.yaml");
        let text = std::fs::read_to_string(&config).expect("read svcdns.yaml");
        let edited = text.replace("registration:\n", &format!("registration:\n  {settings}\n"));
        std::fs::write(&config, edited).expect("write svcdns.yaml");
        server.restart().map(|()| server)
    }

    /// Starts svcdns with these zone files (name, content) and extra config lines.
    pub fn with(zones: &[(&str, &str)], extra_config: &str) -> Svcdns {
        match Svcdns::try_start(zones, extra_config) {
            Ok(server) => server,
            Err(stderr) => panic!("svcdns did not start:\n{stderr}"),
        }
    }

    /// Starts svcdns with these zone files and extra keys of the `dns:` section, one per
    /// line without indentation (e.g. `"max_answer_records: 3"`). The harness writes
    /// `dns:` itself (for `listen`), and a second `dns:` key in the file is an error.
    pub fn with_dns_config(zones: &[(&str, &str)], dns_lines: &str) -> Svcdns {
        match Svcdns::try_with_dns_config(zones, dns_lines) {
            Ok(server) => server,
            Err(stderr) => panic!("svcdns did not start:\n{stderr}"),
        }
    }

    /// As [`Svcdns::with_dns_config`]; what it printed when it does not start.
    pub fn try_with_dns_config(zones: &[(&str, &str)], dns_lines: &str) -> Result<Svcdns, String> {
        Svcdns::launch(Launch {
            zones,
            dns_lines,
            ..Launch::default()
        })
    }

    /// A server with `keys` as its `dns.update.keys_file`, `dns` as one more key of its
    /// `dns:` section, and `extra` as top-level configuration; what it printed if it does
    /// not start.
    pub fn try_with_update_keys(extra: &str, dns: &str, keys: &str) -> Result<Svcdns, String> {
        let mut server = Svcdns::with(&[], extra);
        std::fs::write(server.dir.path().join("keys.yaml"), keys).expect("keys file");
        let config = server.dir.path().join("svcdns.yaml");
        let text = std::fs::read_to_string(&config).expect("config");
        let section = format!("dns:\n  update: {{keys_file: keys.yaml}}\n  {dns}\n");
        let text = text.replacen("dns:\n", &section, 1);
        std::fs::write(&config, text).expect("config");
        server.restart().map(|()| server)
    }

    /// Starts svcdns with at most `limit` open files, soft and hard, so it cannot raise it.
    pub fn with_open_files_limit(limit: u32) -> Svcdns {
        let launch = Launch {
            open_files: Some(limit),
            ..Launch::default()
        };
        match Svcdns::launch(launch) {
            Ok(server) => server,
            Err(stderr) => panic!("svcdns did not start:\n{stderr}"),
        }
    }

    /// Starts svcdns; on failure returns what it printed to stderr.
    pub fn try_start(zones: &[(&str, &str)], extra_config: &str) -> Result<Svcdns, String> {
        Svcdns::launch(Launch {
            zones,
            extra_config,
            ..Launch::default()
        })
    }

    /// Starts svcdns with DNS on `listen` (a fixed address) and extra configuration;
    /// the server's error output if it does not start.
    pub fn try_listening_on(listen: &str, extra_config: &str) -> Result<Svcdns, String> {
        Svcdns::launch(Launch {
            extra_config,
            listen: Some(listen),
            ..Launch::default()
        })
    }

    /// Starts svcdns inside the network namespace `netns` (`ip netns exec`), with DNS on
    /// `listen`. Only the Unix registration socket is reachable from the test.
    pub fn in_netns(
        netns: &str,
        listen: &str,
        zones: &[(&str, &str)],
        extra_config: &str,
    ) -> Result<Svcdns, String> {
        Svcdns::launch(Launch {
            zones,
            extra_config,
            netns: Some(netns),
            listen: Some(listen),
            ..Launch::default()
        })
    }

    fn launch(launch: Launch<'_>) -> Result<Svcdns, String> {
        let Launch {
            zones,
            dns_lines,
            extra_config,
            open_files,
            netns,
            listen,
        } = launch;
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("zones")).expect("zones dir");
        for (name, content) in zones {
            std::fs::write(dir.path().join("zones").join(name), content).expect("zone file");
        }
        let dns_extra: String = dns_lines
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| format!("  {line}\n"))
            .collect();
        let config = format!(
            "dns:\n  listen: [\"{}\"]\n{dns_extra}registration:\n  unix: svcdns.sock\n  tcp: 127.0.0.1:0\nzones_dir: zones\n{extra_config}",
            listen.unwrap_or("127.0.0.1:0")
        );
        std::fs::write(dir.path().join("svcdns.yaml"), config).expect("config");
        Svcdns::spawn(dir, open_files, netns).map_err(|(stderr, _)| stderr)
    }

    /// Runs `svcdns serve --config svcdns.yaml` in `dir` and waits for it to be ready;
    /// if it does not come up, what it printed, and the directory back.
    fn spawn(
        dir: tempfile::TempDir,
        open_files: Option<u32>,
        netns: Option<&str>,
    ) -> Result<Svcdns, (String, tempfile::TempDir)> {
        let mut command = match (open_files, netns) {
            // `ip netns exec` runs the command in the same process: the pid is svcdns's.
            (_, Some(netns)) => {
                let mut command = Command::new("ip");
                command.args([
                    "netns",
                    "exec",
                    netns,
                    BIN,
                    "serve",
                    "--config",
                    "svcdns.yaml",
                ]);
                command
            }
            // `ulimit -n` in sh sets the soft and the hard limit; exec keeps the pid.
            (Some(limit), None) => {
                let mut command = Command::new("sh");
                command.args([
                    "-c",
                    &format!("ulimit -n {limit} && exec \"$0\" serve --config svcdns.yaml"),
                    BIN,
                ]);
                command
            }
            (None, None) => {
                let mut command = Command::new(BIN);
                command.args(["serve", "--config", "svcdns.yaml"]);
                command
            }
        };
        let mut child = command
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn svcdns");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("svcdns ready") {
                    let _ = ready_tx.send(line);
                }
            }
        });
        let ready = match ready_rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                let stderr: Vec<String> = err_rx.try_iter().collect();
                return Err((stderr.join("\n"), dir));
            }
        };
        let field = |key: &str| {
            ready
                .split_whitespace()
                .find_map(|word| word.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no {key}= in {ready:?}"))
                .to_string()
        };
        Ok(Svcdns {
            dns: field("dns").split(',').next().unwrap().parse().unwrap(),
            registration_tcp: field("tcp").parse().unwrap(),
            socket: dir.path().join(field("unix")),
            http: ready
                .split_whitespace()
                .find_map(|word| word.strip_prefix("http="))
                .map(|address| address.parse().expect("http address")),
            child: Some(child),
            dir,
            stderr: Some(err_rx),
        })
    }

    pub fn connect(&self) -> Registration {
        Registration::unix(&self.socket)
    }

    pub fn connect_tcp(&self) -> Registration {
        Registration::tcp(self.registration_tcp)
    }

    /// Registers over a fresh connection and checks the acknowledgement.
    pub fn register(&self, request: Value) {
        let reply = self.connect().send(&request);
        if reply["ok"] != true {
            panic!(
                "register {request} -> {reply}\nthe server logged:\n{}",
                self.logs()
            );
        }
    }

    pub fn query(&self, name: &str, rtype: RecordType) -> Message {
        self.query_over(name, rtype, Transport::Udp(Some(1232)))
    }

    pub fn query_over(&self, name: &str, rtype: RecordType, transport: Transport) -> Message {
        query(self.dns, name, rtype, transport)
    }

    /// A query with RD set (as stub resolvers send) and EDNS, over UDP: how a name
    /// outside our zones is asked to be forwarded.
    pub fn query_recursive(&self, name: &str, record_type: RecordType) -> Message {
        let mut packet = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        for label in name.trim_end_matches('.').split('.') {
            packet.push(label.len() as u8);
            packet.extend_from_slice(label.as_bytes());
        }
        packet.push(0);
        packet.extend_from_slice(&u16::from(record_type).to_be_bytes());
        packet.extend_from_slice(&[0, 1, 0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        let reply = udp_exchange(self.dns, &packet, WAIT).expect("a response");
        Message::from_vec(&reply).expect("a response that parses")
    }

    /// The SOA serial of `zone`.
    pub fn serial(&self, zone: &str) -> u32 {
        let message = self.query(zone, RecordType::SOA);
        match answers_of(&message, RecordType::SOA)
            .first()
            .map(|r| &r.data)
        {
            Some(RData::SOA(soa)) => soa.serial,
            other => panic!("no SOA for {zone}: {other:?}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// CPU time the process has used so far (user + system), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime: fields 14 and 15 of stat, 12 and 13 after the name.
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks(11) + ticks(12)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("svcdns did not exit within {WAIT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL, as a crash would: no cleanup at all.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again (killing it first if it runs) in the same directory
    /// with the same configuration, as a supervisor would; the server's error output
    /// if it does not come up (it can then be restarted again).
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill9();
        let placeholder = tempfile::tempdir().expect("temp dir");
        let dir = std::mem::replace(&mut self.dir, placeholder);
        match Svcdns::spawn(dir, None, None) {
            Ok(started) => {
                *self = started;
                Ok(())
            }
            Err((stderr, dir)) => {
                self.dir = dir;
                Err(stderr)
            }
        }
    }

    /// Sends SIGHUP and returns what the server logged until the reload was done or
    /// refused.
    pub fn reload(&self) -> String {
        let status = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP failed");
        let mut logs = String::new();
        let finished = eventually(WAIT, || {
            let more = self.logs();
            if !more.is_empty() {
                logs.push_str(&more);
                logs.push('\n');
            }
            logs.contains("reloaded the zones") || logs.contains("ERROR")
        });
        assert!(finished, "no end of the reload in the log: {logs}");
        logs
    }

    /// Everything the server has logged until a line containing `needle` (waiting up
    /// to [`WAIT`] for it: the log is read by another thread); what came if it never does.
    pub fn logs_until(&self, needle: &str) -> String {
        let mut logs = String::new();
        eventually(WAIT, || {
            let more = self.logs();
            if !more.is_empty() {
                logs.push_str(&more);
                logs.push('\n');
            }
            logs.contains(needle)
        });
        logs
    }

    /// Everything the server has logged so far (and not returned before).
    pub fn logs(&self) -> String {
        self.stderr
            .as_ref()
            .map(|rx| rx.try_iter().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

impl Drop for Svcdns {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A registration connection speaking newline-delimited JSON.
pub struct Registration {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: Box<dyn Write + Send>,
}

impl Registration {
    pub fn unix(path: &std::path::Path) -> Registration {
        let stream = UnixStream::connect(path).expect("connect to the registration socket");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Registration::over(stream.try_clone().unwrap(), stream)
    }

    pub fn tcp(address: SocketAddr) -> Registration {
        let stream = TcpStream::connect(address).expect("connect to the registration port");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Registration::over(stream.try_clone().unwrap(), stream)
    }

    fn over(
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
    ) -> Registration {
        Registration {
            reader: BufReader::new(Box::new(reader)),
            writer: Box::new(writer),
        }
    }

    /// Sends one request and reads its reply.
    pub fn send(&mut self, request: &Value) -> Value {
        self.send_raw(format!("{request}\n").as_bytes());
        self.read()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write request");
        self.writer.flush().unwrap();
    }

    /// Sends every request without waiting (written by a second thread while this
    /// one reads, so neither side's buffer can stall the other) and returns the
    /// replies, in order.
    pub fn pipelined(&mut self, requests: &[Value]) -> Vec<Value> {
        let Registration { reader, writer } = self;
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for request in requests {
                    writer
                        .write_all(format!("{request}\n").as_bytes())
                        .expect("write request");
                }
                writer.flush().expect("write requests");
            });
            (0..requests.len()).map(|_| read_reply(reader)).collect()
        })
    }

    /// Reads one reply line.
    pub fn read(&mut self) -> Value {
        read_reply(&mut self.reader)
    }
}

fn read_reply(reader: &mut impl BufRead) -> Value {
    let mut line = String::new();
    let n = reader.read_line(&mut line).expect("read reply");
    assert!(n > 0, "server closed the connection");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?} is not JSON: {e}"))
}

/// Asserts that `reply` is a refusal with `code` whose message mentions `mention`.
pub fn assert_refused(reply: &Value, code: &str, mention: &str) {
    assert_eq!(reply["error"]["code"], code, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(mention), "{mention:?} not in {reply}");
}

/// One query with hickory's client over the given transport.
pub fn query(server: SocketAddr, name: &str, rtype: RecordType, transport: Transport) -> Message {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let provider = TokioRuntimeProvider::default();
        let client = match transport {
            Transport::Udp(_) => {
                let stream = UdpClientStream::builder(server, provider)
                    .with_timeout(Some(WAIT))
                    .build();
                let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
                tokio::spawn(background);
                client
            }
            Transport::Tcp => {
                let (stream, sender) = TcpClientStream::new(server, None, Some(WAIT), provider);
                let stream = stream.await.expect("DNS over TCP connection");
                let (client, background) = Client::<TokioRuntimeProvider>::new(stream, sender);
                tokio::spawn(background);
                client
            }
        };
        let mut options = DnsRequestOptions::default();
        options.recursion_desired = false;
        match transport {
            Transport::Udp(Some(size)) => options.edns_payload_len = size,
            Transport::Udp(None) => options.use_edns = false,
            Transport::Tcp => {}
        }
        let query = Query::query(Name::from_ascii(name).expect("query name"), rtype);
        let response = client
            .lookup(query, options)
            .next()
            .await
            .expect("a response")
            .unwrap_or_else(|e| panic!("query {name} {rtype}: {e}"));
        response.into_message()
    })
}

/// Sends raw bytes as one UDP datagram and returns the reply, if one comes within `wait`.
pub fn udp_exchange(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(wait)).unwrap();
    socket.send_to(packet, server).unwrap();
    let mut buffer = vec![0; 65535];
    match socket.recv_from(&mut buffer) {
        Ok((n, _)) => Some(buffer[..n].to_vec()),
        Err(_) => None,
    }
}

/// Records of one type in the answer section.
pub fn answers_of(message: &Message, rtype: RecordType) -> Vec<&Record> {
    message
        .answers
        .iter()
        .filter(|r| r.record_type() == rtype)
        .collect()
}

/// The answer section's data, as text, sorted (for order-independent comparison).
pub fn answer_data(message: &Message) -> Vec<String> {
    let mut data: Vec<String> = message
        .answers
        .iter()
        .map(|r| rdata_text(&r.data))
        .collect();
    data.sort();
    data
}

pub fn rdata_text(data: &RData) -> String {
    data.to_string()
}

/// (owner, type) of the additional records, excluding the OPT pseudo-record.
pub fn additional_names(message: &Message) -> Vec<(String, RecordType)> {
    message
        .additionals
        .iter()
        .filter(|r| r.record_type() != RecordType::OPT)
        .map(|r| (r.name.to_string(), r.record_type()))
        .collect()
}

pub fn rcode(message: &Message) -> ResponseCode {
    message.metadata.response_code
}

/// Polls `condition` every 50 ms until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `nsupdate` (signed with `key`, when given) on `commands`, which it sends to the
/// server for zone `svc.internal`; returns what it printed. An update refused prints
/// `update failed: RCODE`.
pub fn nsupdate(server: SocketAddr, key: Option<&str>, commands: &str) -> String {
    let mut command = Command::new("nsupdate");
    if let Some(key) = key {
        command.args(["-y", key]);
    }
    let mut child = command
        .args(["-t", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nsupdate must be installed (apt-get install bind9-dnsutils)");
    let script = format!(
        "server {} {}\nzone svc.internal\n{}\nsend\n",
        server.ip(),
        server.port(),
        commands.trim()
    );
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write to nsupdate");
    let output = child.wait_with_output().expect("nsupdate runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A dig command, if dig is installed (CI installs it; tests that need it say so).
pub fn dig(server: SocketAddr, args: &[&str]) -> String {
    let output = Command::new("dig")
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            "+time=2",
            "+tries=1",
        ])
        .args(args)
        .output()
        .expect("dig must be installed (apt-get install bind9-dnsutils)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The strings of each TXT record in the answer section.
pub fn txt_strings(message: &Message) -> Vec<Vec<String>> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}
