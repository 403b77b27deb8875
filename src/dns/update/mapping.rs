//! What an UPDATE means here (README "Registering through DNS UPDATE"): its
//! prerequisites checked against the zone as it is answered, and its changes turned
//! into registrations and written records.
//!
//! A service instance written the DNS-SD way (RFC 6763 §4-§7) is a registration:
//!
//! | record | becomes |
//! |---|---|
//! | `I._S._P.Z` SRV | instance `I` of service `S`, protocol `P`: port, priority, weight; DNS TTL |
//! | `I._S._P.Z` TXT, `I.S.Z` TXT | its metadata (`key=value` strings) |
//! | A/AAAA at the SRV's target, in the same update or written before | its addresses |
//! | `I.S.Z` A/AAAA | its addresses (the name svcdns gives them) |
//! | `_T._sub._S._P.Z` PTR to `I._S._P.Z` | tag `T` |
//! | `_S._P.Z` PTR to `I._S._P.Z` | nothing more: the instance is listed there anyway |
//!
//! Deleting an instance's SRV (or its name, or every address it has) deregisters it.
//! Records at other names (a host's A, an ACME challenge's TXT, a CNAME) are kept as
//! written (`registry::records`), except at names the zone file or a registered
//! service holds, and except the zone's own types (SOA, NS) and DNSSEC's. Written
//! records have no lease: in an update with one, only the SRV targets' addresses are
//! taken (as the instances'), and other records are refused.
//!
//! Everything here runs on the writer's thread, on the view the update is applied
//! to, so the prerequisites still hold when the changes are made (RFC 2136 §3.2,
//! §3.4.2: the whole update is one atomic step).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;

use crate::api::auth::Grant;
use crate::dns::records::rdata_of;
use crate::dns::wire::WireName;
use crate::dns::zone::{canonical_rdata, lower_wire, Negative, ServedZone};
use crate::dns::zone_records::records_at;
use crate::registry::model::MAX_DNS_TTL;
use crate::registry::records::{taken_label, NameRecords, RecordSet};
use crate::registry::{
    Instance, InstanceRef, Label, LabelKind, Meta, Proto, Registration, RegistryError, Step, View,
    ZoneView,
};
use crate::store::owner_text;

/// Most records one RRset written through UPDATE may have.
const MAX_RECORDS_PER_SET: usize = 256;
/// Most names a zone may have records written at through UPDATE.
const MAX_WRITTEN_NAMES: usize = 100_000;

/// An update checked for form, waiting for its turn at the writer.
pub struct Update {
    pub zone: Arc<ServedZone>,
    pub prerequisites: Vec<Record>,
    pub changes: Vec<Record>,
    /// The services the signing key may change.
    pub grant: Grant,
    /// The lease the client asked for (RFC 9664), as granted.
    pub lease: Option<u32>,
}

/// Why an update was not made: its RCODE and, for the log, the reason.
pub fn declined(code: ResponseCode, reason: impl Into<String>) -> RegistryError {
    RegistryError::Declined {
        code: u16::from(code),
        reason: reason.into(),
    }
}

impl Update {
    /// The registry's steps for this update on `view`, or why it must not happen.
    pub fn decide(&self, view: &View) -> Result<Vec<Step>, RegistryError> {
        self.check_prerequisites(view)?;
        let mut drafts = Drafts::new(self, view)?;
        for record in &self.changes {
            drafts.apply(record)?;
        }
        drafts.into_steps()
    }

