//! The one writer (DESIGN §5): a thread of its own, fed by a queue, that applies
//! everything queued as one batch, publishes one snapshot, and only then acknowledges
//! the batch's requests and emits their events.
//!
//! Readers never wait for it and it never runs on their threads. Under load batches
//! grow, so throughput rises while a request waits at most one batch. Lease expiries
//! and the release of a closed connection's ephemeral instances are changes like any
//! other, batched with whatever else is queued.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::oneshot;
use tracing::{debug, info};

use super::change_log::ChangeLog;
use super::leases::Leases;
use super::model::{Health, Label, Registration};
use super::view::{Entry, InstanceRef, View, ZoneSettings};
use super::watch::{Event, Reason, WatchStream, Watchers};
use super::{ConnectionId, RegistryError};
use crate::metrics;

/// Most requests applied as one batch, so a request waits for at most this many others.
const MAX_BATCH: usize = 1024;

pub type Reply<T> = oneshot::Sender<Result<T, RegistryError>>;

/// What the writer is asked to do.
pub enum Command {
    Register {
        zone: usize,
        registration: Registration,
        connection: Option<ConnectionId>,
        /// Acknowledged with the lease length.
        reply: Reply<Option<u32>>,
    },
    Renew {
        at: InstanceRef,
        reply: Reply<Option<u32>>,
    },
    Deregister {
        at: InstanceRef,
        reply: Reply<()>,
    },
    /// Takes an instance out of the answers, or puts it back.
    Mark {
        at: InstanceRef,
        health: Health,
        reply: Reply<()>,
    },
    /// A reload changed the zones (see [`View::reconfigure`]); the zones in `touched`
    /// changed their own records, so their serials must move too.
    Reconfigure {
        zones: Vec<Option<ZoneSettings>>,
        touched: Vec<usize>,
        reply: Reply<()>,
    },
    /// The connection closed: its ephemeral instances go.
    Release {
        connection: ConnectionId,
    },
    Watch {
        filter: Option<Label>,
        reply: oneshot::Sender<Subscription>,
    },
    Shutdown,
}

/// A new watcher: the registry as of its subscription, then every later change.
pub struct Subscription {
    pub snapshot: Arc<View>,
    pub events: WatchStream,
}

pub struct Writer {
    view: View,
    published: Arc<ArcSwap<View>>,
    /// Snapshots replaced by newer ones that a reader may still hold. They are dropped
    /// here once no reader does, so that freeing what a batch replaced is the writer's
    /// work, never a DNS thread's.
    retired: Vec<Arc<View>>,
    leases: Leases,
    /// Ephemeral instances registered by each open connection (some may since have been
    /// taken over by another registration; `Entry::owner` says who holds them now).
    ephemeral: HashMap<ConnectionId, Vec<InstanceRef>>,
    watchers: Watchers,
    /// The changes, at INFO, rate-limited.
    change_log: ChangeLog,
}

/// The effects of one batch, delivered once it is published.
#[derive(Default)]
struct Outcome {
    changed_zones: Vec<usize>,
    events: Vec<Event>,
    acks: Vec<Ack>,
    watches: Vec<(Option<Label>, oneshot::Sender<Subscription>)>,
}

enum Ack {
    Lease(Reply<Option<u32>>, Result<Option<u32>, RegistryError>),
    Unit(Reply<()>, Result<(), RegistryError>),
}

impl Writer {
    pub fn new(view: View, published: Arc<ArcSwap<View>>) -> Writer {
        Writer {
            leases: Leases::new(view.epoch()),
            view,
            published,
            retired: Vec::new(),
            ephemeral: HashMap::new(),
            watchers: Watchers::default(),
            change_log: ChangeLog::new(Instant::now()),
        }
    }

    /// Runs until [`Command::Shutdown`] or until every sender is gone.
    pub fn run(mut self, queue: Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut running = true;
        while running {
            let deadline = match (self.leases.next_deadline(), self.change_log.deadline()) {
                (Some(lease), Some(log)) => Some(lease.min(log)),
                (lease, log) => lease.or(log),
            };
            let first = match deadline {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    queue.recv_timeout(wait)
                }
                None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match first {
                Ok(command) => batch.push(command),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => running = false,
            }
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            if batch.iter().any(|c| matches!(c, Command::Shutdown)) {
                running = false;
            }
            self.apply(&mut batch);
        }
        debug!("registry writer stopped");
    }

    fn apply(&mut self, batch: &mut Vec<Command>) {
        let now = Instant::now();
        let mut outcome = Outcome::default();
        for command in batch.drain(..) {
            self.apply_one(command, now, &mut outcome);
        }
        let expired_before = outcome.events.len();
        while let Some(at) = self.leases.pop_due(now) {
            self.remove(&at, Reason::Expired, &mut outcome);
        }
        let expired = outcome.events.len() - expired_before;
        if expired > 0 {
            debug!(count = expired, "leases expired");
        }
        self.publish(&outcome.changed_zones);
        // A requester that went away no longer needs its answer: send errors are ignored.
        for ack in outcome.acks {
            match ack {
                Ack::Lease(reply, result) => drop(reply.send(result)),
                Ack::Unit(reply, result) => drop(reply.send(result)),
            }
        }
        for event in &outcome.events {
            metrics::registry_changed(event.reason);
        }
        self.watchers.dispatch(&outcome.events);
        self.change_log.record(&outcome.events, now);
        for (filter, reply) in outcome.watches {
            let events = self.watchers.add(filter);
            let snapshot = self.published.load_full();
            let _ = reply.send(Subscription { snapshot, events });
        }
        // Freeing what the batch replaced is not part of any request's wait.
        self.retired
            .retain(|snapshot| Arc::strong_count(snapshot) > 1);
    }

