//! The registry in etcd (`etcd:`, DESIGN §6), shared by every svcdns node pointed at
//! the same prefix.
//!
//! Layout: `<prefix>reg/<zone>/<service>/<id>` holds an instance in the same JSON
//! as `data_dir` does (with its health); `<prefix>rec/<zone>/<owner>` holds the
//! records written at an owner name through DNS UPDATE that are not instances.
//! An instance with a `ttl` is attached to an
//! etcd lease of that TTL, which a renewal keeps alive; an ephemeral instance is
//! attached to its node's lease, kept alive while the node runs, so a node that dies
//! takes its ephemeral instances with it after `etcd.lease_ttl`. etcd removes the
//! keys of a lease that runs out, and the removal reaches every node's watch.
//!
//! Every node loads the prefix, then follows etcd's watch from that revision and
//! feeds what it sees to its writer ([`Store::follow`]). A lost watch is resumed from
//! the last revision seen; if etcd compacted past it, the prefix is read again whole.
//! Writes go out as transactions (128 operations each, etcd's default
//! `--max-txn-ops`); while etcd cannot be reached they fail with the reason, and DNS
//! keeps answering from the last snapshot.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio::runtime::Runtime;
use tracing::{debug, info, warn};

use super::{
    owner_text, owner_wire, Change, Feed, Loaded, Remote, RemoteChange, Store, StoreError,
    StoredInstance, StoredRecords,
};
use crate::config::EtcdConfig;
use crate::registry::{InstanceKey, Label, LabelKind};

/// Operations per transaction: etcd's default `--max-txn-ops`.
const TXN_OPS: usize = 128;
/// How long a batch is tried again while etcd does not take it (an election, a
/// member restarting) before the requests get `store_unavailable`.
const COMMIT_RETRY: Duration = Duration::from_secs(6);
/// Keys per read when loading: well inside gRPC's 4 MiB response limit.
const READ_PAGE: i64 = 5_000;
/// Largest watch response taken.
const WATCH_MESSAGE: usize = 256 * 1024 * 1024;
/// Wait between attempts to resume a lost watch.
const WATCH_RETRY: Duration = Duration::from_secs(1);

pub struct EtcdStore {
    /// Runs the client and the background tasks (the watch, the node's lease).
    /// `None` once dropped.
    runtime: Option<Runtime>,
    client: Client,
    endpoints: String,
    prefix: String,
    lease_ttl: i64,
    /// The etcd lease of each leased instance, as last written or seen.
    leases: Arc<Mutex<HashMap<Vec<u8>, i64>>>,
    /// The lease of this node's ephemeral instances, once one was written.
    node_lease: Option<i64>,
    loaded_at: u64,
}

