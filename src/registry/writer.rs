//! The one writer (DESIGN §5): a thread of its own, fed by a queue, that applies
//! everything queued as one batch, commits it to the store, publishes one snapshot,
//! and only then acknowledges the batch's requests and emits their events.
//!
//! Readers never wait for it and it never runs on their threads. Under load batches
//! grow, so throughput rises while a request waits at most one batch, and a durable
//! store pays one commit per batch, not per request (group commit).
//!
//! A batch is first planned on a copy of the view (cheap: the view is made of
//! persistent maps and shared groups), which yields the store changes and the lease
//! bookkeeping to do. Only once the store has committed the changes does the copy
//! become the view. If the commit fails, the batch is planned again with the store
//! unavailable: every request that would change stored data is refused
//! (`store_unavailable`) and changes nothing, while the rest (renewals, ephemeral
//! instances, watches) goes on. Lease expiries are not requests: they happen in
//! memory whatever the store says, and their deletions are retried until committed.
//!
//! With a shared store (etcd) the writer commits there and applies only what the
//! store reports back, see [`shared`].

mod shared;

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::oneshot;
use tracing::{debug, info};

use super::change_log::ChangeLog;
use super::leases::Leases;
use super::model::{Health, Label, Registration};
use super::records::{taken_label, NameRecords};
use super::view::{Entry, InstanceRef, View, ZoneSettings};
use super::watch::{Event, Reason, WatchStream, Watchers};
use super::{stored_instance, unix_ms, wall_deadline};
use super::{Admission, ConnectionId, InstanceKey, Limits, RegistryError};
use crate::metrics;
use crate::store::{owner_text, Change, Loaded, Remote, Store, StoredInstance, StoredRecords};

/// Most requests applied as one batch, so a request waits for at most this many others.
const MAX_BATCH: usize = 1024;
/// How often the deadlines of renewed leases are written to a durable store.
const LEASE_CHECKPOINT: Duration = Duration::from_secs(5);

pub type Reply<T> = oneshot::Sender<Result<T, RegistryError>>;

/// What the writer is asked to do.
pub enum Command {
    Register {
        zone: usize,
        registration: Registration,
        connection: Option<ConnectionId>,
        /// False for static services: the zone files bring them back at every start.
        stored: bool,
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
    /// An all-or-nothing change that decides its steps on the registry as it is when
    /// its turn comes (a DNS UPDATE, whose prerequisites must hold at that moment):
    /// either every step is made, in the batch, or none.
    Transaction {
        decide: Decide,
        reply: Reply<()>,
    },
    /// What a shared store reports (other nodes' changes and our own, in order).
    Remote(Remote),
    Watch {
        filter: Option<Label>,
        reply: oneshot::Sender<Subscription>,
    },
    Shutdown,
}

/// Given the registry as the writer holds it, the steps of a transaction, or why it
/// must not happen. It may be called more than once (a batch is planned again when
/// the store fails), so it must decide from the view alone.
pub type Decide = Box<dyn Fn(&View) -> Result<Vec<Step>, RegistryError> + Send>;

/// One step of a transaction.
#[derive(Debug, Clone)]
pub enum Step {
    /// Registers or replaces an instance (stored, without a connection). Putting an
    /// instance exactly as it is only restarts its lease: a refresh changes no answer
    /// and moves no serial.
    Put {
        zone: usize,
        registration: Registration,
    },
    /// Removes an instance, if it is there.
    Remove(InstanceRef),
    /// Puts the records of an owner name that are not instances (none: removes them).
    Records { zone: usize, records: NameRecords },
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
    /// The ephemeral instances each open connection holds: exactly those whose
    /// `Entry::owner` it is, so their count can be held to a limit.
    ephemeral: HashMap<ConnectionId, HashSet<InstanceRef>>,
    watchers: Watchers,
    /// The changes, at INFO, rate-limited.
    change_log: ChangeLog,
    store: Box<dyn Store>,
    /// Changes made in memory that the store has not committed yet (lease expiries
    /// while it was unavailable), in order; sent ahead of every later batch.
    unsynced: Vec<Change>,
    /// Leases renewed since the last checkpoint.
    renewed: HashSet<InstanceRef>,
    next_checkpoint: Instant,
    limits: Limits,
    /// Set when the store is shared with other nodes: see [`shared`].
    shared: Option<shared::Following>,
}

/// Whether a batch may change stored data.
#[derive(Clone)]
enum StoreState {
    Writable,
    /// The commit failed with this error: changes to stored data are refused.
    Unavailable(String),
}

/// A batch applied to a copy of the view, not yet committed.
struct Plan {
    view: View,
    /// For the store, in order.
    changes: Vec<Change>,
    /// Lease and ownership bookkeeping, done once the plan is adopted.
    effects: Vec<Effect>,
    /// Each command's reply, by position in the batch.
    acks: Vec<Option<Ack>>,
    events: Vec<Event>,
    changed_zones: Vec<usize>,
    /// Ephemeral instances registered by each connection in this batch.
    owned: HashMap<ConnectionId, HashSet<InstanceRef>>,
    /// `(connection, instances released)`, for the log.
    released: Vec<(ConnectionId, usize)>,
}

enum Effect {
    StartLease {
        entry: Arc<Entry>,
        length: Duration,
        at: InstanceRef,
    },
    EndLease(Arc<Entry>),
    Own(ConnectionId, InstanceRef),
    /// The instance left its owner: removed, or replaced by another registration.
    Unown(ConnectionId, InstanceRef),
    /// The connection closed.
    Disown(ConnectionId),
    Renewed(InstanceRef),
}

enum Ack {
    Lease(Result<Option<u32>, RegistryError>),
    Unit(Result<(), RegistryError>),
}

impl Writer {
    pub fn new(
        view: View,
        published: Arc<ArcSwap<View>>,
        store: Box<dyn Store>,
        limits: Limits,
        admission: Arc<dyn Admission>,
    ) -> Writer {
        let shared = store.is_shared().then(|| shared::Following::new(admission));
        Writer {
            leases: Leases::new(view.epoch()),
            view,
            published,
            retired: Vec::new(),
            ephemeral: HashMap::new(),
            watchers: Watchers::default(),
            change_log: ChangeLog::new(Instant::now()),
            store,
            unsynced: Vec::new(),
            renewed: HashSet::new(),
            next_checkpoint: Instant::now() + LEASE_CHECKPOINT,
            limits,
            shared,
        }
    }

