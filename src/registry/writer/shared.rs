//! The writer with a shared store (etcd, DESIGN §6): several nodes write the same
//! registry, so the store's order is the only order.
//!
//! A request that changes the registry is planned on a copy of the view, as always,
//! so that it is checked (labels, limits, tokens) and refused here when it must be.
//! Its changes are then committed to the store, and the plan is dropped: the change
//! comes back through the store's watch ([`Command::Remote`]) with everyone else's,
//! in revision order, and every node applies the same changes the same way. The
//! request is acknowledged once this node has applied the revision of its commit,
//! which keeps "acknowledged means resolvable" on the node that acknowledged it.
//!
//! Leases are the store's: it removes an instance whose lease ran out, and the
//! removal comes back like any other. Ephemeral instances are stored too, under a
//! lease of the node holding their connection.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::{
    changed, key_of, put_records, send_reply, zone_origin, Ack, Command, Effect, StoreState, Writer,
};
use crate::metrics;
use crate::registry::model::Health;
use crate::registry::records::NameRecords;
use crate::registry::view::{Entry, InstanceRef};
use crate::registry::watch::{Event, Reason};
use crate::registry::{
    stored_instances, stored_records, Admission, ConnectionId, InstanceKey, RegistryError,
};
use crate::store::{owner_text, Remote, RemoteChange, StoredInstance, StoredRecords};

/// Wait before committing again the removals of a closed connection's instances that
/// the store did not take.
const RELEASE_RETRY: Duration = Duration::from_secs(1);

/// Longest a committed request waits for its change to come back before it is
/// answered with an error (the node lost its watch): the change is in the store and
/// will be applied when the watch resumes, but the client must not wait forever.
pub(super) const ACK_WAIT: Duration = Duration::from_secs(10);

/// What following a shared store takes.
pub(in crate::registry) struct Following {
    admission: Arc<dyn Admission>,
    /// The highest store revision applied here.
    applied: u64,
    /// Requests committed to the store, waiting for their revision to come back.
    parked: VecDeque<Parked>,
    /// The connection each ephemeral instance this node committed belongs to, until
    /// the instance comes back from the store.
    owners: HashMap<InstanceKey, ConnectionId>,
    /// Closed connections whose instances the store did not remove yet, and when to
    /// try again. Left alone, they would stay as long as the node's lease, which the
    /// node keeps alive.
    releases: Vec<Command>,
    release_at: Option<Instant>,
}

struct Parked {
    revision: u64,
    since: Instant,
    replies: Vec<(Command, Option<Ack>)>,
}

impl Following {
    pub(in crate::registry) fn new(admission: Arc<dyn Admission>) -> Following {
        Following {
            admission,
            applied: 0,
            parked: VecDeque::new(),
            owners: HashMap::new(),
            releases: Vec::new(),
            release_at: None,
        }
    }

    /// When the oldest waiting request gives up, or releases are tried again.
    pub(in crate::registry) fn deadline(&self) -> Option<Instant> {
        let gives_up = self.parked.front().map(|parked| parked.since + ACK_WAIT);
        gives_up.into_iter().chain(self.release_at).min()
    }
}

impl Writer {
    /// Applies what the store reported, and commits the batch's requests to it.
    /// Returns whether commands are left for the usual path (reloads, watches, static
    /// instances: nothing the store keeps).
    pub(super) fn apply_shared(&mut self, batch: &mut Vec<Command>, now: Instant) -> bool {
        let mut proposals = Vec::new();
        let mut local = Vec::new();
        if let Some(following) = self.shared.as_mut() {
            if following.release_at.is_some_and(|at| at <= now) {
                following.release_at = None;
                proposals.append(&mut following.releases);
            }
        }
        for command in batch.drain(..) {
            match command {
                Command::Remote(remote) => self.apply_remote(remote, now),
                Command::Register { stored: false, .. }
                | Command::Watch { .. }
                | Command::Reconfigure { .. }
                | Command::Shutdown => local.push(command),
                command => proposals.push(command),
            }
        }
        if !proposals.is_empty() {
            self.propose(&mut proposals, now);
        }
        self.give_up_waiting(now);
        *batch = local;
        !batch.is_empty()
    }