impl EtcdStore {
    /// Connects to `config.endpoints`.
    pub fn connect(config: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        let endpoints = config.endpoints.join(",");
        let unusable = |e: String| StoreError::Unusable(format!("etcd {endpoints}: {e}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("svcdns-etcd")
            .enable_all()
            .build()
            .map_err(|e| unusable(format!("starting its client: {e}")))?;
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let urls: Vec<String> = config
            .endpoints
            .iter()
            .map(|endpoint| {
                if endpoint.contains("://") {
                    endpoint.clone()
                } else {
                    format!("http://{endpoint}")
                }
            })
            .collect();
        let client = blocking(&runtime, Client::connect(urls, Some(options)))
            .map_err(|e| unusable(format!("cannot connect: {e}")))?;
        Ok(EtcdStore {
            runtime: Some(runtime),
            client,
            endpoints,
            prefix: config.prefix.clone(),
            lease_ttl: config.lease_ttl as i64,
            leases: Arc::default(),
            node_lease: None,
            loaded_at: 0,
        })
    }

    fn key(&self, key: &InstanceKey) -> Vec<u8> {
        format!(
            "{}{INSTANCES}{}/{}/{}",
            self.prefix, key.zone, key.service, key.id
        )
        .into_bytes()
    }

    fn records_key(&self, zone: &str, owner: &[u8]) -> Vec<u8> {
        format!("{}{RECORDS}{zone}/{}", self.prefix, owner_text(owner)).into_bytes()
    }

    /// Runs `work` on the client's runtime and waits for it (the writer's thread
    /// and start-up are not async).
    fn run<F: Future + Send>(&self, work: F) -> Result<F::Output, StoreError>
    where
        F::Output: Send,
    {
        match &self.runtime {
            Some(runtime) => Ok(blocking(runtime, work)),
            None => Err(StoreError::Unavailable("etcd client stopped".into())),
        }
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("etcd {}: {e}", self.endpoints))
    }

    /// The lease of this node's ephemeral instances: granted at the first one, then
    /// kept alive in the background while the node runs.
    fn node_lease(&mut self) -> Result<i64, StoreError> {
        if let Some(lease) = self.node_lease {
            return Ok(lease);
        }
        let mut client = self.client.clone();
        let ttl = self.lease_ttl;
        let lease = self
            .run(async move { client.lease_grant(ttl, None).await })?
            .map_err(|e| self.unavailable(format!("granting the node's lease: {e}")))?
            .id();
        let client = self.client.clone();
        if let Some(runtime) = &self.runtime {
            runtime.spawn(keep_node_lease(client, lease, ttl));
        }
        self.node_lease = Some(lease);
        Ok(lease)
    }
}

/// Runs `work` to completion on `runtime`, from any thread: from inside another
/// runtime (start-up runs on tokio), on a thread of its own.
fn blocking<F: Future + Send>(runtime: &Runtime, work: F) -> F::Output
where
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|scope| {
            scope
                .spawn(|| runtime.block_on(work))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    } else {
        runtime.block_on(work)
    }
}

/// Keeps the node's lease alive at a third of its TTL, reconnecting as needed. If
/// etcd let it run out (the node was cut off for longer than the TTL), its ephemeral
/// instances are gone from every node; that is logged, loudly.
async fn keep_node_lease(mut client: Client, lease: i64, ttl: i64) {
    let period = Duration::from_millis((ttl.max(1) as u64) * 1000 / 3);
    loop {
        match client.lease_keep_alive(lease).await {
            Ok((mut keeper, mut responses)) => loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match responses.message().await {
                    Ok(Some(response)) if response.ttl() <= 0 => {
                        warn!(lease, "this node's etcd lease ran out: etcd removed its ephemeral instances on every node; their clients must register again");
                        return;
                    }
                    Ok(Some(_)) => tokio::time::sleep(period).await,
                    Ok(None) | Err(_) => break,
                }
            },
            Err(e) => warn!(error = %e, "cannot keep this node's etcd lease alive; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits for every task, failing with the first error.
async fn join_all<T: 'static>(
    mut tasks: tokio::task::JoinSet<Result<T, etcd_client::Error>>,
) -> Result<Vec<T>, etcd_client::Error> {
    let mut done = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| etcd_client::Error::LeaseKeepAliveError(e.to_string()))?;
        done.push(result?);
    }
    Ok(done)
}

/// Which lease a put attaches its key to.
#[derive(Clone, Copy)]
enum PutLease {
    None,
    /// A new lease of this TTL, the instance's own.
    Grant(i64),
    /// The node's lease (ephemeral instances).
    Node(i64),
    /// Whatever lease the key has now (health marks).
    Keep,
}

/// One key written.
enum Write {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: PutLease,
    },
    Delete(Vec<u8>),
}

/// One batch's writes, as etcd takes them; kept whole so that it can be sent again.
#[derive(Default)]
struct Batch {
    /// In order.
    operations: Vec<Write>,
    /// Leases to keep alive.
    renewals: Vec<i64>,
}

