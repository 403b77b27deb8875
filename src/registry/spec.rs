//! Reading a registration (DESIGN §2 fields) from a JSON object, field by field, so every
//! mistake gets the code of the field it concerns and a message quoting the value.
//!
//! Both the registration socket and the `services:` of zone files go through here, so
//! the two accept exactly the same registrations.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hickory_proto::rr::Name;
use serde_json::{Map, Value};

use super::model::{
    Health, Instance, Label, LabelKind, Meta, Proto, Registration, MAX_DNS_TTL, MAX_LEASE_SECS,
};
use super::{InstanceKey, RegistryError};

/// The fields of a registration.
pub const INSTANCE_FIELDS: &[&str] = &[
    "service",
    "id",
    "addresses",
    "port",
    "proto",
    "priority",
    "weight",
    "tags",
    "meta",
    "ttl",
    "dns_ttl",
    "ephemeral",
    "zone",
];

/// The fields that name one instance (renew, deregister).
pub const KEY_FIELDS: &[&str] = &["service", "id", "zone"];

/// Reads a registration. `extra` lists other fields the caller handles (such as `op`);
/// any field in neither list is refused, so a typo never silently does nothing.
pub fn registration_from_json(
    object: &Map<String, Value>,
    default_zone: &str,
    extra: &[&str],
) -> Result<Registration, RegistryError> {
    reject_unknown(object, INSTANCE_FIELDS, extra)?;
    let fields = Fields(object);
    let mut addresses = match object.get("addresses") {
        None | Some(Value::Null) => return Err(RegistryError::MissingField("addresses")),
        Some(Value::Array(items)) => items
            .iter()
            .map(parse_address)
            .collect::<Result<Vec<_>, _>>()?,
        Some(single @ Value::String(_)) => vec![parse_address(single)?],
        Some(other) => {
            return Err(bad_value(
                "invalid_address",
                "addresses",
                other,
                "a list of IP addresses",
            ))
        }
    };
    // An address listed twice is one endpoint, and would be one record twice.
    let mut seen = Vec::with_capacity(addresses.len());
    addresses.retain(|address| {
        let first = !seen.contains(address);
        seen.push(*address);
        first
    });
    let port = match fields.unsigned("port", "invalid_port")? {
        None => return Err(RegistryError::MissingField("port")),
        Some(port) => u16::try_from(port).map_err(|_| RegistryError::InvalidPort(port))?,
    };
    let proto = match fields.string("proto", "invalid_proto")? {
        None => Proto::default(),
        Some(text) => Proto::parse(text)?,
    };
    let mut tags = match object.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Label::parse(text, LabelKind::Tag),
                other => Err(bad_value("invalid_tag", "tags", other, "a list of strings")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => return Err(bad_value("invalid_tag", "tags", other, "a list of strings")),
    };
    tags.sort();
    tags.dedup();
    let meta = match object.get("meta") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(key, value)| match value {
                Value::String(text) => Ok((key.clone(), text.clone())),
                // Numbers and booleans are written as JSON would write them, which is
                // what a user who typed `"port": 80` into meta expects to see in TXT.
                Value::Number(_) | Value::Bool(_) => Ok((key.clone(), value.to_string())),
                other => Err(bad_value("invalid_meta", "meta", other, "a map of strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(bad_value("invalid_meta", "meta", other, "a map of strings")),
    };
    let meta = Meta::from_map(&meta)?;
    let dns_ttl = fields.seconds("dns_ttl", "invalid_dns_ttl", 0, MAX_DNS_TTL)?;
    let ttl = fields.seconds("ttl", "invalid_ttl", 1, MAX_LEASE_SECS)?;
    Ok(Registration {
        zone: zone_from_json(object, default_zone)?,
        service: fields.label("service", LabelKind::Service)?,
        instance: Instance {
            id: fields.label("id", LabelKind::Id)?,
            addresses: addresses.into_boxed_slice(),
            port,
            proto,
            priority: fields.u16_or("priority", "invalid_priority", 1)?,
            weight: fields.u16_or("weight", "invalid_weight", 1)?,
            tags: tags.into_boxed_slice(),
            meta,
            dns_ttl,
            ttl,
            ephemeral: fields
                .boolean("ephemeral", "invalid_ephemeral")?
                .unwrap_or(false),
        },
    })
}

/// Reads the (zone, service, id) that renew and deregister act on.
pub fn key_from_json(
    object: &Map<String, Value>,
    default_zone: &str,
    extra: &[&str],
) -> Result<InstanceKey, RegistryError> {
    reject_unknown(object, KEY_FIELDS, extra)?;
    let fields = Fields(object);
    Ok(InstanceKey {
        zone: zone_from_json(object, default_zone)?,
        service: fields.label("service", LabelKind::Service)?,
        id: fields.label("id", LabelKind::Id)?,
    })
}

/// The instance and health of a `mark` request: `{"service","id","health"}` (and
/// `zone`). `health` is required: a mark that defaulted would be a guess.
pub fn mark_from_json(
    object: &Map<String, Value>,
    default_zone: &str,
    extra: &[&str],
) -> Result<(InstanceKey, Health), RegistryError> {
    let mut allowed = extra.to_vec();
    allowed.push("health");
    let key = key_from_json(object, default_zone, &allowed)?;
    let fields = Fields(object);
    let health = fields
        .string("health", "invalid_health")?
        .ok_or(RegistryError::MissingField("health"))?;
    Ok((key, Health::parse(health)?))
}

/// Canonical form of a zone name: lowercase, fully qualified (`svc.internal.`).
pub fn canonical_zone(text: &str) -> Option<String> {
    let name = Name::from_ascii(text).ok()?;
    if name.is_root() {
        return None;
    }
    let mut name = name.to_lowercase();
    name.set_fqdn(true);
    Some(name.to_string())
}

fn zone_from_json(
    object: &Map<String, Value>,
    default_zone: &str,
) -> Result<String, RegistryError> {
    match Fields(object).string("zone", "unknown_zone")? {
        None => Ok(default_zone.to_string()),
        Some(text) => {
            canonical_zone(text).ok_or_else(|| RegistryError::UnknownZone(text.to_string()))
        }
    }
}

/// Refuses a field of `object` that is in neither `known` nor `extra`.
pub fn reject_unknown(
    object: &Map<String, Value>,
    known: &[&str],
    extra: &[&str],
) -> Result<(), RegistryError> {
    match object
        .keys()
        .find(|key| !known.contains(&key.as_str()) && !extra.contains(&key.as_str()))
    {
        Some(key) => Err(RegistryError::UnknownField(key.clone())),
        None => Ok(()),
    }
}

fn parse_address(value: &Value) -> Result<IpAddr, RegistryError> {
    match value {
        Value::String(text) => text.parse().map_err(|_| RegistryError::InvalidAddress {
            value: text.clone(),
            problem: "is not an IPv4 or IPv6 address",
        }),
        other => Err(bad_value(
            "invalid_address",
            "addresses",
            other,
            "an IP address string",
        )),
    }
}

fn bad_value(
    code: &'static str,
    field: &'static str,
    value: &Value,
    expected: &'static str,
) -> RegistryError {
    let mut shown = value.to_string();
    if shown.len() > 64 {
        shown.truncate(61);
        shown.push_str("...");
    }
    RegistryError::BadValue {
        code,
        field,
        value: shown,
        expected,
    }
}

/// Typed access to optional fields; `null` counts as absent.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    fn label(&self, field: &'static str, kind: LabelKind) -> Result<Label, RegistryError> {
        let code = match kind {
            LabelKind::Service => "invalid_service",
            LabelKind::Id => "invalid_id",
            LabelKind::Tag => "invalid_tag",
        };
        match self.string(field, code)? {
            Some(text) => Label::parse(text, kind),
            None => Err(RegistryError::MissingField(field)),
        }
    }

    fn string(
        &self,
        field: &'static str,
        code: &'static str,
    ) -> Result<Option<&str>, RegistryError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(bad_value(code, field, other, "a string")),
        }
    }

    fn unsigned(
        &self,
        field: &'static str,
        code: &'static str,
    ) -> Result<Option<u64>, RegistryError> {
        match self.get(field) {
            None => Ok(None),
            Some(value) => match value.as_u64() {
                Some(number) => Ok(Some(number)),
                None => Err(bad_value(
                    code,
                    field,
                    value,
                    "a whole number of at least 0",
                )),
            },
        }
    }

    /// A duration in seconds that must fit a `u32`; the range up to `max` is checked
    /// with the instance (`Instance::validate`), which gives the same error.
    fn seconds(
        &self,
        field: &'static str,
        code: &'static str,
        min: u32,
        max: u32,
    ) -> Result<Option<u32>, RegistryError> {
        self.unsigned(field, code)?
            .map(|value| {
                u32::try_from(value).map_err(|_| RegistryError::InvalidTtl {
                    field,
                    value,
                    min: u64::from(min),
                    max: u64::from(max),
                })
            })
            .transpose()
    }

    fn u16_or(
        &self,
        field: &'static str,
        code: &'static str,
        default: u16,
    ) -> Result<u16, RegistryError> {
        match self.unsigned(field, code)? {
            None => Ok(default),
            Some(number) => u16::try_from(number).map_err(|_| RegistryError::OutOfRange {
                code,
                field,
                value: number,
                max: u64::from(u16::MAX),
            }),
        }
    }

    fn boolean(
        &self,
        field: &'static str,
        code: &'static str,
    ) -> Result<Option<bool>, RegistryError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => Err(bad_value(code, field, other, "true or false")),
        }
    }
}
