//! The registry's read model: every instance, indexed the ways readers look them up,
//! published as immutable snapshots.
//!
//! Readers (DNS answering, `list`, `watch`) hold an `Arc<View>` and never wait for the
//! writer; the writer changes its own copy and publishes it after each batch (DESIGN §5).
//! A change costs what it changes:
//! - zones index their services in persistent maps (`imbl`), so adding or removing a
//!   service copies a few tree nodes, never the zone;
//! - a service's groups (all its instances, those of a protocol, those with a tag) are
//!   sorted vectors of shared entries behind `Arc`s, copied on the first write after a
//!   publish and changed in place for the rest of the batch, so a batch costs one
//!   pointer copy of each group it touches, however many of its instances change;
//! - the zone-wide sets behind DNS-SD's service list and the empty non-terminals
//!   `_tcp.Z` and `_T.Z` are counted as services come and go, never recomputed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::leases::LeaseSlot;
use super::model::{Health, Instance, Label, Proto};
use super::records::{NameRecords, ZoneRecords};
use super::{ConnectionId, RegistryError};

/// One registered instance as readers see it.
#[derive(Debug)]
pub struct Entry {
    pub instance: Instance,
    /// TTL of the instance's DNS records: its `dns_ttl`, or its zone's default, but
    /// never more than its lease.
    pub dns_ttl: u32,
    /// The registration connection an ephemeral instance lives with.
    pub owner: Option<ConnectionId>,
    /// Kept in the durable store: neither ephemeral nor static (from a zone file).
    pub stored: bool,
    pub lease: LeaseSlot,
}

impl Entry {
    /// `stored`: whether the instance belongs in the store (the writer decides:
    /// static instances never do, ephemeral ones only in a shared store).
    pub fn new(
        instance: Instance,
        zone_default_ttl: u32,
        owner: Option<ConnectionId>,
        stored: bool,
    ) -> Entry {
        // A cache must not keep serving an instance after its lease could have ended:
        // the record TTL is at most the lease.
        let lease = instance.ttl.unwrap_or(u32::MAX);
        Entry {
            dns_ttl: instance.dns_ttl.unwrap_or(zone_default_ttl).min(lease),
            owner: owner.filter(|_| instance.ephemeral),
            stored,
            instance,
            lease: LeaseSlot::default(),
        }
    }

    pub fn id(&self) -> &Label {
        &self.instance.id
    }

    /// This entry under a new zone default TTL, with the same lease.
    fn with_zone_default(&self, zone_default_ttl: u32) -> Entry {
        let lease = self.instance.ttl.unwrap_or(u32::MAX);
        Entry {
            instance: self.instance.clone(),
            dns_ttl: self.instance.dns_ttl.unwrap_or(zone_default_ttl).min(lease),
            owner: self.owner,
            stored: self.stored,
            lease: self.lease.duplicate(),
        }
    }
}

/// Names one instance within the registry without holding it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceRef {
    /// Index of the zone in [`View::zones`].
    pub zone: usize,
    pub service: Label,
    pub id: Label,
}

/// A counter that spreads clients over an RRset by rotating its order between
/// responses. Cloning a group copies the position, so a change does not restart it.
#[derive(Debug, Default)]
pub struct Rotation(AtomicU32);

impl Rotation {
    /// The next starting position, for a set of `len` records (`len` > 0).
    pub fn next(&self, len: usize) -> usize {
        self.0.fetch_add(1, Ordering::Relaxed) as usize % len.max(1)
    }
}

impl Clone for Rotation {
    fn clone(&self) -> Self {
        Rotation(AtomicU32::new(self.0.load(Ordering::Relaxed)))
    }
}

/// Instances that answer under one name, sorted by id, with the distinct addresses
/// they contribute (an RRset is a set: two instances sharing an address give one
/// record) and their record TTLs (an RRset has one TTL, the smallest).
#[derive(Debug, Clone, Default)]
pub struct Group {
    members: Arc<Vec<Arc<Entry>>>,
    /// Distinct addresses with the number of members that have each, sorted.
    v4: Arc<Vec<(Ipv4Addr, u32)>>,
    v6: Arc<Vec<(Ipv6Addr, u32)>>,
    /// Distinct record TTLs with their member counts, smallest first.
    ttls: Arc<Vec<(u32, u32)>>,
    rotation: Rotation,
}