impl Batch {
    /// Grants the new leases, writes the keys (a transaction per [`TXN_OPS`]) and
    /// renews the leases; the revision of the last write. Repeating it after a
    /// failure writes the same keys again, which is harmless.
    async fn commit(
        &self,
        client: Client,
        leases: &Mutex<HashMap<Vec<u8>, i64>>,
    ) -> Result<u64, etcd_client::Error> {
        // One lease per leased instance, so that renewing one renews only it;
        // granted all at once (etcd batches them) rather than one round trip each.
        let mut pending = tokio::task::JoinSet::new();
        for (index, write) in self.operations.iter().enumerate() {
            if let Write::Put {
                lease: PutLease::Grant(ttl),
                ..
            } = write
            {
                let (mut client, ttl) = (client.clone(), *ttl);
                pending.spawn(async move {
                    let granted = client.lease_grant(ttl, None).await?;
                    Ok((index, granted.id()))
                });
            }
        }
        let granted: HashMap<usize, i64> = join_all(pending).await?.into_iter().collect();
        let mut revision = 0;
        let mut client = client;
        for (chunk, operations) in self.operations.chunks(TXN_OPS).enumerate() {
            let mut ops = Vec::with_capacity(operations.len());
            for (offset, write) in operations.iter().enumerate() {
                let (key, value, lease) = match write {
                    Write::Delete(key) => {
                        ops.push(TxnOp::delete(key.clone(), None));
                        continue;
                    }
                    Write::Put { key, value, lease } => (key, value, lease),
                };
                let options = match lease {
                    PutLease::None => None,
                    PutLease::Keep => Some(PutOptions::new().with_ignore_lease()),
                    PutLease::Node(lease) => Some(PutOptions::new().with_lease(*lease)),
                    PutLease::Grant(_) => {
                        let lease = granted.get(&(chunk * TXN_OPS + offset)).copied();
                        if let (Some(lease), Ok(mut leases)) = (lease, leases.lock()) {
                            leases.insert(key.clone(), lease);
                        }
                        lease.map(|lease| PutOptions::new().with_lease(lease))
                    }
                };
                ops.push(TxnOp::put(key.clone(), value.clone(), options));
            }
            let response = client.txn(Txn::new().and_then(ops)).await?;
            revision = response.header().map_or(revision, |h| h.revision() as u64);
        }
        // A keep-alive is a stream of its own: all of them at once.
        let mut pending = tokio::task::JoinSet::new();
        for &lease in &self.renewals {
            let mut client = client.clone();
            pending.spawn(async move {
                let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                responses.message().await.map(drop)
            });
        }
        join_all(pending).await?;
        Ok(revision)
    }
}

/// Where instances live under the prefix.
const INSTANCES: &str = "reg/";
/// Where records that are not instances live under the prefix.
const RECORDS: &str = "rec/";

/// The removal a deleted key of ours stands for.
fn deletion(prefix: &str, key: &[u8]) -> Option<RemoteChange> {
    let text = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    if let Some(records) = text.strip_prefix(RECORDS) {
        let (zone, owner) = records.split_once('/')?;
        return Some(RemoteChange::DeleteRecords {
            zone: zone.to_string(),
            owner: owner_wire(owner).ok()?,
        });
    }
    let mut parts = text.strip_prefix(INSTANCES)?.split('/');
    let (zone, service, id) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(RemoteChange::Delete(InstanceKey {
        zone: zone.to_string(),
        service: Label::parse(service, LabelKind::Service).ok()?,
        id: Label::parse(id, LabelKind::Id).ok()?,
    }))
}

/// What a key of ours holds, or why it cannot be read.
fn parse_value(prefix: &str, kv: &KeyValue) -> Result<RemoteChange, String> {
    let at = |e: String| format!("{}: {e}", String::from_utf8_lossy(kv.key()));
    if kv
        .key()
        .starts_with(format!("{prefix}{RECORDS}").as_bytes())
    {
        return StoredRecords::from_json(kv.value())
            .map(RemoteChange::Records)
            .map_err(at);
    }
    StoredInstance::from_shared_json(kv.value())
        .map(RemoteChange::Put)
        .map_err(at)
}

