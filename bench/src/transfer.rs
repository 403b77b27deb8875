//! Zone transfers: AXFR time and size of zones of 10k and 100k instances, and the lag
//! of a Knot secondary (NOTIFY, then IXFR) behind registrations: from a registration's
//! acknowledgement by svcdns to Knot answering the new name.
//!
//! Options: `--sizes 10000,100000` (AXFR zone sizes), `--rounds 3` (AXFRs per size,
//! the median is given), `--changes 200` (registrations timed through Knot),
//! `--zone 10000` (instances in the zone Knot copies), `--pause-ms 50,500` (between
//! changes, one row each), `--smoke` (tiny sizes, to check the command works).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::client::{self, Session};
use crate::peers::{find_program, free_port};
use crate::server::Server;
use crate::{ms, option, quantile, Table};

#[path = "../../tests/common/knot_secondary.rs"]
mod knot_secondary;

use knot_secondary::knot_secondary_config;

const ZONE: &str = "svc.internal.";
/// Instances per service in the loaded zones, each with one tag.
const PER_SERVICE: usize = 10;

pub fn run(args: &[String]) {
    let smoke = args.iter().any(|a| a == "--smoke");
    let sizes: Vec<usize> = if smoke {
        vec![1000]
    } else {
        option(args, "--sizes", "10000,100000".to_string())
            .split(',')
            .filter_map(|s| s.parse().ok())
            .collect()
    };
    let rounds = if smoke {
        1
    } else {
        option(args, "--rounds", 3usize)
    };
    let changes = if smoke {
        5
    } else {
        option(args, "--changes", 200usize)
    };
    let zone_size = if smoke {
        100
    } else {
        option(args, "--zone", 10_000usize)
    };
    let pauses: Vec<u64> = option(args, "--pause-ms", "50,500".to_string())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();

    let table = Table::new(
        &format!("AXFR of the whole zone over TCP from 127.0.0.1; median of {rounds}"),
        &[
            "instances",
            "records",
            "messages",
            "bytes",
            "time (ms)",
            "MB/s",
        ],
    );
    for size in sizes {
        let server =
            Server::start_with_dns("transfer-axfr", "transfer: {allow: [127.0.0.1/32]}", "");
        load(&server, size, "svc");
        let mut runs: Vec<(Duration, Axfr)> = (0..rounds)
            .map(|_| {
                let started = Instant::now();
                let axfr = axfr(server.dns);
                (started.elapsed(), axfr)
            })
            .collect();
        runs.sort_by_key(|(took, _)| *took);
        let (took, axfr) = &runs[runs.len() / 2];
        table.row(&[
            size.to_string(),
            axfr.records.to_string(),
            axfr.messages.to_string(),
            axfr.bytes.to_string(),
            ms(took.as_micros() as u64),
            format!("{:.1}", axfr.bytes as f64 / took.as_secs_f64() / 1e6),
        ]);
    }

    let Some(knotd) = find_program("knotd", &[]) else {
        println!("\nsecondary lag: skipped, knotd is not installed (apt-get install knot)");
        return;
    };
    let knot_port = free_port();
    let server = Server::start_with_dns(
        "transfer-lag",
        &format!("transfer: {{allow: [127.0.0.1/32], notify: [\"127.0.0.1:{knot_port}\"]}}"),
        "",
    );
    load(&server, zone_size, "base");
    let knot = Knot::start(&knotd, &server, knot_port);
    if !knot.wait_for("b0-0.base0.svc.internal.", Duration::from_secs(60)) {
        println!(
            "\nsecondary lag: knot did not load the zone; see {}",
            knot.home.display()
        );
        return;
    }
    let mut session = Session::open(&server.unix);
    let table = Table::new(
        &format!(
            "Knot secondary lag: registration acknowledged by svcdns -> answered by Knot ({changes} registrations one at a time, zone of {zone_size} instances)"
        ),
        &["pause between registrations (ms)", "p50 (ms)", "p99 (ms)", "max (ms)", "not seen within 10 s"],
    );
    for (round, pause) in pauses.into_iter().enumerate() {
        let mut lags_us = Vec::with_capacity(changes);
        let mut missed = 0;
        for k in 0..changes {
            let id = format!("lag-{round}-{k}");
            let address = Ipv4Addr::new(10, 200 + round as u8, (k / 250) as u8, (k % 250) as u8);
            let reply = session
                .request(&client::register("lag", &id, address, 80, ""))
                .to_string();
            let acked = Instant::now();
            assert!(reply.contains("\"ok\":true"), "{reply}");
            if knot.wait_for(&format!("{id}.lag.svc.internal."), Duration::from_secs(10)) {
                lags_us.push(acked.elapsed().as_micros() as u64);
            } else {
                missed += 1;
            }
            std::thread::sleep(Duration::from_millis(pause));
        }
        lags_us.sort_unstable();
        table.row(&[
            pause.to_string(),
            ms(quantile(&lags_us, 0.5)),
            ms(quantile(&lags_us, 0.99)),
            ms(lags_us.last().copied().unwrap_or(0)),
            missed.to_string(),
        ]);
    }
}