impl Group {
    pub fn members(&self) -> &[Arc<Entry>] {
        &self.members
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Entry>> {
        let index = self.position(id).ok()?;
        self.members.get(index)
    }

    /// The distinct IPv4 addresses of the members, sorted, each with the number of
    /// members that have it.
    pub fn v4(&self) -> &[(Ipv4Addr, u32)] {
        &self.v4
    }

    /// The distinct IPv6 addresses, as [`Group::v4`].
    pub fn v6(&self) -> &[(Ipv6Addr, u32)] {
        &self.v6
    }

    /// The TTL of the group's address records: the smallest of its members'.
    pub fn min_ttl(&self) -> u32 {
        self.ttls.first().map_or(0, |(ttl, _)| *ttl)
    }

    pub fn rotation(&self) -> &Rotation {
        &self.rotation
    }

    fn position(&self, id: &str) -> Result<usize, usize> {
        self.members
            .binary_search_by(|entry| entry.id().as_str().cmp(id))
    }

    /// Adds an entry whose id is not in the group.
    fn insert(&mut self, entry: &Arc<Entry>) {
        let index = match self.position(entry.id().as_str()) {
            Ok(index) | Err(index) => index,
        };
        Arc::make_mut(&mut self.members).insert(index, entry.clone());
        for address in entry.instance.addresses.iter() {
            match address {
                IpAddr::V4(v4) => count_in(Arc::make_mut(&mut self.v4), *v4),
                IpAddr::V6(v6) => count_in(Arc::make_mut(&mut self.v6), *v6),
            }
        }
        count_in(Arc::make_mut(&mut self.ttls), entry.dns_ttl);
    }

    fn remove(&mut self, id: &str) -> Option<Arc<Entry>> {
        let index = self.position(id).ok()?;
        let entry = Arc::make_mut(&mut self.members).remove(index);
        for address in entry.instance.addresses.iter() {
            match address {
                IpAddr::V4(v4) => count_out(Arc::make_mut(&mut self.v4), v4),
                IpAddr::V6(v6) => count_out(Arc::make_mut(&mut self.v6), v6),
            }
        }
        count_out(Arc::make_mut(&mut self.ttls), &entry.dns_ttl);
        Some(entry)
    }
}

/// Adds one to `value`'s count in a sorted multiset.
fn count_in<T: Ord>(counts: &mut Vec<(T, u32)>, value: T) {
    match counts.binary_search_by(|(v, _)| v.cmp(&value)) {
        Ok(index) => counts[index].1 += 1,
        Err(index) => counts.insert(index, (value, 1)),
    }
}

/// Takes one from `value`'s count, dropping it at zero.
fn count_out<T: Ord>(counts: &mut Vec<(T, u32)>, value: &T) {
    if let Ok(index) = counts.binary_search_by(|(v, _)| v.cmp(value)) {
        counts[index].1 -= 1;
        if counts[index].1 == 0 {
            counts.remove(index);
        }
    }
}

/// The instances of a service split by protocol. Nearly every service uses one
/// protocol, and then its protocol group *is* its group of all instances, so it costs
/// nothing; only a service that mixes both keeps two more groups.
#[derive(Debug, Clone)]
enum Protos {
    Single(Proto),
    Mixed([Group; 2]),
}

/// One service of a zone: its instances, grouped as DNS names need them.
#[derive(Debug, Clone)]
pub struct Service {
    /// Every instance, by id: `S.Z`, `I.S.Z`, `list`.
    all: Group,
    protos: Protos,
    /// Instances carrying each tag: `T.S.Z`, `_S._T.Z`, `_T._sub._S._P.Z`.
    tags: Arc<BTreeMap<Label, Group>>,
    /// Instances of each protocol with at least one tag: whether `_sub._S._P.Z` exists.
    tagged: [u32; 2],
}

impl Service {
    fn new(proto: Proto) -> Service {
        Service {
            all: Group::default(),
            protos: Protos::Single(proto),
            tags: Arc::default(),
            tagged: [0; 2],
        }
    }

    pub fn all(&self) -> &Group {
        &self.all
    }

    pub fn instance(&self, id: &str) -> Option<&Arc<Entry>> {
        self.all.get(id)
    }

    /// The instances of one protocol (`_S._P.Z`), if it has any.
    pub fn proto(&self, proto: Proto) -> Option<&Group> {
        match &self.protos {
            Protos::Single(only) => (*only == proto).then_some(&self.all),
            Protos::Mixed(groups) => Some(&groups[proto.index()]),
        }
    }

    pub fn tag(&self, tag: &str) -> Option<&Group> {
        self.tags.get(tag)
    }

    pub fn tags(&self) -> impl Iterator<Item = &Label> {
        self.tags.keys()
    }

    /// The instances of `proto` tagged `tag` (`_T._sub._S._P.Z`): the tag's members, in
    /// id order, and the protocol to keep among them when the service mixes protocols.
    pub fn subtype(&self, proto: Proto, tag: &str) -> (&[Arc<Entry>], Option<Proto>) {
        let tagged = match self.proto(proto) {
            Some(_) => self.tag(tag).map(Group::members).unwrap_or_default(),
            None => &[],
        };
        let only = matches!(self.protos, Protos::Mixed(_)).then_some(proto);
        (tagged, only)
    }

