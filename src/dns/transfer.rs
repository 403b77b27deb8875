//! Zone transfers out (DESIGN §6): AXFR (RFC 5936) of the current snapshot, IXFR
//! (RFC 1995) from the journal, and the rounds that keep the journal up to date and
//! NOTIFY the secondaries (RFC 1996) when a zone's serial moves.
//!
//! Transfers are answered here rather than by hickory's Catalog, which sends a whole
//! zone as one message (so no zone over 64 KiB could be transferred) and passes IXFR to
//! ordinary lookups. Only clients in `dns.transfer.allow` get an answer; the rest are
//! REFUSED. Over TCP the records go out in as many messages as they need, made on a
//! blocking thread and handed to the connection a few at a time, so a zone of a
//! million records costs neither a runtime thread nor its size in memory. Over UDP,
//! AXFR is not implemented (as Knot answers) and IXFR gets the current SOA, which
//! tells the client to come back over TCP (RFC 1995 §2).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::fitter::to_record;
use super::front::{response_limit, Responder, Transport, TCP_LIMIT};
use super::journal::{Journal, Since};
use super::notify::Notifier;
use super::wire::{NameRef, ResponseWriter, Scratch, TransferQuery, TYPE_PTR};
use super::zone::ServedZone;
use super::zone_records::{service_records, static_records, written_records, ZoneRecord};
use crate::registry::View;

const TYPE_IXFR: u16 = 251;
const TYPE_AXFR: u16 = 252;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;
/// How often the journal looks for a newly published snapshot: polling the `ArcSwap`
/// costs one atomic load, and keeps the registry's writer free of any hook.
const POLL: Duration = Duration::from_millis(20);
/// Journal rounds (and so NOTIFY per zone) are at least this far apart: under churn a
/// secondary gets one notice per interval, and one more after the last change.
const ROUND_INTERVAL: Duration = Duration::from_millis(100);
/// Messages made ahead of the connection sending them.
const MESSAGES_AHEAD: usize = 4;

/// `dns.transfer`: who may transfer our zones, and whom to notify of changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransferSettings {
    pub allow: Vec<IpNet>,
    pub notify: Vec<SocketAddr>,
}

impl TransferSettings {
    fn enabled(&self) -> bool {
        !self.allow.is_empty() || !self.notify.is_empty()
    }

    fn allows(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.allow.iter().any(|net| net.contains(&client))
    }
}

/// Zone transfers and the journal and notices behind them.
pub struct Transfers {
    responder: Arc<Responder>,
    published: Arc<ArcSwap<View>>,
    settings: ArcSwap<TransferSettings>,
    journal: Journal,
    notifier: Notifier,
    stopped: AtomicBool,
}

/// What a transfer request gets.
pub enum Reply {
    /// One message.
    Single(Vec<u8>),
    /// Messages as they are made, in order.
    Stream(mpsc::Receiver<Vec<u8>>),
}

impl Transfers {
    /// Starts the journal rounds (a thread of their own, since a difference of a large
    /// zone takes milliseconds) and the NOTIFY task. Must run inside a tokio runtime.
    pub fn start(
        responder: Arc<Responder>,
        published: Arc<ArcSwap<View>>,
        settings: TransferSettings,
    ) -> std::io::Result<Arc<Transfers>> {
        let transfers = Arc::new(Transfers {
            responder,
            published,
            settings: ArcSwap::from_pointee(settings),
            journal: Journal::default(),
            notifier: Notifier::start(),
            stopped: AtomicBool::new(false),
        });
        let follower = transfers.clone();
        std::thread::Builder::new()
            .name("svcdns-journal".into())
            .spawn(move || follower.follow())?;
        Ok(transfers)
    }

    /// Applies new settings (a reload).
    pub fn replace_settings(&self, settings: TransferSettings) {
        self.settings.store(Arc::new(settings));
    }

    /// Ends the journal rounds.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Answers a zone transfer request over TCP; `None` when `packet` is not one for
    /// a zone we serve (the Catalog answers it then).
    pub fn tcp(self: &Arc<Self>, packet: &[u8], client: SocketAddr) -> Option<Reply> {
        let request = TransferQuery::parse(packet)?;
        let query = &request.query;
        if !matches!(query.record_type, TYPE_AXFR | TYPE_IXFR) {
            return None;
        }
        let zone = self.zone_at_apex(&request)?;
        if !self.settings.load().allows(client.ip()) {
            return Some(Reply::Single(error(query, RCODE_REFUSED)));
        }
        let (sender, receiver) = mpsc::channel(MESSAGES_AHEAD);
        let transfers = self.clone();
        let packet = packet.to_vec();
        tokio::task::spawn_blocking(move || {
            // Parsed again: the request must live on this thread, owned.
            if let Some(request) = TransferQuery::parse(&packet) {
                transfers.stream(&zone, &request, client, &sender);
            }
        });
        Some(Reply::Stream(receiver))
    }

