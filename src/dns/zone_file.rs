//! `zones/*.yaml`: one file per served zone (DESIGN §3).
//!
//! Values are checked while the YAML is read (via `try_from` types), so serde_yaml can
//! report the line of the offending value; a bad file stops start-up with
//! `zones/x.yaml:12: …`, never a half-loaded zone.

use std::fmt;
use std::fs;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, PTR, SRV, TXT};
use hickory_proto::rr::{Name, RData};

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::config::ConfigError;
use crate::registry::spec::{canonical_zone, registration_from_json};
use crate::registry::{InstanceLimits, Registration};

/// A zone ready to serve: from a file, or the built-in default zone.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneSpec {
    /// Lowercase, fully qualified.
    pub origin: Name,
    pub ttl: u32,
    pub soa: SoaSpec,
    pub ns: Vec<Name>,
    pub records: Vec<StaticRecord>,
    /// Instances that exist without registration, with their zone set to `origin`.
    pub services: Vec<Registration>,
    /// Where it came from, for messages; `None` for the built-in default.
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SoaSpec {
    pub mname: Name,
    pub rname: Name,
    pub refresh: i32,
    pub retry: i32,
    pub expire: i32,
    /// Negative-caching TTL (RFC 2308).
    pub minimum: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StaticRecord {
    /// Absolute owner name.
    pub name: Name,
    pub ttl: Option<u32>,
    pub rdata: RData,
}

impl ZoneSpec {
    /// A zone with nothing but its SOA and NS. The name server `ns.<origin>` gets the
    /// address svcdns answers DNS on, when there is one, so the NS is resolvable.
    pub fn empty(origin: Name, ttl: u32, ns_address: Option<IpAddr>) -> ZoneSpec {
        let mut spec = ZoneSpec {
            soa: SoaSpec::defaults(&origin, &[], ttl),
            ns: Vec::new(),
            records: Vec::new(),
            services: Vec::new(),
            source: None,
            origin,
            ttl,
        };
        spec.default_name_server(ns_address);
        spec
    }

    fn default_name_server(&mut self, ns_address: Option<IpAddr>) {
        if !self.ns.is_empty() {
            return;
        }
        let Ok(ns) = Name::from_ascii("ns").and_then(|n| n.append_domain(&self.origin)) else {
            return;
        };
        let has_address = self.records.iter().any(|r| r.name == ns);
        if let (Some(address), false) = (ns_address, has_address) {
            self.records.push(StaticRecord {
                name: ns.clone(),
                ttl: None,
                rdata: match address {
                    IpAddr::V4(v4) => RData::A(A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                },
            });
        }
        // The name server is the SOA's MNAME unless the file names another; whatever
        // else the file's `soa:` says stays.
        if self.soa.mname == self.origin {
            self.soa.mname = ns.clone();
        }
        self.ns.push(ns);
    }
}

impl SoaSpec {
    fn defaults(origin: &Name, ns: &[Name], ttl: u32) -> SoaSpec {
        let hostmaster = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(origin))
            .unwrap_or_else(|_| origin.clone());
        SoaSpec {
            mname: ns.first().cloned().unwrap_or_else(|| origin.clone()),
            rname: hostmaster,
            refresh: 3600,
            retry: 600,
            expire: 86400,
            minimum: ttl,
        }
    }
}

/// Reads every `*.yaml`/`*.yml` in `dir`, in name order. A missing directory is no
/// error (svcdns runs with no files at all); an unreadable or invalid file is.
pub fn load_dir(
    dir: &Path,
    default_ttl: u32,
    ns_address: Option<IpAddr>,
) -> Result<Vec<ZoneSpec>, ConfigError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(cause) => {
            return Err(ConfigError::Io {
                path: dir.to_path_buf(),
                cause,
            })
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            )
        })
        .collect();
    paths.sort();
    let mut zones: Vec<ZoneSpec> = Vec::new();
    for path in paths {
        let zone = load_file(&path, default_ttl, ns_address)?;
        if let Some(other) = zones.iter().find(|z| z.origin == zone.origin) {
            return Err(ConfigError::in_file(
                &path,
                format!(
                    "zone {} is already defined in {}",
                    zone.origin,
                    other.source.as_deref().unwrap_or(Path::new("?")).display()
                ),
            ));
        }
        zones.push(zone);
    }
    Ok(zones)
}

