//! What a registered service instance is, and the checks every registration passes
//! before it may touch the registry, whatever the source (socket, zone file, CLI).
//!
//! The types are compact on purpose: a registry holds up to millions of instances, so an
//! instance keeps its labels inline (no heap allocation for labels up to 24 bytes), its
//! addresses and tags in exact-size boxes, and its metadata in the TXT wire form DNS
//! serves it in, rather than as a map.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use compact_str::CompactString;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::RegistryError;

/// Longest DNS label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// Longest character-string in a TXT record (RFC 1035 §3.3).
pub const MAX_TXT_STRING_LEN: usize = 255;
/// Longest lease a registration may ask for: a day. Longer leases are what permanent
/// registrations are for, and a bound keeps deadline arithmetic far from overflow.
pub const MAX_LEASE_SECS: u32 = 86_400;
/// Upper bound for a per-instance record TTL; DNS caps TTLs at 2^31-1 (RFC 2181 §8) but
/// a discovery record cached for more than a day defeats the point.
pub const MAX_DNS_TTL: u32 = 86_400;

/// How large one instance may be (`registration.max_addresses`, `max_tags`,
/// `max_meta_bytes`). Bounds keep one registration from making answers no client can
/// take, even over TCP, and from taking a share of memory out of proportion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceLimits {
    /// Addresses per instance: an instance is one endpoint, usually with one or two.
    pub max_addresses: usize,
    /// Tags per instance; each adds names to the zone.
    pub max_tags: usize,
    /// The whole TXT record of an instance's metadata. The default fits a UDP answer
    /// beside the rest (DNS-SD advises keeping TXT records small, RFC 6763 §6.2).
    pub max_meta_bytes: usize,
}

impl InstanceLimits {
    pub const DEFAULT: InstanceLimits = InstanceLimits {
        max_addresses: 16,
        max_tags: 32,
        max_meta_bytes: 4096,
    };

    /// The most a setting may allow. Beyond these one instance's A or AAAA set, its
    /// names or its TXT record would crowd out everything else in a 64 KiB DNS
    /// message; zone files (the operator's own) are held to these too.
    pub const CEILING: InstanceLimits = InstanceLimits {
        max_addresses: 64,
        max_tags: 256,
        max_meta_bytes: 16_384,
    };
}

impl Default for InstanceLimits {
    fn default() -> InstanceLimits {
        InstanceLimits::DEFAULT
    }
}

/// One DNS label in its canonical (lowercase) form: letters, digits and hyphens, not
/// starting or ending with a hyphen, 1-63 bytes (the LDH rule of RFC 1123 §2.1).
///
/// Service names, instance ids and tags are all labels, so they share this type; the
/// lowercasing makes `Web-1` and `web-1` the same instance, as DNS would see them.
/// Labels of up to 24 bytes are stored inline.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Label(CompactString);

impl Label {
    /// Validates `text` as an LDH label; `what` names the field for the error message.
    pub fn parse(text: &str, what: LabelKind) -> Result<Label, RegistryError> {
        let problem = if text.is_empty() {
            Some("is empty")
        } else if text.len() > what.max_len() {
            Some(match what {
                LabelKind::Id => "is longer than 63 bytes",
                // `_S` and `_T` must fit a DNS label too.
                LabelKind::Service | LabelKind::Tag => {
                    "is longer than 62 bytes (it is also used with a leading '_')"
                }
            })
        } else if !text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            Some("may contain only letters, digits and '-'")
        } else if text.starts_with('-') || text.ends_with('-') {
            Some("may not start or end with '-'")
        } else {
            None
        };
        match problem {
            Some(problem) => Err(RegistryError::InvalidLabel {
                kind: what,
                value: text.to_string(),
                problem,
            }),
            None => Ok(Label(CompactString::from(text.to_ascii_lowercase()))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by `Label` be probed with the `&str` of a DNS query's label.
impl Borrow<str> for Label {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which field a label came from, so errors carry the right stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelKind {
    Service,
    Id,
    Tag,
}

impl LabelKind {
    /// Longest label of this kind: a DNS label has at most 63 bytes (RFC 1035 §2.3.4),
    /// and services and tags also appear as `_S` and `_T`.
    pub fn max_len(self) -> usize {
        match self {
            LabelKind::Id => MAX_LABEL_LEN,
            LabelKind::Service | LabelKind::Tag => MAX_LABEL_LEN - 1,
        }
    }

    pub fn field(self) -> &'static str {
        match self {
            LabelKind::Service => "service",
            LabelKind::Id => "id",
            LabelKind::Tag => "tag",
        }
    }
}

/// Whether an instance takes traffic. A critical instance stays registered (listed,
/// leased, renewable) but is left out of every DNS answer until it is marked healthy
/// again: the way a service drains itself or a health checker takes it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Healthy,
    Critical,
}

impl Health {
    pub fn parse(text: &str) -> Result<Health, RegistryError> {
        match text {
            "healthy" => Ok(Health::Healthy),
            "critical" => Ok(Health::Critical),
            _ => Err(RegistryError::InvalidHealth(text.to_string())),
        }
    }
}

/// Transport protocol of a service: the `_P` label of its SRV name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    pub const ALL: [Proto; 2] = [Proto::Tcp, Proto::Udp];

    pub fn parse(text: &str) -> Result<Proto, RegistryError> {
        match text.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(RegistryError::InvalidProto(text.to_string())),
        }
    }