    /// Fills the registry with what the store holds, and publishes it. Instances that
    /// no longer fit (their zone is not served, or a static record now owns their
    /// names) are left out, and stay in the store; returns how many were loaded and
    /// what was left out.
    pub fn load(&mut self, loaded: Loaded, admission: &dyn Admission) -> (usize, Vec<String>) {
        let now = Instant::now();
        let now_wall = unix_ms(SystemTime::now());
        let mut left_out = loaded.unreadable;
        // Before the instances: a service whose names records hold is left out.
        for stored in loaded.records {
            if let Err(e) = put_records(&mut self.view, &stored) {
                left_out.push(format!(
                    "records at {}: {e}",
                    owner_text(&stored.records.owner)
                ));
            }
        }
        let mut count = 0;
        for stored in loaded.instances {
            let StoredInstance {
                registration,
                health,
                lease_deadline_unix_ms,
            } = stored;
            let Registration {
                zone,
                service,
                instance,
            } = registration;
            let placed = self
                .view
                .zone_index(&zone)
                .filter(|&index| self.view.zone(index).is_some_and(|z| z.is_served()))
                .ok_or_else(|| RegistryError::UnknownZone(zone.clone()))
                .and_then(|index| {
                    admission.admit(&zone, &service, &instance)?;
                    let zone_view = self.view.zone(index).ok_or(RegistryError::Unavailable)?;
                    zone_view.check_labels(&service, &instance)?;
                    Ok((index, zone_view.settings().default_ttl))
                });
            let (index, default_ttl) = match placed {
                Ok(placed) => placed,
                Err(e) => {
                    left_out.push(format!("{zone} {service} {}: {e}", instance.id));
                    continue;
                }
            };
            let at = InstanceRef {
                zone: index,
                service: service.clone(),
                id: instance.id.clone(),
            };
            let ttl = instance.ttl.filter(|_| self.shared.is_none());
            let entry = Arc::new(Entry::new(instance, default_ttl, None, true));
            // A shared store runs leases itself.
            if let Some(ttl) = ttl {
                // The time it had left, plus one full lease of grace.
                let remaining = lease_deadline_unix_ms.map_or(0, |d| d.saturating_sub(now_wall));
                let length = Duration::from_millis(remaining) + Duration::from_secs(u64::from(ttl));
                self.leases.start_for(&entry.lease, length, at.clone(), now);
            }
            self.view.insert(index, &service, entry);
            if health == Health::Critical {
                self.view.mark(&at, Health::Critical);
            }
            count += 1;
        }
        let previous = self.published.swap(Arc::new(self.view.clone()));
        self.retired.push(previous);
        (count, left_out)
    }

