//! The journal behind IXFR (RFC 1995): for each zone, the differences between the
//! versions published lately, from one serial to the next, so that a secondary that is
//! a few versions behind gets what changed instead of the whole zone.
//!
//! It is bounded twice: [`MAX_VERSIONS`] differences and [`MAX_BYTES`] of records per
//! zone, the oldest dropped first. A secondary asking from a serial the journal no
//! longer reaches (or never saw: versions published within one journal round share
//! one difference) gets the whole zone instead, which is always correct.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::zone::{ServedZone, Zone};
use super::zone_records::{difference, ZoneRecord};
use crate::registry::View;

/// Differences kept per zone. Rounds run at most every 100 ms and a notified secondary
/// asks within a second or so, so it is rarely more than a few versions behind; 64
/// covers one that missed several seconds of steady churn. Further back, the whole
/// zone is not much more than the accumulated differences anyway.
pub const MAX_VERSIONS: usize = 64;
/// Bytes of records kept per zone (uncompressed): a mass registration or expiry may
/// make one difference as large as the zone, and memory must not grow with that.
pub const MAX_BYTES: usize = 16 << 20;

/// The records removed and added going from serial `from` to serial `to`.
#[derive(Debug)]
pub struct Change {
    pub from: u32,
    pub to: u32,
    pub removed: Vec<ZoneRecord>,
    pub added: Vec<ZoneRecord>,
}

impl Change {
    fn size(&self) -> usize {
        self.removed
            .iter()
            .chain(&self.added)
            .map(ZoneRecord::size)
            .sum()
    }
}

/// Where IXFR from a serial stands.
pub enum Since {
    /// The client has the latest version the journal knows, `serial`.
    Current { serial: u32 },
    /// The changes from the client's serial to the latest, oldest first.
    Changes(Vec<Arc<Change>>),
    /// The journal does not reach back to that serial.
    Unknown,
}

/// Every zone's recent differences, and the snapshot they lead up to.
#[derive(Default)]
pub struct Journal {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The snapshot the latest differences lead to.
    last: Option<Arc<View>>,
    /// By zone position.
    zones: HashMap<usize, ZoneJournal>,
}

struct ZoneJournal {
    /// The zone file's data the differences were taken under: a reload that replaces
    /// it (static records, SOA fields) starts the journal afresh.
    zone: Arc<Zone>,
    changes: VecDeque<Arc<Change>>,
    bytes: usize,
}

impl Journal {
    /// Records, for each of `zones`, what changed between the last snapshot seen and
    /// `view`; returns the zones whose serial moved, with their new serial.
    pub fn catch_up(&self, zones: &[Arc<ServedZone>], view: &Arc<View>) -> Vec<(usize, u32)> {
        let mut state = self.lock();
        let Some(last) = state.last.clone() else {
            state.last = Some(view.clone());
            return Vec::new();
        };
        if Arc::ptr_eq(&last, view) {
            return Vec::new();
        }
        let mut moved = Vec::new();
        for zone in zones {
            let index = zone.index();
            let (from, to) = (last.serial(index), view.serial(index));
            let journal = state.zones.entry(index).or_insert_with(|| ZoneJournal {
                zone: zone.zone_arc().clone(),
                changes: VecDeque::new(),
                bytes: 0,
            });
            if !Arc::ptr_eq(&journal.zone, zone.zone_arc()) {
                journal.zone = zone.zone_arc().clone();
                journal.changes.clear();
                journal.bytes = 0;
            } else if from != to {
                if let (Some(old), Some(new)) = (last.zone(index), view.zone(index)) {
                    let difference = difference(zone, old, new);
                    journal.push(Change {
                        from,
                        to,
                        removed: difference.removed,
                        added: difference.added,
                    });
                }
            }
            if from != to {
                moved.push((index, to));
            }
        }
        state.last = Some(view.clone());
        moved
    }

    /// Whether `view` is newer than the snapshot the journal last caught up with.
    pub fn is_behind(&self, view: &Arc<View>) -> bool {
        self.lock()
            .last
            .as_ref()
            .is_none_or(|last| !Arc::ptr_eq(last, view))
    }

    /// What a client holding `serial` of the zone at `index` is missing.
    pub fn since(&self, index: usize, serial: u32) -> Since {
        let state = self.lock();
        let Some(last) = &state.last else {
            return Since::Unknown;
        };
        let latest = last.serial(index);
        if serial == latest {
            return Since::Current { serial };
        }
        let Some(journal) = state.zones.get(&index) else {
            return Since::Unknown;
        };
        match journal
            .changes
            .iter()
            .position(|change| change.from == serial)
        {
            Some(first) => Since::Changes(journal.changes.range(first..).cloned().collect()),
            None => Since::Unknown,
        }
    }

    /// Drops everything: transfers were turned off.
    pub fn clear(&self) {
        *self.lock() = State::default();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements, so a panic elsewhere while
        // it was held leaves nothing half-done worth refusing.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ZoneJournal {
    fn push(&mut self, change: Change) {
        self.bytes += change.size();
        self.changes.push_back(Arc::new(change));
        while self.changes.len() > MAX_VERSIONS || self.bytes > MAX_BYTES {
            match self.changes.pop_front() {
                Some(oldest) => self.bytes -= oldest.size(),
                None => break,
            }
        }
    }
}
