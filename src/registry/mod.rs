//! The registry: the source of truth for which service instances exist, and their leases.
//!
//! Shaped after mini-redis's `db.rs`: a cheap-to-clone handle around `Arc<Shared>`, one
//! `std::sync::Mutex` over the state (never held across an `.await`, so a blocking mutex
//! is both correct and cheaper than tokio's), a `BTreeMap` of lease deadlines, and one
//! background task that sleeps until the next deadline or until `Notify` says an
//! earlier one was added.
//!
//! The registry knows nothing about DNS. Every change to a service is handed to a
//! [`Publisher`] (the DNS side) with the service's complete new instance list *before*
//! the registry call returns, which is what makes "acknowledged means resolvable" hold.

mod error;
pub mod model;
pub mod spec;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

pub use error::RegistryError;
pub use model::{Instance, Label, LabelKind, Proto};

/// Receives the complete, current instance list of one service whenever it changes.
///
/// The registry calls it while holding its lock, so calls for one registry never
/// overlap and arrive in the order the changes were made.
pub trait Publisher: Send + Sync + 'static {
    /// Refuses an instance that cannot be published: its zone is not served, a static
    /// record already owns the service's names, or a name would be too long.
    fn admit(&self, instance: &Instance) -> Result<(), RegistryError>;
    /// Replaces what is published for `service` in `zone`; an empty list removes it.
    fn publish(&self, zone: &str, service: &Label, instances: &[Arc<Instance>]);
}

/// Identifies the registration connection that owns an ephemeral instance.
pub type ConnectionId = u64;

/// Identifies one instance across the registry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct InstanceKey {
    pub zone: String,
    pub service: Label,
    pub id: Label,
}

/// Why an instance went away, as reported to watchers.
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
}

/// A change, as streamed to `watch` subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `register` or `deregister`.
    pub event: &'static str,
    pub reason: Reason,
    pub zone: String,
    pub service: Label,
    pub id: Label,
    /// The new registration, for `register` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<Arc<Instance>>,
}

/// One row of `list` / the initial state of `watch`.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    #[serde(flatten)]
    pub instance: Arc<Instance>,
    /// Seconds until the lease expires, for leased instances.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<f64>,
}

/// How many events a slow watcher may fall behind before it is cut off.
const EVENT_BUFFER: usize = 1024;

/// Handle to the registry; clones share the same state.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    publisher: Arc<dyn Publisher>,
    events: broadcast::Sender<Event>,
    /// Wakes the expiry task when a deadline earlier than the one it sleeps for appears.
    expiry_wakeup: Notify,
    default_zone: String,
}

#[derive(Default)]
struct State {
    /// (zone, service) → instances by id. BTreeMaps keep answers in a stable order.
    services: HashMap<(String, Label), BTreeMap<Label, Entry>>,
    leases: Leases,
    shutdown: bool,
}

/// Lease deadlines, earliest first.
#[derive(Default)]
struct Leases {
    /// The `u64` breaks ties between equal instants, so two leases ending together
    /// are both kept.
    deadlines: BTreeMap<(Instant, u64), InstanceKey>,
    next_seq: u64,
}

/// One lease's place in [`Leases`].
type LeaseKey = (Instant, u64);

impl Leases {
    /// Starts a lease of `ttl` seconds for `key`; returns its place and whether it is
    /// now the earliest deadline (the expiry task must then be woken).
    fn start(&mut self, ttl: u64, key: &InstanceKey) -> (LeaseKey, bool) {
        let lease = (Instant::now() + Duration::from_secs(ttl), self.next_seq);
        self.next_seq += 1;
        self.deadlines.insert(lease, key.clone());
        let earliest = self.deadlines.keys().next() == Some(&lease);
        (lease, earliest)
    }

    fn end(&mut self, lease: &LeaseKey) {
        self.deadlines.remove(lease);
    }
}

struct Entry {
    instance: Arc<Instance>,
    lease: Option<LeaseKey>,
    /// The connection an ephemeral instance lives with.
    owner: Option<ConnectionId>,
}

