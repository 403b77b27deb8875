//! Records of a zone that are not service instances: the A, AAAA, CNAME, TXT, MX...
//! that DNS UPDATE clients write (a host's address, an ACME challenge, a DHCP client's
//! name). The registry keeps them as the wire data they came in, by owner name; it
//! does not read them. It holds them in its snapshots, stores them with the
//! instances, and keeps the service labels they take, as a zone file's records do: a
//! record at `x.www.Z` takes `www`, so no service `www` can be registered while it is
//! there, and none of its records can be written while service `www` exists.

use std::sync::Arc;

/// The records of one type at one name. One TTL for the set (RFC 2181 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSet {
    pub record_type: u16,
    pub ttl: u32,
    /// Each record's RDATA as on the wire, names uncompressed; no two alike.
    pub rdata: Vec<Box<[u8]>>,
}

/// Every record at one owner name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRecords {
    /// The owner in lowercase wire form.
    pub owner: Box<[u8]>,
    /// By record type; none empty.
    pub sets: Vec<RecordSet>,
}

impl NameRecords {
    pub fn set(&self, record_type: u16) -> Option<&RecordSet> {
        self.sets.iter().find(|set| set.record_type == record_type)
    }
}

/// A zone's records, and what they make of the names around them.
#[derive(Debug, Clone, Default)]
pub struct ZoneRecords {
    by_owner: imbl::HashMap<Box<[u8]>, Arc<NameRecords>>,
    /// Names between an owner and the apex, with how many owners are below each:
    /// empty non-terminals, which exist (NOERROR) without data.
    ancestors: imbl::HashMap<Box<[u8]>, u32>,
    /// The service labels the records take, with how many owners take each.
    labels: imbl::HashMap<String, u32>,
}

impl ZoneRecords {
    pub fn get(&self, owner: &[u8]) -> Option<&Arc<NameRecords>> {
        // Queries for every registry name ask: no hashing while there are none.
        if self.by_owner.is_empty() {
            return None;
        }
        self.by_owner.get(owner)
    }

