//! The embedded store (`data_dir`): redb, a maintained, crash-safe embedded database,
//! in one file, `registry.redb`. Each batch is one write transaction committed with
//! immediate durability (fsync), so what `apply` returned is on disk.
//!
//! A failed write (disk full, I/O error) leaves redb refusing further writes until the
//! file is opened again, so the store closes it and reopens it at the next batch: once
//! the disk is back, writes work again without a restart.
//!
//! redb reuses the pages that deleted records free, so churn does not grow the file
//! without bound (`bench/churn --data-dir` measures it); nothing has to stop for a
//! compaction.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, TableDefinition,
};
use tracing::{info, warn};

use super::{Change, Loaded, Store, StoreError, StoredInstance, StoredRecords};
use crate::registry::InstanceKey;
use crate::throttle::LogThrottle;

/// Instance key (`zone\0service\0id`) to its JSON record.
const INSTANCES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("instances");
/// Instance key to its lease deadline, milliseconds since the Unix epoch.
const LEASES: TableDefinition<&[u8], u64> = TableDefinition::new("leases");
/// `revision`, `serial`, `format`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Records that are not instances, by `zone\0owner` (owner in wire form), as JSON.
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");

/// Version of the layout above; a file of another version is refused, not misread.
const FORMAT: u64 = 1;
/// redb's page cache.
const CACHE_BYTES: usize = 32 * 1024 * 1024;
/// The file in `data_dir`.
pub const FILE_NAME: &str = "registry.redb";

pub struct EmbeddedStore {
    path: PathBuf,
    /// `None` after a failed write, until it is reopened.
    database: Option<Database>,
    revision: u64,
    /// While closed: the error that closed it, and when to try reopening. Reopening
    /// makes redb check the whole file, so it is not tried at every batch.
    failure: Option<(String, Instant)>,
}

/// Time between attempts to reopen the store after a failed write.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);
/// At most one warning about failed commits per this interval.
const WARNING_INTERVAL: u64 = 10;

impl EmbeddedStore {
    /// Opens (or creates) the store in `data_dir`. Refuses a file that another process
    /// holds, that is damaged beyond redb's repair, or of another format.
    pub fn open(data_dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Unusable(format!("data_dir {}: {e}", data_dir.display())))?;
        let path = data_dir.join(FILE_NAME);
        let database = open_database(&path)?;
        let mut store = EmbeddedStore {
            path,
            database: Some(database),
            revision: 0,
            failure: None,
        };
        store.check_format()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the format on a new file; refuses a file of another format.
    fn check_format(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let damaged = |e: &dyn std::fmt::Display| {
            StoreError::Unusable(format!("{} is damaged: {e}", path.display()))
        };
        let database = self.database()?;
        let write = database.begin_write().map_err(|e| damaged(&e))?;
        {
            let mut meta = write.open_table(META).map_err(|e| damaged(&e))?;
            let format = meta
                .get("format")
                .map_err(|e| damaged(&e))?
                .map(|v| v.value());
            match format {
                Some(FORMAT) => {}
                None => {
                    meta.insert("format", FORMAT).map_err(|e| damaged(&e))?;
                }
                Some(other) => {
                    return Err(StoreError::Unusable(format!(
                        "{} has store format {other}; this svcdns reads format {FORMAT}",
                        path.display()
                    )))
                }
            }
            self.revision = meta
                .get("revision")
                .map_err(|e| damaged(&e))?
                .map_or(0, |v| v.value());
            write.open_table(INSTANCES).map_err(|e| damaged(&e))?;
            write.open_table(LEASES).map_err(|e| damaged(&e))?;
            write.open_table(RECORDS).map_err(|e| damaged(&e))?;
        }
        write.commit().map_err(|e| damaged(&e))?;
        Ok(())
    }

