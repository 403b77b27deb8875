//! The naming table (DESIGN §1) as code: which registry data a query name in a zone
//! stands for.
//!
//! Names are not stored: a query name is split into labels, read right to left from
//! the zone apex, and looked up in the registry's indexes (service by name, instance by
//! id, groups by protocol and tag). That keeps a registry of a million instances free
//! of a million-entry name map, and makes every answer as current as the snapshot.

use hickory_proto::rr::RecordType;

use crate::registry::view::{Entry, Group, Service};
use crate::registry::{Label, Proto, ZoneView};

/// Address family of an address query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(record_type: RecordType) -> Option<Family> {
        match record_type {
            RecordType::A => Some(Family::V4),
            RecordType::AAAA => Some(Family::V6),
            _ => None,
        }
    }
}

/// Instances that answer under one name, in id order; `only` keeps those of one
/// protocol (subtype names of a service that mixes protocols).
#[derive(Clone, Copy)]
pub struct Members<'v> {
    entries: &'v [std::sync::Arc<Entry>],
    only: Option<Proto>,
}

impl<'v> Members<'v> {
    fn all(group: &'v Group) -> Members<'v> {
        Members {
            entries: group.members(),
            only: None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &'v Entry> + Clone + 'v {
        let only = self.only;
        self.entries
            .iter()
            .filter(move |entry| only.is_none_or(|proto| entry.instance.proto == proto))
            .map(|entry| &**entry)
    }

    /// Whether any member is left after filtering.
    fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// An upper bound of the count, exact when nothing is filtered.
    pub fn len_hint(&self) -> usize {
        self.entries.len()
    }

    /// The members as a slice, when nothing is filtered (so they can be sampled).
    pub fn as_slice(&self) -> Option<&'v [std::sync::Arc<Entry>]> {
        self.only.is_none().then_some(self.entries)
    }
}

/// Registry data that answers a query: one RRset, described by where its records come
/// from. The DNS side renders it into records.
pub enum Data<'v> {
    /// A or AAAA of a group: `S.Z`, `T.S.Z`.
    GroupAddresses { group: &'v Group, family: Family },
    /// A or AAAA of one instance: `I.S.Z`.
    HostAddresses { entry: &'v Entry, family: Family },
    /// The metadata of one instance: `I.S.Z` and `I._S._P.Z` TXT.
    Txt { entry: &'v Entry },
    /// One SRV per member, targets `I.S.Z`: `_S._P.Z` and `_S._T.Z`.
    Srv {
        service: &'v Label,
        members: Members<'v>,
    },
    /// The SRV of one DNS-SD instance: `I._S._P.Z`.
    InstanceSrv {
        service: &'v Label,
        entry: &'v Entry,
    },
    /// DNS-SD browsing, one PTR to `I._S._P.Z` per member: `_S._P.Z`, `_T._sub._S._P.Z`.
    Browse {
        service: &'v Label,
        proto: Proto,
        members: Members<'v>,
    },
    /// Every `_S._P.Z` in use: `_services._dns-sd._udp.Z`.
    ServiceTypes { zone: &'v ZoneView },
}

/// The outcome of looking a name up in the registry's part of a zone.
pub enum Resolution<'v> {
    Data(Data<'v>),
    /// The name exists, with no data of the asked type.
    NoData,
    NxDomain,
}

/// Where a name sits in the naming table, from its labels below the apex.
enum Node<'q> {
    /// `S.Z`
    Service(&'q str),
    /// `X.S.Z`: an instance id or a tag.
    ServiceChild { service: &'q str, child: &'q str },
    /// `_X.Z`: a protocol or a tag, an empty non-terminal.
    UnderscoreTop(&'q str),
    /// `_S._X.Z`: a service's SRV/PTR name for protocol or tag X.
    ServiceType { service: &'q str, kind: &'q str },
    /// `I._S._P.Z`
    DnsSdInstance {
        service: &'q str,
        proto: Proto,
        id: &'q str,
    },
    /// `_sub._S._P.Z`, an empty non-terminal.
    SubtypeParent { service: &'q str, proto: Proto },
    /// `_T._sub._S._P.Z`
    Subtype {
        service: &'q str,
        proto: Proto,
        tag: &'q str,
    },
    /// `_services._dns-sd._udp.Z`
    ServiceTypes,
    /// Anything else: not a name the registry makes.
    Other,
}

/// Resolves the name whose labels below the apex are `relative` (leftmost first, in
/// lowercase) against one zone of a snapshot.
pub fn resolve<'v>(
    zone: &'v ZoneView,
    relative: &[&str],
    record_type: RecordType,
) -> Resolution<'v> {
    match parse(relative) {
        Node::Service(service) => match zone.service(service) {
            Some(found) => group_addresses(found.all(), record_type),
            None => Resolution::NxDomain,
        },
        Node::ServiceChild { service, child } => {
            let Some(found) = zone.service(service) else {
                return Resolution::NxDomain;
            };
            if let Some(entry) = found.instance(child) {
                return host(entry, record_type);
            }
            match found.tag(child) {
                Some(group) => group_addresses(group, record_type),
                None => Resolution::NxDomain,
            }
        }
        Node::UnderscoreTop(label) => {
            let exists = match proto_of(label) {
                // `_udp.Z` is also an ancestor of the DNS-SD service list.
                Some(Proto::Udp) => zone.proto_in_use(Proto::Udp) || zone.service_types().len() > 0,
                Some(Proto::Tcp) => zone.proto_in_use(Proto::Tcp),
                None => zone.tag_in_use(label),
            };
            empty_non_terminal(exists)
        }
        Node::ServiceType { service, kind } => {
            let found = zone.service_named(service);
            let resolution = match (found, proto_of(kind)) {
                (Some((name, found)), Some(proto)) => match found.proto(proto) {
                    Some(group) => service_type(name, proto, Members::all(group), record_type),
                    None => Resolution::NxDomain,
                },
                (Some((name, found)), None) => match found.tag(kind) {
                    Some(group) => srv_only(name, Members::all(group), record_type),
                    None => Resolution::NxDomain,
                },
                (None, _) => Resolution::NxDomain,
            };
            // `_dns-sd._udp.Z` is also the parent of the DNS-SD service list.
            match resolution {
                Resolution::NxDomain if (service, kind) == ("dns-sd", "udp") => {
                    empty_non_terminal(zone.service_types().len() > 0)
                }
                other => other,
            }
        }
        Node::DnsSdInstance { service, proto, id } => {
            let Some((name, found)) = zone.service_named(service) else {
                return Resolution::NxDomain;
            };
            match found.instance(id) {
                Some(entry) if entry.instance.proto == proto => match record_type {
                    RecordType::SRV | RecordType::ANY => Resolution::Data(Data::InstanceSrv {
                        service: name,
                        entry,
                    }),
                    RecordType::TXT => Resolution::Data(Data::Txt { entry }),
                    _ => Resolution::NoData,
                },
                _ => Resolution::NxDomain,
            }
        }
        Node::SubtypeParent { service, proto } => {
            empty_non_terminal(zone.service(service).is_some_and(|s| s.has_subtypes(proto)))
        }
        Node::Subtype {
            service,
            proto,
            tag,
        } => {
            let Some((name, found)) = zone.service_named(service) else {
                return Resolution::NxDomain;
            };
            let members = subtype_members(found, proto, tag);
            if members.is_empty() {
                return Resolution::NxDomain;
            }
            match record_type {
                RecordType::PTR | RecordType::ANY => Resolution::Data(Data::Browse {
                    service: name,
                    proto,
                    members,
                }),
                _ => Resolution::NoData,
            }
        }
        Node::ServiceTypes => {
            if zone.service_types().len() == 0 {
                return Resolution::NxDomain;
            }
            match record_type {
                RecordType::PTR | RecordType::ANY => Resolution::Data(Data::ServiceTypes { zone }),
                _ => Resolution::NoData,
            }
        }
        Node::Other => Resolution::NxDomain,
    }
}

fn parse<'q>(relative: &[&'q str]) -> Node<'q> {
    let underscored = |label: &'q str| label.strip_prefix('_');
    match *relative {
        [service] => match underscored(service) {
            Some(label) => Node::UnderscoreTop(label),
            None => Node::Service(service),
        },
        [child, service] => match (underscored(child), underscored(service)) {
            (None, None) => Node::ServiceChild { service, child },
            (Some(service), Some(kind)) => Node::ServiceType { service, kind },
            _ => Node::Other,
        },
        [first, service, proto] => {
            let (Some(service), Some(proto)) = (underscored(service), underscored(proto)) else {
                return Node::Other;
            };
            match (first, proto) {
                ("_services", "udp") if service == "dns-sd" => Node::ServiceTypes,
                ("_sub", _) => match proto_of(proto) {
                    Some(proto) => Node::SubtypeParent { service, proto },
                    None => Node::Other,
                },
                (id, _) if !id.starts_with('_') => match proto_of(proto) {
                    Some(proto) => Node::DnsSdInstance { service, proto, id },
                    None => Node::Other,
                },
                _ => Node::Other,
            }
        }
        [tag, "_sub", service, proto] => {
            let (Some(tag), Some(service), Some(proto)) = (
                underscored(tag),
                underscored(service),
                underscored(proto).and_then(proto_of),
            ) else {
                return Node::Other;
            };
            Node::Subtype {
                service,
                proto,
                tag,
            }
        }
        _ => Node::Other,
    }
}

fn proto_of(label: &str) -> Option<Proto> {
    match label {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        _ => None,
    }
}

fn empty_non_terminal(exists: bool) -> Resolution<'static> {
    if exists {
        Resolution::NoData
    } else {
        Resolution::NxDomain
    }
}

fn subtype_members<'v>(service: &'v Service, proto: Proto, tag: &str) -> Members<'v> {
    let (entries, only) = service.subtype(proto, tag);
    Members { entries, only }
}