    /// Answers a zone transfer request over UDP; `None` as for [`Transfers::tcp`].
    pub fn udp(&self, packet: &[u8], client: SocketAddr) -> Option<Vec<u8>> {
        let request = TransferQuery::parse(packet)?;
        let query = &request.query;
        if !matches!(query.record_type, TYPE_AXFR | TYPE_IXFR) {
            return None;
        }
        let zone = self.zone_at_apex(&request)?;
        if query.record_type == TYPE_AXFR {
            return Some(error(query, RCODE_NOTIMP));
        }
        if !self.settings.load().allows(client.ip()) {
            return Some(error(query, RCODE_REFUSED));
        }
        let view = self.published.load();
        let soa = ZoneRecord::of(&zone.soa(&view));
        let mut scratch = Scratch::default();
        let limit = response_limit(Transport::Udp, query.edns.map(|edns| edns.payload));
        let mut out = ResponseWriter::new(&mut scratch, query, limit);
        write_record(&mut out, &soa);
        Some(out.finish(0).to_vec())
    }

    /// The served zone whose apex the request names, in class IN.
    fn zone_at_apex(&self, request: &TransferQuery<'_>) -> Option<Arc<ServedZone>> {
        let query = &request.query;
        if query.class != super::wire::CLASS_IN {
            return None;
        }
        self.responder
            .zones()
            .iter()
            .find(|zone| zone.zone().origin_wire() == query.name.as_wire())
            .cloned()
    }

    /// Makes the messages of an allowed transfer and sends them into `out`.
    fn stream(
        &self,
        zone: &ServedZone,
        request: &TransferQuery<'_>,
        client: SocketAddr,
        out: &mpsc::Sender<Vec<u8>>,
    ) {
        let started = Instant::now();
        let view = self.published.load_full();
        // The journal must have seen this snapshot before IXFR reads it.
        self.catch_up(&view);
        let index = zone.index();
        let Some(zone_view) = view.zone(index) else {
            let _ = out.blocking_send(error(&request.query, RCODE_REFUSED));
            return;
        };
        let mut messages = Messages::new(&request.query, out);
        let (kind, serial) = match request.client_serial.map(|s| self.journal.since(index, s)) {
            Some(Since::Current { serial }) => {
                let soa = ZoneRecord::of(&zone.soa_at(serial));
                messages.send(std::iter::once(Cow::Owned(soa)));
                ("IXFR, up to date", serial)
            }
            Some(Since::Changes(changes)) => {
                let last = changes.last().map_or(view.serial(index), |c| c.to);
                let soa = |serial| Cow::Owned(ZoneRecord::of(&zone.soa_at(serial)));
                let body = changes.iter().flat_map(|change| {
                    std::iter::once(soa(change.from))
                        .chain(change.removed.iter().map(Cow::Borrowed))
                        .chain(std::iter::once(soa(change.to)))
                        .chain(change.added.iter().map(Cow::Borrowed))
                });
                let records = std::iter::once(soa(last))
                    .chain(body)
                    .chain(std::iter::once(soa(last)));
                messages.send(records);
                ("IXFR", last)
            }
            asked => {
                let soa: Cow<ZoneRecord> = Cow::Owned(ZoneRecord::of(&zone.soa(&view)));
                let statics = static_records(zone).into_iter().map(Cow::Owned);
                let services = zone_view.services().flat_map(|(name, service)| {
                    let mut records = Vec::new();
                    service_records(zone, zone_view, name, service, &mut records);
                    records.into_iter().map(Cow::Owned)
                });
                let written = written_records(zone_view.records().iter().map(|r| &**r))
                    .into_iter()
                    .map(Cow::Owned);
                let records = std::iter::once(soa.clone())
                    .chain(statics)
                    .chain(written)
                    .chain(services)
                    .chain(std::iter::once(soa));
                messages.send(records);
                let kind = if asked.is_some() {
                    "IXFR as AXFR"
                } else {
                    "AXFR"
                };
                (kind, view.serial(index))
            }
        };
        info!(
            zone = %zone.zone().origin(),
            %client,
            kind,
            serial,
            records = messages.records,
            messages = messages.count,
            bytes = messages.bytes,
            ms = started.elapsed().as_millis() as u64,
            complete = !messages.closed,
            "zone transfer"
        );
    }