    /// The open database, reopening it after a failed write (at most once per
    /// [`REOPEN_INTERVAL`]; until then the failure is repeated).
    fn database(&mut self) -> Result<&Database, StoreError> {
        if self.database.is_none() {
            if let Some((error, retry_at)) = &self.failure {
                if Instant::now() < *retry_at {
                    return Err(StoreError::Unavailable(error.clone()));
                }
            }
            let database = match open_database(&self.path) {
                Ok(database) => database,
                Err(StoreError::Unusable(message) | StoreError::Unavailable(message)) => {
                    self.failure = Some((message.clone(), Instant::now() + REOPEN_INTERVAL));
                    return Err(StoreError::Unavailable(message));
                }
            };
            info!(path = %self.path.display(), "the store is writable again");
            self.database = Some(database);
            self.failure = None;
        }
        self.database
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable(format!("{} is closed", self.path.display())))
    }

    /// Replaces everything stored with `instances` and `records` (a backup being
    /// restored), in one commit. The serial kept is the higher of the two, so it never
    /// goes backwards.
    pub fn replace_all(
        &mut self,
        instances: &[StoredInstance],
        records: &[StoredRecords],
        serial: Option<u32>,
    ) -> Result<(), StoreError> {
        let mut changes: Vec<Change> = instances.iter().cloned().map(Change::Put).collect();
        changes.extend(records.iter().cloned().map(Change::Records));
        changes.extend(serial.map(Change::Serial));
        self.database()?;
        self.revision = self.write(&changes, true).map_err(|e| {
            StoreError::Unavailable(format!("{} cannot be written: {e}", self.path.display()))
        })?;
        Ok(())
    }

    /// One transaction: `changes`, after emptying the instances when `clear`.
    fn write(&mut self, changes: &[Change], clear: bool) -> Result<u64, redb::Error> {
        let revision = self.revision + 1;
        let Some(database) = self.database.as_ref() else {
            return Err(redb::Error::DatabaseClosed);
        };
        let write = database.begin_write()?;
        if clear {
            write.delete_table(INSTANCES)?;
            write.delete_table(LEASES)?;
            write.delete_table(RECORDS)?;
        }
        {
            let mut instances = write.open_table(INSTANCES)?;
            let mut leases = write.open_table(LEASES)?;
            let mut records = write.open_table(RECORDS)?;
            let mut meta = write.open_table(META)?;
            for change in changes {
                match change {
                    Change::Put(stored) | Change::Health(stored) => {
                        let key = encode_key(&stored.key());
                        instances.insert(key.as_slice(), stored.to_json().as_slice())?;
                        match stored.lease_deadline_unix_ms {
                            Some(deadline) => {
                                leases.insert(key.as_slice(), deadline)?;
                            }
                            None => {
                                leases.remove(key.as_slice())?;
                            }
                        }
                    }
                    Change::Delete(key) => {
                        let key = encode_key(key);
                        instances.remove(key.as_slice())?;
                        leases.remove(key.as_slice())?;
                    }
                    Change::Lease {
                        key,
                        deadline_unix_ms,
                    } => {
                        let key = encode_key(key);
                        // Only for an instance still stored: a checkpoint may trail a
                        // deregistration.
                        if instances.get(key.as_slice())?.is_some() {
                            leases.insert(key.as_slice(), *deadline_unix_ms)?;
                        }
                    }
                    Change::Serial(serial) => {
                        let stored = meta.get("serial")?.map_or(0, |v| v.value());
                        meta.insert("serial", stored.max(u64::from(*serial)))?;
                    }
                    // Only shared stores run leases themselves; this one keeps
                    // deadlines (`Change::Lease`).
                    Change::Renew(_) => {}
                    Change::Records(stored) => {
                        let key = records_key(&stored.zone, &stored.records.owner);
                        records.insert(key.as_slice(), stored.to_json().as_slice())?;
                    }
                    Change::DeleteRecords { zone, owner } => {
                        records.remove(records_key(zone, owner).as_slice())?;
                    }
                }
            }
            meta.insert("revision", revision)?;
        }
        write.commit()?;
        Ok(revision)
    }
}