    /// Runs until [`Command::Shutdown`] or until every sender is gone.
    pub fn run(mut self, queue: Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut running = true;
        while running {
            let checkpoint = (!self.renewed.is_empty() || !self.unsynced.is_empty())
                .then_some(self.next_checkpoint);
            let deadline = [
                self.leases.next_deadline(),
                self.change_log.deadline(),
                checkpoint,
                self.shared.as_ref().and_then(shared::Following::deadline),
            ]
            .into_iter()
            .flatten()
            .min();
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
        // What renewals did since the last checkpoint is worth keeping.
        self.checkpoint(Instant::now(), true);
        debug!("registry writer stopped");
    }

    fn apply(&mut self, batch: &mut Vec<Command>) {
        self.apply_at(batch, Instant::now());
    }

    /// Applies `batch` as of `now`, then expires the leases due by then.
    fn apply_at(&mut self, batch: &mut Vec<Command>, now: Instant) {
        if self.shared.is_some() && !self.apply_shared(batch, now) {
            return;
        }
        let mut plan = self.plan(batch, now, &StoreState::Writable);
        if self.store.is_durable() && !(plan.changes.is_empty() && self.unsynced.is_empty()) {
            let mut changes = std::mem::take(&mut self.unsynced);
            let earlier = changes.len();
            changes.append(&mut plan.changes);
            if let Err(e) = self.store.apply(&changes) {
                metrics::store_failed();
                // Memory holds the earlier unsynced changes, not this batch's.
                changes.truncate(earlier);
                self.unsynced = changes;
                plan = self.plan(batch, now, &StoreState::Unavailable(e.to_string()));
                // All the store may still need of it: the serial it published.
                self.unsynced.append(&mut plan.changes);
            }
        }
        self.adopt(plan, batch, now);
    }

    /// Makes a plan the view: does its bookkeeping, expires what is due, publishes,
    /// then acknowledges and tells watchers.
    fn adopt(&mut self, plan: Plan, batch: &mut Vec<Command>, now: Instant) {
        let Plan {
            view,
            effects,
            acks,
            mut events,
            mut changed_zones,
            released,
            ..
        } = plan;
        self.view = view;
        for effect in effects {
            match effect {
                Effect::StartLease { entry, length, at } => {
                    self.leases.start_for(&entry.lease, length, at, now)
                }
                Effect::EndLease(entry) => self.leases.end(&entry.lease),
                Effect::Own(connection, at) => {
                    self.ephemeral.entry(connection).or_default().insert(at);
                }
                Effect::Unown(connection, at) => self.unown(connection, &at),
                Effect::Disown(connection) => {
                    self.ephemeral.remove(&connection);
                }
                Effect::Renewed(at) => {
                    if self.store.is_durable() {
                        self.renewed.insert(at);
                    }
                }
            }
        }
        for (connection, count) in released {
            info!(
                connection,
                count, "connection closed: its ephemeral instances are removed"
            );
        }
        self.expire(now, &mut events, &mut changed_zones);
        self.checkpoint(now, false);
        self.publish(&changed_zones);

        let watches: Vec<_> = batch
            .drain(..)
            .zip(acks)
            .filter_map(|(command, ack)| send_reply(command, ack))
            .collect();
        self.announce(&events, now);
        for (filter, reply) in watches {
            let events = self.watchers.add(filter);
            let snapshot = self.published.load_full();
            let _ = reply.send(Subscription { snapshot, events });
        }
        // Freeing what the batch replaced is not part of any request's wait.
        self.retired
            .retain(|snapshot| Arc::strong_count(snapshot) > 1);
    }

    /// Tells the metrics, the watchers and the log what changed.
    fn announce(&mut self, events: &[Event], now: Instant) {
        for event in events {
            metrics::registry_changed(event.reason);
        }
        self.watchers.dispatch(events);
        self.change_log.record(events, now);
    }

    /// Lease expiries: in memory at once, whatever the store says; their deletions go
    /// to the store with the next commit (tried right away).
    fn expire(&mut self, now: Instant, events: &mut Vec<Event>, changed_zones: &mut Vec<usize>) {
        let before = events.len();
        let mut expired_zones = Vec::new();
        while let Some(at) = self.leases.pop_due(now) {
            let Some(entry) = self.view.remove(&at) else {
                continue;
            };
            self.leases.end(&entry.lease);
            if let Some(owner) = entry.owner {
                self.unown(owner, &at);
            }
            if self.store.is_durable() && entry.stored {
                self.unsynced.push(Change::Delete(key_of(&self.view, &at)));
            }
            changed(&mut expired_zones, at.zone);
            events.push(Event {
                reason: Reason::Expired,
                zone: zone_origin(&self.view, at.zone),
                service: at.service,
                id: at.id,
                entry: None,
            });
        }
        let expired = events.len() - before;
        if expired > 0 {
            debug!(count = expired, "leases expired");
            for &zone in &expired_zones {
                self.view.bump_revision(zone);
                changed(changed_zones, zone);
            }
            if self.store.is_durable() {
                self.unsynced
                    .push(Change::Serial(self.view.max_serial(&expired_zones)));
                // Not waiting for the checkpoint: an expiry should not come back after
                // a crash longer than it must.
                self.next_checkpoint = now;
            }
        }
    }

    /// Forgets that `connection` holds the instance at `at`.
    fn unown(&mut self, connection: ConnectionId, at: &InstanceRef) {
        if let Some(owned) = self.ephemeral.get_mut(&connection) {
            owned.remove(at);
        }
    }

    /// Writes unsynced changes and the deadlines of renewed leases, when due (or now,
    /// when `force`). A failure keeps them for the next try.
    fn checkpoint(&mut self, now: Instant, force: bool) {
        if !self.store.is_durable() || (!force && now < self.next_checkpoint) {
            return;
        }
        self.next_checkpoint = now + LEASE_CHECKPOINT;
        if self.renewed.is_empty() && self.unsynced.is_empty() {
            return;
        }
        let mut changes = std::mem::take(&mut self.unsynced);
        let unsynced = changes.len();
        let renewed: Vec<InstanceRef> = self.renewed.drain().collect();
        for at in &renewed {
            let Some(entry) = self.view.entry(at).filter(|entry| entry.stored) else {
                continue;
            };
            if let Some(deadline_unix_ms) = wall_deadline(&self.view, entry, now) {
                changes.push(Change::Lease {
                    key: key_of(&self.view, at),
                    deadline_unix_ms,
                });
            }
        }
        if let Err(e) = self.store.apply(&changes) {
            metrics::store_failed();
            debug!(error = %e, "lease checkpoint not written; will retry");
            changes.truncate(unsynced);
            self.unsynced = changes;
            self.renewed.extend(renewed);
        }
    }

    /// Applies `batch` to a copy of the view. With the store unavailable, requests
    /// that would change stored data are refused and change nothing.
    fn plan(&self, batch: &[Command], now: Instant, store: &StoreState) -> Plan {
        let mut plan = Plan {
            view: self.view.clone(),
            changes: Vec::new(),
            effects: Vec::new(),
            acks: Vec::with_capacity(batch.len()),
            events: Vec::new(),
            changed_zones: Vec::new(),
            owned: HashMap::new(),
            released: Vec::new(),
        };
        let durable = self.store.is_durable();
        for command in batch {
            let ack = self.plan_one(&mut plan, command, now, durable, store);
            plan.acks.push(ack);
        }
        // Serials move with every batch that changes a zone, and the store keeps the
        // highest, so that they never go backwards across a restart.
        for &zone in &plan.changed_zones {
            plan.view.bump_revision(zone);
        }
        if durable && !plan.changed_zones.is_empty() {
            let serial = plan.view.max_serial(&plan.changed_zones);
            plan.changes.push(Change::Serial(serial));
        }
        plan
    }

    fn plan_one(
        &self,
        plan: &mut Plan,
        command: &Command,
        now: Instant,
        durable: bool,
        store: &StoreState,
    ) -> Option<Ack> {
        // Refuses a change the store cannot take; otherwise queues it for the store.
        let stage = |plan: &mut Plan, change: Option<Change>| -> Result<(), RegistryError> {
            let Some(change) = change.filter(|_| durable) else {
                return Ok(());
            };
            match store {
                StoreState::Writable => {
                    plan.changes.push(change);
                    Ok(())
                }
                StoreState::Unavailable(message) => {
                    Err(RegistryError::StoreUnavailable(message.clone()))
                }
            }
        };
        match command {
            Command::Register {
                zone,
                registration,
                connection,
                stored,
                ..
            } => {
                let held = connection.and_then(|c| self.ephemeral.get(&c));
                // Ephemeral instances are stored only where other nodes must see them.
                let stored = *stored && (self.shared.is_some() || !registration.instance.ephemeral);
                Some(Ack::Lease(plan_register(
                    plan,
                    *zone,
                    registration,
                    *connection,
                    stored,
                    &self.limits,
                    held,
                    stage,
                )))
            }
            Command::Renew { at, .. } => Some(Ack::Lease(self.plan_renew(plan, at, stage))),
            Command::Deregister { at, .. } => {
                let result = match plan.view.entry(at).cloned() {
                    None => Err(not_found(at)),
                    Some(entry) => {
                        let change = entry.stored.then(|| Change::Delete(key_of(&plan.view, at)));
                        stage(plan, change).map(|()| {
                            remove(plan, at, Reason::Deregistered);
                        })
                    }
                };
                Some(Ack::Unit(result))
            }
            Command::Mark { at, health, .. } => {
                let result = match plan.view.instance(at) {
                    None => Err(not_found(at)),
                    Some((_, current)) if current == *health => Ok(()),
                    Some((entry, _)) => {
                        let entry = entry.clone();
                        let change = entry.stored.then(|| {
                            Change::Health(stored_instance(&plan.view, at, &entry, *health, now))
                        });
                        stage(plan, change).map(|()| {
                            if let Some((entry, true)) = plan.view.mark(at, *health) {
                                changed(&mut plan.changed_zones, at.zone);
                                plan.events.push(Event {
                                    reason: match health {
                                        Health::Critical => Reason::Critical,
                                        Health::Healthy => Reason::Healthy,
                                    },
                                    zone: zone_origin(&plan.view, at.zone),
                                    service: at.service.clone(),
                                    id: at.id.clone(),
                                    entry: Some(entry),
                                });
                            }
                        })
                    }
                };
                Some(Ack::Unit(result))
            }
            Command::Reconfigure { zones, touched, .. } => {
                for zone in plan
                    .view
                    .reconfigure(zones.clone())
                    .into_iter()
                    .chain(touched.iter().copied())
                {
                    changed(&mut plan.changed_zones, zone);
                }
                Some(Ack::Unit(Ok(())))
            }
            Command::Release { connection } => {
                let mut owned = self.ephemeral.get(connection).cloned().unwrap_or_default();
                owned.extend(plan.owned.remove(connection).unwrap_or_default());
                // Sorted, so that the watchers' events come in a stable order.
                let mut owned: Vec<InstanceRef> = owned.into_iter().collect();
                owned.sort_unstable();
                let mut released = 0;
                for at in owned {
                    let Some(entry) = plan
                        .view
                        .entry(&at)
                        .filter(|entry| entry.owner == Some(*connection))
                    else {
                        continue;
                    };
                    // Stored only in a shared store. Should it be unavailable, the
                    // node's lease there removes them in the end.
                    let change = entry
                        .stored
                        .then(|| Change::Delete(key_of(&plan.view, &at)));
                    let _ = stage(plan, change);
                    if remove(plan, &at, Reason::Disconnected) {
                        released += 1;
                    }
                }
                plan.effects.push(Effect::Disown(*connection));
                if released > 0 {
                    plan.released.push((*connection, released));
                }
                None
            }
            Command::Transaction { decide, .. } => {
                Some(Ack::Unit(self.plan_transaction(plan, decide, stage)))
            }
            Command::Watch { .. } | Command::Shutdown | Command::Remote(_) => None,
        }
    }

    /// Plans a lease renewal: restarted here, or sent to a shared store, which runs
    /// leases itself. Returns the lease length (`None`: the instance has no lease).
    fn plan_renew(
        &self,
        plan: &mut Plan,
        at: &InstanceRef,
        stage: impl Fn(&mut Plan, Option<Change>) -> Result<(), RegistryError>,
    ) -> Result<Option<u32>, RegistryError> {
        let entry = plan.view.entry(at).ok_or_else(|| not_found(at))?;
        let ttl = entry.instance.ttl;
        if self.shared.is_some() {
            let renewal = ttl.map(|_| Change::Renew(key_of(&plan.view, at)));
            return stage(plan, renewal).map(|()| ttl);
        }
        if let Some(ttl) = ttl {
            plan.effects.push(Effect::StartLease {
                entry: entry.clone(),
                length: Duration::from_secs(u64::from(ttl)),
                at: at.clone(),
            });
            plan.effects.push(Effect::Renewed(at.clone()));
        }
        Ok(ttl)
    }

    /// Plans a transaction's steps, all of them or, at the first that fails, none:
    /// the plan is put back as it was before the transaction.
    fn plan_transaction(
        &self,
        plan: &mut Plan,
        decide: &Decide,
        stage: impl Fn(&mut Plan, Option<Change>) -> Result<(), RegistryError> + Copy,
    ) -> Result<(), RegistryError> {
        // The decision is the requester's code running on this thread, with only a
        // shared view: should it panic, nothing was changed, so the transaction is
        // refused rather than the writer (and with it svcdns) stopped.
        let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decide(&plan.view)));
        let steps = decided.unwrap_or_else(|_| {
            Err(RegistryError::Failed(
                "deciding a transaction panicked (a bug); nothing was changed".into(),
            ))
        })?;
        let saved = (
            plan.view.clone(),
            plan.changes.len(),
            plan.effects.len(),
            plan.events.len(),
            plan.changed_zones.len(),
        );
        let result = steps
            .iter()
            .try_for_each(|step| self.plan_step(plan, step, stage));
        if result.is_err() {
            let (view, changes, effects, events, changed_zones) = saved;
            plan.view = view;
            plan.changes.truncate(changes);
            plan.effects.truncate(effects);
            plan.events.truncate(events);
            plan.changed_zones.truncate(changed_zones);
        }
        result
    }