    /// Whether some instance of `proto` has a tag (`_sub._S._P.Z` exists).
    pub fn has_subtypes(&self, proto: Proto) -> bool {
        self.tagged[proto.index()] > 0
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    fn uses(&self, proto: Proto) -> bool {
        self.proto(proto).is_some_and(|group| !group.is_empty())
    }

    /// Adds an entry whose id is not in the service; returns the tags it brings that
    /// the service did not have.
    fn insert(&mut self, entry: &Arc<Entry>) -> Vec<Label> {
        let proto = entry.instance.proto;
        let was_empty = self.all.is_empty();
        match &mut self.protos {
            Protos::Single(only) if *only == proto || was_empty => *only = proto,
            Protos::Single(only) => {
                let mut groups = [Group::default(), Group::default()];
                groups[only.index()] = self.all.clone();
                groups[proto.index()].insert(entry);
                self.protos = Protos::Mixed(groups);
            }
            Protos::Mixed(groups) => groups[proto.index()].insert(entry),
        }
        self.all.insert(entry);
        let mut new_tags = Vec::new();
        if !entry.instance.tags.is_empty() {
            self.tagged[proto.index()] += 1;
            let tags = Arc::make_mut(&mut self.tags);
            for tag in entry.instance.tags.iter() {
                let group = tags.entry(tag.clone()).or_insert_with(|| {
                    new_tags.push(tag.clone());
                    Group::default()
                });
                group.insert(entry);
            }
        }
        new_tags
    }

    /// Removes an instance; returns it and the tags the service no longer has.
    fn remove(&mut self, id: &str) -> Option<(Arc<Entry>, Vec<Label>)> {
        let entry = self.all.remove(id)?;
        let proto = entry.instance.proto;
        if let Protos::Mixed(groups) = &mut self.protos {
            groups[proto.index()].remove(id);
            if groups[proto.index()].is_empty() {
                let other = Proto::ALL[1 - proto.index()];
                self.protos = Protos::Single(other);
            }
        }
        let mut gone_tags = Vec::new();
        if !entry.instance.tags.is_empty() {
            self.tagged[proto.index()] -= 1;
            let tags = Arc::make_mut(&mut self.tags);
            for tag in entry.instance.tags.iter() {
                if let Some(group) = tags.get_mut(tag.as_str()) {
                    group.remove(id);
                    if group.is_empty() {
                        tags.remove(tag.as_str());
                        gone_tags.push(tag.clone());
                    }
                }
            }
        }
        Some((entry, gone_tags))
    }
}

/// Settings of a zone that registrations depend on.
#[derive(Debug, Clone)]
pub struct ZoneSettings {
    /// Canonical origin: lowercase, fully qualified (`svc.internal.`).
    pub origin: Arc<str>,
    /// Record TTL of instances that set no `dns_ttl`.
    pub default_ttl: u32,
}

/// Every registered instance of one zone.
#[derive(Debug, Clone)]
pub struct ZoneView {
    settings: Arc<ZoneSettings>,
    /// False once a reload took the zone's file away: it takes no registrations and
    /// DNS no longer answers for it, but it keeps its position in [`View::zones`].
    served: bool,
    /// Grows with every batch that changes the zone; the SOA serial is built from it.
    revision: u64,
    services: imbl::HashMap<Label, Arc<Service>>,
    /// `(S, P)` of every service with instances of protocol P, in order: the PTRs of
    /// `_services._dns-sd._udp.Z`.
    service_types: imbl::OrdSet<(Label, Proto)>,
    /// Services using each protocol: whether `_tcp.Z` / `_udp.Z` exist.
    proto_services: [u32; 2],
    /// Services having each tag: whether `_T.Z` exists.
    tag_services: imbl::HashMap<Label, u32>,
    /// Critical instances, by service and id. They are in no group, so in no answer,
    /// and a service whose instances are all critical has no names at all; they still
    /// hold their ids and tags, so that marking one healthy again can never conflict.
    critical: imbl::HashMap<Label, Arc<BTreeMap<Label, Arc<Entry>>>>,
    /// Instances in the groups (healthy ones), for gauges.
    healthy_count: usize,
    critical_count: usize,
    /// Records that are not instances (written through DNS UPDATE).
    records: ZoneRecords,
}

impl ZoneView {
    fn new(settings: ZoneSettings) -> ZoneView {
        ZoneView {
            settings: Arc::new(settings),
            served: true,
            revision: 0,
            services: imbl::HashMap::new(),
            service_types: imbl::OrdSet::new(),
            proto_services: [0; 2],
            tag_services: imbl::HashMap::new(),
            critical: imbl::HashMap::new(),
            healthy_count: 0,
            critical_count: 0,
            records: ZoneRecords::default(),
        }
    }

    /// The zone's records that are not instances.
    pub fn records(&self) -> &ZoneRecords {
        &self.records
    }

    /// Bytes of the origin's wire form (the registry's origins are fully qualified
    /// and lowercase, one dot per label plus the root).
    pub fn origin_wire_len(&self) -> usize {
        let origin = self.origin().trim_end_matches('.');
        if origin.is_empty() {
            1
        } else {
            origin.len() + 2
        }
    }

    pub fn origin(&self) -> &Arc<str> {
        &self.settings.origin
    }