/// Everything under the prefix, and the revision it was read at: in pages, all at
/// that revision, since one response is limited to 4 MiB (about 10,000 instances).
async fn read_all(
    client: &mut Client,
    prefix: &str,
    leases: &Mutex<HashMap<Vec<u8>, i64>>,
) -> Result<Loaded, etcd_client::Error> {
    let mut end = prefix.as_bytes().to_vec();
    // The prefix ends in '/': the range is every key before the next byte value.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let mut loaded = Loaded::default();
    let mut known = HashMap::new();
    let mut start = prefix.as_bytes().to_vec();
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(READ_PAGE);
        if loaded.revision > 0 {
            options = options.with_revision(loaded.revision as i64);
        }
        let response = client.get(start.clone(), Some(options)).await?;
        if loaded.revision == 0 {
            loaded.revision = response.header().map_or(0, |h| h.revision()) as u64;
        }
        for kv in response.kvs() {
            if kv.lease() != 0 {
                known.insert(kv.key().to_vec(), kv.lease());
            }
            match parse_value(prefix, kv) {
                Ok(RemoteChange::Put(stored)) => loaded.instances.push(stored),
                Ok(RemoteChange::Records(stored)) => loaded.records.push(stored),
                Ok(_) => {}
                Err(problem) => loaded.unreadable.push(problem),
            }
        }
        match response.kvs().last() {
            Some(last) if response.more() => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => break,
        }
    }
    if let Ok(mut leases) = leases.lock() {
        *leases = known;
    }
    Ok(loaded)
}

/// Follows the prefix from `from` on, feeding every change to the writer in order,
/// until the writer is gone.
async fn follow(
    mut client: Client,
    prefix: String,
    mut from: u64,
    feed: Feed,
    leases: Arc<Mutex<HashMap<Vec<u8>, i64>>>,
) {
    loop {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from as i64)
            .with_progress_notify();
        let mut compacted = false;
        // Catching up, etcd sends up to 1,000 revisions in one response, which can
        // be far over gRPC's default 4 MiB.
        let mut watch = client
            .watch_client()
            .max_decoding_message_size(WATCH_MESSAGE);
        match watch.watch(prefix.as_str(), Some(options)).await {
            Ok((_watcher, mut stream)) => loop {
                let response = match stream.message().await {
                    Ok(Some(response)) => response,
                    Ok(None) => {
                        warn!(from, "the etcd watch ended; resuming");
                        break;
                    }
                    Err(e) => {
                        warn!(from, error = %e, "the etcd watch broke; resuming");
                        break;
                    }
                };
                if response.compact_revision() > 0 {
                    compacted = true;
                    break;
                }
                if response.canceled() {
                    warn!(
                        from,
                        reason = response.cancel_reason(),
                        "etcd cancelled the watch; resuming"
                    );
                    break;
                }
                let mut changes = Vec::with_capacity(response.events().len());
                // A response without events is a progress notice: everything up to
                // its header's revision was sent.
                let mut revision = response.header().map_or(0, |h| h.revision()) as u64;
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    revision = kv.mod_revision() as u64;
                    let change = match event.event_type() {
                        EventType::Put => match parse_value(&prefix, kv) {
                            Ok(change) => {
                                if let Ok(mut leases) = leases.lock() {
                                    if kv.lease() != 0 {
                                        leases.insert(kv.key().to_vec(), kv.lease());
                                    } else {
                                        leases.remove(kv.key());
                                    }
                                }
                                change
                            }
                            Err(problem) => {
                                warn!(%problem, "a key in etcd cannot be read; left out");
                                continue;
                            }
                        },
                        EventType::Delete => {
                            if let Ok(mut leases) = leases.lock() {
                                leases.remove(kv.key());
                            }
                            match deletion(&prefix, kv.key()) {
                                Some(change) => change,
                                None => continue,
                            }
                        }
                    };
                    changes.push(change);
                }
                if revision < from && changes.is_empty() {
                    continue;
                }
                from = from.max(revision + 1);
                if !feed(Remote::Changes { revision, changes }) {
                    return;
                }
            },
            Err(e) => warn!(from, error = %e, "cannot watch etcd; retrying"),
        }
        if compacted {
            // Changes were lost to compaction: read everything again.
            match read_all(&mut client, &prefix, &leases).await {
                Ok(loaded) => {
                    info!(
                        revision = loaded.revision,
                        instances = loaded.instances.len(),
                        "etcd compacted past this node's watch: read the registry again"
                    );
                    from = loaded.revision + 1;
                    let reload = Remote::Reload {
                        revision: loaded.revision,
                        instances: loaded.instances,
                        records: loaded.records,
                    };
                    if !feed(reload) {
                        return;
                    }
                    continue;
                }
                Err(e) => warn!(error = %e, "cannot read etcd again after a compaction; retrying"),
            }
        }
        tokio::time::sleep(WATCH_RETRY).await;
    }
}