    /// Checks `batch` against the view, commits its changes, and parks its replies
    /// until their revision comes back. Refusals are answered at once.
    fn propose(&mut self, batch: &mut Vec<Command>, now: Instant) {
        let mut plan = self.plan(batch, now, &StoreState::Writable);
        let mut revision = 0;
        let mut failed = false;
        // The commit may take seconds of retries (an election); the wait for the
        // watch starts when it ends.
        let committing = Instant::now();
        if !plan.changes.is_empty() {
            match self.store.apply(&plan.changes) {
                Ok(committed) => revision = committed,
                Err(e) => {
                    metrics::store_failed();
                    failed = true;
                    plan = self.plan(batch, now, &StoreState::Unavailable(e.to_string()));
                }
            }
        }
        let Some(following) = self.shared.as_mut() else {
            return;
        };
        if failed {
            // A release cannot be refused: it is tried until the store takes it.
            let mut index = 0;
            while index < batch.len() {
                if matches!(batch[index], Command::Release { .. }) {
                    following.releases.push(batch.remove(index));
                    plan.acks.remove(index);
                } else {
                    index += 1;
                }
            }
            if !following.releases.is_empty() {
                following.release_at = Some(now + RELEASE_RETRY);
            }
        }
        for effect in &plan.effects {
            if let Effect::Own(connection, at) = effect {
                following.owners.insert(key_of(&plan.view, at), *connection);
            }
        }
        let replies: Vec<_> = batch.drain(..).zip(plan.acks).collect();
        if revision > following.applied {
            following.parked.push_back(Parked {
                revision,
                since: now + committing.elapsed(),
                replies,
            });
        } else {
            for (command, ack) in replies {
                send_reply(command, ack);
            }
        }
    }

    /// Applies what the store reported, publishes it, and answers the requests it
    /// completes.
    fn apply_remote(&mut self, remote: Remote, now: Instant) {
        let mut events = Vec::new();
        let mut changed_zones = Vec::new();
        let revision = match remote {
            Remote::Changes { revision, changes } => {
                for change in changes {
                    self.apply_remote_change(change, &mut events, &mut changed_zones);
                }
                revision
            }
            Remote::Reload {
                revision,
                instances,
                records,
            } => {
                let kept: std::collections::HashSet<(&str, &[u8])> = records
                    .iter()
                    .map(|stored| (stored.zone.as_str(), &*stored.records.owner))
                    .collect();
                let gone: Vec<StoredRecords> = stored_records(&self.view)
                    .into_iter()
                    .filter(|stored| {
                        !kept.contains(&(stored.zone.as_str(), &*stored.records.owner))
                    })
                    .collect();
                for stored in gone {
                    let change = RemoteChange::DeleteRecords {
                        zone: stored.zone,
                        owner: stored.records.owner,
                    };
                    self.apply_remote_change(change, &mut events, &mut changed_zones);
                }
                for stored in records {
                    let change = RemoteChange::Records(stored);
                    self.apply_remote_change(change, &mut events, &mut changed_zones);
                }
                let kept: std::collections::HashSet<InstanceKey> =
                    instances.iter().map(StoredInstance::key).collect();
                let gone: Vec<InstanceKey> = stored_instances(&self.view)
                    .iter()
                    .map(StoredInstance::key)
                    .filter(|key| !kept.contains(key))
                    .collect();
                for key in gone {
                    let change = RemoteChange::Delete(key);
                    self.apply_remote_change(change, &mut events, &mut changed_zones);
                }
                for stored in instances {
                    let change = RemoteChange::Put(stored);
                    self.apply_remote_change(change, &mut events, &mut changed_zones);
                }
                revision
            }
        };
        for &zone in &changed_zones {
            self.view.bump_revision(zone);
        }
        self.publish(&changed_zones);
        if let Some(following) = self.shared.as_mut() {
            following.applied = following.applied.max(revision);
            let applied = following.applied;
            while following
                .parked
                .front()
                .is_some_and(|parked| parked.revision <= applied)
            {
                if let Some(parked) = following.parked.pop_front() {
                    for (command, ack) in parked.replies {
                        send_reply(command, ack);
                    }
                }
            }
        }
        self.announce(&events, now);
    }