    /// Journal rounds: whenever a new snapshot is published, at most every
    /// [`ROUND_INTERVAL`], record its differences and notify the secondaries.
    fn follow(&self) {
        let mut last_round: Option<Instant> = None;
        while !self.stopped.load(Ordering::Relaxed) {
            std::thread::sleep(POLL);
            if !self.settings.load().enabled() {
                self.journal.clear();
                continue;
            }
            if !self.journal.is_behind(&self.published.load()) {
                continue;
            }
            if let Some(wait) = last_round.and_then(|at| ROUND_INTERVAL.checked_sub(at.elapsed())) {
                std::thread::sleep(wait);
            }
            self.catch_up(&self.published.load_full());
            last_round = Some(Instant::now());
        }
    }

    /// Brings the journal up to `view`, and notifies the secondaries of every zone
    /// whose serial moved.
    fn catch_up(&self, view: &Arc<View>) {
        let zones = self.responder.zones();
        let moved = self.journal.catch_up(&zones, view);
        let settings = self.settings.load();
        for (index, serial) in moved {
            if let Some(zone) = zones.iter().find(|zone| zone.index() == index) {
                let soa = to_record(zone.soa_at(serial));
                self.notifier
                    .notify(zone.zone().origin(), soa, &settings.notify);
            }
        }
    }
}

/// A response carrying only `rcode` (and no AA: the answer is not zone data).
fn error(query: &super::wire::Query<'_>, rcode: u8) -> Vec<u8> {
    let mut scratch = Scratch::default();
    let mut out = ResponseWriter::new(&mut scratch, query, TCP_LIMIT);
    out.clear_authoritative();
    out.set_rcode(rcode);
    out.finish(0).to_vec()
}

/// Writes one record; false when it does not fit the message.
fn write_record(out: &mut ResponseWriter<'_>, record: &ZoneRecord) -> bool {
    out.record(
        NameRef::wire(&record.owner),
        record.record_type,
        record.ttl,
        |rdata| {
            use super::wire::RdataOut;
            // A PTR's data is one name, which may point at earlier ones (RFC 3597 §4):
            // DNS-SD browse records are most of a zone and share their suffixes.
            if record.record_type == TYPE_PTR {
                rdata.name(NameRef::wire(&record.rdata));
            } else {
                rdata.bytes(&record.rdata);
            }
        },
    )
}

/// The messages of one transfer: records packed into messages of up to 64 KiB, each
/// with the question (RFC 5936 §2.2 allows it), sent as each fills.
struct Messages<'q, 'p> {
    query: &'q super::wire::Query<'p>,
    out: &'q mpsc::Sender<Vec<u8>>,
    scratch: Scratch,
    records: usize,
    count: usize,
    bytes: usize,
    /// The connection went away: nothing more is made.
    closed: bool,
}

impl<'q, 'p> Messages<'q, 'p> {
    fn new(query: &'q super::wire::Query<'p>, out: &'q mpsc::Sender<Vec<u8>>) -> Self {
        Messages {
            query,
            out,
            scratch: Scratch::default(),
            records: 0,
            count: 0,
            bytes: 0,
            closed: false,
        }
    }

    fn send<'r>(&mut self, records: impl Iterator<Item = Cow<'r, ZoneRecord>>) {
        let mut records = records.peekable();
        while !self.closed {
            let mut written = 0;
            let mut out = ResponseWriter::new(&mut self.scratch, self.query, TCP_LIMIT);
            while let Some(record) = records.peek() {
                if !write_record(&mut out, record) {
                    break;
                }
                written += 1;
                records.next();
            }
            if written == 0 {
                if let Some(record) = records.next() {
                    // Only a static record could be this large; a transfer without it
                    // would silently differ from the zone, so it stops here.
                    warn!(
                        bytes = record.size(),
                        "a record too large for a DNS message; zone transfer cut short"
                    );
                    self.closed = true;
                    return;
                }
            }
            let message = out.finish(0).to_vec();
            self.records += written;
            self.count += 1;
            self.bytes += message.len();
            if self.out.blocking_send(message).is_err() {
                self.closed = true;
            }
            if records.peek().is_none() {
                return;
            }
        }
    }
}