    pub fn settings(&self) -> &ZoneSettings {
        &self.settings
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn is_served(&self) -> bool {
        self.served
    }

    /// Gives every instance without its own `dns_ttl` the zone's new default TTL.
    fn set_default_ttl(&mut self, default_ttl: u32) {
        if self.settings.default_ttl == default_ttl {
            return;
        }
        self.settings = Arc::new(ZoneSettings {
            origin: self.settings.origin.clone(),
            default_ttl,
        });
        let mut affected: Vec<(Label, Arc<Entry>, Health)> = Vec::new();
        for name in self.service_names() {
            for (service, entry, health) in self.instances_of(name.as_str()) {
                if entry.instance.dns_ttl.is_none() {
                    affected.push((service.clone(), entry.clone(), health));
                }
            }
        }
        for (service, entry, health) in affected {
            let retuned = Arc::new(entry.with_zone_default(default_ttl));
            match health {
                Health::Healthy => {
                    self.remove_healthy(&service, entry.id().as_str());
                    self.insert_healthy(&service, retuned);
                }
                Health::Critical => {
                    if let Some(critical) = self.critical.get_mut(service.as_str()) {
                        Arc::make_mut(critical).insert(retuned.id().clone(), retuned);
                    }
                }
            }
        }
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name).map(|service| &**service)
    }

    /// Whether service `name` has instances, healthy or critical.
    pub fn has_service(&self, name: &str) -> bool {
        self.services.contains_key(name) || self.critical.contains_key(name)
    }

    /// A service with its name as registered.
    pub fn service_named(&self, name: &str) -> Option<(&Label, &Service)> {
        self.services
            .get_key_value(name)
            .map(|(label, service)| (label, &**service))
    }

    pub fn services(&self) -> impl Iterator<Item = (&Label, &Service)> {
        self.services
            .iter()
            .map(|(name, service)| (name, &**service))
    }

    /// `(S, P)` for every `_S._P.Z` with instances, ordered by service then protocol.
    pub fn service_types(&self) -> impl ExactSizeIterator<Item = &(Label, Proto)> {
        self.service_types.iter()
    }

    pub fn proto_in_use(&self, proto: Proto) -> bool {
        self.proto_services[proto.index()] > 0
    }

    pub fn tag_in_use(&self, tag: &str) -> bool {
        self.tag_services.contains_key(tag)
    }

    /// Service names with instances, healthy or critical.
    pub fn service_count(&self) -> usize {
        let critical_only = self
            .critical
            .keys()
            .filter(|name| !self.services.contains_key(name.as_str()))
            .count();
        self.services.len() + critical_only
    }

    /// Instances of one service, healthy and critical.
    pub fn service_size(&self, service: &str) -> usize {
        self.service(service).map_or(0, |s| s.all().len())
            + self.critical.get(service).map_or(0, |c| c.len())
    }

    /// Healthy and critical instances of the zone.
    pub fn instance_counts(&self) -> (usize, usize) {
        (self.healthy_count, self.critical_count)
    }

    /// A registered instance, healthy or critical.
    pub fn instance(&self, service: &str, id: &str) -> Option<(&Arc<Entry>, Health)> {
        if let Some(entry) = self.service(service).and_then(|s| s.instance(id)) {
            return Some((entry, Health::Healthy));
        }
        let entry = self.critical.get(service)?.get(id)?;
        Some((entry, Health::Critical))
    }

    /// The names of every service with instances, healthy or critical, sorted.
    pub fn service_names(&self) -> Vec<&Label> {
        let mut names: Vec<&Label> = self.services.keys().collect();
        names.extend(
            self.critical
                .keys()
                .filter(|name| !self.services.contains_key(name.as_str())),
        );
        names.sort();
        names
    }

    /// Every instance of a service, healthy or critical, sorted by id.
    pub fn instances_of(&self, service: &str) -> Vec<(&Label, &Arc<Entry>, Health)> {
        let mut found: Vec<(&Label, &Arc<Entry>, Health)> = Vec::new();
        if let Some((name, record)) = self.service_named(service) {
            found.extend(
                record
                    .all()
                    .members()
                    .iter()
                    .map(|entry| (name, entry, Health::Healthy)),
            );
        }
        if let Some((name, critical)) = self.critical.get_key_value(service) {
            found.extend(
                critical
                    .values()
                    .map(|entry| (name, entry, Health::Critical)),
            );
        }
        found.sort_by(|a, b| a.1.id().cmp(b.1.id()));
        found
    }

    /// An instance id and a tag of one service share the label space `X.S.Z`: refuses
    /// an instance that would make a label both. Its own id and tags were checked by
    /// [`Instance::validate`]; an instance it replaces cannot be in the way, since it
    /// has the same id and never had that id as a tag.
    pub fn check_labels(&self, service: &Label, instance: &Instance) -> Result<(), RegistryError> {
        if self.records.takes(service.as_str()) {
            return Err(RegistryError::RecordConflict {
                service: service.to_string(),
                zone: self.origin().to_string(),
            });
        }
        if let Some(critical) = self.critical.get(service.as_str()) {
            for other in critical.values().filter(|e| e.id() != &instance.id) {
                if other.instance.has_tag(instance.id.as_str()) {
                    return Err(RegistryError::LabelConflict {
                        service: service.to_string(),
                        label: instance.id.to_string(),
                        detail: "another instance of the service (marked critical) has it as a tag",
                    });
                }
                if instance.has_tag(other.id().as_str()) {
                    return Err(RegistryError::LabelConflict {
                        service: service.to_string(),
                        label: other.id().to_string(),
                        detail: "it is the id of another instance of the service (marked critical)",
                    });
                }
            }
        }
        let Some(existing) = self.service(service.as_str()) else {
            return Ok(());
        };
        if existing.tag(instance.id.as_str()).is_some() {
            return Err(RegistryError::LabelConflict {
                service: service.to_string(),
                label: instance.id.to_string(),
                detail: "another instance of the service has it as a tag",
            });
        }
        if let Some(tag) = instance
            .tags
            .iter()
            .find(|tag| existing.instance(tag.as_str()).is_some())
        {
            return Err(RegistryError::LabelConflict {
                service: service.to_string(),
                label: tag.to_string(),
                detail: "it is the id of another instance of the service",
            });
        }
        Ok(())
    }