impl Registry {
    /// Creates the registry and starts its lease-expiry task (so it must be called
    /// inside a tokio runtime). `default_zone` is used for requests that name none.
    pub fn new(publisher: Arc<dyn Publisher>, default_zone: &str) -> Registry {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            publisher,
            events,
            expiry_wakeup: Notify::new(),
            default_zone: default_zone.to_string(),
        });
        tokio::spawn(expire_leases(shared.clone()));
        Registry { shared }
    }

    pub fn default_zone(&self) -> &str {
        &self.shared.default_zone
    }

    /// Adds or replaces an instance. `connection` must be given for ephemeral instances:
    /// they are removed by [`Registry::release_connection`] for that connection.
    pub fn register(
        &self,
        instance: Instance,
        connection: Option<ConnectionId>,
    ) -> Result<Arc<Instance>, RegistryError> {
        instance.validate()?;
        self.shared.publisher.admit(&instance)?;
        let instance = Arc::new(instance);
        let mut state = self.shared.lock();
        let service_key = (instance.zone.clone(), instance.service.clone());
        if let Some(instances) = state.services.get(&service_key) {
            check_label_space(&instance, instances)?;
        }

        let key = InstanceKey {
            zone: instance.zone.clone(),
            service: instance.service.clone(),
            id: instance.id.clone(),
        };
        let lease = instance.ttl.map(|ttl| {
            let (lease, earliest) = state.leases.start(ttl, &key);
            if earliest {
                self.shared.expiry_wakeup.notify_one();
            }
            lease
        });
        let entry = Entry {
            instance: instance.clone(),
            lease,
            owner: connection.filter(|_| instance.ephemeral),
        };
        let previous = state
            .services
            .entry(service_key.clone())
            .or_default()
            .insert(key.id.clone(), entry);
        if let Some(Entry {
            lease: Some(old), ..
        }) = previous
        {
            state.leases.end(&old);
        }
        self.shared.publish(&state, &service_key);
        self.shared.notify(Event {
            event: "register",
            reason: Reason::Registered,
            zone: key.zone,
            service: key.service,
            id: key.id,
            instance: Some(instance.clone()),
        });
        Ok(instance)
    }

    /// Extends the lease of an instance by its `ttl`. Instances without a lease are
    /// left as they are (renewing them is harmless, so it is not an error).
    pub fn renew(&self, key: &InstanceKey) -> Result<Arc<Instance>, RegistryError> {
        let mut state = self.shared.lock();
        let State {
            services, leases, ..
        } = &mut *state;
        let entry = services
            .get_mut(&(key.zone.clone(), key.service.clone()))
            .and_then(|instances| instances.get_mut(&key.id))
            .ok_or_else(|| not_found(key))?;
        if let (Some(ttl), Some(old)) = (entry.instance.ttl, entry.lease) {
            // The new deadline is later than the old one, so the expiry task, which
            // sleeps until the earliest deadline, needs no wakeup.
            leases.end(&old);
            entry.lease = Some(leases.start(ttl, key).0);
        }
        Ok(entry.instance.clone())
    }

    /// Removes an instance at a client's request.
    pub fn deregister(&self, key: &InstanceKey) -> Result<Arc<Instance>, RegistryError> {
        let mut state = self.shared.lock();
        self.shared
            .remove(&mut state, key, Reason::Deregistered)
            .ok_or_else(|| not_found(key))
    }

    /// Removes the ephemeral instances that `connection` registered and still owns (an
    /// instance re-registered since, by anyone, is no longer tied to the connection).
    pub fn release_connection(&self, connection: ConnectionId, keys: &[InstanceKey]) {
        let mut state = self.shared.lock();
        for key in keys {
            let owned = state
                .services
                .get(&(key.zone.clone(), key.service.clone()))
                .and_then(|instances| instances.get(&key.id))
                .is_some_and(|entry| entry.owner == Some(connection));
            if owned {
                self.shared.remove(&mut state, key, Reason::Disconnected);
            }
        }
    }

    /// Current instances, optionally of one service name (in any zone).
    pub fn list(&self, service: Option<&Label>) -> Vec<Listing> {
        let state = self.shared.lock();
        snapshot(&state, service)
    }

    /// Current instances plus a receiver for every later change. Both are taken under
    /// one lock, so no change falls between the snapshot and the stream.
    pub fn watch(&self, service: Option<&Label>) -> (Vec<Listing>, broadcast::Receiver<Event>) {
        let state = self.shared.lock();
        (snapshot(&state, service), self.shared.events.subscribe())
    }

    /// Stops the expiry task. Registrations stay readable.
    pub fn shutdown(&self) {
        self.shared.lock().shutdown = true;
        self.shared.expiry_wakeup.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps themselves intact (every
        // mutation is a single insert/remove), so recovering the guard is safe and
        // keeps one bug from taking the whole registry down.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify(&self, event: Event) {
        // No receivers is the normal case, not an error.
        let _ = self.events.send(event);
    }

    fn publish(&self, state: &State, service_key: &(String, Label)) {
        let instances: Vec<Arc<Instance>> = state
            .services
            .get(service_key)
            .map(|instances| instances.values().map(|e| e.instance.clone()).collect())
            .unwrap_or_default();
        self.publisher
            .publish(&service_key.0, &service_key.1, &instances);
    }

    fn remove(
        &self,
        state: &mut State,
        key: &InstanceKey,
        reason: Reason,
    ) -> Option<Arc<Instance>> {
        let service_key = (key.zone.clone(), key.service.clone());
        let instances = state.services.get_mut(&service_key)?;
        let entry = instances.remove(&key.id)?;
        if instances.is_empty() {
            state.services.remove(&service_key);
        }
        if let Some(lease) = entry.lease {
            state.leases.end(&lease);
        }
        self.publish(state, &service_key);
        self.notify(Event {
            event: "deregister",
            reason,
            zone: key.zone.clone(),
            service: key.service.clone(),
            id: key.id.clone(),
            instance: None,
        });
        Some(entry.instance)
    }

    /// Removes every instance whose lease has passed; returns the next deadline.
    fn purge_expired(&self) -> Option<Instant> {
        let mut state = self.lock();
        if state.shutdown {
            return None;
        }
        let now = Instant::now();
        while let Some((&lease, key)) = state.leases.deadlines.first_key_value() {
            if lease.0 > now {
                return Some(lease.0);
            }
            let key = key.clone();
            // Ended here as well as in `remove`, so the loop moves on even if the
            // instance were somehow gone already.
            state.leases.end(&lease);
            self.remove(&mut state, &key, Reason::Expired);
        }
        None
    }

    fn is_shutdown(&self) -> bool {
        self.lock().shutdown
    }
}