    /// Whether putting `records` would change nothing: the owner holds exactly
    /// them (none, for a removal).
    pub fn holds(&self, records: &NameRecords) -> bool {
        match self.get(&records.owner) {
            Some(current) => **current == *records,
            None => records.sets.is_empty(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<NameRecords>> {
        self.by_owner.values()
    }

    pub fn len(&self) -> usize {
        self.by_owner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_owner.is_empty()
    }

    /// Whether `other` is this very version (a cheap test: versions share their
    /// maps until one is changed), so comparing the two can be skipped.
    pub fn is_same(&self, other: &ZoneRecords) -> bool {
        self.by_owner.ptr_eq(&other.by_owner)
    }

    /// Whether records exist below `name` (so it exists, as an empty non-terminal).
    pub fn is_ancestor(&self, name: &[u8]) -> bool {
        !self.ancestors.is_empty() && self.ancestors.contains_key(name)
    }

    /// Whether records take service label `service`.
    pub fn takes(&self, service: &str) -> bool {
        self.labels.contains_key(service)
    }

    /// Puts `records` at their owner, in a zone whose origin has `origin_len` bytes
    /// of wire form; returns what was there. No sets: the owner's records go.
    pub fn put(&mut self, records: NameRecords, origin_len: usize) -> Option<Arc<NameRecords>> {
        if records.sets.is_empty() {
            return self.remove(&records.owner, origin_len);
        }
        let owner = records.owner.clone();
        let previous = self.by_owner.insert(owner.clone(), Arc::new(records));
        if previous.is_none() {
            self.count(&owner, origin_len, 1);
        }
        previous
    }

    /// Removes the records at `owner`; returns them.
    pub fn remove(&mut self, owner: &[u8], origin_len: usize) -> Option<Arc<NameRecords>> {
        let previous = self.by_owner.remove(owner)?;
        self.count(owner, origin_len, -1);
        Some(previous)
    }

    /// Counts an owner in (`delta` 1) or out (-1) of its ancestors and its label.
    fn count(&mut self, owner: &[u8], origin_len: usize, delta: i32) {
        let mut at = 0;
        // Every suffix of the owner longer than the origin, the owner itself left out.
        while let Some(&len) = owner.get(at) {
            at += 1 + usize::from(len);
            if owner.len().saturating_sub(at) <= origin_len {
                break;
            }
            add(&mut self.ancestors, owner[at..].into(), delta);
        }
        if let Some(label) = taken_label(owner, origin_len) {
            add(&mut self.labels, label, delta);
        }
    }
}

/// Adds `delta` to the count of `key`, which goes when it reaches 0.
fn add<K: std::hash::Hash + Eq + Clone>(counts: &mut imbl::HashMap<K, u32>, key: K, delta: i32) {
    let count = counts
        .get(&key)
        .copied()
        .unwrap_or(0)
        .saturating_add_signed(delta);
    if count == 0 {
        counts.remove(&key);
    } else {
        counts.insert(key, count);
    }
}

/// The service label whose names a record at `owner` (lowercase wire form, in a zone
/// whose origin has `origin_len` bytes of it) takes: `S` for `S.Z` and the names below
/// it, `S` for `_S._X.Z` and below. `None` at the apex and for `_X.Z`.
pub fn taken_label(owner: &[u8], origin_len: usize) -> Option<String> {
    let mut labels: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    while owner.len().saturating_sub(at) > origin_len {
        let len = usize::from(*owner.get(at)?);
        labels.push(owner.get(at + 1..at + 1 + len)?);
        at += 1 + len;
    }
    let last = labels.pop()?;
    if last.starts_with(b"_") {
        let second = labels.pop()?;
        return second
            .strip_prefix(b"_")
            .map(|s| String::from_utf8_lossy(s).into_owned());
    }
    Some(String::from_utf8_lossy(last).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(name: &str) -> Box<[u8]> {
        let mut out = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out.into_boxed_slice()
    }

    fn records(owner: &str) -> NameRecords {
        NameRecords {
            owner: wire(owner),
            sets: vec![RecordSet {
                record_type: 1,
                ttl: 60,
                rdata: vec![vec![10, 0, 0, 1].into_boxed_slice()],
            }],
        }
    }

    #[test]
    fn labels_taken_follow_the_zone_file_rule() {
        let origin = wire("svc.internal").len();
        let taken = |name: &str| taken_label(&wire(name), origin);
        assert_eq!(taken("www.svc.internal").as_deref(), Some("www"));
        assert_eq!(
            taken("_acme-challenge.www.svc.internal").as_deref(),
            Some("www")
        );
        assert_eq!(taken("_http._tcp.svc.internal").as_deref(), Some("http"));
        assert_eq!(taken("x._http._tcp.svc.internal").as_deref(), Some("http"));
        assert_eq!(taken("_dmarc.svc.internal"), None);
        assert_eq!(taken("svc.internal"), None);
    }

    #[test]
    fn ancestors_and_labels_are_counted_in_and_out() {
        let origin = wire("svc.internal").len();
        let mut zone = ZoneRecords::default();
        zone.put(records("a.b.www.svc.internal"), origin);
        zone.put(records("c.www.svc.internal"), origin);
        assert!(zone.is_ancestor(&wire("b.www.svc.internal")));
        assert!(zone.is_ancestor(&wire("www.svc.internal")));
        assert!(!zone.is_ancestor(&wire("svc.internal")));
        assert!(!zone.is_ancestor(&wire("a.b.www.svc.internal")));
        assert!(zone.takes("www"));
        zone.remove(&wire("a.b.www.svc.internal"), origin);
        assert!(!zone.is_ancestor(&wire("b.www.svc.internal")));
        assert!(zone.is_ancestor(&wire("www.svc.internal")));
        // Replacing an owner's records counts nothing twice.
        zone.put(records("c.www.svc.internal"), origin);
        zone.remove(&wire("c.www.svc.internal"), origin);
        assert!(!zone.is_ancestor(&wire("www.svc.internal")));
        assert!(!zone.takes("www"));
        assert!(zone.is_empty());
    }
}