/// Registers `size` instances, [`PER_SERVICE`] per service, each with one tag.
fn load(server: &Server, size: usize, prefix: &str) {
    let short = &prefix[..1];
    let lines = (0..size).map(|i| {
        let service = format!("{prefix}{}", i / PER_SERVICE);
        let address = Ipv4Addr::from(0x0a00_0000 + i as u32);
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        client::register(
            &service,
            &format!("{short}{}-{}", i / PER_SERVICE, i % PER_SERVICE),
            address,
            8080,
            &format!(",\"tags\":[\"{tag}\"]"),
        )
    });
    let acks = client::pipeline_parallel(&server.unix, lines.collect(), 4);
    acks.check("loading the zone");
}

struct Axfr {
    records: usize,
    messages: usize,
    bytes: usize,
}

/// One AXFR, read to its closing SOA.
fn axfr(server: SocketAddr) -> Axfr {
    let mut message = Message::new(7, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(
        Name::from_ascii(ZONE).expect("zone"),
        RecordType::AXFR,
    ));
    let bytes = message.to_vec().expect("query");
    let mut stream = TcpStream::connect(server).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .expect("send");
    stream.write_all(&bytes).expect("send");
    let mut out = Axfr {
        records: 0,
        messages: 0,
        bytes: 0,
    };
    let mut soas = 0;
    let mut body = Vec::new();
    while soas < 2 {
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).expect("a message");
        body.resize(usize::from(u16::from_be_bytes(length)), 0);
        stream.read_exact(&mut body).expect("a message");
        let response = Message::from_vec(&body).expect("a DNS message");
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::NoError,
            "AXFR refused"
        );
        out.messages += 1;
        out.bytes += body.len() + 2;
        out.records += response.answers.len();
        soas += response
            .answers
            .iter()
            .filter(|r| matches!(r.data, RData::SOA(_)))
            .count();
    }
    out
}

/// A knotd secondary of svcdns's zone, killed when dropped.
struct Knot {
    child: Child,
    home: PathBuf,
    address: SocketAddr,
    socket: UdpSocket,
    next_id: std::cell::Cell<u16>,
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Knot {
    fn start(knotd: &std::path::Path, primary: &Server, port: u16) -> Knot {
        let home = primary.dir.join("knot");
        std::fs::create_dir_all(&home).expect("knot directory");
        let config = knot_secondary_config(&home, port, primary.dns, ZONE);
        std::fs::write(home.join("knot.conf"), config).expect("knot.conf");
        let log = std::fs::File::create(home.join("log.txt")).expect("knot log");
        let child = Command::new(knotd)
            .arg("-c")
            .arg(home.join("knot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start knotd");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        Knot {
            child,
            home,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            socket,
            next_id: std::cell::Cell::new(0),
        }
    }

    /// Asks Knot for `name`'s A record every millisecond until it has one.
    fn wait_for(&self, name: &str, limit: Duration) -> bool {
        let mut message = Message::new(0, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
        let deadline = Instant::now() + limit;
        let mut buffer = [0u8; 1500];
        while Instant::now() < deadline {
            let id = self.next_id.get().wrapping_add(1);
            self.next_id.set(id);
            message.metadata.id = id;
            let _ = self
                .socket
                .send_to(&message.to_vec().expect("query"), self.address);
            // Replies to earlier queries that came late are skipped, up to this one's.
            while let Ok(len) = self.socket.recv(&mut buffer) {
                match Message::from_vec(&buffer[..len]) {
                    Ok(reply) if reply.metadata.id == id => {
                        if !reply.answers.is_empty() {
                            return true;
                        }
                        break;
                    }
                    _ => continue,
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }
}