    /// RFC 2136 §3.2.5: the first prerequisite that does not hold gives the RCODE.
    fn check_prerequisites(&self, view: &View) -> Result<(), RegistryError> {
        // Value-dependent prerequisites are compared RRset by RRset.
        let mut expected: BTreeMap<(Vec<u8>, u16), Vec<&RData>> = BTreeMap::new();
        for record in &self.prerequisites {
            let name = wire_name(&record.name)?;
            let record_type = record.record_type();
            match record.dns_class {
                DNSClass::ANY if record_type == RecordType::ANY => {
                    if !self.in_use(view, &name, RecordType::ANY)? {
                        return Err(declined(
                            ResponseCode::NXDomain,
                            format!("prerequisite: {} is not in use", record.name),
                        ));
                    }
                }
                DNSClass::ANY => {
                    if !self.in_use(view, &name, record_type)? {
                        return Err(declined(
                            ResponseCode::NXRRSet,
                            format!("prerequisite: {} has no {record_type}", record.name),
                        ));
                    }
                }
                DNSClass::NONE if record_type == RecordType::ANY => {
                    if self.in_use(view, &name, RecordType::ANY)? {
                        return Err(declined(
                            ResponseCode::YXDomain,
                            format!("prerequisite: {} is in use", record.name),
                        ));
                    }
                }
                DNSClass::NONE => {
                    if self.in_use(view, &name, record_type)? {
                        return Err(declined(
                            ResponseCode::YXRRSet,
                            format!("prerequisite: {} has {record_type}", record.name),
                        ));
                    }
                }
                _ => expected
                    .entry((name.as_wire().to_vec(), u16::from(record_type)))
                    .or_default()
                    .push(&record.data),
            }
        }
        for ((owner, record_type), mut wanted) in expected {
            let name = WireName::from_wire(&owner).ok_or_else(bad_name)?;
            let record_type = RecordType::from(record_type);
            let mut actual = self.rdata_at(view, &name, record_type)?;
            wanted.sort_by_key(|rdata| rdata.to_bytes().unwrap_or_default());
            wanted.dedup();
            actual.sort_by_key(|rdata| rdata.to_bytes().unwrap_or_default());
            actual.dedup();
            let same = wanted.len() == actual.len() && wanted.iter().all(|w| actual.contains(w));
            if !same {
                return Err(declined(
                    ResponseCode::NXRRSet,
                    format!(
                        "prerequisite: the {record_type} records at {} are not the ones given",
                        owner_text(&owner)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether `name` has records of `record_type` (any, for ANY).
    fn in_use(
        &self,
        view: &View,
        name: &WireName,
        record_type: RecordType,
    ) -> Result<bool, RegistryError> {
        match records_at(&self.zone, view, name, record_type) {
            Ok(records) => Ok(!records.is_empty()),
            Err(Negative::NoData | Negative::NxDomain) => Ok(false),
            Err(Negative::ServFail) => {
                Err(declined(ResponseCode::ServFail, "zone not in the snapshot"))
            }
        }
    }

    /// The data of the records `name` has of `record_type`.
    fn rdata_at(
        &self,
        view: &View,
        name: &WireName,
        record_type: RecordType,
    ) -> Result<Vec<RData>, RegistryError> {
        let records = match records_at(&self.zone, view, name, record_type) {
            Ok(records) => records,
            Err(Negative::NoData | Negative::NxDomain) => return Ok(Vec::new()),
            Err(Negative::ServFail) => {
                return Err(declined(ResponseCode::ServFail, "zone not in the snapshot"))
            }
        };
        Ok(records
            .iter()
            .map(|record| rdata_of(record.record_type, &record.rdata))
            .collect())
    }
}

/// Where in our naming scheme an update's owner name falls.
enum Owner {
    /// `I._S._P`: a DNS-SD service instance.
    Instance { key: Key, proto: Proto },
    /// `_S._P`: where a service type's instances are listed.
    ServiceType { service: Label, proto: Proto },
    /// `_T._sub._S._P`: a subtype, that is a tag.
    Subtype {
        service: Label,
        proto: Proto,
        tag: Label,
    },
    /// `X.S`: an instance's address name (or a tag's).
    Address(Key),
    /// Anything else in the zone.
    Other,
}

/// An instance by (service, id).
type Key = (Label, Label);

/// What an instance becomes, built up record by record.
#[derive(Clone)]
struct Draft {
    proto: Proto,
    /// Port, priority, weight and DNS TTL; `None` while it has no SRV.
    srv: Option<Srv>,
    addresses: Vec<IpAddr>,
    tags: Vec<Label>,
    meta: Meta,
    ttl: Option<u32>,
    /// As registered before this update.
    before: Option<Instance>,
    /// Whether this update added anything to it (rather than only removing).
    added: bool,
}

#[derive(Clone, Copy, PartialEq)]
struct Srv {
    priority: u16,
    weight: u16,
    port: u16,
    dns_ttl: Option<u32>,
}

/// The instances an update touches, as they become.
struct Drafts<'u> {
    update: &'u Update,
    view: &'u View,
    /// Services this update gives an instance SRV: names under them are instances'.
    services: HashSet<Label>,
    /// Addresses given at other names, by name: the SRV targets' in this update.
    hosts: HashMap<Name, Vec<IpAddr>>,
    /// The targets of this update's SRVs (lowercase).
    targets: HashSet<Name>,
    drafts: BTreeMap<Key, Draft>,
    /// The records written at other names, as they become, by owner (wire form).
    written: BTreeMap<Box<[u8]>, NameRecords>,
}

impl<'u> Drafts<'u> {
    fn new(update: &'u Update, view: &'u View) -> Result<Drafts<'u>, RegistryError> {
        let mut drafts = Drafts {
            update,
            view,
            services: HashSet::new(),
            hosts: HashMap::new(),
            targets: HashSet::new(),
            drafts: BTreeMap::new(),
            written: BTreeMap::new(),
        };
        for record in &update.changes {
            if let (Owner::Instance { key, .. }, RData::SRV(srv)) =
                (drafts.owner(&record.name)?, &record.data)
            {
                drafts.services.insert(key.0);
                drafts.targets.insert(srv.target.to_lowercase());
            }
        }
        for record in &update.changes {
            if record.dns_class != DNSClass::IN {
                continue;
            }
            if let (Owner::Other, Some(address)) =
                (drafts.owner(&record.name)?, record.data.ip_addr())
            {
                drafts
                    .hosts
                    .entry(record.name.to_lowercase())
                    .or_default()
                    .push(address);
            }
        }
        Ok(drafts)
    }

    fn zone_view(&self) -> Result<&'u ZoneView, RegistryError> {
        self.view
            .zone(self.update.zone.index())
            .ok_or_else(|| declined(ResponseCode::ServFail, "zone not in the snapshot"))
    }

    /// Where `name` falls: [`owner`], with `X.S` an instance's address name only
    /// where `S` is a registered service or one this update registers.
    fn owner(&self, name: &Name) -> Result<Owner, RegistryError> {
        Ok(match owner(&self.update.zone, name)? {
            Owner::Address(key)
                if !self.services.contains(&key.0)
                    && !self.zone_view()?.has_service(key.0.as_str()) =>
            {
                Owner::Other
            }
            other => other,
        })
    }

    /// The records written at `owner` as this update leaves them so far.
    fn written_at(&mut self, owner: &[u8]) -> Result<&mut NameRecords, RegistryError> {
        if !self.written.contains_key(owner) {
            let current = self
                .zone_view()?
                .records()
                .get(owner)
                .map(|r| (**r).clone());
            let records = current.unwrap_or_else(|| NameRecords {
                owner: owner.into(),
                sets: Vec::new(),
            });
            self.written.insert(owner.into(), records);
        }
        self.written.get_mut(owner).ok_or_else(bad_name)
    }

    /// The addresses written at `name` (its A and AAAA records), as this update
    /// leaves them so far.
    fn written_addresses(&mut self, name: &Name) -> Result<Vec<IpAddr>, RegistryError> {
        let owner: Box<[u8]> = wire_name(name)?.as_wire().into();
        let records = self.written_at(&owner)?;
        Ok([RecordType::A, RecordType::AAAA]
            .into_iter()
            .filter_map(|t| records.set(u16::from(t)))
            .flat_map(|set| set.rdata.iter().map(|rdata| (set.record_type, rdata)))
            .filter_map(|(t, rdata)| rdata_of(t, rdata).ip_addr())
            .collect())
    }

    /// A record at a name that is no instance's, in an update with a lease: an SRP
    /// client's host (RFC 9665), whose addresses are its instances' and must expire
    /// with them. Written records have no lease, so they are not kept: the host's A
    /// and AAAA were taken as the instances' addresses, its KEY is not kept (svcdns
    /// checks no SIG(0)), and anything else is refused rather than kept forever.
    fn leased_host(&self, record: &Record) -> Result<(), RegistryError> {
        let host = self.targets.contains(&record.name.to_lowercase());
        let taken = matches!(
            record.record_type(),
            RecordType::A | RecordType::AAAA | RecordType::KEY
        ) || record.dns_class != DNSClass::IN;
        if host && taken {
            return Ok(());
        }
        Err(refused(format!(
            "{} {}: an update lease applies to service instances and their hosts' addresses; records at other names cannot expire, so send them without a lease",
            record.name,
            record.record_type()
        )))
    }

    /// Applies a change at a name that is no instance's: to the records written
    /// there (RFC 2136 §3.4.2.2-4).
    fn write(&mut self, record: &Record) -> Result<(), RegistryError> {
        let zone = &self.update.zone;
        let owner: Box<[u8]> = wire_name(&record.name)?.as_wire().into();
        let record_type = record.record_type();
        if zone.zone().has_static_name(&owner) {
            return Err(refused(format!(
                "{} belongs to the zone file (its apex, a name it gives records, or one above them)",
                record.name
            )));
        }
        // ANY here is a deletion of every set (class ANY); the form check let no
        // other through.
        if record_type != RecordType::ANY && !is_writable(record_type) {
            return Err(unsupported(record));
        }
        let label = taken_label(&owner, zone.zone().origin_wire().len());
        if let Some(service) = label.as_deref() {
            if self.zone_view()?.has_service(service) {
                return Err(refused(format!(
                    "{} is among the names of registered service {service}",
                    record.name
                )));
            }
        }
        if !self.update.grant.allows(label.as_deref().unwrap_or("")) {
            return Err(refused(format!(
                "the key may not write {} (its services do not match {})",
                record.name,
                label.as_deref().unwrap_or("a name outside every service")
            )));
        }
        if self.zone_view()?.records().get(&owner).is_none()
            && self.zone_view()?.records().len() + self.written.len() >= MAX_WRITTEN_NAMES
        {
            return Err(refused(format!(
                "the zone holds {MAX_WRITTEN_NAMES} names written through UPDATE, the most it takes"
            )));
        }
        let code = u16::from(record_type);
        let cname = u16::from(RecordType::CNAME);
        let records = self.written_at(&owner)?;
        match record.dns_class {
            DNSClass::IN => {
                let rdata = canonical_rdata(&record.data).ok_or_else(|| unsupported(record))?;
                let has_cname = records.set(cname).is_some();
                let has_other = records.sets.iter().any(|set| set.record_type != cname);
                // A CNAME stands alone at its name: an add that would break that is
                // ignored, as RFC 2136 §3.4.2.2 says.
                if (code == cname && has_other) || (code != cname && has_cname) {
                    return Ok(());
                }
                let ttl = record.ttl.min(MAX_DNS_TTL);
                match records.sets.iter_mut().find(|set| set.record_type == code) {
                    Some(set) if code == cname => {
                        set.rdata = vec![rdata];
                        set.ttl = ttl;
                    }
                    Some(set) => {
                        if !set.rdata.contains(&rdata) {
                            if set.rdata.len() >= MAX_RECORDS_PER_SET {
                                return Err(refused(format!(
                                    "{} {record_type} would have more than {MAX_RECORDS_PER_SET} records",
                                    record.name
                                )));
                            }
                            set.rdata.push(rdata);
                        }
                        set.ttl = ttl;
                    }
                    None => {
                        records.sets.push(RecordSet {
                            record_type: code,
                            ttl,
                            rdata: vec![rdata],
                        });
                        records.sets.sort_by_key(|set| set.record_type);
                    }
                }
            }
            DNSClass::ANY if record_type == RecordType::ANY => records.sets.clear(),
            DNSClass::ANY => records.sets.retain(|set| set.record_type != code),
            _ => {
                let rdata = canonical_rdata(&record.data).ok_or_else(|| unsupported(record))?;
                for set in records
                    .sets
                    .iter_mut()
                    .filter(|set| set.record_type == code)
                {
                    set.rdata.retain(|existing| *existing != rdata);
                }
                records.sets.retain(|set| !set.rdata.is_empty());
            }
        }
        Ok(())
    }

    /// The draft of `key`, from what is registered; `None` when nothing is.
    fn existing(&mut self, key: &Key) -> Result<Option<&mut Draft>, RegistryError> {
        if !self.drafts.contains_key(key) {
            let Some((entry, _)) = self
                .view
                .zone(self.update.zone.index())
                .and_then(|zone| zone.instance(key.0.as_str(), key.1.as_str()))
            else {
                return Ok(None);
            };
            if !entry.stored && entry.owner.is_none() {
                return Err(refused(format!(
                    "instance {} of service {} comes from a zone file; UPDATE cannot change it",
                    key.1, key.0
                )));
            }
            let instance = &entry.instance;
            self.drafts.insert(
                key.clone(),
                Draft {
                    proto: instance.proto,
                    srv: Some(Srv {
                        priority: instance.priority,
                        weight: instance.weight,
                        port: instance.port,
                        dns_ttl: instance.dns_ttl,
                    }),
                    addresses: instance.addresses.to_vec(),
                    tags: instance.tags.to_vec(),
                    meta: instance.meta.clone(),
                    ttl: instance.ttl,
                    before: Some(instance.clone()),
                    added: false,
                },
            );
        }
        Ok(self.drafts.get_mut(key))
    }

    /// The draft of `key`, begun empty when nothing is registered.
    fn draft(&mut self, key: &Key, proto: Proto) -> Result<&mut Draft, RegistryError> {
        if self.existing(key)?.is_none() {
            self.drafts.insert(
                key.clone(),
                Draft {
                    proto,
                    srv: None,
                    addresses: Vec::new(),
                    tags: Vec::new(),
                    meta: Meta::default(),
                    ttl: None,
                    before: None,
                    added: false,
                },
            );
        }
        self.drafts.get_mut(key).ok_or_else(bad_name)
    }

    /// The draft of an instance registered under `proto`, if there is one: a name
    /// with another protocol is not its name.
    fn registered_as(
        &mut self,
        key: &Key,
        proto: Proto,
    ) -> Result<Option<&mut Draft>, RegistryError> {
        Ok(self.existing(key)?.filter(|draft| draft.proto == proto))
    }

    /// Applies one record of the update section (RFC 2136 §3.4.2).
    fn apply(&mut self, record: &Record) -> Result<(), RegistryError> {
        let record_type = record.record_type();
        let class = record.dns_class;
        let adding = class == DNSClass::IN;
        match self.owner(&record.name)? {
            Owner::Instance { key, proto } => match (record_type, &record.data) {
                (RecordType::SRV, RData::SRV(srv)) if adding => {
                    let target = srv.target.to_lowercase();
                    let hosted = match self.hosts.get(&target) {
                        Some(addresses) => Some(addresses.clone()),
                        // A host whose addresses were written by an earlier update.
                        None if origin_of(&self.update.zone).zone_of(&target) => {
                            Some(self.written_addresses(&target)?).filter(|a| !a.is_empty())
                        }
                        None => None,
                    };
                    let address_name = address_name(&self.update.zone, &key);
                    let draft = self.draft(&key, proto)?;
                    draft.proto = proto;
                    draft.srv = Some(Srv {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        dns_ttl: Some(record.ttl.min(MAX_DNS_TTL)),
                    });
                    draft.added = true;
                    match hosted {
                        Some(addresses) => draft.addresses = addresses,
                        None if draft.addresses.is_empty() && Some(&target) != address_name.as_ref() => {
                            return Err(refused(format!(
                                "the SRV of {} points to {target}, which this update gives no A or AAAA record",
                                record.name
                            )))
                        }
                        None => {}
                    }
                }
                (RecordType::TXT, RData::TXT(txt)) if adding => {
                    let meta = meta_of(&txt.txt_data)?;
                    let draft = self.draft(&key, proto)?;
                    draft.meta = meta;
                    draft.added = true;
                }
                (RecordType::SRV, data) => {
                    if let Some(draft) = self.registered_as(&key, proto)? {
                        let matches = match data {
                            RData::SRV(srv) => draft.srv.is_some_and(|ours| {
                                (ours.priority, ours.weight, ours.port)
                                    == (srv.priority, srv.weight, srv.port)
                            }),
                            _ => true,
                        };
                        if matches {
                            draft.srv = None;
                        }
                    }
                }
                (RecordType::TXT, data) => {
                    let given = match data {
                        RData::TXT(txt) => Some(meta_of(&txt.txt_data)?),
                        _ => None,
                    };
                    if let Some(draft) = self.registered_as(&key, proto)? {
                        if given.is_none_or(|given| given == draft.meta) {
                            draft.meta = Meta::default();
                        }
                    }
                }
                (RecordType::ANY, _) if !adding => {
                    if let Some(draft) = self.registered_as(&key, proto)? {
                        draft.srv = None;
                    }
                }
                _ => return Err(unsupported(record)),
            },
            Owner::Address(key) => match (record_type, &record.data) {
                (RecordType::A | RecordType::AAAA, data) if adding => {
                    let Some(address) = data.ip_addr() else {
                        return Err(unsupported(record));
                    };
                    let draft = self.draft(&key, Proto::Tcp)?;
                    if !draft.addresses.contains(&address) {
                        draft.addresses.push(address);
                    }
                    draft.added = true;
                }
                (RecordType::TXT, RData::TXT(txt)) if adding => {
                    let meta = meta_of(&txt.txt_data)?;
                    let draft = self.draft(&key, Proto::Tcp)?;
                    draft.meta = meta;
                    draft.added = true;
                }
                (RecordType::A | RecordType::AAAA | RecordType::ANY | RecordType::TXT, data) => {
                    let given = data.ip_addr();
                    if let Some(draft) = self.existing(&key)? {
                        match record_type {
                            RecordType::TXT => draft.meta = Meta::default(),
                            RecordType::ANY => draft.addresses.clear(),
                            _ => draft.addresses.retain(|address| match given {
                                Some(given) => *address != given,
                                None => address.is_ipv4() != (record_type == RecordType::A),
                            }),
                        }
                    }
                }
                _ => return Err(unsupported(record)),
            },
            Owner::Subtype {
                service,
                proto,
                tag,
            } => {
                if record_type != RecordType::PTR && record_type != RecordType::ANY {
                    return Err(unsupported(record));
                }
                if tag.as_str() == "tcp" || tag.as_str() == "udp" {
                    return Err(unsupported(record));
                }
                match &record.data {
                    RData::PTR(target) => {
                        let Some(key) = self.instance_pointed_to(target, &service, proto)? else {
                            return Err(refused(format!(
                                "{} must point to an instance of {service} ({})",
                                record.name, target.0
                            )));
                        };
                        let draft = self.draft(&key, proto)?;
                        if adding {
                            if !draft.tags.contains(&tag) {
                                draft.tags.push(tag);
                            }
                            draft.added = true;
                        } else {
                            draft.tags.retain(|t| *t != tag);
                        }
                    }
                    _ if !adding => {
                        let zone = self.view.zone(self.update.zone.index());
                        let tagged: Vec<Key> = zone
                            .map(|zone| zone.instances_of(service.as_str()))
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|(_, entry, _)| {
                                entry.instance.proto == proto
                                    && entry.instance.has_tag(tag.as_str())
                            })
                            .map(|(id, _, _)| (service.clone(), id.clone()))
                            .collect();
                        for key in tagged {
                            if let Some(draft) = self.existing(&key)? {
                                draft.tags.retain(|t| *t != tag);
                            }
                        }
                    }
                    _ => return Err(unsupported(record)),
                }
            }
            Owner::ServiceType { service, proto } => match (&record.data, adding) {
                // Every instance is listed at `_S._P` anyway: an added PTR must name an
                // instance this update registers (or that is registered), and a
                // removed one changes nothing.
                (RData::PTR(target), true) => {
                    let pointed = self.instance_pointed_to(target, &service, proto)?;
                    let listed = match &pointed {
                        Some(key) => {
                            self.drafts.contains_key(key)
                                || self.registered_as(key, proto)?.is_some()
                        }
                        None => false,
                    };
                    if !listed {
                        return Err(refused(format!(
                            "{} points to {}, which is not an instance of {service} this update registers",
                            record.name, target.0
                        )));
                    }
                }
                (_, false) if matches!(record_type, RecordType::PTR | RecordType::ANY) => {}
                _ => return Err(unsupported(record)),
            },
            // A/AAAA at an SRV's target are also that instance's addresses (taken
            // in `new`), and are kept at their name too; see `leased_host`.
            Owner::Other if self.update.lease.is_some() => self.leased_host(record)?,
            Owner::Other => self.write(record)?,
        }
        Ok(())
    }

    /// The instance `target` (`I._S._P.Z`) names, if it is one of `service`'s.
    fn instance_pointed_to(
        &self,
        target: &Name,
        service: &Label,
        proto: Proto,
    ) -> Result<Option<Key>, RegistryError> {
        Ok(match self.owner(target)? {
            Owner::Instance { key, proto: p } if key.0 == *service && p == proto => Some(key),
            _ => None,
        })
    }

    /// The registry's steps: each touched instance registered as it became, or
    /// removed when it lost its SRV or its last address.
    fn into_steps(self) -> Result<Vec<Step>, RegistryError> {
        let zone = self.update.zone.index();
        let origin = self
            .update
            .zone
            .zone()
            .origin()
            .to_string()
            .to_ascii_lowercase();
        let mut steps: Vec<Step> = self
            .written
            .into_values()
            .map(|records| Step::Records { zone, records })
            .collect();
        for ((service, id), draft) in self.drafts {
            if !self.update.grant.allows(service.as_str()) {
                return Err(refused(format!(
                    "the key may not change service {service} (its services do not match)"
                )));
            }
            let complete = draft.srv.is_some() && !draft.addresses.is_empty();
            let Some(srv) = draft.srv.filter(|_| complete) else {
                if draft.before.is_some() {
                    steps.push(Step::Remove(InstanceRef { zone, service, id }));
                } else if draft.added {
                    return Err(refused(format!(
                        "instance {id} of service {service} needs an SRV record and an address (A or AAAA) to be registered"
                    )));
                }
                continue;
            };
            let mut tags = draft.tags;
            tags.sort_unstable();
            tags.dedup();
            let ttl = self.update.lease.or(draft.ttl);
            let instance = Instance {
                id,
                addresses: draft.addresses.into_boxed_slice(),
                port: srv.port,
                proto: draft.proto,
                priority: srv.priority,
                weight: srv.weight,
                tags: tags.into_boxed_slice(),
                meta: draft.meta,
                dns_ttl: srv.dns_ttl,
                ttl,
                ephemeral: false,
            };
            if draft.before.as_ref() == Some(&instance) && self.update.lease.is_none() {
                continue;
            }
            self.update.zone.zone().admit(&service, &instance)?;
            steps.push(Step::Put {
                zone,
                registration: Registration {
                    zone: origin.clone(),
                    service,
                    instance,
                },
            });
        }
        Ok(steps)
    }
}

/// Where `name` falls in our naming scheme; a name outside the zone is `Other`.
fn owner(zone: &ServedZone, name: &Name) -> Result<Owner, RegistryError> {
    // Update names were checked to be in the zone; a PTR's target need not be.
    let origin = zone.zone().origin();
    if !origin.zone_of(name) {
        return Ok(Owner::Other);
    }
    let relative = usize::from(name.num_labels() - origin.num_labels());
    let labels: Vec<String> = name
        .iter()
        .take(relative)
        .map(|label| String::from_utf8_lossy(label).to_ascii_lowercase())
        .collect();
    let underscored = |label: &str, kind: LabelKind| -> Result<Option<Label>, RegistryError> {
        match label.strip_prefix('_') {
            Some(rest) => Label::parse(rest, kind)
                .map(Some)
                .map_err(|e| refused(e.to_string())),
            None => Ok(None),
        }
    };
    let proto = |label: &str| match label {
        "_tcp" => Some(Proto::Tcp),
        "_udp" => Some(Proto::Udp),
        _ => None,
    };
    let plain = |label: &str, kind: LabelKind| {
        Label::parse(label, kind).map_err(|e| refused(e.to_string()))
    };
    Ok(match labels.as_slice() {
        [id, service, p] if proto(p).is_some() && service.starts_with('_') => {
            match (underscored(service, LabelKind::Service)?, proto(p)) {
                (Some(service), Some(proto)) => Owner::Instance {
                    key: (service, plain(id, LabelKind::Id)?),
                    proto,
                },
                _ => Owner::Other,
            }
        }
        [service, p] if proto(p).is_some() && service.starts_with('_') => {
            match (underscored(service, LabelKind::Service)?, proto(p)) {
                (Some(service), Some(proto)) => Owner::ServiceType { service, proto },
                _ => Owner::Other,
            }
        }
        [tag, sub, service, p] if sub == "_sub" && proto(p).is_some() => {
            match (
                underscored(tag, LabelKind::Tag)?,
                underscored(service, LabelKind::Service)?,
                proto(p),
            ) {
                (Some(tag), Some(service), Some(proto)) => Owner::Subtype {
                    service,
                    proto,
                    tag,
                },
                _ => Owner::Other,
            }
        }
        [id, service] if !id.starts_with('_') && !service.starts_with('_') => {
            match (
                Label::parse(service, LabelKind::Service),
                Label::parse(id, LabelKind::Id),
            ) {
                (Ok(service), Ok(id)) if has_registry(zone, &service) => {
                    Owner::Address((service, id))
                }
                _ => Owner::Other,
            }
        }
        _ => Owner::Other,
    })
}

/// Whether `service` names can be the registry's in this zone (not a static record's).
fn has_registry(zone: &ServedZone, service: &Label) -> bool {
    zone.zone().static_service_label(service.as_str()).is_none()
}

fn origin_of(zone: &ServedZone) -> &Name {
    zone.zone().origin()
}

/// Types UPDATE may write at names that are no instance's: not the zone's own (SOA,
/// NS: svcdns makes no delegations), not DNSSEC's (the zone is not signed).
fn is_writable(record_type: RecordType) -> bool {
    !matches!(
        u16::from(record_type),
        2 | 6 | 43 | 46 | 47 | 48 | 50 | 51 | 41 | 249..=255
    )
}

/// `I.S.Z`, the name svcdns gives an instance's addresses.
fn address_name(zone: &ServedZone, (service, id): &Key) -> Option<Name> {
    Name::from_ascii(format!("{id}.{service}"))
        .ok()?
        .append_domain(zone.zone().origin())
        .ok()
        .map(|name| name.to_lowercase())
}

/// Metadata from TXT strings (`key=value`; a bare `key` has an empty value).
fn meta_of(strings: &[Box<[u8]>]) -> Result<Meta, RegistryError> {
    let mut map = BTreeMap::new();
    for string in strings.iter().filter(|s| !s.is_empty()) {
        let text = std::str::from_utf8(string)
            .map_err(|_| refused("a TXT string is not UTF-8; metadata must be"))?;
        let (key, value) = text.split_once('=').unwrap_or((text, ""));
        map.insert(key.to_string(), value.to_string());
    }
    Meta::from_map(&map).map_err(|e| refused(e.to_string()))
}

/// `name` in our lowercase wire form, as the answer paths read names.
fn wire_name(name: &Name) -> Result<WireName, RegistryError> {
    WireName::from_wire(&lower_wire(name)).ok_or_else(bad_name)
}

fn bad_name() -> RegistryError {
    declined(ResponseCode::FormErr, "a name cannot be read")
}

fn refused(reason: impl Into<String>) -> RegistryError {
    declined(ResponseCode::Refused, reason)
}

fn unsupported(record: &Record) -> RegistryError {
    refused(format!(
        "{} {}: svcdns registers service instances only (SRV, TXT, PTR and the addresses of DNS-SD names; see README)",
        record.name,
        record.record_type()
    ))
}
