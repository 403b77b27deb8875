//! The DNS names of one service (DESIGN §1), rendered from its instance list.
//!
//! Everything a service contributes to its zone lives under names only it can own
//! (`S.Z` and below, `_S._X.Z` and below), so one service is always rebuilt alone and
//! the result is independent of every other service.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, PTR, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet};
use hickory_proto::ProtoError;

use super::answer::{record_set, single_record_set, Answer, NameEntry};
use crate::registry::{Instance, Label, Proto};

/// The DNS names of one service: name → entry, ready to publish.
pub type ServiceNames = BTreeMap<LowerName, NameEntry>;

/// Builds every name of `service` in the zone `origin`. `default_ttl` applies to
/// instances that set no `dns_ttl`; an RRset drawn from several instances takes the
/// smallest of their TTLs, since one RRset has one TTL (RFC 2181 §5.2).
pub fn build(
    origin: &Name,
    default_ttl: u32,
    service: &Label,
    instances: &[Arc<Instance>],
) -> Result<ServiceNames, ProtoError> {
    let mut out = Output::default();
    if instances.is_empty() {
        return Ok(out.names);
    }
    let service_name = child(origin, service.as_str())?;
    let hosts = instances
        .iter()
        .map(|instance| Host::new(&service_name, default_ttl, instance))
        .collect::<Result<Vec<_>, _>>()?;

    // I.S.Z: the instance's addresses and its metadata.
    for host in &hosts {
        for addresses in host.address_sets() {
            out.add(
                &host.name,
                Some(Answer::new(addresses.as_ref().clone(), vec![])),
            );
        }
        out.add(
            &host.name,
            Answer::from_rdata(&host.name, host.ttl, [host.txt()], vec![]),
        );
    }

    // S.Z and T.S.Z: addresses of all / of the tagged instances.
    out.add_addresses(&service_name, &hosts.iter().collect::<Vec<_>>());
    let tags: BTreeSet<&Label> = instances.iter().flat_map(|i| &i.tags).collect();
    for tag in &tags {
        let tagged: Vec<&Host> = hosts.iter().filter(|h| h.instance.has_tag(tag)).collect();
        out.add_addresses(&child(&service_name, tag.as_str())?, &tagged);
        // _S._T.Z: the Consul RFC 2782 tag form, every protocol.
        let tag_srv = child(&child(origin, &format!("_{tag}"))?, &format!("_{service}"))?;
        out.add_srv(&tag_srv, &tagged);
    }

    let protos: BTreeSet<Proto> = instances.iter().map(|i| i.proto).collect();
    for proto in protos {
        let of_proto: Vec<&Host> = hosts.iter().filter(|h| h.instance.proto == proto).collect();
        let type_name = service_type_name(origin, service, proto)?;
        // _S._P.Z: SRV for direct use, PTR for DNS-SD browsing.
        out.add_srv(&type_name, &of_proto);
        let mut instance_names = Vec::with_capacity(of_proto.len());
        for host in &of_proto {
            let instance_name = child(&type_name, host.instance.id.as_str())?;
            let dnssd = DnsSdInstance::new(&instance_name, host);
            out.add(
                &instance_name,
                Some(Answer::new(dnssd.srv.as_ref().clone(), host.address_sets())),
            );
            out.add(
                &instance_name,
                Some(Answer::new(dnssd.txt.as_ref().clone(), vec![])),
            );
            instance_names.push(dnssd);
        }
        out.add_browse(&type_name, &instance_names);
        // _T._sub._S._P.Z: DNS-SD subtype browsing (RFC 6763 §7.1).
        let sub = child(&type_name, "_sub")?;
        for tag in &tags {
            let tagged: Vec<DnsSdInstance> = instance_names
                .iter()
                .filter(|d| d.host.instance.has_tag(tag))
                .cloned()
                .collect();
            if !tagged.is_empty() {
                out.add_browse(&child(&sub, &format!("_{tag}"))?, &tagged);
            }
        }
    }
    Ok(out.names)
}

/// `_S._P.Z`, the DNS-SD service type name listed under `_services._dns-sd._udp.Z`.
pub fn service_type_name(origin: &Name, service: &Label, proto: Proto) -> Result<Name, ProtoError> {
    child(&child(origin, proto.label())?, &format!("_{service}"))
}

/// `label.parent`. Labels go in as raw bytes: underscores are legal in DNS names, and
/// every label here was validated as LDH (with a leading `_` added by us).
pub fn child(parent: &Name, label: &str) -> Result<Name, ProtoError> {
    Name::from_labels([label.as_bytes()])?.append_domain(parent)
}

/// One instance's host name `I.S.Z` and its address RRsets, shared (by `Arc`) between
/// the host's own answers and every answer that lists it as an additional.
struct Host<'a> {
    instance: &'a Instance,
    name: Name,
    ttl: u32,
    a: Option<Arc<RecordSet>>,
    aaaa: Option<Arc<RecordSet>>,
}