    fn plan_step(
        &self,
        plan: &mut Plan,
        step: &Step,
        stage: impl Fn(&mut Plan, Option<Change>) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        match step {
            Step::Put { zone, registration } => {
                let at = InstanceRef {
                    zone: *zone,
                    service: registration.service.clone(),
                    id: registration.instance.id.clone(),
                };
                let unchanged = plan.view.instance(&at).is_some_and(|(entry, health)| {
                    health == Health::Healthy
                        && entry.stored
                        && entry.instance == registration.instance
                });
                if unchanged {
                    return self.plan_renew(plan, &at, stage).map(drop);
                }
                registration
                    .instance
                    .validate(&registration.service, &self.limits.instance)?;
                plan_register(
                    plan,
                    *zone,
                    registration,
                    None,
                    true,
                    &self.limits,
                    None,
                    stage,
                )
                .map(drop)
            }
            Step::Records { zone, records } => {
                if plan
                    .view
                    .zone(*zone)
                    .is_some_and(|z| z.records().holds(records))
                {
                    return Ok(());
                }
                let stored = StoredRecords {
                    zone: zone_origin(&plan.view, *zone).to_string(),
                    records: records.clone(),
                };
                let change = if records.sets.is_empty() {
                    Change::DeleteRecords {
                        zone: stored.zone.clone(),
                        owner: records.owner.clone(),
                    }
                } else {
                    Change::Records(stored.clone())
                };
                stage(plan, Some(change))?;
                put_records(&mut plan.view, &stored)?;
                changed(&mut plan.changed_zones, *zone);
                Ok(())
            }
            Step::Remove(at) => {
                let Some(entry) = plan.view.entry(at).cloned() else {
                    return Ok(());
                };
                let change = entry.stored.then(|| Change::Delete(key_of(&plan.view, at)));
                stage(plan, change)?;
                remove(plan, at, Reason::Deregistered);
                Ok(())
            }
        }
    }

    /// Publishes the writer's view if the batch changed it, and frees the snapshots
    /// that no reader holds any more.
    fn publish(&mut self, changed_zones: &[usize]) {
        if !changed_zones.is_empty() {
            let previous = self.published.swap(Arc::new(self.view.clone()));
            self.retired.push(previous);
        }
        // Only this thread holds a count of 1: dropping it here frees it here.
        self.retired
            .retain(|snapshot| Arc::strong_count(snapshot) > 1);
    }
}

