//! What a registered service instance is, and the checks every registration passes
//! before it may touch the registry, whatever the source (socket, zone file, CLI).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::RegistryError;

/// Longest DNS label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// Longest character-string in a TXT record (RFC 1035 §3.3).
pub const MAX_TXT_STRING_LEN: usize = 255;
/// Longest lease a registration may ask for: a day. Longer leases are what permanent
/// registrations are for, and a bound keeps `Instant` arithmetic far from overflow.
pub const MAX_LEASE_SECS: u64 = 86_400;
/// Upper bound for a per-instance record TTL; DNS caps TTLs at 2^31-1 (RFC 2181 §8) but
/// a discovery record cached for more than a day defeats the point.
pub const MAX_DNS_TTL: u32 = 86_400;
/// Addresses per instance. An instance is one endpoint; a bound keeps one registration
/// from producing a response no client can take even over TCP.
pub const MAX_ADDRESSES: usize = 16;
/// Tags per instance, for the same reason.
pub const MAX_TAGS: usize = 32;

/// One DNS label in its canonical (lowercase) form: letters, digits and hyphens, not
/// starting or ending with a hyphen, 1-63 bytes (the LDH rule of RFC 1123 §2.1).
///
/// Service names, instance ids and tags are all labels, so they share this type; the
/// lowercasing makes `Web-1` and `web-1` the same instance, as DNS would see them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Label(String);

impl Label {
    /// Validates `text` as an LDH label; `what` names the field for the error message.
    pub fn parse(text: &str, what: LabelKind) -> Result<Label, RegistryError> {
        let problem = if text.is_empty() {
            Some("is empty")
        } else if text.len() > MAX_LABEL_LEN {
            Some("is longer than 63 bytes")
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
            None => Ok(Label(text.to_ascii_lowercase())),
        }
    }

    pub fn as_str(&self) -> &str {
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
    pub fn field(self) -> &'static str {
        match self {
            LabelKind::Service => "service",
            LabelKind::Id => "id",
            LabelKind::Tag => "tag",
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
}

/// A fully validated registration: what the registry stores and the DNS side renders.
///
/// Immutable once built; a re-registration or renewal replaces the whole value, so
/// readers holding an `Arc<Instance>` never see a half-applied change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// Zone origin, lowercase and fully qualified (`svc.internal.`).
    pub zone: String,
    pub service: Label,
    pub id: Label,
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    pub proto: Proto,
    pub priority: u16,
    pub weight: u16,
    /// Sorted and without duplicates.
    pub tags: Vec<Label>,
    pub meta: BTreeMap<String, String>,
    /// Record TTL for this instance's names; the zone's default when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_ttl: Option<u32>,
    /// Lease length in seconds; `None` for registrations that do not expire by time.
    pub ttl: Option<u64>,
    /// Removed when the connection that registered it closes.
    pub ephemeral: bool,
}

impl Instance {
    /// Checks the cross-field rules that single-field parsing cannot see. Called by the
    /// registry on every insert, so no source can bypass it.
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.addresses.is_empty() {
            return Err(RegistryError::MissingField("addresses"));
        }
        if self.addresses.len() > MAX_ADDRESSES {
            return Err(RegistryError::TooMany {
                field: "addresses",
                count: self.addresses.len(),
                max: MAX_ADDRESSES,
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
        if self.tags.len() > MAX_TAGS {
            return Err(RegistryError::TooMany {
                field: "tags",
                count: self.tags.len(),
                max: MAX_TAGS,
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
                    service: self.service.to_string(),
                    label: tag.to_string(),
                    detail: "this registration uses it as both its id and a tag",
                });
            }
        }
        for (key, value) in &self.meta {
            validate_meta(key, value)?;
        }
        if let Some(ttl) = self.ttl {
            if ttl == 0 || ttl > MAX_LEASE_SECS {
                return Err(RegistryError::InvalidTtl {
                    field: "ttl",
                    value: ttl,
                    max: MAX_LEASE_SECS,
                });
            }
        }
        if let Some(ttl) = self.dns_ttl {
            if ttl > MAX_DNS_TTL {
                return Err(RegistryError::InvalidTtl {
                    field: "dns_ttl",
                    value: u64::from(ttl),
                    max: u64::from(MAX_DNS_TTL),
                });
            }
        }
        Ok(())
    }

    pub fn has_tag(&self, tag: &Label) -> bool {
        self.tags.binary_search(tag).is_ok()
    }

    /// The metadata as DNS-SD TXT strings (`key=value`, RFC 6763 §6.3).
    pub fn txt_strings(&self) -> Vec<String> {
        self.meta.iter().map(|(k, v)| format!("{k}={v}")).collect()
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
}