impl Store for EtcdStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let mut client = self.client.clone();
        let prefix = self.prefix.clone();
        let leases = self.leases.clone();
        let loaded = self
            .run(async move { read_all(&mut client, &prefix, &leases).await })?
            .map_err(|e| {
                StoreError::Unusable(format!(
                    "etcd {}: reading {}: {e}",
                    self.endpoints, self.prefix
                ))
            })?;
        self.loaded_at = loaded.revision;
        Ok(loaded)
    }

    fn apply(&mut self, changes: &[Change]) -> Result<u64, StoreError> {
        let mut batch = Batch::default();
        for change in changes {
            match change {
                Change::Put(stored) | Change::Health(stored) => {
                    let instance = &stored.registration.instance;
                    let lease = if matches!(change, Change::Health(_)) {
                        // A mark keeps the lease running as it was.
                        PutLease::Keep
                    } else if instance.ephemeral {
                        PutLease::Node(self.node_lease()?)
                    } else if let Some(ttl) = instance.ttl {
                        PutLease::Grant(i64::from(ttl))
                    } else {
                        PutLease::None
                    };
                    batch.operations.push(Write::Put {
                        key: self.key(&stored.key()),
                        value: stored.to_json(),
                        lease,
                    });
                }
                Change::Delete(key) => batch.operations.push(Write::Delete(self.key(key))),
                Change::Records(stored) => batch.operations.push(Write::Put {
                    key: self.records_key(&stored.zone, &stored.records.owner),
                    value: stored.to_json(),
                    lease: PutLease::None,
                }),
                Change::DeleteRecords { zone, owner } => batch
                    .operations
                    .push(Write::Delete(self.records_key(zone, owner))),
                Change::Renew(key) => {
                    let lease = self
                        .leases
                        .lock()
                        .ok()
                        .and_then(|leases| leases.get(&self.key(key)).copied());
                    batch.renewals.extend(lease);
                }
                // etcd runs the leases; serials are each node's own.
                Change::Lease { .. } | Change::Serial(_) => {}
            }
        }
        let client = self.client.clone();
        let leases = self.leases.clone();
        let work = async move {
            // Losing the leader costs an election (about a second): worth waiting for.
            let deadline = tokio::time::Instant::now() + COMMIT_RETRY;
            loop {
                match batch.commit(client.clone(), &leases).await {
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        debug!(error = %e, "etcd did not take a batch; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    result => return result,
                }
            }
        };
        self.run(work)?.map_err(|e| self.unavailable(e))
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("etcd {} under {}", self.endpoints, self.prefix)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn follow(&mut self, feed: Feed) {
        if let Some(runtime) = &self.runtime {
            runtime.spawn(follow(
                self.client.clone(),
                self.prefix.clone(),
                self.loaded_at + 1,
                feed,
                self.leases.clone(),
            ));
        }
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // On a clean stop, this node's ephemeral instances go at once rather than
        // when its lease runs out.
        if let (Some(lease), Some(runtime)) = (self.node_lease, &self.runtime) {
            let mut client = self.client.clone();
            let revoke = async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
            };
            blocking(runtime, revoke);
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