    /// Adds or replaces an instance, healthy; returns the one it replaced.
    fn insert(&mut self, service: &Label, entry: Arc<Entry>) -> Option<Arc<Entry>> {
        let previous = self.remove(service, entry.id().as_str());
        self.insert_healthy(service, entry);
        previous
    }

    /// Removes an instance, healthy or critical; returns it.
    fn remove(&mut self, service: &Label, id: &str) -> Option<Arc<Entry>> {
        self.remove_healthy(service, id)
            .or_else(|| self.remove_critical(service, id))
    }

    /// Moves an instance out of the answers or back into them. None when it is not
    /// registered; otherwise the instance and whether its health changed.
    fn mark(&mut self, service: &Label, id: &str, health: Health) -> Option<(Arc<Entry>, bool)> {
        let (entry, current) = self.instance(service.as_str(), id)?;
        let entry = entry.clone();
        if current == health {
            return Some((entry, false));
        }
        match health {
            Health::Critical => {
                self.remove_healthy(service, id);
                let critical = self.critical.entry(service.clone()).or_default();
                Arc::make_mut(critical).insert(entry.id().clone(), entry.clone());
                self.critical_count += 1;
            }
            Health::Healthy => {
                self.remove_critical(service, id);
                self.insert_healthy(service, entry.clone());
            }
        }
        Some((entry, true))
    }

    fn remove_critical(&mut self, service: &Label, id: &str) -> Option<Arc<Entry>> {
        let critical = Arc::make_mut(self.critical.get_mut(service.as_str())?);
        let entry = critical.remove(id)?;
        if critical.is_empty() {
            self.critical.remove(service.as_str());
        }
        self.critical_count -= 1;
        Some(entry)
    }

    /// Adds an instance whose id is not registered to the answers.
    fn insert_healthy(&mut self, service: &Label, entry: Arc<Entry>) {
        let record = self
            .services
            .entry(service.clone())
            .or_insert_with(|| Arc::new(Service::new(entry.instance.proto)));
        let record = Arc::make_mut(record);
        let used_before = Proto::ALL.map(|proto| record.uses(proto));
        let new_tags = record.insert(&entry);
        let used_after = Proto::ALL.map(|proto| record.uses(proto));
        self.protos_changed(service, used_before, used_after);
        for tag in new_tags {
            *self.tag_services.entry(tag).or_insert(0) += 1;
        }
        self.healthy_count += 1;
    }

    /// Removes a healthy instance from the answers; returns it.
    fn remove_healthy(&mut self, service: &Label, id: &str) -> Option<Arc<Entry>> {
        let record = Arc::make_mut(self.services.get_mut(service.as_str())?);
        let used_before = Proto::ALL.map(|proto| record.uses(proto));
        let (entry, gone_tags) = record.remove(id)?;
        let used_after = Proto::ALL.map(|proto| record.uses(proto));
        if record.is_empty() {
            self.services.remove(service.as_str());
        }
        self.protos_changed(service, used_before, used_after);
        for tag in gone_tags {
            if let Some(count) = self.tag_services.get_mut(tag.as_str()) {
                *count -= 1;
                if *count == 0 {
                    self.tag_services.remove(tag.as_str());
                }
            }
        }
        self.healthy_count -= 1;
        Some(entry)
    }

    fn protos_changed(&mut self, service: &Label, before: [bool; 2], after: [bool; 2]) {
        for proto in Proto::ALL {
            let i = proto.index();
            match (before[i], after[i]) {
                (false, true) => {
                    self.proto_services[i] += 1;
                    self.service_types.insert((service.clone(), proto));
                }
                (true, false) => {
                    self.proto_services[i] -= 1;
                    self.service_types.remove(&(service.clone(), proto));
                }
                _ => {}
            }
        }
    }
}

/// Every zone's instances: one consistent version of the registry.
#[derive(Debug, Clone)]
pub struct View {
    zones: Vec<ZoneView>,
    /// Origin of the lease clocks of every entry (see [`LeaseSlot`]).
    epoch: Instant,
    /// A zone's SOA serial is this plus its revision: set at start above every serial
    /// published before, so serials only grow.
    serial_base: u32,
}

impl View {
    pub fn new(zones: Vec<ZoneSettings>, epoch: Instant, serial_base: u32) -> View {
        View {
            zones: zones.into_iter().map(ZoneView::new).collect(),
            epoch,
            serial_base,
        }
    }

