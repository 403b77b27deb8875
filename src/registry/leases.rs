//! Lease deadlines, earliest first (the mini-redis `db.rs` shape): the writer sleeps
//! until the first one and expires every lease that has passed as one batch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::view::InstanceRef;

/// Where one instance's lease stands. Kept inside the shared instance entry so that
/// `list` can show the time left without asking the writer, and so that a renewal
/// changes two integers instead of republishing the instance. Only the writer stores;
/// readers load (relaxed: a listing may be a renewal behind, which is harmless).
#[derive(Debug)]
pub struct LeaseSlot {
    /// Milliseconds after the registry's epoch; `NONE` for instances without a lease.
    deadline_ms: AtomicU64,
    /// Tie-breaker of the deadline's key in [`Leases`].
    seq: AtomicU64,
}

const NONE: u64 = u64::MAX;

impl Default for LeaseSlot {
    fn default() -> Self {
        LeaseSlot {
            deadline_ms: AtomicU64::new(NONE),
            seq: AtomicU64::new(0),
        }
    }
}

impl LeaseSlot {
    /// The same lease, for a new entry that replaces this one's in the registry (its
    /// key in [`Leases`] stays valid: it names the instance, not the entry).
    pub fn duplicate(&self) -> LeaseSlot {
        LeaseSlot {
            deadline_ms: AtomicU64::new(self.deadline_ms.load(Ordering::Relaxed)),
            seq: AtomicU64::new(self.seq.load(Ordering::Relaxed)),
        }
    }

    /// Seconds until the lease ends, for leased instances.
    pub fn expires_in(&self, epoch: Instant, now: Instant) -> Option<f64> {
        let deadline = self.deadline_ms.load(Ordering::Relaxed);
        if deadline == NONE {
            return None;
        }
        let now_ms = now.saturating_duration_since(epoch).as_millis() as u64;
        Some(deadline.saturating_sub(now_ms) as f64 / 1000.0)
    }

    fn key(&self) -> Option<(u64, u64)> {
        let deadline = self.deadline_ms.load(Ordering::Relaxed);
        (deadline != NONE).then(|| (deadline, self.seq.load(Ordering::Relaxed)))
    }
}

/// Every lease deadline, keyed `(deadline in ms after the epoch, sequence)`: the
/// sequence keeps two leases ending in the same millisecond apart.
pub struct Leases {
    epoch: Instant,
    deadlines: BTreeMap<(u64, u64), InstanceRef>,
    next_seq: u64,
}

impl Leases {
    pub fn new(epoch: Instant) -> Leases {
        Leases {
            epoch,
            deadlines: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// Starts (or restarts) a lease of `ttl` seconds on `slot`, for the instance `at`.
    pub fn start(&mut self, slot: &LeaseSlot, ttl: u32, at: InstanceRef, now: Instant) {
        self.start_for(slot, Duration::from_secs(u64::from(ttl)), at, now);
    }

    /// Starts (or restarts) a lease that ends `length` after `now`.
    pub fn start_for(&mut self, slot: &LeaseSlot, length: Duration, at: InstanceRef, now: Instant) {
        self.end(slot);
        let deadline = self.millis(now) + length.as_millis() as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        slot.deadline_ms.store(deadline, Ordering::Relaxed);
        slot.seq.store(seq, Ordering::Relaxed);
        self.deadlines.insert((deadline, seq), at);
    }

    /// Ends the lease on `slot`, if it has one.
    pub fn end(&mut self, slot: &LeaseSlot) {
        if let Some(key) = slot.key() {
            self.deadlines.remove(&key);
            slot.deadline_ms.store(NONE, Ordering::Relaxed);
        }
    }

    /// When the earliest lease ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        let (&(deadline, _), _) = self.deadlines.first_key_value()?;
        Some(self.epoch + Duration::from_millis(deadline))
    }

    /// Takes the earliest lease if it has ended by `now`. The caller removes the
    /// instance, which ends its slot.
    pub fn pop_due(&mut self, now: Instant) -> Option<InstanceRef> {
        let now_ms = self.millis(now);
        let entry = self.deadlines.first_entry()?;
        if entry.key().0 > now_ms {
            return None;
        }
        Some(entry.remove())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.deadlines.len()
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::registry::model::{Label, LabelKind};

    fn at(i: u8) -> InstanceRef {
        InstanceRef {
            zone: 0,
            service: Label::parse("s", LabelKind::Service).unwrap(),
            id: Label::parse(&format!("i{i}"), LabelKind::Id).unwrap(),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Start or restart the lease of instance `i` for `ttl` seconds.
        Start(u8, u32),
        End(u8),
        /// Let `ms` pass, then expire what is due.
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..8u8, 1..5u32).prop_map(|(i, ttl)| Op::Start(i, ttl)),
            1 => (0..8u8).prop_map(Op::End),
            2 => (0..3000u64).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Expiry matches a model that knows each instance's one current deadline:
        /// restarting a lease forgets the old deadline, ending it forgets it at all.
        #[test]
        fn leases_expire_exactly_at_their_latest_deadline(ops in prop::collection::vec(op(), 1..80)) {
            let epoch = Instant::now();
            let mut leases = Leases::new(epoch);
            let slots: Vec<LeaseSlot> = (0..8).map(|_| LeaseSlot::default()).collect();
            let mut model: BTreeMap<u8, u64> = BTreeMap::new();
            let mut now_ms = 0u64;
            for op in ops {
                let now = epoch + Duration::from_millis(now_ms);
                match op {
                    Op::Start(i, ttl) => {
                        leases.start(&slots[usize::from(i)], ttl, at(i), now);
                        model.insert(i, now_ms + u64::from(ttl) * 1000);
                    }
                    Op::End(i) => {
                        leases.end(&slots[usize::from(i)]);
                        model.remove(&i);
                    }
                    Op::Advance(ms) => {
                        now_ms += ms;
                        let now = epoch + Duration::from_millis(now_ms);
                        let mut expired = Vec::new();
                        while let Some(gone) = leases.pop_due(now) {
                            let i: u8 = gone.id.as_str()[1..].parse().unwrap();
                            leases.end(&slots[usize::from(i)]);
                            expired.push(i);
                        }
                        let mut due: Vec<u8> = model.iter().filter(|(_, d)| **d <= now_ms).map(|(i, _)| *i).collect();
                        model.retain(|_, d| *d > now_ms);
                        expired.sort();
                        due.sort();
                        prop_assert_eq!(expired, due);
                    }
                }
                prop_assert_eq!(leases.len(), model.len());
                let next = model.values().min().map(|d| epoch + Duration::from_millis(*d));
                prop_assert_eq!(leases.next_deadline(), next);
            }
        }
    }
}
