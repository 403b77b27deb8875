//! NOTIFY (RFC 1996): tells secondaries that a zone has a new serial, so they transfer
//! it now instead of at their next SOA refresh.
//!
//! One UDP message per zone and secondary, resent with a growing wait until the
//! secondary answers (RFC 1996 §3.6 asks for retries; ours are quicker than its 60 s,
//! since our zones change by the second). A newer serial of a zone replaces the notice
//! still being retried for the older one: the secondary only needs the latest. Callers
//! coalesce changes (the transfer rounds run at most every 100 ms); this module sends
//! what it is given.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::throttle::LogThrottle;

/// Sends of one notice, at most.
const ATTEMPTS: u32 = 5;
/// Wait for an answer to the first send; doubled after each unanswered one (1, 2, 4,
/// 8, 16 s: about half a minute in all).
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// At most one warning about unanswered notices per this many seconds.
const WARNING_INTERVAL: u64 = 10;

/// A zone's new serial, for some secondaries.
struct Notice {
    origin: Name,
    /// The zone's SOA with its new serial: sent in the answer section, as Knot does,
    /// so a secondary can tell at once that it is behind (RFC 1996 §3.7).
    soa: Record,
    targets: Vec<SocketAddr>,
}

/// Hands notices to the task that sends them.
#[derive(Clone)]
pub struct Notifier {
    notices: mpsc::UnboundedSender<Notice>,
}

impl Notifier {
    /// Starts the sending task; must be called inside a tokio runtime.
    pub fn start() -> Notifier {
        let (notices, received) = mpsc::unbounded_channel();
        tokio::spawn(run(received));
        Notifier { notices }
    }

    /// Tells each of `targets` that zone `origin` now has `soa`.
    pub fn notify(&self, origin: &Name, soa: Record, targets: &[SocketAddr]) {
        if targets.is_empty() {
            return;
        }
        // Fails only once the task is gone, at shutdown.
        let _ = self.notices.send(Notice {
            origin: origin.clone(),
            soa,
            targets: targets.to_vec(),
        });
    }
}

async fn run(mut notices: mpsc::UnboundedReceiver<Notice>) {
    let mut sending: HashMap<(Name, SocketAddr), JoinHandle<()>> = HashMap::new();
    while let Some(notice) = notices.recv().await {
        sending.retain(|_, task| !task.is_finished());
        for target in notice.targets {
            let task = tokio::spawn(deliver(notice.origin.clone(), notice.soa.clone(), target));
            if let Some(older) = sending.insert((notice.origin.clone(), target), task) {
                older.abort();
            }
        }
    }
}

/// Sends the notice until `target` answers it, or the attempts run out.
async fn deliver(origin: Name, soa: Record, target: SocketAddr) {
    static THROTTLE: LogThrottle = LogThrottle::new(WARNING_INTERVAL);
    let serial = match &soa.data {
        RData::SOA(data) => data.serial,
        _ => 0,
    };
    let outcome = exchange(&origin, soa, target).await;
    match outcome {
        Ok(ResponseCode::NoError) => {
            debug!(zone = %origin, serial, %target, "NOTIFY acknowledged");
        }
        Ok(rcode) => {
            if let Some(suppressed) = THROTTLE.admit() {
                warn!(zone = %origin, serial, %target, %rcode, similar_since_last_warning = suppressed,
                    "a secondary refused our NOTIFY; check that it lists this server as its primary");
            }
        }
        Err(error) => {
            if let Some(suppressed) = THROTTLE.admit() {
                warn!(zone = %origin, serial, %target, %error, similar_since_last_warning = suppressed,
                    "NOTIFY not delivered; the secondary will see the change at its next SOA refresh");
            }
        }
    }
}

/// One NOTIFY exchange with retries: the response code of the answer.
async fn exchange(origin: &Name, soa: Record, target: SocketAddr) -> io::Result<ResponseCode> {
    let local = match target {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    let id = random_id();
    let mut message = Message::new(id, MessageType::Query, OpCode::Notify);
    message.metadata.authoritative = true;
    message.add_query(Query::query(origin.clone(), RecordType::SOA));
    message.add_answer(soa);
    let bytes = message.to_vec().map_err(io::Error::other)?;
    let mut wait = FIRST_WAIT;
    let mut buffer = vec![0; 4096];
    for _ in 0..ATTEMPTS {
        // A send error (the target's port is closed: ICMP) is one more unanswered try.
        let _ = socket.send(&bytes).await;
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(&mut buffer)).await {
            let Ok(len) = received else {
                // Connection refused from an earlier send: wait out this round.
                tokio::time::sleep_until(deadline).await;
                break;
            };
            if let Ok(answer) = Message::from_vec(&buffer[..len]) {
                let metadata = &answer.metadata;
                if metadata.id == id
                    && metadata.message_type == MessageType::Response
                    && metadata.op_code == OpCode::Notify
                {
                    return Ok(metadata.response_code);
                }
            }
        }
        wait *= 2;
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer after {ATTEMPTS} attempts"),
    ))
}

/// A message id an off-path sender cannot guess easily (RFC 5452 §4.3).
fn random_id() -> u16 {
    RandomState::new().build_hasher().finish() as u16
}