    /// The label as it appears in DNS names, with its underscore (`_tcp`).
    pub fn label(self) -> &'static str {
        match self {
            Proto::Tcp => "_tcp",
            Proto::Udp => "_udp",
        }
    }

    pub fn as_str(self) -> &'static str {
        &self.label()[1..]
    }

    /// Position in per-protocol arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// An instance's metadata, kept as the TXT RDATA DNS serves it in: a sequence of
/// `key=value` character-strings (RFC 6763 §6), each prefixed by its length, in key
/// order. Keys never contain `=`, so the map is recovered exactly.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Meta(Box<[u8]>);

impl Meta {
    /// Encodes a map, checking that every entry can be one TXT string.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Meta, RegistryError> {
        let mut wire = Vec::with_capacity(map.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
        let mut seen = std::collections::HashSet::with_capacity(map.len());
        for (key, value) in map {
            validate_meta(key, value)?;
            // DNS-SD keys are case-insensitive (RFC 6763 §6.4): `Version` and `version`
            // would be one key given twice, and clients would see either.
            if !seen.insert(key.to_ascii_lowercase()) {
                return Err(RegistryError::InvalidMeta {
                    key: key.clone(),
                    problem: "repeats another key that differs only in case (DNS-SD keys are case-insensitive)",
                });
            }
            // validate_meta bounds the string at 255 bytes, so the length fits a u8.
            wire.push((key.len() + 1 + value.len()) as u8);
            wire.extend_from_slice(key.as_bytes());
            wire.push(b'=');
            wire.extend_from_slice(value.as_bytes());
            // The configured bound is checked with the rest of the instance
            // (`Instance::validate`); this one keeps what is buffered bounded.
            if wire.len() > InstanceLimits::CEILING.max_meta_bytes {
                return Err(RegistryError::MetaTooLarge {
                    bytes: wire.len(),
                    max: InstanceLimits::CEILING.max_meta_bytes,
                });
            }
        }
        Ok(Meta(wire.into_boxed_slice()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The TXT RDATA, length bytes included; empty when there is no metadata.
    pub fn as_wire(&self) -> &[u8] {
        &self.0
    }

    /// The `key=value` strings, without their length bytes.
    pub fn strings(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest: &[u8] = &self.0;
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let (string, tail) = tail.split_at(usize::from(len).min(tail.len()));
            rest = tail;
            Some(string)
        })
    }

    /// The entries as (key, value).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.strings().filter_map(|string| {
            // Built from `&str`s by `from_map`, so always UTF-8 with an `=`.
            let text = std::str::from_utf8(string).ok()?;
            text.split_once('=')
        })
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.pairs()).finish()
    }
}

impl Serialize for Meta {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.pairs() {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// A fully validated service instance: everything about it except where it lives (its
/// zone and service, which the registry's indexes already hold).
///
/// Immutable once built; a re-registration replaces the whole value, so readers holding
/// one never see a half-applied change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: Label,
    pub addresses: Box<[IpAddr]>,
    pub port: u16,
    pub proto: Proto,
    pub priority: u16,
    pub weight: u16,
    /// Sorted and without duplicates.
    pub tags: Box<[Label]>,
    pub meta: Meta,
    /// Record TTL for this instance's names; the zone's default when absent.
    pub dns_ttl: Option<u32>,
    /// Lease length in seconds; `None` for registrations that do not expire by time.
    pub ttl: Option<u32>,
    /// Removed when the connection that registered it closes.
    pub ephemeral: bool,
}

/// A register request: an instance and the zone and service it goes into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Zone origin, lowercase and fully qualified (`svc.internal.`).
    pub zone: String,
    pub service: Label,
    pub instance: Instance,
}

