//! The registry: the source of truth for which service instances exist, and their leases.
//!
//! Writes go through one queue to one writer thread (`writer`), which applies them in
//! batches and publishes each batch as an immutable snapshot (`view`). Reads (DNS,
//! `list`, `watch`) take the latest snapshot and never wait for the writer. A write is
//! acknowledged only once the snapshot containing it is published, which is what makes
//! "acknowledged means resolvable" hold.
//!
//! The registry knows nothing about DNS encoding. What it needs from the DNS side, whether
//! an instance's names fit its zone, comes through the narrow [`Admission`] trait.

mod change_log;
mod error;
pub mod leases;
pub mod model;
pub mod records;
pub mod spec;
pub mod view;
pub mod watch;
pub mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::oneshot;

pub use error::RegistryError;
pub use model::{
    Health, Instance, InstanceJson, InstanceLimits, Label, LabelKind, Meta, Proto, Registration,
};
pub use view::{Entry, InstanceRef, View, ZoneSettings, ZoneView};
pub use watch::{Event, Reason, WatchItem, WatchStream};
use writer::{Command, Writer};
pub use writer::{Decide, Step, Subscription};

use crate::store::{Store, StoreError, StoredInstance, StoredRecords};

/// Decides whether an instance's DNS names can exist in its zone. Implemented by the
/// DNS side, which knows the zone's static records and name lengths.
pub trait Admission: Send + Sync + 'static {
    /// Refuses an instance whose names the zone cannot hold: a static record already
    /// owns the service's names, or a name would be too long.
    fn admit(&self, zone: &str, service: &Label, instance: &Instance) -> Result<(), RegistryError>;
}

/// What the registry takes (`registration:` settings): a registration beyond any of
/// these is refused, so that no client can exhaust memory or make a service's answers
/// useless. The counts are refused with `too_many_instances`; replacing an instance
/// never counts against them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How large one instance may be.
    pub instance: InstanceLimits,
    pub max_instances_per_service: usize,
    pub max_instances: usize,
    /// Ephemeral instances one connection may hold at once: they are the ones tied
    /// to a connection, and one client should not hold the registry hostage.
    pub max_instances_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            instance: InstanceLimits::DEFAULT,
            max_instances_per_service: 50_000,
            max_instances: 5_000_000,
            max_instances_per_connection: 100_000,
        }
    }
}

/// Why the registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Store(StoreError),
    #[error("starting the registry's writer thread: {0}")]
    Thread(std::io::Error),
}

/// Identifies the registration connection that owns an ephemeral instance.
pub type ConnectionId = u64;

/// Names one instance, as requests do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct InstanceKey {
    pub zone: String,
    pub service: Label,
    pub id: Label,
}