/// `S.Z` / `T.S.Z`: the group's addresses; ANY takes the first family present.
fn group_addresses(group: &Group, record_type: RecordType) -> Resolution<'_> {
    let family = match Family::of(record_type) {
        Some(family) => Some(family),
        None if record_type == RecordType::ANY => {
            if !group.v4().is_empty() {
                Some(Family::V4)
            } else {
                Some(Family::V6)
            }
        }
        None => None,
    };
    let present = match family {
        Some(Family::V4) => !group.v4().is_empty(),
        Some(Family::V6) => !group.v6().is_empty(),
        None => false,
    };
    match family {
        Some(family) if present => Resolution::Data(Data::GroupAddresses { group, family }),
        _ => Resolution::NoData,
    }
}

/// `I.S.Z`: the instance's addresses and TXT; ANY takes its first address family.
fn host(entry: &Entry, record_type: RecordType) -> Resolution<'_> {
    let has = |family: Family| match family {
        Family::V4 => entry.instance.v4().next().is_some(),
        Family::V6 => entry.instance.v6().next().is_some(),
    };
    let family = match record_type {
        RecordType::TXT => return Resolution::Data(Data::Txt { entry }),
        RecordType::ANY if has(Family::V4) => Family::V4,
        RecordType::ANY => Family::V6,
        other => match Family::of(other) {
            Some(family) => family,
            None => return Resolution::NoData,
        },
    };
    if has(family) {
        Resolution::Data(Data::HostAddresses { entry, family })
    } else {
        Resolution::NoData
    }
}

/// `_S._P.Z`: SRV for direct use, PTR for DNS-SD browsing; ANY takes the SRV.
fn service_type<'v>(
    service: &'v Label,
    proto: Proto,
    members: Members<'v>,
    record_type: RecordType,
) -> Resolution<'v> {
    match record_type {
        RecordType::PTR => Resolution::Data(Data::Browse {
            service,
            proto,
            members,
        }),
        _ => srv_only(service, members, record_type),
    }
}

/// `_S._T.Z` (and the SRV of `_S._P.Z`).
fn srv_only<'v>(
    service: &'v Label,
    members: Members<'v>,
    record_type: RecordType,
) -> Resolution<'v> {
    match record_type {
        RecordType::SRV | RecordType::ANY => Resolution::Data(Data::Srv { service, members }),
        _ => Resolution::NoData,
    }
}