    /// One change from the store. One that does not fit this node (its zone is not
    /// served here, or a static record owns its name) is left out and logged: every
    /// node with the same zones makes the same choice.
    fn apply_remote_change(
        &mut self,
        change: RemoteChange,
        events: &mut Vec<Event>,
        changed_zones: &mut Vec<usize>,
    ) {
        let key = match change {
            RemoteChange::Put(ref stored) => stored.key(),
            RemoteChange::Delete(ref key) => key.clone(),
            RemoteChange::Records(stored) => {
                return self.apply_remote_records(stored, changed_zones)
            }
            RemoteChange::DeleteRecords { zone, owner } => {
                let stored = StoredRecords {
                    zone,
                    records: NameRecords {
                        owner,
                        sets: Vec::new(),
                    },
                };
                return self.apply_remote_records(stored, changed_zones);
            }
        };
        let owner = self
            .shared
            .as_mut()
            .and_then(|following| following.owners.remove(&key));
        let Some(zone) = self
            .view
            .zone_index(&key.zone)
            .filter(|&index| self.view.zone(index).is_some_and(|z| z.is_served()))
        else {
            warn!(zone = %key.zone, service = %key.service, id = %key.id, "a change from the store for a zone not served here is left out");
            return;
        };
        let at = InstanceRef {
            zone,
            service: key.service.clone(),
            id: key.id.clone(),
        };
        let StoredInstance {
            registration,
            health,
            ..
        } = match change {
            RemoteChange::Delete(_) => {
                if let Some(entry) = self.view.remove(&at) {
                    if let Some(owner) = entry.owner {
                        self.unown(owner, &at);
                    }
                    changed(changed_zones, zone);
                    events.push(Event {
                        // The store does not say why: a deregistration, or a lease
                        // (the instance's, or its node's) that ran out.
                        reason: Reason::Deregistered,
                        zone: zone_origin(&self.view, zone),
                        service: at.service,
                        id: at.id,
                        entry: None,
                    });
                }
                return;
            }
            RemoteChange::Put(stored) => stored,
            // Taken apart above.
            RemoteChange::Records(_) | RemoteChange::DeleteRecords { .. } => return,
        };
        let instance = registration.instance;
        let current = self.view.instance(&at).map(|(entry, h)| (entry.clone(), h));
        if let Some((entry, current_health)) = &current {
            if entry.instance == instance {
                if *current_health != health {
                    self.mark_remote(&at, health, events, changed_zones);
                }
                return;
            }
        }
        let admitted = self
            .shared
            .as_ref()
            .map_or(Ok(()), |following| {
                following
                    .admission
                    .admit(&key.zone, &key.service, &instance)
            })
            .and_then(|()| {
                let zone_view = self.view.zone(zone).ok_or(RegistryError::Unavailable)?;
                zone_view.check_labels(&key.service, &instance)
            });
        if let Err(e) = admitted {
            warn!(zone = %key.zone, service = %key.service, id = %key.id, error = %e, "a registration from the store does not fit this node and is left out");
            return;
        }
        let default_ttl = self
            .view
            .zone(zone)
            .map_or(0, |zone_view| zone_view.settings().default_ttl);
        let entry = Arc::new(Entry::new(instance, default_ttl, owner, true));
        if let Some(replaced) = self.view.insert(zone, &key.service, entry.clone()) {
            if let Some(previous) = replaced.owner.filter(|&o| entry.owner != Some(o)) {
                self.unown(previous, &at);
            }
        }
        if let Some(owner) = entry.owner {
            self.ephemeral.entry(owner).or_default().insert(at.clone());
        }
        changed(changed_zones, zone);
        events.push(Event {
            reason: Reason::Registered,
            zone: zone_origin(&self.view, zone),
            service: at.service.clone(),
            id: at.id.clone(),
            entry: Some(entry),
        });
        if health == Health::Critical {
            self.mark_remote(&at, health, events, changed_zones);
        }
    }

    /// Records from the store (none: removed), left out with a warning when they do
    /// not fit this node.
    fn apply_remote_records(&mut self, stored: StoredRecords, changed_zones: &mut Vec<usize>) {
        let Some(zone) = self.view.zone_index(&stored.zone) else {
            warn!(zone = %stored.zone, "records from the store for a zone not served here are left out");
            return;
        };
        if self
            .view
            .zone(zone)
            .is_some_and(|z| z.records().holds(&stored.records))
        {
            return;
        }
        match put_records(&mut self.view, &stored) {
            Ok(()) => changed(changed_zones, zone),
            Err(e) => {
                warn!(zone = %stored.zone, owner = %owner_text(&stored.records.owner), error = %e, "records from the store do not fit this node and are left out")
            }
        }
    }

    fn mark_remote(
        &mut self,
        at: &InstanceRef,
        health: Health,
        events: &mut Vec<Event>,
        changed_zones: &mut Vec<usize>,
    ) {
        if let Some((entry, true)) = self.view.mark(at, health) {
            changed(changed_zones, at.zone);
            events.push(Event {
                reason: match health {
                    Health::Critical => Reason::Critical,
                    Health::Healthy => Reason::Healthy,
                },
                zone: zone_origin(&self.view, at.zone),
                service: at.service.clone(),
                id: at.id.clone(),
                entry: Some(entry),
            });
        }
    }

    /// Answers the requests whose change has not come back within [`ACK_WAIT`].
    fn give_up_waiting(&mut self, now: Instant) {
        let Some(following) = self.shared.as_mut() else {
            return;
        };
        while following
            .parked
            .front()
            .is_some_and(|parked| parked.since + ACK_WAIT <= now)
        {
            let Some(parked) = following.parked.pop_front() else {
                break;
            };
            let error = RegistryError::NotSeenYet {
                revision: parked.revision,
                applied: following.applied,
                waited_secs: ACK_WAIT.as_secs(),
            };
            warn!(
                revision = parked.revision,
                applied = following.applied,
                requests = parked.replies.len(),
                "committed requests answered with an error: their revision did not come back from the store's watch within {} s",
                ACK_WAIT.as_secs()
            );
            for (command, ack) in parked.replies {
                let ack = ack.map(|ack| match ack {
                    Ack::Lease(Ok(_)) => Ack::Lease(Err(error.clone())),
                    Ack::Unit(Ok(())) => Ack::Unit(Err(error.clone())),
                    refused => refused,
                });
                send_reply(command, ack);
            }
        }
    }
}