/// Handle to the registry; clones share the same writer and snapshots.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Sender<Command>,
    published: Arc<ArcSwap<View>>,
    admission: Arc<dyn Admission>,
    default_zone: String,
    instance_limits: InstanceLimits,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Registry {
    /// Loads what `store` holds, then starts the writer thread for a registry serving
    /// `zones`; returns once the loaded registry is published. `default_zone` is used
    /// for requests that name none.
    pub fn start(
        zones: Vec<ZoneSettings>,
        default_zone: &str,
        admission: Arc<dyn Admission>,
        mut store: Box<dyn Store>,
        limits: Limits,
    ) -> Result<Registry, StartError> {
        let started = Instant::now();
        let loaded = store.load().map_err(StartError::Store)?;
        // Serials start at the clock, but never at or below one already published.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        let serial_base = loaded
            .serial
            .map_or(now, |published| now.max(published.wrapping_add(1)));
        let view = View::new(zones, Instant::now(), serial_base);
        let published = Arc::new(ArcSwap::from_pointee(view.clone()));
        let (queue, commands) = mpsc::channel();
        let durable = store.is_durable();
        let source = store.describe();
        // What a shared store reports waits in the queue until the writer has loaded.
        let feed = queue.clone();
        store.follow(Box::new(move |remote| {
            feed.send(Command::Remote(remote)).is_ok()
        }));
        let mut writer = Writer::new(view, published.clone(), store, limits, admission.clone());
        let (count, left_out) = writer.load(loaded, admission.as_ref());
        if durable {
            tracing::info!(
                instances = count,
                from = %source,
                seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
                serial = serial_base,
                "registry loaded"
            );
        } else {
            tracing::info!("registry in {source}");
        }
        if !left_out.is_empty() {
            tracing::warn!(
                count = left_out.len(),
                first = %left_out[0],
                "stored instances left out (they stay in the store): their zone is not served or they no longer fit it"
            );
        }
        let thread = std::thread::Builder::new()
            .name("svcdns-writer".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| writer.run(commands));
                if std::panic::catch_unwind(run).is_err() {
                    // A bug. Without its writer the registry takes no change and expires
                    // no lease, so DNS would serve a frozen registry as if it were live:
                    // better to stop and let the supervisor restart us.
                    tracing::error!("the registry writer failed; stopping svcdns");
                    std::process::exit(70);
                }
            })
            .map_err(StartError::Thread)?;
        Ok(Registry {
            shared: Arc::new(Shared {
                queue,
                published,
                admission,
                default_zone: default_zone.to_string(),
                instance_limits: limits.instance,
                writer: Mutex::new(Some(thread)),
            }),
        })
    }

    pub fn default_zone(&self) -> &str {
        &self.shared.default_zone
    }

    /// The latest published snapshot.
    pub fn snapshot(&self) -> Arc<View> {
        self.shared.published.load_full()
    }

    /// Where snapshots are published, for readers that load one per request (DNS).
    pub fn published(&self) -> Arc<ArcSwap<View>> {
        self.shared.published.clone()
    }

    /// Adds or replaces an instance; resolves to its lease length once the change is
    /// published (and, with a durable store, committed). `connection` must be given
    /// for ephemeral instances: they go when [`Registry::release_connection`] is
    /// called for it.
    ///
    /// The request is queued at once, so a caller may queue several before awaiting
    /// any; they are applied and acknowledged in order.
    pub fn register(
        &self,
        registration: Registration,
        connection: Option<ConnectionId>,
    ) -> Pending<Option<u32>> {
        self.register_as(registration, connection, true)
    }

    /// Adds or replaces a static instance (from a zone file): never stored, since the
    /// files bring it back at every start.
    pub fn register_static(&self, registration: Registration) -> Pending<Option<u32>> {
        self.register_as(registration, None, false)
    }

    fn register_as(
        &self,
        registration: Registration,
        connection: Option<ConnectionId>,
        stored: bool,
    ) -> Pending<Option<u32>> {
        let checked = registration
            .instance
            .validate(&registration.service, &self.shared.instance_limits)
            .and_then(|()| self.zone_index(&registration.zone))
            .and_then(|zone| {
                self.shared.admission.admit(
                    &registration.zone,
                    &registration.service,
                    &registration.instance,
                )?;
                Ok(zone)
            });
        match checked {
            Ok(zone) => self.submit(|reply| Command::Register {
                zone,
                registration,
                connection,
                stored,
                reply,
            }),
            Err(e) => Pending::failed(e),
        }
    }

    /// Makes all of a transaction's steps or none, as one batch of the writer:
    /// `decide` sees the registry as it is when the transaction's turn comes, so a
    /// check it makes still holds when its steps are made. Resolves once the steps
    /// are published (and committed, with a durable store).
    pub fn transaction(&self, decide: Decide) -> Pending<()> {
        self.submit(|reply| Command::Transaction { decide, reply })
    }

    /// Restarts the lease of an instance; resolves to its lease length. Instances
    /// without a lease are left as they are (renewing them is harmless).
    pub fn renew(&self, key: &InstanceKey) -> Pending<Option<u32>> {
        match self.instance_ref(key) {
            Ok(at) => self.submit(|reply| Command::Renew { at, reply }),
            Err(e) => Pending::failed(e),
        }
    }

    /// Removes an instance at a client's request.
    pub fn deregister(&self, key: &InstanceKey) -> Pending<()> {
        match self.instance_ref(key) {
            Ok(at) => self.submit(|reply| Command::Deregister { at, reply }),
            Err(e) => Pending::failed(e),
        }
    }

    /// Takes an instance out of every answer (critical) or puts it back (healthy); it
    /// stays registered either way. Marking it as it already is changes nothing.
    pub fn mark(&self, key: &InstanceKey, health: Health) -> Pending<()> {
        match self.instance_ref(key) {
            Ok(at) => self.submit(|reply| Command::Mark { at, health, reply }),
            Err(e) => Pending::failed(e),
        }
    }

    /// Applies a reload of the zones: `zones[i]` is the zone at snapshot position `i`
    /// as it now is (`None`: no longer served; positions past the current ones are new
    /// zones); `touched` are positions whose own records changed. Resolves once the
    /// snapshot with the new zones is published.
    pub fn reconfigure(
        &self,
        zones: Vec<Option<ZoneSettings>>,
        touched: Vec<usize>,
    ) -> Pending<()> {
        self.submit(|reply| Command::Reconfigure {
            zones,
            touched,
            reply,
        })
    }

    /// Removes the ephemeral instances that `connection` registered and still owns (an
    /// instance re-registered since, by anyone, is no longer tied to the connection).
    pub fn release_connection(&self, connection: ConnectionId) {
        // A writer that has stopped has nothing left to release.
        let _ = self.shared.queue.send(Command::Release { connection });
    }

    /// The current instances (optionally of one service name, in any zone) and every
    /// later change, with nothing lost or repeated between the two.
    pub async fn watch(&self, filter: Option<Label>) -> Result<Subscription, RegistryError> {
        let (reply, subscription) = oneshot::channel();
        self.shared
            .queue
            .send(Command::Watch { filter, reply })
            .map_err(|_| RegistryError::Unavailable)?;
        subscription.await.map_err(|_| RegistryError::Unavailable)
    }

    /// Stops the writer after the requests already queued, and waits for it.
    pub fn shutdown(&self) {
        let _ = self.shared.queue.send(Command::Shutdown);
        let thread = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    fn submit<T>(&self, command: impl FnOnce(writer::Reply<T>) -> Command) -> Pending<T> {
        let (reply, acknowledgement) = oneshot::channel();
        match self.shared.queue.send(command(reply)) {
            Ok(()) => Pending::waiting(acknowledgement),
            Err(_) => Pending::failed(RegistryError::Unavailable),
        }
    }

    fn zone_index(&self, zone: &str) -> Result<usize, RegistryError> {
        self.shared
            .published
            .load()
            .zone_index(zone)
            .ok_or_else(|| RegistryError::UnknownZone(zone.to_string()))
    }

    fn instance_ref(&self, key: &InstanceKey) -> Result<InstanceRef, RegistryError> {
        Ok(InstanceRef {
            zone: self.zone_index(&key.zone)?,
            service: key.service.clone(),
            id: key.id.clone(),
        })
    }
}