    /// The SOA serial of the zone at `index`.
    pub fn serial(&self, index: usize) -> u32 {
        let revision = self.zone(index).map_or(0, |zone| zone.revision());
        self.serial_base.wrapping_add(revision as u32)
    }

    /// The highest serial among `zones`.
    pub fn max_serial(&self, zones: &[usize]) -> u32 {
        zones
            .iter()
            .map(|&zone| self.serial(zone))
            .max()
            .unwrap_or(self.serial_base)
    }

    /// Every registered instance, healthy or critical, in every zone.
    pub fn total_instances(&self) -> usize {
        self.zones
            .iter()
            .map(|zone| {
                let (healthy, critical) = zone.instance_counts();
                healthy + critical
            })
            .sum()
    }

    /// A registered instance and its health.
    pub fn instance(&self, at: &InstanceRef) -> Option<(&Arc<Entry>, Health)> {
        self.zone(at.zone)?
            .instance(at.service.as_str(), at.id.as_str())
    }

    pub fn zones(&self) -> &[ZoneView] {
        &self.zones
    }

    pub fn zone(&self, index: usize) -> Option<&ZoneView> {
        self.zones.get(index)
    }

    pub fn zone_index(&self, origin: &str) -> Option<usize> {
        self.zones
            .iter()
            .position(|zone| &**zone.origin() == origin)
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// A registered instance, healthy or critical.
    pub fn entry(&self, at: &InstanceRef) -> Option<&Arc<Entry>> {
        let (entry, _) = self
            .zone(at.zone)?
            .instance(at.service.as_str(), at.id.as_str())?;
        Some(entry)
    }

    /// Adds or replaces an instance in zone `zone` (an index from [`View::zone_index`]);
    /// returns the one it replaced.
    pub fn insert(
        &mut self,
        zone: usize,
        service: &Label,
        entry: Arc<Entry>,
    ) -> Option<Arc<Entry>> {
        self.zones.get_mut(zone)?.insert(service, entry)
    }

    pub fn remove(&mut self, at: &InstanceRef) -> Option<Arc<Entry>> {
        self.zones
            .get_mut(at.zone)?
            .remove(&at.service, at.id.as_str())
    }

    /// Marks an instance healthy or critical: None when it is not registered, otherwise
    /// the instance and whether its health changed.
    pub fn mark(&mut self, at: &InstanceRef, health: Health) -> Option<(Arc<Entry>, bool)> {
        self.zones
            .get_mut(at.zone)?
            .mark(&at.service, at.id.as_str(), health)
    }

    /// Applies a reload: `zones[i]` is the zone at position `i` as it now is, `None` for
    /// one no longer served; positions past the current zones add new ones. Returns
    /// the positions whose answers change (new zones, new default TTLs).
    pub fn reconfigure(&mut self, zones: Vec<Option<ZoneSettings>>) -> Vec<usize> {
        let mut changed = Vec::new();
        for (index, settings) in zones.into_iter().enumerate() {
            match (self.zones.get_mut(index), settings) {
                (Some(zone), Some(settings)) => {
                    if !zone.served || zone.settings.default_ttl != settings.default_ttl {
                        changed.push(index);
                    }
                    zone.served = true;
                    zone.set_default_ttl(settings.default_ttl);
                }
                (Some(zone), None) => zone.served = false,
                (None, Some(settings)) => {
                    self.zones.push(ZoneView::new(settings));
                    changed.push(index);
                }
                (None, None) => {}
            }
        }
        changed
    }

    /// Puts (or, with no sets, removes) the records at an owner of zone `zone`;
    /// returns what was there.
    pub fn put_records(&mut self, zone: usize, records: NameRecords) -> Option<Arc<NameRecords>> {
        let zone = self.zones.get_mut(zone)?;
        let origin_len = zone.origin_wire_len();
        zone.records.put(records, origin_len)
    }

    /// Removes the records at `owner` in zone `zone`; returns them.
    pub fn remove_records(&mut self, zone: usize, owner: &[u8]) -> Option<Arc<NameRecords>> {
        let zone = self.zones.get_mut(zone)?;
        let origin_len = zone.origin_wire_len();
        zone.records.remove(owner, origin_len)
    }

    /// Marks a zone as changed by the current batch.
    pub fn bump_revision(&mut self, zone: usize) {
        if let Some(zone) = self.zones.get_mut(zone) {
            zone.revision += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The incremental structures must always equal what a from-scratch build of the
    //! same instances gives. `Digest` is the canonical content of a view; `rebuild`
    //! computes it directly from a list of instances, independently of the code above.

    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::registry::model::{LabelKind, Meta};

    #[derive(Debug, PartialEq, Eq, Default)]
    struct GroupDigest {
        ids: Vec<String>,
        v4: Vec<(Ipv4Addr, u32)>,
        v6: Vec<(Ipv6Addr, u32)>,
        ttls: Vec<(u32, u32)>,
    }

    #[derive(Debug, PartialEq, Eq, Default)]
    struct ServiceDigest {
        all: GroupDigest,
        protos: BTreeMap<Proto, GroupDigest>,
        tags: BTreeMap<String, GroupDigest>,
        subtypes: BTreeMap<(Proto, String), Vec<String>>,
        has_subtypes: BTreeSet<Proto>,
    }

    #[derive(Debug, PartialEq, Eq, Default)]
    struct ZoneDigest {
        services: BTreeMap<String, ServiceDigest>,
        service_types: Vec<(String, Proto)>,
        protos_in_use: BTreeSet<Proto>,
        tags_in_use: BTreeSet<String>,
    }

    fn digest_group(group: &Group) -> GroupDigest {
        GroupDigest {
            ids: group.members().iter().map(|e| e.id().to_string()).collect(),
            v4: group.v4.to_vec(),
            v6: group.v6.to_vec(),
            ttls: group.ttls.to_vec(),
        }
    }

    fn digest(zone: &ZoneView) -> ZoneDigest {
        let mut out = ZoneDigest {
            service_types: zone
                .service_types()
                .map(|(s, p)| (s.to_string(), *p))
                .collect(),
            ..ZoneDigest::default()
        };
        for (name, service) in zone.services() {
            let mut d = ServiceDigest {
                all: digest_group(service.all()),
                ..ServiceDigest::default()
            };
            for proto in Proto::ALL {
                if let Some(group) = service.proto(proto) {
                    d.protos.insert(proto, digest_group(group));
                    out.protos_in_use.insert(proto);
                }
                if service.has_subtypes(proto) {
                    d.has_subtypes.insert(proto);
                }
                for tag in service.tags() {
                    let (tagged, only) = service.subtype(proto, tag.as_str());
                    let ids: Vec<String> = tagged
                        .iter()
                        .filter(|e| only.is_none_or(|p| e.instance.proto == p))
                        .map(|e| e.id().to_string())
                        .collect();
                    if !ids.is_empty() {
                        d.subtypes.insert((proto, tag.to_string()), ids);
                    }
                }
            }
            for tag in service.tags() {
                d.tags.insert(
                    tag.to_string(),
                    digest_group(service.tag(tag.as_str()).unwrap()),
                );
                out.tags_in_use.insert(tag.to_string());
                assert!(zone.tag_in_use(tag.as_str()));
            }
            out.services.insert(name.to_string(), d);
        }
        for proto in Proto::ALL {
            assert_eq!(zone.proto_in_use(proto), out.protos_in_use.contains(&proto));
        }
        out
    }

    /// The digest of a zone holding exactly `instances`, computed without the view.
    fn rebuild(instances: &BTreeMap<(String, String), Arc<Entry>>) -> ZoneDigest {
        fn group_of<'a>(entries: impl Iterator<Item = &'a Arc<Entry>>) -> GroupDigest {
            let mut d = GroupDigest::default();
            let mut v4 = BTreeMap::new();
            let mut v6 = BTreeMap::new();
            let mut ttls = BTreeMap::new();
            for entry in entries {
                d.ids.push(entry.id().to_string());
                for address in entry.instance.addresses.iter() {
                    match address {
                        IpAddr::V4(a) => *v4.entry(*a).or_insert(0) += 1,
                        IpAddr::V6(a) => *v6.entry(*a).or_insert(0) += 1,
                    }
                }
                *ttls.entry(entry.dns_ttl).or_insert(0) += 1;
            }
            d.v4 = v4.into_iter().collect();
            d.v6 = v6.into_iter().collect();
            d.ttls = ttls.into_iter().collect();
            d
        }
        let mut out = ZoneDigest::default();
        let mut by_service: BTreeMap<&str, Vec<&Arc<Entry>>> = BTreeMap::new();
        for ((service, _), entry) in instances {
            by_service.entry(service).or_default().push(entry);
        }
        for (service, entries) in by_service {
            let mut d = ServiceDigest {
                all: group_of(entries.iter().copied()),
                ..ServiceDigest::default()
            };
            let tags: BTreeSet<&str> = entries
                .iter()
                .flat_map(|e| e.instance.tags.iter().map(Label::as_str))
                .collect();
            for proto in Proto::ALL {
                let of_proto: Vec<&Arc<Entry>> = entries
                    .iter()
                    .copied()
                    .filter(|e| e.instance.proto == proto)
                    .collect();
                if of_proto.is_empty() {
                    continue;
                }
                d.protos.insert(proto, group_of(of_proto.iter().copied()));
                out.service_types.push((service.to_string(), proto));
                out.protos_in_use.insert(proto);
                for tag in &tags {
                    let ids: Vec<String> = of_proto
                        .iter()
                        .filter(|e| e.instance.has_tag(tag))
                        .map(|e| e.id().to_string())
                        .collect();
                    if !ids.is_empty() {
                        d.subtypes.insert((proto, tag.to_string()), ids);
                        d.has_subtypes.insert(proto);
                    }
                }
            }
            for tag in tags {
                d.tags.insert(
                    tag.to_string(),
                    group_of(entries.iter().copied().filter(|e| e.instance.has_tag(tag))),
                );
                out.tags_in_use.insert(tag.to_string());
            }
            out.services.insert(service.to_string(), d);
        }
        out
    }

    #[derive(Debug, Clone)]
    enum Op {
        Register {
            service: u8,
            id: u8,
            address: u8,
            v6: bool,
            udp: bool,
            tags: Vec<u8>,
            dns_ttl: Option<u8>,
        },
        Remove {
            service: u8,
            id: u8,
        },
        Mark {
            service: u8,
            id: u8,
            critical: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..4u8, 0..6u8, 0..4u8, any::<bool>(), prop::bool::weighted(0.2),
                  prop::collection::vec(0..3u8, 0..3), prop::option::of(0..3u8))
                .prop_map(|(service, id, address, v6, udp, tags, dns_ttl)| Op::Register {
                    service, id, address, v6, udp, tags, dns_ttl,
                }),
            2 => (0..4u8, 0..6u8).prop_map(|(service, id)| Op::Remove { service, id }),
            2 => (0..4u8, 0..6u8, any::<bool>())
                .prop_map(|(service, id, critical)| Op::Mark { service, id, critical }),
        ]
    }

    fn label(text: String) -> Label {
        Label::parse(&text, LabelKind::Id).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn incremental_view_equals_a_rebuild(ops in prop::collection::vec(op(), 1..120)) {
            let settings = ZoneSettings { origin: Arc::from("svc.internal."), default_ttl: 5 };
            let mut view = View::new(vec![settings], Instant::now(), 1);
            // Published snapshots must never change under later writes.
            let mut snapshots: Vec<(Arc<View>, ZoneDigest)> = Vec::new();
            // Healthy instances, and critical ones (in no answer, still registered).
            let mut model: BTreeMap<(String, String), Arc<Entry>> = BTreeMap::new();
            let mut critical: BTreeMap<(String, String), Arc<Entry>> = BTreeMap::new();
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Register { service, id, address, v6, udp, tags, dns_ttl } => {
                        let service_label = label(format!("s{service}"));
                        let instance = Instance {
                            id: label(format!("i{id}")),
                            addresses: vec![if v6 {
                                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(address)))
                            } else {
                                IpAddr::V4(Ipv4Addr::new(10, 0, 0, address))
                            }].into_boxed_slice(),
                            port: 80,
                            proto: if udp { Proto::Udp } else { Proto::Tcp },
                            priority: 1,
                            weight: 1,
                            tags: tags.iter().map(|t| label(format!("t{t}")))
                                .collect::<BTreeSet<_>>().into_iter().collect(),
                            meta: Meta::default(),
                            dns_ttl: dns_ttl.map(u32::from),
                            ttl: None,
                            ephemeral: false,
                        };
                        if view.zones[0].check_labels(&service_label, &instance).is_err() {
                            continue;
                        }
                        let entry = Arc::new(Entry::new(instance, 5, None, true));
                        let key = (service_label.to_string(), entry.id().to_string());
                        critical.remove(&key);
                        model.insert(key, entry.clone());
                        view.insert(0, &service_label, entry);
                    }
                    Op::Remove { service, id } => {
                        let at = InstanceRef { zone: 0, service: label(format!("s{service}")), id: label(format!("i{id}")) };
                        let removed = view.remove(&at);
                        let key = (at.service.to_string(), at.id.to_string());
                        let expected = model.remove(&key).or_else(|| critical.remove(&key));
                        prop_assert_eq!(removed.is_some(), expected.is_some());
                    }
                    Op::Mark { service, id, critical: to_critical } => {
                        let at = InstanceRef { zone: 0, service: label(format!("s{service}")), id: label(format!("i{id}")) };
                        let key = (at.service.to_string(), at.id.to_string());
                        let health = if to_critical { Health::Critical } else { Health::Healthy };
                        let marked = view.mark(&at, health);
                        let (from, to) = if to_critical { (&mut model, &mut critical) } else { (&mut critical, &mut model) };
                        match from.remove(&key) {
                            Some(entry) => {
                                to.insert(key, entry);
                                prop_assert_eq!(marked.map(|(_, changed)| changed), Some(true));
                            }
                            None if to.contains_key(&key) => {
                                prop_assert_eq!(marked.map(|(_, changed)| changed), Some(false));
                            }
                            None => prop_assert!(marked.is_none(), "marked a missing instance"),
                        }
                    }
                }
                prop_assert_eq!(digest(&view.zones[0]), rebuild(&model), "after step {}", step);
                prop_assert_eq!(view.zones[0].instance_counts(), (model.len(), critical.len()));
                let listed: Vec<(String, String, Health)> = view.zones[0].service_names().into_iter()
                    .flat_map(|name| view.zones[0].instances_of(name.as_str()))
                    .map(|(service, entry, health)| (service.to_string(), entry.id().to_string(), health))
                    .collect();
                let mut expected: Vec<(String, String, Health)> = model.keys().map(|(s, i)| (s.clone(), i.clone(), Health::Healthy))
                    .chain(critical.keys().map(|(s, i)| (s.clone(), i.clone(), Health::Critical)))
                    .collect();
                expected.sort();
                prop_assert_eq!(listed, expected);
                if step % 7 == 0 {
                    snapshots.push((Arc::new(view.clone()), rebuild(&model)));
                }
            }
            for (snapshot, expected) in snapshots {
                prop_assert_eq!(digest(&snapshot.zones[0]), expected);
            }
        }
    }
}