/// Reads one zone file.
pub fn load_file(
    path: &Path,
    default_ttl: u32,
    ns_address: Option<IpAddr>,
) -> Result<ZoneSpec, ConfigError> {
    let text = fs::read_to_string(path).map_err(|cause| ConfigError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    parse(&text, path, default_ttl, ns_address)
}

/// Reads one zone file's text; `path` names it in errors.
pub fn parse(
    text: &str,
    path: &Path,
    default_ttl: u32,
    ns_address: Option<IpAddr>,
) -> Result<ZoneSpec, ConfigError> {
    let file: ZoneFile = serde_yaml::from_str(text).map_err(|e| ConfigError::yaml(path, &e))?;
    let origin = file.origin.0;
    let ttl = file.ttl.unwrap_or(default_ttl);
    let absolute = |name: &Name| -> Result<Name, ConfigError> {
        if name.is_fqdn() {
            return Ok(name.to_lowercase());
        }
        name.clone()
            .append_domain(&origin)
            .map(|n| n.to_lowercase())
            .map_err(|e| ConfigError::in_file(path, format!("name {name} in zone {origin}: {e}")))
    };
    let mut records = Vec::with_capacity(file.records.len());
    for record in file.records {
        let name = absolute(&record.name)?;
        // A name elsewhere would never be answered here, and could shadow a service.
        if !origin.zone_of(&name) {
            return Err(ConfigError::in_file(
                path,
                format!("record {name} is outside the zone {origin}; write it relative to the origin or under it"),
            ));
        }
        let rdata = match record.value {
            RecordValue::A(v4) => RData::A(A(v4)),
            RecordValue::Aaaa(v6) => RData::AAAA(AAAA(v6)),
            RecordValue::Cname(target) => RData::CNAME(CNAME(absolute(&target)?)),
            RecordValue::Ptr(target) => RData::PTR(PTR(absolute(&target)?)),
            RecordValue::Ns(target) => RData::NS(NS(absolute(&target)?)),
            RecordValue::Txt(strings) => RData::TXT(TXT::new(strings)),
            RecordValue::Mx {
                preference,
                exchange,
            } => RData::MX(MX::new(preference, absolute(&exchange)?)),
            RecordValue::Srv {
                priority,
                weight,
                port,
                target,
            } => RData::SRV(SRV::new(priority, weight, port, absolute(&target)?)),
        };
        records.push(StaticRecord {
            name,
            ttl: record.ttl,
            rdata,
        });
    }
    check_cname_exclusive(path, &records)?;
    let ns = file
        .ns
        .unwrap_or_default()
        .iter()
        .map(|n| absolute(&n.0))
        .collect::<Result<Vec<_>, _>>()?;
    let origin_text = origin.to_string();
    let mut services = Vec::with_capacity(file.services.len());
    for StaticService(mut registration) in file.services {
        if registration.zone.is_empty() {
            registration.zone = origin_text.clone();
        } else if registration.zone != origin_text {
            return Err(ConfigError::in_file(
                path,
                format!(
                    "service {} instance {} names zone {}, but this file is zone {}",
                    registration.service, registration.instance.id, registration.zone, origin_text
                ),
            ));
        }
        services.push(registration);
    }
    let mut spec = ZoneSpec {
        soa: SoaSpec::defaults(&origin, &ns, ttl),
        ns,
        records,
        services,
        source: Some(path.to_path_buf()),
        origin: origin.clone(),
        ttl,
    };
    if let Some(soa) = file.soa {
        if let Some(mname) = soa.mname {
            spec.soa.mname = absolute(&mname.0)?;
        }
        if let Some(rname) = soa.rname {
            spec.soa.rname = absolute(&rname.0)?;
        }
        spec.soa.minimum = soa.minimum.unwrap_or(spec.soa.minimum);
        spec.soa.refresh = soa.refresh.unwrap_or(spec.soa.refresh);
        spec.soa.retry = soa.retry.unwrap_or(spec.soa.retry);
        spec.soa.expire = soa.expire.unwrap_or(spec.soa.expire);
    }
    spec.default_name_server(ns_address);
    Ok(spec)
}

/// A CNAME owner may have no other data (RFC 1034 §3.6.2).
fn check_cname_exclusive(path: &Path, records: &[StaticRecord]) -> Result<(), ConfigError> {
    for cname in records
        .iter()
        .filter(|r| matches!(r.rdata, RData::CNAME(_)))
    {
        let others = records
            .iter()
            .filter(|r| r.name == cname.name && !std::ptr::eq(*r, cname))
            .count();
        if others > 0 {
            return Err(ConfigError::in_file(
                path,
                format!(
                    "{} has a CNAME and other records; a CNAME must stand alone",
                    cname.name
                ),
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneFile {
    origin: ZoneName,
    ttl: Option<u32>,
    soa: Option<SoaFields>,
    ns: Option<Vec<DomainName>>,
    #[serde(default)]
    records: Vec<RecordFields>,
    #[serde(default)]
    services: Vec<StaticService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SoaFields {
    mname: Option<DomainName>,
    rname: Option<DomainName>,
    minimum: Option<u32>,
    refresh: Option<i32>,
    retry: Option<i32>,
    expire: Option<i32>,
}

/// A zone origin: always made fully qualified and lowercase.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct ZoneName(Name);

impl TryFrom<String> for ZoneName {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        canonical_zone(&text)
            .and_then(|zone| Name::from_ascii(zone).ok())
            .map(ZoneName)
            .ok_or_else(|| format!("origin {text:?} is not a valid zone name"))
    }
}

/// A domain name as written: relative to the origin unless it ends in `.`; `@` is the
/// origin itself.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct DomainName(Name);

impl TryFrom<String> for DomainName {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if text == "@" {
            return Ok(DomainName(Name::new()));
        }
        Name::from_ascii(&text)
            .map(DomainName)
            .map_err(|e| format!("{text:?} is not a valid domain name: {e}"))
    }
}

struct RecordFields {
    name: Name,
    ttl: Option<u32>,
    value: RecordValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    name: DomainName,
    #[serde(rename = "type")]
    record_type: String,
    data: serde_yaml::Value,
    ttl: Option<u32>,
}

enum RecordValue {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(Name),
    Ptr(Name),
    Ns(Name),
    Txt(Vec<String>),
    Mx {
        preference: u16,
        exchange: Name,
    },
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Name,
    },
}

impl TryFrom<RawRecord> for RecordFields {
    type Error = String;
    fn try_from(raw: RawRecord) -> Result<Self, String> {
        let kind = raw.record_type.to_ascii_uppercase();
        let words = scalar_strings(&raw.data)
            .ok_or_else(|| format!("{kind} data must be a string or a list of strings"))?;
        let one = || -> Result<&str, String> {
            match words.as_slice() {
                [single] => Ok(single.as_str()),
                _ => Err(format!("{kind} data must be a single value")),
            }
        };
        let fields = |count: usize| -> Result<Vec<&str>, String> {
            let parts: Vec<&str> = one()?.split_whitespace().collect();
            if parts.len() == count {
                Ok(parts)
            } else {
                Err(format!("{kind} data {:?} must have {count} fields", one()?))
            }
        };
        let name = |text: &str| DomainName::try_from(text.to_string()).map(|n| n.0);
        let number = |text: &str, what: &str| -> Result<u16, String> {
            text.parse()
                .map_err(|_| format!("{kind} {what} {text:?} is not a number from 0 to 65535"))
        };
        let value =
            match kind.as_str() {
                "A" => RecordValue::A(one()?.parse().map_err(|_| {
                    format!("A data {:?} is not an IPv4 address", one().unwrap_or(""))
                })?),
                "AAAA" => RecordValue::Aaaa(one()?.parse().map_err(|_| {
                    format!("AAAA data {:?} is not an IPv6 address", one().unwrap_or(""))
                })?),
                "CNAME" => RecordValue::Cname(name(one()?)?),
                "PTR" => RecordValue::Ptr(name(one()?)?),
                "NS" => RecordValue::Ns(name(one()?)?),
                "TXT" => {
                    if let Some(long) = words.iter().find(|w| w.len() > 255) {
                        return Err(format!(
                            "TXT string of {} bytes is over the 255-byte limit",
                            long.len()
                        ));
                    }
                    RecordValue::Txt(words.clone())
                }
                "MX" => {
                    let parts = fields(2)?;
                    RecordValue::Mx {
                        preference: number(parts[0], "preference")?,
                        exchange: name(parts[1])?,
                    }
                }
                "SRV" => {
                    let parts = fields(4)?;
                    RecordValue::Srv {
                        priority: number(parts[0], "priority")?,
                        weight: number(parts[1], "weight")?,
                        port: number(parts[2], "port")?,
                        target: name(parts[3])?,
                    }
                }
                _ => {
                    return Err(format!(
                        "record type {:?} is not supported (A, AAAA, CNAME, TXT, SRV, MX, NS, PTR)",
                        raw.record_type
                    ))
                }
            };
        Ok(RecordFields {
            name: raw.name.0,
            ttl: raw.ttl,
            value,
        })
    }
}

/// A scalar or a list of scalars, each as text.
fn scalar_strings(value: &serde_yaml::Value) -> Option<Vec<String>> {
    use serde_yaml::Value;
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match value {
        Value::Sequence(items) => items.iter().map(scalar).collect(),
        other => scalar(other).map(|s| vec![s]),
    }
}

/// A static service instance: the fields of a `register` request.
struct StaticService(Registration);

impl TryFrom<serde_json::Map<String, serde_json::Value>> for StaticService {
    type Error = String;
    fn try_from(object: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        // A zone file's services are permanent: a lease or a connection to outlive them
        // would be meaningless.
        for key in ["ttl", "ephemeral"] {
            if object.contains_key(key) {
                return Err(format!(
                    "`{key}` does not apply to a static service, which is permanent; remove it"
                ));
            }
        }
        let registration = registration_from_json(&object, "", &[]).map_err(|e| e.to_string())?;
        registration
            .instance
            .validate(&registration.service, &InstanceLimits::CEILING)
            .map_err(|e| e.to_string())?;
        Ok(StaticService(registration))
    }
}

impl<'de> Deserialize<'de> for RecordFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(CheckedMap::<RawRecord, RecordFields>::new("a record map"))
    }
}

impl<'de> Deserialize<'de> for StaticService {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(CheckedMap::<
            serde_json::Map<String, serde_json::Value>,
            StaticService,
        >::new("a map of registration fields"))
    }
}

/// Reads a map as `Raw` and converts it with `TryFrom` *inside* the map visitor.
///
/// `#[serde(try_from)]` would convert after the map is read, and serde_yaml would then
/// report the line of the enclosing list; raised here, the error carries the line of
/// the record or service that is wrong.
struct CheckedMap<Raw, T> {
    expecting: &'static str,
    types: PhantomData<(Raw, T)>,
}

impl<Raw, T> CheckedMap<Raw, T> {
    fn new(expecting: &'static str) -> Self {
        CheckedMap {
            expecting,
            types: PhantomData,
        }
    }
}

impl<'de, Raw, T> Visitor<'de> for CheckedMap<Raw, T>
where
    Raw: Deserialize<'de>,
    T: TryFrom<Raw, Error = String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let raw = Raw::deserialize(MapAccessDeserializer::new(map))?;
        T::try_from(raw).map_err(de::Error::custom)
    }
}