    fn apply_one(&mut self, command: Command, now: Instant, outcome: &mut Outcome) {
        match command {
            Command::Register {
                zone,
                registration,
                connection,
                reply,
            } => {
                let result = self.register(zone, registration, connection, now, outcome);
                outcome.acks.push(Ack::Lease(reply, result));
            }
            Command::Renew { at, reply } => {
                let result = match self.view.entry(&at) {
                    Some(entry) => {
                        if let Some(ttl) = entry.instance.ttl {
                            self.leases.start(&entry.lease, ttl, at.clone(), now);
                        }
                        Ok(entry.instance.ttl)
                    }
                    None => Err(not_found(&at)),
                };
                outcome.acks.push(Ack::Lease(reply, result));
            }
            Command::Deregister { at, reply } => {
                let result = match self.remove(&at, Reason::Deregistered, outcome) {
                    true => Ok(()),
                    false => Err(not_found(&at)),
                };
                outcome.acks.push(Ack::Unit(reply, result));
            }
            Command::Mark { at, health, reply } => {
                let result = match self.view.mark(&at, health) {
                    Some((entry, changed)) => {
                        if changed {
                            outcome.changed(at.zone);
                            outcome.events.push(Event {
                                reason: match health {
                                    Health::Critical => Reason::Critical,
                                    Health::Healthy => Reason::Healthy,
                                },
                                zone: self.zone_origin(at.zone),
                                service: at.service,
                                id: at.id,
                                entry: Some(entry),
                            });
                        }
                        Ok(())
                    }
                    None => Err(not_found(&at)),
                };
                outcome.acks.push(Ack::Unit(reply, result));
            }
            Command::Reconfigure {
                zones,
                touched,
                reply,
            } => {
                for zone in self.view.reconfigure(zones).into_iter().chain(touched) {
                    outcome.changed(zone);
                }
                outcome.acks.push(Ack::Unit(reply, Ok(())));
            }
            Command::Release { connection } => {
                let owned = self.ephemeral.remove(&connection).unwrap_or_default();
                let mut released = 0;
                for at in owned {
                    let still_owned = self
                        .view
                        .entry(&at)
                        .is_some_and(|entry| entry.owner == Some(connection));
                    if still_owned && self.remove(&at, Reason::Disconnected, outcome) {
                        released += 1;
                    }
                }
                if released > 0 {
                    info!(
                        connection,
                        count = released,
                        "connection closed: its ephemeral instances are removed"
                    );
                }
            }
            Command::Watch { filter, reply } => outcome.watches.push((filter, reply)),
            Command::Shutdown => {}
        }
    }

    fn register(
        &mut self,
        zone: usize,
        registration: Registration,
        connection: Option<ConnectionId>,
        now: Instant,
        outcome: &mut Outcome,
    ) -> Result<Option<u32>, RegistryError> {
        let Registration {
            zone: origin,
            service,
            instance,
        } = registration;
        let zone_view = self
            .view
            .zone(zone)
            .filter(|zone| zone.is_served())
            .ok_or(RegistryError::UnknownZone(origin))?;
        let origin = zone_view.origin().clone();
        zone_view.check_labels(&service, &instance)?;
        let default_ttl = zone_view.settings().default_ttl;
        let at = InstanceRef {
            zone,
            service: service.clone(),
            id: instance.id.clone(),
        };
        let ttl = instance.ttl;
        let entry = Arc::new(Entry::new(instance, default_ttl, connection));
        if let Some(ttl) = ttl {
            self.leases.start(&entry.lease, ttl, at.clone(), now);
        }
        if let Some(connection) = entry.owner {
            self.ephemeral
                .entry(connection)
                .or_default()
                .push(at.clone());
        }
        if let Some(replaced) = self.view.insert(zone, &service, entry.clone()) {
            self.leases.end(&replaced.lease);
        }
        outcome.changed(zone);
        outcome.events.push(Event {
            reason: Reason::Registered,
            zone: origin,
            service,
            id: at.id,
            entry: Some(entry),
        });
        Ok(ttl)
    }

    /// Removes an instance; false when it is not registered.
    fn remove(&mut self, at: &InstanceRef, reason: Reason, outcome: &mut Outcome) -> bool {
        let Some(entry) = self.view.remove(at) else {
            return false;
        };
        self.leases.end(&entry.lease);
        outcome.changed(at.zone);
        outcome.events.push(Event {
            reason,
            zone: self.zone_origin(at.zone),
            service: at.service.clone(),
            id: at.id.clone(),
            entry: None,
        });
        true
    }

    fn zone_origin(&self, zone: usize) -> Arc<str> {
        self.view
            .zone(zone)
            .map(|zone| zone.origin().clone())
            .unwrap_or_else(|| Arc::from(""))
    }

    /// Publishes the writer's view if the batch changed it, and frees the snapshots
    /// that no reader holds any more.
    fn publish(&mut self, changed_zones: &[usize]) {
        if !changed_zones.is_empty() {
            for &zone in changed_zones {
                self.view.bump_revision(zone);
            }
            let previous = self.published.swap(Arc::new(self.view.clone()));
            self.retired.push(previous);
        }
        // Only this thread holds a count of 1: dropping it here frees it here.
        self.retired
            .retain(|snapshot| Arc::strong_count(snapshot) > 1);
    }
}

impl Outcome {
    fn changed(&mut self, zone: usize) {
        if !self.changed_zones.contains(&zone) {
            self.changed_zones.push(zone);
        }
    }
}

fn not_found(at: &InstanceRef) -> RegistryError {
    RegistryError::NotFound {
        service: at.service.to_string(),
        id: at.id.to_string(),
    }
}