/// Sends a command its reply (a requester that went away no longer needs it: send
/// errors are ignored); a `watch` is handed back, to be subscribed after the batch's
/// events are out.
fn send_reply(
    command: Command,
    ack: Option<Ack>,
) -> Option<(Option<Label>, oneshot::Sender<Subscription>)> {
    match (command, ack) {
        (
            Command::Register { reply, .. } | Command::Renew { reply, .. },
            Some(Ack::Lease(result)),
        ) => drop(reply.send(result)),
        (
            Command::Deregister { reply, .. }
            | Command::Mark { reply, .. }
            | Command::Reconfigure { reply, .. }
            | Command::Transaction { reply, .. },
            Some(Ack::Unit(result)),
        ) => drop(reply.send(result)),
        (Command::Watch { filter, reply }, _) => return Some((filter, reply)),
        _ => {}
    }
    None
}

/// Plans a registration: checks it against the plan's view, stages its store change
/// and applies it to the view. `held` is what `connection` held before this batch.
#[allow(clippy::too_many_arguments)]
fn plan_register(
    plan: &mut Plan,
    zone: usize,
    registration: &Registration,
    connection: Option<ConnectionId>,
    stored: bool,
    limits: &Limits,
    held: Option<&HashSet<InstanceRef>>,
    stage: impl Fn(&mut Plan, Option<Change>) -> Result<(), RegistryError>,
) -> Result<Option<u32>, RegistryError> {
    let Registration {
        zone: origin,
        service,
        instance,
    } = registration;
    let zone_view = plan
        .view
        .zone(zone)
        .filter(|zone| zone.is_served())
        .ok_or_else(|| RegistryError::UnknownZone(origin.clone()))?;
    let origin = zone_view.origin().clone();
    zone_view.check_labels(service, instance)?;
    let default_ttl = zone_view.settings().default_ttl;
    let at = InstanceRef {
        zone,
        service: service.clone(),
        id: instance.id.clone(),
    };
    // Replacing an instance never counts against a limit; adding one may.
    let existing = plan.view.entry(&at);
    let holder = connection.filter(|_| instance.ephemeral);
    if let Some(connection) = holder.filter(|&c| existing.is_none_or(|e| e.owner != Some(c))) {
        // Counts what the batch took over too; what it released is counted until
        // the batch ends, so the check errs on the refusing side by at most a batch.
        let held =
            held.map_or(0, HashSet::len) + plan.owned.get(&connection).map_or(0, HashSet::len);
        if held >= limits.max_instances_per_connection {
            return Err(RegistryError::Full {
                what: "this connection".to_string(),
                count: held,
                setting: "registration.max_instances_per_connection",
            });
        }
    }
    if existing.is_none() {
        let in_service = zone_view.service_size(service.as_str());
        if in_service >= limits.max_instances_per_service {
            return Err(RegistryError::Full {
                what: format!("service {service}"),
                count: in_service,
                setting: "registration.max_instances_per_service",
            });
        }
        let total = plan.view.total_instances();
        if total >= limits.max_instances {
            return Err(RegistryError::Full {
                what: "the registry".to_string(),
                count: total,
                setting: "registration.max_instances",
            });
        }
    }
    let entry = Arc::new(Entry::new(
        instance.clone(),
        default_ttl,
        connection,
        stored,
    ));
    let change = if entry.stored {
        Some(Change::Put(StoredInstance {
            registration: registration.clone(),
            health: Health::Healthy,
            lease_deadline_unix_ms: instance
                .ttl
                .map(|ttl| unix_ms(SystemTime::now()) + u64::from(ttl) * 1000),
        }))
    } else {
        // What it replaces must not come back from the store after a restart.
        let replaces_stored = plan.view.entry(&at).is_some_and(|old| old.stored);
        replaces_stored.then(|| Change::Delete(key_of(&plan.view, &at)))
    };
    stage(plan, change)?;
    if let Some(replaced) = plan.view.insert(zone, service, entry.clone()) {
        if let Some(owner) = replaced.owner.filter(|&owner| entry.owner != Some(owner)) {
            plan.effects.push(Effect::Unown(owner, at.clone()));
        }
        plan.effects.push(Effect::EndLease(replaced));
    }
    if let Some(ttl) = instance.ttl {
        plan.effects.push(Effect::StartLease {
            entry: entry.clone(),
            length: Duration::from_secs(u64::from(ttl)),
            at: at.clone(),
        });
    }
    if let Some(connection) = entry.owner {
        plan.effects.push(Effect::Own(connection, at.clone()));
        // `owned` is what the batch adds to what the connection held.
        if !held.is_some_and(|held| held.contains(&at)) {
            plan.owned.entry(connection).or_default().insert(at.clone());
        }
    }
    changed(&mut plan.changed_zones, zone);
    plan.events.push(Event {
        reason: Reason::Registered,
        zone: origin,
        service: service.clone(),
        id: at.id,
        entry: Some(entry),
    });
    Ok(instance.ttl)
}

/// Puts records into their zone of `view` (none: removes them), unless they would
/// take the names of a registered service.
pub(super) fn put_records(view: &mut View, stored: &StoredRecords) -> Result<(), RegistryError> {
    let zone = view
        .zone_index(&stored.zone)
        .filter(|&index| view.zone(index).is_some_and(|z| z.is_served()))
        .ok_or_else(|| RegistryError::UnknownZone(stored.zone.clone()))?;
    let zone_view = view.zone(zone).ok_or(RegistryError::Unavailable)?;
    if !stored.records.sets.is_empty() {
        if let Some(service) = taken_label(&stored.records.owner, zone_view.origin_wire_len())
            .filter(|service| zone_view.has_service(service))
        {
            return Err(RegistryError::RecordConflict {
                service,
                zone: stored.zone.clone(),
            });
        }
    }
    view.put_records(zone, stored.records.clone());
    Ok(())
}

/// Removes an instance from the plan's view; false when it is not registered.
fn remove(plan: &mut Plan, at: &InstanceRef, reason: Reason) -> bool {
    let Some(entry) = plan.view.remove(at) else {
        return false;
    };
    if let Some(owner) = entry.owner {
        plan.effects.push(Effect::Unown(owner, at.clone()));
    }
    plan.effects.push(Effect::EndLease(entry));
    changed(&mut plan.changed_zones, at.zone);
    plan.events.push(Event {
        reason,
        zone: zone_origin(&plan.view, at.zone),
        service: at.service.clone(),
        id: at.id.clone(),
        entry: None,
    });
    true
}

pub(super) fn key_of(view: &View, at: &InstanceRef) -> InstanceKey {
    InstanceKey {
        zone: zone_origin(view, at.zone).to_string(),
        service: at.service.clone(),
        id: at.id.clone(),
    }
}

pub(super) fn zone_origin(view: &View, zone: usize) -> Arc<str> {
    view.zone(zone)
        .map(|zone| zone.origin().clone())
        .unwrap_or_else(|| Arc::from(""))
}