impl Instance {
    /// Checks the cross-field rules that single-field parsing cannot see, and the size
    /// bounds in `limits`. Called by the registry on every insert, so no source can
    /// bypass it.
    pub fn validate(&self, service: &Label, limits: &InstanceLimits) -> Result<(), RegistryError> {
        if self.addresses.is_empty() {
            return Err(RegistryError::MissingField("addresses"));
        }
        if self.addresses.len() > limits.max_addresses {
            return Err(RegistryError::TooMany {
                field: "addresses",
                count: self.addresses.len(),
                max: limits.max_addresses,
                setting: "registration.max_addresses",
            });
        }
        if let Some(bad) = self.addresses.iter().find(|a| !is_usable_address(a)) {
            return Err(RegistryError::InvalidAddress {
                value: bad.to_string(),
                problem: "is not a unicast host address",
            });
        }
        if self.port == 0 {
            return Err(RegistryError::InvalidPort(0));
        }
        if self.tags.len() > limits.max_tags {
            return Err(RegistryError::TooMany {
                field: "tags",
                count: self.tags.len(),
                max: limits.max_tags,
                setting: "registration.max_tags",
            });
        }
        if self.meta.as_wire().len() > limits.max_meta_bytes {
            return Err(RegistryError::MetaTooLarge {
                bytes: self.meta.as_wire().len(),
                max: limits.max_meta_bytes,
            });
        }
        for tag in &self.tags {
            if tag.as_str() == "tcp" || tag.as_str() == "udp" {
                return Err(RegistryError::InvalidLabel {
                    kind: LabelKind::Tag,
                    value: tag.to_string(),
                    problem: "is reserved: `_S._tcp`/`_S._udp` name the protocol, not a tag",
                });
            }
            if *tag == self.id {
                return Err(RegistryError::LabelConflict {
                    service: service.to_string(),
                    label: tag.to_string(),
                    detail: "this registration uses it as both its id and a tag",
                });
            }
        }
        if let Some(ttl) = self.ttl {
            if ttl == 0 || ttl > MAX_LEASE_SECS {
                return Err(RegistryError::InvalidTtl {
                    field: "ttl",
                    value: u64::from(ttl),
                    min: 1,
                    max: u64::from(MAX_LEASE_SECS),
                });
            }
        }
        if let Some(ttl) = self.dns_ttl {
            if ttl > MAX_DNS_TTL {
                return Err(RegistryError::InvalidTtl {
                    field: "dns_ttl",
                    value: u64::from(ttl),
                    min: 0,
                    max: u64::from(MAX_DNS_TTL),
                });
            }
        }
        Ok(())
    }

    /// The IPv4 addresses, in registration order.
    pub fn v4(&self) -> impl Iterator<Item = Ipv4Addr> + Clone + '_ {
        self.addresses.iter().filter_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
    }

    /// The IPv6 addresses, in registration order.
    pub fn v6(&self) -> impl Iterator<Item = Ipv6Addr> + Clone + '_ {
        self.addresses.iter().filter_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        })
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.binary_search_by(|t| t.as_str().cmp(tag)).is_ok()
    }
}

/// An instance as the protocol shows it (`list`, `watch`): its zone, service and fields.
pub struct InstanceJson<'a> {
    pub zone: &'a str,
    pub service: &'a Label,
    pub instance: &'a Instance,
    pub health: Health,
    /// Seconds until the lease expires, for leased instances in listings.
    pub expires_in: Option<f64>,
}

impl Serialize for InstanceJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let instance = self.instance;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("zone", self.zone)?;
        map.serialize_entry("service", self.service)?;
        map.serialize_entry("id", &instance.id)?;
        map.serialize_entry("addresses", &instance.addresses)?;
        map.serialize_entry("port", &instance.port)?;
        map.serialize_entry("proto", &instance.proto)?;
        map.serialize_entry("priority", &instance.priority)?;
        map.serialize_entry("weight", &instance.weight)?;
        map.serialize_entry("tags", &instance.tags)?;
        map.serialize_entry("meta", &instance.meta)?;
        if let Some(dns_ttl) = instance.dns_ttl {
            map.serialize_entry("dns_ttl", &dns_ttl)?;
        }
        map.serialize_entry("ttl", &instance.ttl)?;
        map.serialize_entry("ephemeral", &instance.ephemeral)?;
        map.serialize_entry("health", &self.health)?;
        if let Some(expires_in) = self.expires_in {
            map.serialize_entry("expires_in", &expires_in)?;
        }
        map.end()
    }
}

/// An address a client could connect to: not unspecified, multicast or broadcast.
fn is_usable_address(address: &IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

/// A metadata entry must become one TXT string `key=value` (RFC 6763 §6.4: the key is
/// printable ASCII without `=`, and the whole string fits in 255 bytes).
fn validate_meta(key: &str, value: &str) -> Result<(), RegistryError> {
    let problem = if key.is_empty() {
        Some("has an empty key")
    } else if !key.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b'=') {
        Some("has a key that is not printable ASCII without '='")
    } else if key.len() + 1 + value.len() > MAX_TXT_STRING_LEN {
        Some("is longer than 255 bytes as key=value")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(RegistryError::InvalidMeta {
            key: key.to_string(),
            problem,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_ldh_and_lowercased() {
        assert_eq!(
            Label::parse("Web-1", LabelKind::Id).map(|l| l.to_string()),
            Ok("web-1".to_string())
        );
        for bad in ["", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            assert!(Label::parse(bad, LabelKind::Service).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn meta_must_fit_one_txt_string() {
        assert!(validate_meta("version", "2.1").is_ok());
        assert!(validate_meta("a=b", "c").is_err());
        assert!(validate_meta("", "c").is_err());
        assert!(validate_meta("k", &"v".repeat(254)).is_err());
    }

    #[test]
    fn meta_round_trips_through_its_txt_form() {
        let map: BTreeMap<String, String> = [("version", "2.1"), ("zone", "a=b"), ("empty", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let meta = Meta::from_map(&map).unwrap();
        let back: BTreeMap<String, String> = meta
            .pairs()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(back, map);
        let strings: Vec<&[u8]> = meta.strings().collect();
        assert_eq!(strings, vec![&b"empty="[..], b"version=2.1", b"zone=a=b"]);
    }
}