impl<'a> Host<'a> {
    fn new(
        service_name: &Name,
        default_ttl: u32,
        instance: &'a Instance,
    ) -> Result<Self, ProtoError> {
        let name = child(service_name, instance.id.as_str())?;
        let ttl = instance.dns_ttl.unwrap_or(default_ttl);
        Ok(Host {
            instance,
            a: record_set(&name, ttl, v4s(&instance.addresses)).map(Arc::new),
            aaaa: record_set(&name, ttl, v6s(&instance.addresses)).map(Arc::new),
            name,
            ttl,
        })
    }

    fn txt(&self) -> RData {
        txt_rdata(self.instance)
    }

    fn srv(&self) -> RData {
        RData::SRV(SRV::new(
            self.instance.priority,
            self.instance.weight,
            self.instance.port,
            self.name.clone(),
        ))
    }

    /// The host's A and AAAA sets, as additional records for answers that point here.
    fn address_sets(&self) -> Vec<Arc<RecordSet>> {
        self.a.iter().chain(&self.aaaa).cloned().collect()
    }
}

/// A DNS-SD instance `I._S._P.Z` with its SRV and TXT sets.
#[derive(Clone)]
struct DnsSdInstance<'h, 'a> {
    name: Name,
    host: &'h Host<'a>,
    srv: Arc<RecordSet>,
    txt: Arc<RecordSet>,
}

impl<'h, 'a> DnsSdInstance<'h, 'a> {
    fn new(name: &Name, host: &'h Host<'a>) -> Self {
        let single = |rdata: RData| {
            Arc::new(single_record_set(Record::from_rdata(
                name.clone(),
                host.ttl,
                rdata,
            )))
        };
        DnsSdInstance {
            name: name.clone(),
            srv: single(host.srv()),
            txt: single(host.txt()),
            host,
        }
    }
}

#[derive(Default)]
struct Output {
    names: ServiceNames,
}

impl Output {
    fn add(&mut self, name: &Name, answer: Option<Answer>) {
        if let Some(answer) = answer {
            self.names
                .entry(LowerName::new(name))
                .or_default()
                .answers
                .push(Arc::new(answer));
        }
    }

    /// A and AAAA at `name` for the addresses of `hosts`.
    fn add_addresses(&mut self, name: &Name, hosts: &[&Host]) {
        let ttl = min_ttl(hosts);
        let addresses: Vec<IpAddr> = hosts
            .iter()
            .flat_map(|h| h.instance.addresses.iter().copied())
            .collect();
        self.add(name, Answer::from_rdata(name, ttl, v4s(&addresses), vec![]));
        self.add(name, Answer::from_rdata(name, ttl, v6s(&addresses), vec![]));
    }

    /// SRV at `name`, one per host, with the targets' addresses as additionals.
    fn add_srv(&mut self, name: &Name, hosts: &[&Host]) {
        let additionals = hosts.iter().flat_map(|h| h.address_sets()).collect();
        let answer = Answer::from_rdata(
            name,
            min_ttl(hosts),
            hosts.iter().map(|h| h.srv()),
            additionals,
        );
        self.add(name, answer);
    }

    /// PTR browse answer at `name` (RFC 6763 §4): one PTR per instance, with each
    /// instance's SRV, TXT and addresses as additionals (RFC 6763 §12.1), instance by
    /// instance so that trimming for size keeps whole instances.
    fn add_browse(&mut self, name: &Name, instances: &[DnsSdInstance]) {
        let hosts: Vec<&Host> = instances.iter().map(|d| d.host).collect();
        let additionals = instances
            .iter()
            .flat_map(|d| {
                [d.srv.clone(), d.txt.clone()]
                    .into_iter()
                    .chain(d.host.address_sets())
            })
            .collect();
        let pointers = instances.iter().map(|d| RData::PTR(PTR(d.name.clone())));
        self.add(
            name,
            Answer::from_rdata(name, min_ttl(&hosts), pointers, additionals),
        );
    }
}

fn min_ttl(hosts: &[&Host]) -> u32 {
    hosts.iter().map(|h| h.ttl).min().unwrap_or(0)
}

fn v4s(addresses: &[IpAddr]) -> impl Iterator<Item = RData> + '_ {
    addresses.iter().filter_map(|a| match a {
        IpAddr::V4(v4) => Some(RData::A(A(*v4))),
        IpAddr::V6(_) => None,
    })
}

fn v6s(addresses: &[IpAddr]) -> impl Iterator<Item = RData> + '_ {
    addresses.iter().filter_map(|a| match a {
        IpAddr::V6(v6) => Some(RData::AAAA(AAAA(*v6))),
        IpAddr::V4(_) => None,
    })
}

/// TXT of an instance: its metadata as `key=value` strings. Without metadata it is a
/// single empty string, since every DNS-SD instance must have a TXT record (RFC 6763 §6.1).
fn txt_rdata(instance: &Instance) -> RData {
    let mut strings = instance.txt_strings();
    if strings.is_empty() {
        strings.push(String::new());
    }
    RData::TXT(TXT::new(strings))
}