fn changed(zones: &mut Vec<usize>, zone: usize) {
    if !zones.contains(&zone) {
        zones.push(zone);
    }
}

fn not_found(at: &InstanceRef) -> RegistryError {
    RegistryError::NotFound {
        service: at.service.to_string(),
        id: at.id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    //! The writer against a model of what the registry should hold: after any
    //! sequence of registrations, renewals, deregistrations, marks, closed connections,
    //! transactions (all of their steps or, when one fails, none) and leases running
    //! out, applied in batches of any size, exactly the live and
    //! healthy instances are in the answer groups DNS reads, the listing shows every
    //! live one, and each connection holds exactly its ephemeral instances.
    //!
    //! Time is virtual: each batch is applied at a chosen instant, so leases run out
    //! exactly when the model says, and the test takes no wall-clock time.

    use std::collections::{BTreeMap, BTreeSet};
    use std::net::{IpAddr, Ipv4Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::registry::model::{Instance, LabelKind, Meta, Proto};
    use crate::registry::view::ZoneSettings;
    use crate::store::MemoryStore;

    const SERVICES: [&str; 2] = ["web", "db"];
    const IDS: [&str; 4] = ["a", "b", "c", "d"];
    const PER_CONNECTION: usize = 3;

    type Key = (usize, usize);

    #[derive(Debug, Clone)]
    enum Op {
        Register {
            key: Key,
            address: u8,
            ttl: Option<u32>,
            ephemeral: bool,
            connection: ConnectionId,
        },
        Renew(Key),
        Deregister(Key),
        Mark(Key, Health),
        Release(ConnectionId),
        /// A transaction (as a DNS UPDATE makes): puts `(key, address, ttl)` and
        /// removes, in order; with `fail`, a last step the writer refuses (port 0),
        /// so that none of them may be made.
        Transaction {
            steps: Vec<TxStep>,
            fail: bool,
        },
    }

    /// A transaction's step: put the instance at `Key` with (address, ttl), or
    /// (`None`) remove it.
    type TxStep = (Key, Option<(u8, Option<u32>)>);

    #[derive(Debug, Clone)]
    enum TestStep {
        Batch(Vec<Op>),
        /// Time passes: the writer wakes (as at a lease deadline) and expires.
        Advance(u64),
    }

    fn key() -> impl Strategy<Value = Key> {
        (0..SERVICES.len(), 0..IDS.len())
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (key(), 1u8..4, prop_oneof![Just(None), (1u32..4).prop_map(Some)], any::<bool>(), 1u64..4)
                .prop_map(|(key, address, ttl, ephemeral, connection)| Op::Register {
                    key, address, ttl, ephemeral, connection,
                }),
            2 => key().prop_map(Op::Renew),
            1 => key().prop_map(Op::Deregister),
            1 => (key(), prop_oneof![Just(Health::Healthy), Just(Health::Critical)])
                .prop_map(|(key, health)| Op::Mark(key, health)),
            1 => (1u64..4).prop_map(Op::Release),
            1 => (
                prop::collection::vec(
                    (key(), prop::option::of((1u8..4, prop_oneof![Just(None), (1u32..4).prop_map(Some)]))),
                    1..4,
                ),
                prop::bool::weighted(0.3),
            )
                .prop_map(|(steps, fail)| Op::Transaction { steps, fail }),
        ]
    }

    fn step() -> impl Strategy<Value = TestStep> {
        prop_oneof![
            3 => prop::collection::vec(op(), 1..6).prop_map(TestStep::Batch),
            1 => (1u64..2500).prop_map(TestStep::Advance),
        ]
    }

    #[derive(Debug, Clone)]
    struct Live {
        address: u8,
        ttl: Option<u32>,
        deadline_ms: Option<u64>,
        owner: Option<ConnectionId>,
        health: Health,
    }

    /// What the registry should hold, by the rules README gives users.
    #[derive(Default)]
    struct Model {
        live: BTreeMap<Key, Live>,
    }

    /// How a request should end: the lease granted, or the error code.
    type Outcome = Result<Option<u32>, &'static str>;

    impl Model {
        fn held_by(&self, connection: ConnectionId) -> BTreeSet<Key> {
            self.live
                .iter()
                .filter(|(_, live)| live.owner == Some(connection))
                .map(|(key, _)| *key)
                .collect()
        }

        /// Applies one batch at `now_ms`, then expires what is due. A connection's
        /// share counts what it held when the batch began plus what the batch gave
        /// it since it last closed (what the batch took away frees its place at the
        /// next batch).
        fn apply(&mut self, batch: &[Op], now_ms: u64) -> Vec<Outcome> {
            let mut start: BTreeMap<ConnectionId, BTreeSet<Key>> = BTreeMap::new();
            let mut added: BTreeMap<ConnectionId, BTreeSet<Key>> = BTreeMap::new();
            for connection in 1..4 {
                start.insert(connection, self.held_by(connection));
            }
            let outcomes = batch
                .iter()
                .map(|op| match *op {
                    Op::Register {
                        key,
                        address,
                        ttl,
                        ephemeral,
                        connection,
                    } => {
                        let existing = self.live.get(&key);
                        if ephemeral && existing.is_none_or(|l| l.owner != Some(connection)) {
                            let held = start[&connection].len()
                                + added.get(&connection).map_or(0, BTreeSet::len);
                            if held >= PER_CONNECTION {
                                return Err("too_many_instances");
                            }
                        }
                        if ephemeral && !start[&connection].contains(&key) {
                            added.entry(connection).or_default().insert(key);
                        }
                        self.live.insert(
                            key,
                            Live {
                                address,
                                ttl,
                                deadline_ms: ttl.map(|ttl| now_ms + u64::from(ttl) * 1000),
                                owner: ephemeral.then_some(connection),
                                health: Health::Healthy,
                            },
                        );
                        Ok(ttl)
                    }
                    Op::Renew(key) => match self.live.get_mut(&key) {
                        Some(live) => {
                            if let Some(ttl) = live.ttl {
                                live.deadline_ms = Some(now_ms + u64::from(ttl) * 1000);
                            }
                            Ok(live.ttl)
                        }
                        None => Err("not_found"),
                    },
                    Op::Deregister(key) => match self.live.remove(&key) {
                        Some(_) => Ok(None),
                        None => Err("not_found"),
                    },
                    Op::Mark(key, health) => match self.live.get_mut(&key) {
                        Some(live) => {
                            live.health = health;
                            Ok(None)
                        }
                        None => Err("not_found"),
                    },
                    Op::Release(connection) => {
                        self.live.retain(|_, live| live.owner != Some(connection));
                        added.remove(&connection);
                        Ok(None)
                    }
                    Op::Transaction { ref steps, fail } => {
                        if fail {
                            return Err("invalid_port");
                        }
                        for &(key, put) in steps {
                            match put {
                                Some((address, ttl)) => {
                                    self.live.insert(
                                        key,
                                        Live {
                                            address,
                                            ttl,
                                            deadline_ms: ttl
                                                .map(|ttl| now_ms + u64::from(ttl) * 1000),
                                            owner: None,
                                            health: Health::Healthy,
                                        },
                                    );
                                }
                                None => {
                                    self.live.remove(&key);
                                }
                            }
                        }
                        Ok(None)
                    }
                })
                .collect();
            self.expire(now_ms);
            outcomes
        }

        fn expire(&mut self, now_ms: u64) {
            self.live
                .retain(|_, live| live.deadline_ms.is_none_or(|deadline| deadline > now_ms));
        }
    }

    fn label(text: &str, kind: LabelKind) -> Label {
        Label::parse(text, kind).unwrap()
    }

    fn at((service, id): Key) -> InstanceRef {
        InstanceRef {
            zone: 0,
            service: label(SERVICES[service], LabelKind::Service),
            id: label(IDS[id], LabelKind::Id),
        }
    }

    enum Waiting {
        Lease(oneshot::Receiver<Result<Option<u32>, RegistryError>>),
        Unit(oneshot::Receiver<Result<(), RegistryError>>),
        Nothing,
    }

    impl Waiting {
        fn outcome(self) -> Outcome {
            let code = |e: RegistryError| e.code();
            match self {
                Waiting::Lease(mut reply) => reply.try_recv().expect("acknowledged").map_err(code),
                Waiting::Unit(mut reply) => reply
                    .try_recv()
                    .expect("acknowledged")
                    .map(|()| None)
                    .map_err(code),
                Waiting::Nothing => Ok(None),
            }
        }
    }

    fn command(op: &Op) -> (Command, Waiting) {
        match op.clone() {
            Op::Register {
                key,
                address,
                ttl,
                ephemeral,
                connection,
            } => {
                let (reply, waiting) = oneshot::channel();
                let registration = registration(key, address, ttl, ephemeral, 80);
                // The protocol names the connection of every registration.
                let command = Command::Register {
                    zone: 0,
                    registration,
                    connection: Some(connection),
                    stored: true,
                    reply,
                };
                (command, Waiting::Lease(waiting))
            }
            Op::Renew(key) => {
                let (reply, waiting) = oneshot::channel();
                (
                    Command::Renew { at: at(key), reply },
                    Waiting::Lease(waiting),
                )
            }
            Op::Deregister(key) => {
                let (reply, waiting) = oneshot::channel();
                (
                    Command::Deregister { at: at(key), reply },
                    Waiting::Unit(waiting),
                )
            }
            Op::Mark(key, health) => {
                let (reply, waiting) = oneshot::channel();
                (
                    Command::Mark {
                        at: at(key),
                        health,
                        reply,
                    },
                    Waiting::Unit(waiting),
                )
            }
            Op::Release(connection) => (Command::Release { connection }, Waiting::Nothing),
            Op::Transaction { steps, fail } => {
                let mut planned: Vec<super::Step> = steps
                    .iter()
                    .map(|&(key, put)| match put {
                        Some((address, ttl)) => super::Step::Put {
                            zone: 0,
                            registration: registration(key, address, ttl, false, 80),
                        },
                        None => super::Step::Remove(at(key)),
                    })
                    .collect();
                if fail {
                    planned.push(super::Step::Put {
                        zone: 0,
                        registration: registration((0, 0), 1, None, false, 0),
                    });
                }
                let (reply, waiting) = oneshot::channel();
                let decide: Decide = Box::new(move |_| Ok(planned.clone()));
                (
                    Command::Transaction { decide, reply },
                    Waiting::Unit(waiting),
                )
            }
        }
    }

    fn registration(
        key: Key,
        address: u8,
        ttl: Option<u32>,
        ephemeral: bool,
        port: u16,
    ) -> Registration {
        let instance = Instance {
            id: label(IDS[key.1], LabelKind::Id),
            addresses: Box::new([IpAddr::V4(Ipv4Addr::new(10, 0, 0, address))]),
            port,
            proto: Proto::Tcp,
            priority: 0,
            weight: 0,
            tags: Box::new([]),
            meta: Meta::default(),
            dns_ttl: None,
            ttl,
            ephemeral,
        };
        Registration {
            zone: "svc.internal.".into(),
            service: label(SERVICES[key.0], LabelKind::Service),
            instance,
        }
    }

    /// The published snapshot against the model.
    fn check(writer: &Writer, model: &Model) -> Result<(), TestCaseError> {
        let view = writer.published.load_full();
        let zone = view.zone(0).expect("zone");
        prop_assert_eq!(view.total_instances(), model.live.len());
        for (s, service) in SERVICES.iter().enumerate() {
            let healthy: Vec<&str> = model
                .live
                .iter()
                .filter(|((ms, _), live)| *ms == s && live.health == Health::Healthy)
                .map(|((_, id), _)| IDS[*id])
                .collect();
            let answered = zone.service(service);
            let mut members: Vec<String> = answered
                .map(|svc| {
                    svc.all()
                        .members()
                        .iter()
                        .map(|e| e.id().to_string())
                        .collect()
                })
                .unwrap_or_default();
            members.sort();
            let mut expected: Vec<String> = healthy.iter().map(|id| id.to_string()).collect();
            expected.sort();
            prop_assert_eq!(&members, &expected, "answer group of {}", service);
            for id in IDS {
                let found = answered.and_then(|svc| svc.instance(id)).is_some();
                prop_assert_eq!(
                    found,
                    healthy.contains(&id),
                    "{}.{} answerable",
                    id,
                    service
                );
            }
            let addresses: BTreeSet<Ipv4Addr> = answered
                .map(|svc| svc.all().v4().iter().map(|(a, _)| *a).collect())
                .unwrap_or_default();
            let expected_addresses: BTreeSet<Ipv4Addr> = model
                .live
                .iter()
                .filter(|((ms, _), live)| *ms == s && live.health == Health::Healthy)
                .map(|(_, live)| Ipv4Addr::new(10, 0, 0, live.address))
                .collect();
            prop_assert_eq!(addresses, expected_addresses, "A records of {}", service);
            let listed: Vec<(String, Health)> = zone
                .instances_of(service)
                .into_iter()
                .map(|(_, entry, health)| (entry.id().to_string(), health))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let expected_listing: Vec<(String, Health)> = model
                .live
                .iter()
                .filter(|((ms, _), _)| *ms == s)
                .map(|((_, id), live)| (IDS[*id].to_string(), live.health))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            prop_assert_eq!(listed, expected_listing, "listing of {}", service);
        }
        for connection in 1..4 {
            let held: BTreeSet<Key> = writer
                .ephemeral
                .get(&connection)
                .into_iter()
                .flatten()
                .map(|at| {
                    let s = SERVICES.iter().position(|s| *s == at.service.as_str());
                    let i = IDS.iter().position(|i| *i == at.id.as_str());
                    (s.unwrap(), i.unwrap())
                })
                .collect();
            prop_assert_eq!(
                held,
                model.held_by(connection),
                "held by connection {}",
                connection
            );
        }
        Ok(())
    }

    /// Every zone takes every instance: the model has no static records.
    struct AdmitAll;

    impl Admission for AdmitAll {
        fn admit(&self, _: &str, _: &Label, _: &Instance) -> Result<(), RegistryError> {
            Ok(())
        }
    }

    /// A writer of one zone, `svc.internal.`, with default limits, from `epoch` on.
    fn writer_of_one_zone(store: Box<dyn Store>, epoch: Instant) -> Writer {
        let zones = vec![ZoneSettings {
            origin: Arc::from("svc.internal."),
            default_ttl: 5,
        }];
        let view = View::new(zones, epoch, 1);
        let published = Arc::new(ArcSwap::from_pointee(view.clone()));
        Writer::new(
            view,
            published,
            store,
            Limits::default(),
            Arc::new(AdmitAll),
        )
    }

    #[test]
    fn a_transaction_whose_decision_panics_is_refused_and_the_writer_goes_on() {
        let mut writer = writer_of_one_zone(Box::new(MemoryStore::default()), Instant::now());
        let (reply, mut waiting) = oneshot::channel();
        let decide: Decide = Box::new(|_| panic!("a bug in a decision"));
        let (register, registered) = command(&Op::Register {
            key: (0, 0),
            address: 1,
            ttl: None,
            ephemeral: false,
            connection: 1,
        });
        let mut batch = vec![Command::Transaction { decide, reply }, register];
        writer.apply_at(&mut batch, Instant::now());
        let refused = waiting.try_recv().expect("answered");
        assert_eq!(refused.map_err(|e| e.code()), Err("internal"));
        // The rest of the batch was made.
        assert_eq!(registered.outcome(), Ok(None));
        assert_eq!(writer.published.load().total_instances(), 1);
    }

    /// A shared store (as etcd) that takes every change and whose watch reports
    /// nothing by itself: the test hands the writer what it would have reported.
    #[derive(Default)]
    struct SilentSharedStore {
        revision: u64,
    }

    impl Store for SilentSharedStore {
        fn load(&mut self) -> Result<Loaded, crate::store::StoreError> {
            Ok(Loaded::default())
        }

        fn apply(&mut self, _: &[Change]) -> Result<u64, crate::store::StoreError> {
            self.revision += 1;
            Ok(self.revision)
        }

        fn is_durable(&self) -> bool {
            true
        }

        fn describe(&self) -> String {
            "a shared store for tests".into()
        }

        fn is_shared(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_committed_change_whose_watch_lags_is_answered_as_not_seen_yet_and_applied_later() {
        let epoch = Instant::now();
        let mut writer = writer_of_one_zone(Box::new(SilentSharedStore::default()), epoch);
        let registration = registration((0, 0), 1, None, false, 80);
        let (reply, mut waiting) = oneshot::channel();
        let mut batch = vec![Command::Register {
            zone: 0,
            registration: registration.clone(),
            connection: Some(1),
            stored: true,
            reply,
        }];
        writer.apply_at(&mut batch, epoch);
        // Committed, and waiting for the watch: no reply, nothing answered yet.
        assert!(waiting.try_recv().is_err());
        writer.apply_at(
            &mut Vec::new(),
            epoch + shared::ACK_WAIT - Duration::from_millis(1),
        );
        assert!(waiting.try_recv().is_err());
        writer.apply_at(
            &mut Vec::new(),
            epoch + shared::ACK_WAIT + Duration::from_millis(10),
        );
        let error = waiting
            .try_recv()
            .expect("answered after the wait")
            .expect_err("not seen yet");
        assert!(
            matches!(
                error,
                RegistryError::NotSeenYet {
                    revision: 1,
                    applied: 0,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(error.code(), "store_unavailable");
        assert_eq!(writer.published.load().total_instances(), 0);
        // The watch catches up: the change is applied after all.
        let stored = StoredInstance {
            registration,
            health: Health::Healthy,
            lease_deadline_unix_ms: None,
        };
        let mut batch = vec![Command::Remote(Remote::Changes {
            revision: 1,
            changes: vec![crate::store::RemoteChange::Put(stored)],
        })];
        writer.apply_at(
            &mut batch,
            epoch + shared::ACK_WAIT + Duration::from_secs(1),
        );
        assert_eq!(writer.published.load().total_instances(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn exactly_the_live_healthy_instances_are_answerable(
            steps in prop::collection::vec(step(), 1..40)
        ) {
            let epoch = Instant::now();
            let zones = vec![ZoneSettings { origin: Arc::from("svc.internal."), default_ttl: 5 }];
            let view = View::new(zones, epoch, 1);
            let published = Arc::new(ArcSwap::from_pointee(view.clone()));
            let limits = Limits {
                max_instances_per_connection: PER_CONNECTION,
                ..Limits::default()
            };
            let admission = Arc::new(AdmitAll);
            let mut writer =
                Writer::new(view, published, Box::new(MemoryStore::default()), limits, admission);
            let mut model = Model::default();
            let mut now_ms = 0;
            for step in &steps {
                match step {
                    TestStep::Advance(ms) => {
                        now_ms += ms;
                        writer.apply_at(&mut Vec::new(), epoch + Duration::from_millis(now_ms));
                        model.expire(now_ms);
                    }
                    TestStep::Batch(ops) => {
                        let (mut batch, waiting): (Vec<Command>, Vec<Waiting>) =
                            ops.iter().map(command).unzip();
                        writer.apply_at(&mut batch, epoch + Duration::from_millis(now_ms));
                        let expected = model.apply(ops, now_ms);
                        let got: Vec<Outcome> = waiting.into_iter().map(Waiting::outcome).collect();
                        prop_assert_eq!(got, expected, "replies to {:?}", ops);
                    }
                }
                check(&writer, &model)?;
            }
        }
    }
}