impl Store for EmbeddedStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let started = Instant::now();
        let path = self.path.clone();
        let damaged = |e: &dyn std::fmt::Display| {
            StoreError::Unusable(format!("{} is damaged: {e}", path.display()))
        };
        let database = self.database()?;
        let read = database.begin_read().map_err(|e| damaged(&e))?;
        let instances = read.open_table(INSTANCES).map_err(|e| damaged(&e))?;
        let leases = read.open_table(LEASES).map_err(|e| damaged(&e))?;
        let meta = read.open_table(META).map_err(|e| damaged(&e))?;
        let mut loaded = Loaded {
            serial: meta
                .get("serial")
                .map_err(|e| damaged(&e))?
                .and_then(|v| u32::try_from(v.value()).ok()),
            ..Loaded::default()
        };
        // Both tables are sorted by the same key: one pass over each, merged.
        let mut deadlines = leases.iter().map_err(|e| damaged(&e))?.peekable();
        let mut rows: Vec<(Vec<u8>, Vec<u8>, Option<u64>)> = Vec::new();
        for row in instances.iter().map_err(|e| damaged(&e))? {
            let (key, value) = row.map_err(|e| damaged(&e))?;
            let key = key.value();
            let mut deadline = None;
            while let Some(lease) = deadlines.peek() {
                let (lease_key, lease_deadline) = match lease {
                    Ok((k, v)) => (k.value(), v.value()),
                    Err(e) => return Err(damaged(e)),
                };
                match lease_key.cmp(key) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => deadline = Some(lease_deadline),
                    std::cmp::Ordering::Greater => break,
                }
                deadlines.next();
            }
            rows.push((key.to_vec(), value.value().to_vec(), deadline));
        }
        // Decoding checks every record as a new registration would be: the costly
        // part, spread over the cores.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = rows.len().div_ceil(threads).max(1);
        let decoded: Vec<Vec<Result<StoredInstance, String>>> = std::thread::scope(|scope| {
            let workers: Vec<_> = rows
                .chunks(chunk)
                .map(|rows| {
                    scope.spawn(move || {
                        rows.iter()
                            .map(|(key, value, deadline)| {
                                StoredInstance::from_json(value, *deadline).map_err(|problem| {
                                    format!(
                                        "{}: {problem}",
                                        String::from_utf8_lossy(key).replace('\0', "/")
                                    )
                                })
                            })
                            .collect()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| {
                    // A decoder that panicked lost its records: not a silent gap.
                    worker.join().unwrap_or_else(|_| {
                        vec![Err("decoding these records failed (a bug)".to_string())]
                    })
                })
                .collect()
        });
        let records = read.open_table(RECORDS).map_err(|e| damaged(&e))?;
        for row in records.iter().map_err(|e| damaged(&e))? {
            let (key, value) = row.map_err(|e| damaged(&e))?;
            match StoredRecords::from_json(value.value()) {
                Ok(stored) => loaded.records.push(stored),
                Err(problem) => loaded.unreadable.push(format!(
                    "records {}: {problem}",
                    String::from_utf8_lossy(key.value()).replace('\0', "/")
                )),
            }
        }
        loaded.instances.reserve(rows.len());
        drop(rows);
        for result in decoded.into_iter().flatten() {
            match result {
                Ok(stored) => loaded.instances.push(stored),
                Err(problem) => loaded.unreadable.push(problem),
            }
        }
        info!(
            path = %self.path.display(),
            instances = loaded.instances.len(),
            records = loaded.records.len(),
            seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
            "read the store"
        );
        Ok(loaded)
    }

    fn apply(&mut self, changes: &[Change]) -> Result<u64, StoreError> {
        if changes.is_empty() {
            return Ok(self.revision);
        }
        self.database()?;
        match self.write(changes, false) {
            Ok(revision) => {
                self.revision = revision;
                Ok(revision)
            }
            Err(e) => {
                // redb takes no more writes after an I/O error until it is reopened.
                self.database = None;
                let message = format!("{} cannot be written: {e}", self.path.display());
                self.failure = Some((message.clone(), Instant::now() + REOPEN_INTERVAL));
                static THROTTLE: LogThrottle = LogThrottle::new(WARNING_INTERVAL);
                if let Some(suppressed) = THROTTLE.admit() {
                    warn!(
                        path = %self.path.display(),
                        error = %e,
                        similar_since_last_warning = suppressed,
                        "the store could not commit a batch: its changes are refused (store_unavailable) until it can"
                    );
                }
                Err(StoreError::Unavailable(message))
            }
        }
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("redb at {}", self.path.display())
    }
}

fn open_database(path: &Path) -> Result<Database, StoreError> {
    let shown = path.display().to_string();
    let mut builder = Database::builder();
    // The store is read once, at start, and then only written: redb's default cache
    // (1 GiB) would be resident memory for nothing.
    builder.set_cache_size(CACHE_BYTES);
    let repairing = shown.clone();
    builder.set_repair_callback(move |session| {
        if session.progress() == 0.0 {
            warn!(path = %repairing, "the store was not closed cleanly; redb is checking and repairing it");
        }
    });
    builder.create(path).map_err(|e| match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Unusable(format!(
            "{shown} is in use by another process (another svcdns on the same data_dir?)"
        )),
        // A file shorter than its own header says: cut off, not merely unreadable.
        DatabaseError::Storage(StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            StoreError::Unusable(format!(
                "{shown} is damaged (shorter than its contents say): {io}; restore a snapshot (svcdns snapshot restore) or move it away"
            ))
        }
        DatabaseError::Storage(StorageError::Io(io)) => {
            StoreError::Unusable(format!("{shown}: {io}"))
        }
        other => StoreError::Unusable(format!(
            "{shown} is damaged and cannot be opened: {other}; restore a snapshot (svcdns snapshot restore) or move it away"
        )),
    })
}

/// `zone\0owner`, the owner in wire form.
fn records_key(zone: &str, owner: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(zone.len() + 1 + owner.len());
    bytes.extend_from_slice(zone.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(owner);
    bytes
}

/// `zone\0service\0id`: labels and zone names never contain NUL.
fn encode_key(key: &InstanceKey) -> Vec<u8> {
    let mut bytes =
        Vec::with_capacity(key.zone.len() + key.service.as_str().len() + key.id.as_str().len() + 2);
    bytes.extend_from_slice(key.zone.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(key.service.as_str().as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(key.id.as_str().as_bytes());
    bytes
}