/// The one background task that expires leases (mini-redis `purge_expired_tasks`).
async fn expire_leases(shared: Arc<Shared>) {
    while !shared.is_shutdown() {
        match shared.purge_expired() {
            Some(next) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    _ = shared.expiry_wakeup.notified() => {}
                }
            }
            None => shared.expiry_wakeup.notified().await,
        }
    }
}

fn not_found(key: &InstanceKey) -> RegistryError {
    RegistryError::NotFound {
        service: key.service.to_string(),
        id: key.id.to_string(),
    }
}

/// An instance id and a tag of one service share the label space `X.S.Z`: refuse a
/// registration that would make one label both (the other instances are checked; the
/// instance's own id/tags were checked by `Instance::validate`).
fn check_label_space(
    instance: &Instance,
    others: &BTreeMap<Label, Entry>,
) -> Result<(), RegistryError> {
    for other in others.values().map(|e| &e.instance) {
        if other.id == instance.id {
            continue;
        }
        if other.has_tag(&instance.id) {
            return Err(RegistryError::LabelConflict {
                service: instance.service.to_string(),
                label: instance.id.to_string(),
                detail: "another instance of the service has it as a tag",
            });
        }
        if instance.has_tag(&other.id) {
            return Err(RegistryError::LabelConflict {
                service: instance.service.to_string(),
                label: other.id.to_string(),
                detail: "it is the id of another instance of the service",
            });
        }
    }
    Ok(())
}

fn snapshot(state: &State, service: Option<&Label>) -> Vec<Listing> {
    let now = Instant::now();
    let mut rows: Vec<Listing> = state
        .services
        .iter()
        .filter(|((_, name), _)| service.is_none_or(|wanted| wanted == name))
        .flat_map(|(_, instances)| instances.values())
        .map(|entry| Listing {
            instance: entry.instance.clone(),
            expires_in: entry
                .lease
                .map(|(deadline, _)| deadline.saturating_duration_since(now).as_secs_f64()),
        })
        .collect();
    rows.sort_by(|a, b| {
        (&a.instance.zone, &a.instance.service, &a.instance.id).cmp(&(
            &b.instance.zone,
            &b.instance.service,
            &b.instance.id,
        ))
    });
    rows
}