/// The acknowledgement of a queued request.
pub struct Pending<T> {
    state: PendingState<T>,
}

enum PendingState<T> {
    Failed(Option<RegistryError>),
    Waiting(oneshot::Receiver<Result<T, RegistryError>>),
}

impl<T> Pending<T> {
    fn failed(error: RegistryError) -> Pending<T> {
        Pending {
            state: PendingState::Failed(Some(error)),
        }
    }

    fn waiting(acknowledgement: oneshot::Receiver<Result<T, RegistryError>>) -> Pending<T> {
        Pending {
            state: PendingState::Waiting(acknowledgement),
        }
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, RegistryError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            PendingState::Failed(error) => {
                Poll::Ready(Err(error.take().unwrap_or(RegistryError::Unavailable)))
            }
            PendingState::Waiting(acknowledgement) => Pin::new(acknowledgement)
                .poll(cx)
                .map(|received| received.unwrap_or(Err(RegistryError::Unavailable))),
        }
    }
}

/// The instances of a snapshot (of one service name, in any zone, when `service` is
/// given), healthy and critical, ordered by zone, service and id, as `list` and `watch`
/// show them.
pub fn listing<'a>(view: &'a View, service: Option<&str>) -> Vec<InstanceJson<'a>> {
    let now = Instant::now();
    let mut zones: Vec<&ZoneView> = view.zones().iter().collect();
    zones.sort_by(|a, b| a.origin().cmp(b.origin()));
    let mut rows = Vec::new();
    for zone in zones {
        let services: Vec<&str> = match service {
            Some(name) => vec![name],
            None => zone
                .service_names()
                .into_iter()
                .map(Label::as_str)
                .collect(),
        };
        for name in services {
            rows.extend(
                zone.instances_of(name)
                    .into_iter()
                    .map(|(service, entry, health)| InstanceJson {
                        zone: zone.origin(),
                        service,
                        instance: &entry.instance,
                        health,
                        expires_in: entry.lease.expires_in(view.epoch(), now),
                    }),
            );
        }
    }
    rows
}

/// Every stored instance of a snapshot: not static, and not ephemeral unless the store
/// is shared (etcd).
pub fn stored_instances(view: &View) -> Vec<StoredInstance> {
    let now = Instant::now();
    let mut stored = Vec::new();
    for (index, zone) in view.zones().iter().enumerate() {
        for name in zone.service_names() {
            for (service, entry, health) in zone.instances_of(name.as_str()) {
                if !entry.stored {
                    continue;
                }
                let at = InstanceRef {
                    zone: index,
                    service: service.clone(),
                    id: entry.id().clone(),
                };
                stored.push(stored_instance(view, &at, entry, health, now));
            }
        }
    }
    stored
}

/// Every zone's records written through DNS UPDATE, as the store keeps them.
pub fn stored_records(view: &View) -> Vec<StoredRecords> {
    view.zones()
        .iter()
        .flat_map(|zone| {
            zone.records().iter().map(|records| StoredRecords {
                zone: zone.origin().to_string(),
                records: (**records).clone(),
            })
        })
        .collect()
}

/// An instance as the store keeps it, with `health` and its lease's deadline.
pub(crate) fn stored_instance(
    view: &View,
    at: &InstanceRef,
    entry: &Entry,
    health: Health,
    now: Instant,
) -> StoredInstance {
    StoredInstance {
        registration: Registration {
            zone: writer::zone_origin(view, at.zone).to_string(),
            service: at.service.clone(),
            instance: entry.instance.clone(),
        },
        health,
        lease_deadline_unix_ms: wall_deadline(view, entry, now),
    }
}

/// When an entry's lease ends, on the wall clock.
pub(crate) fn wall_deadline(view: &View, entry: &Entry, now: Instant) -> Option<u64> {
    let left = entry.lease.expires_in(view.epoch(), now)?;
    Some(unix_ms(SystemTime::now()) + (left * 1000.0) as u64)
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
