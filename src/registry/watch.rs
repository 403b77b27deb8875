//! Change events and the watchers they go to.
//!
//! Every watcher has its own bounded queue, and a watcher filtered to one service is
//! only offered that service's events: it can only fall behind on changes it asked
//! for, however busy other services are. A watcher whose queue is full is cut off
//! (`watch_lagged`) rather than buffered without bound; it watches again to resync.
//! Each event is serialized once, and only if some watcher wants it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use tokio::sync::mpsc;

use super::model::{Health, InstanceJson, Label};
use super::view::Entry;

/// Events a watcher may have queued before it is cut off.
pub const WATCH_BUFFER: usize = 4096;

/// Why an instance appeared or went away, as reported to watchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// A `register` request (new or replacing).
    Registered,
    /// A `deregister` request.
    Deregistered,
    /// Its lease ran out without a renewal.
    Expired,
    /// It was ephemeral and its connection closed.
    Disconnected,
    /// A `mark` request took it out of every answer; it stays registered.
    Critical,
    /// A `mark` request put it back into the answers.
    Healthy,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 6] = [
        Reason::Registered,
        Reason::Deregistered,
        Reason::Expired,
        Reason::Disconnected,
        Reason::Critical,
        Reason::Healthy,
    ];

    /// Position in [`Reason::ALL`], for tables counted by reason.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Registered => "registered",
            Reason::Deregistered => "deregistered",
            Reason::Expired => "expired",
            Reason::Disconnected => "disconnected",
            Reason::Critical => "critical",
            Reason::Healthy => "healthy",
        }
    }
}

/// One change to the registry.
#[derive(Debug, Clone)]
pub struct Event {
    pub reason: Reason,
    pub zone: Arc<str>,
    pub service: Label,
    pub id: Label,
    /// The instance as it now is, for `register` and `health` events.
    pub entry: Option<Arc<Entry>>,
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        let (kind, health) = match self.reason {
            Reason::Critical => ("health", Health::Critical),
            Reason::Healthy => ("health", Health::Healthy),
            _ if self.entry.is_some() => ("register", Health::Healthy),
            _ => ("deregister", Health::Healthy),
        };
        map.serialize_entry("event", kind)?;
        map.serialize_entry("reason", &self.reason)?;
        map.serialize_entry("zone", &*self.zone)?;
        map.serialize_entry("service", &self.service)?;
        map.serialize_entry("id", &self.id)?;
        if let Some(entry) = &self.entry {
            let instance = InstanceJson {
                zone: &self.zone,
                service: &self.service,
                instance: &entry.instance,
                health,
                expires_in: None,
            };
            map.serialize_entry("instance", &instance)?;
        }
        map.end()
    }
}

/// The receiving end of a watch: serialized event lines (with their newline).
pub struct WatchStream {
    events: mpsc::Receiver<Arc<str>>,
    lagged: Arc<AtomicBool>,
}

/// What a watch stream yields.
pub enum WatchItem {
    Event(Arc<str>),
    /// The watcher fell [`WATCH_BUFFER`] events behind and was cut off.
    Lagged,
    /// The registry stopped.
    Closed,
}

impl WatchStream {
    pub async fn next(&mut self) -> WatchItem {
        match self.events.recv().await {
            Some(line) => WatchItem::Event(line),
            None if self.lagged.load(Ordering::Relaxed) => WatchItem::Lagged,
            None => WatchItem::Closed,
        }
    }
}

struct Watcher {
    events: mpsc::Sender<Arc<str>>,
    lagged: Arc<AtomicBool>,
}

impl Watcher {
    /// Queues `line`; false when the watcher is gone or cut off for lagging.
    fn offer(&self, line: &Arc<str>) -> bool {
        match self.events.try_send(line.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged.store(true, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Every watcher, unfiltered or by the service they follow. Owned by the writer.
#[derive(Default)]
pub struct Watchers {
    unfiltered: Vec<Watcher>,
    by_service: HashMap<Label, Vec<Watcher>>,
    /// Watchers counted at the last sweep of closed ones (see `add`).
    swept_at: usize,
}

impl Watchers {
    /// A new watcher of every service, or of `filter` only.
    pub fn add(&mut self, filter: Option<Label>) -> WatchStream {
        // Watchers of idle services are only noticed gone when an event is offered to
        // them; sweep whenever the count has doubled, so they cost amortized O(1).
        if self.len() >= 2 * self.swept_at.max(16) {
            self.sweep();
        }
        let (events, receiver) = mpsc::channel(WATCH_BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        let watcher = Watcher {
            events,
            lagged: lagged.clone(),
        };
        match filter {
            None => self.unfiltered.push(watcher),
            Some(service) => self.by_service.entry(service).or_default().push(watcher),
        }
        WatchStream {
            events: receiver,
            lagged,
        }
    }

    /// Offers each event to the watchers that want it, in order.
    pub fn dispatch(&mut self, events: &[Event]) {
        if self.unfiltered.is_empty() && self.by_service.is_empty() {
            return;
        }
        for event in events {
            let filtered = self.by_service.get_mut(event.service.as_str());
            if self.unfiltered.is_empty() && filtered.is_none() {
                continue;
            }
            let line = match serde_json::to_string(event) {
                Ok(mut text) => {
                    text.push('\n');
                    Arc::<str>::from(text)
                }
                // Our own types always serialize; skip the event rather than the watchers.
                Err(_) => continue,
            };
            if let Some(watchers) = filtered {
                watchers.retain(|w| w.offer(&line));
                if watchers.is_empty() {
                    self.by_service.remove(event.service.as_str());
                }
            }
            self.unfiltered.retain(|w| w.offer(&line));
        }
    }

    fn len(&self) -> usize {
        self.unfiltered.len() + self.by_service.values().map(Vec::len).sum::<usize>()
    }

    fn sweep(&mut self) {
        self.unfiltered.retain(|w| !w.events.is_closed());
        self.by_service.retain(|_, watchers| {
            watchers.retain(|w| !w.events.is_closed());
            !watchers.is_empty()
        });
        self.swept_at = self.len();
    }
}
