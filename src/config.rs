//! `svcdns.yaml` (DESIGN §3). Every key is optional, so `svcdns serve` runs with no file;
//! unknown keys are errors, because a misspelt key that is silently ignored is a
//! setting the user believes in and does not have.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use thiserror::Error;

use crate::dns::transfer::TransferSettings;
use crate::dns::update::keys::UpdateKeys;
use crate::registry::spec::canonical_zone;
use crate::registry::{InstanceLimits, Limits};

/// A problem with a configuration or zone file, naming the file and, where the YAML
/// reader knows it, the line: `zones/svc.internal.yaml:12: …`.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The OS error is part of the message, not a chained source, so that printing
    /// the error with its causes says it once.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    AtLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    InFile { path: PathBuf, message: String },
    /// A setting that checks out on its own but cannot be put to use.
    #[error("{key}: {message}")]
    Setting { key: &'static str, message: String },
}

/// Reads a YAML list of entries (a tokens or keys file); an empty list is refused
/// with `when_empty`, since it would refuse every client.
pub fn read_yaml_list<T: serde::de::DeserializeOwned>(
    path: &Path,
    when_empty: &str,
) -> Result<Vec<T>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let entries: Vec<T> = if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_yaml::from_str(&text).map_err(|e| ConfigError::yaml(path, &e))?
    };
    if entries.is_empty() {
        return Err(ConfigError::in_file(path, when_empty));
    }
    Ok(entries)
}

impl ConfigError {
    pub fn in_file(path: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError::InFile {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// serde_yaml puts the position at the end of its message ("… at line 3 column 5");
    /// we move the line to the front, where editors and people look for it.
    pub fn yaml(path: &Path, error: &serde_yaml::Error) -> ConfigError {
        let text = error.to_string();
        let message = match text.find(" at line ") {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        match error.location() {
            Some(location) => ConfigError::AtLine {
                path: path.to_path_buf(),
                line: location.line(),
                message,
            },
            None => ConfigError::InFile {
                path: path.to_path_buf(),
                message,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub dns: DnsConfig,
    pub registration: RegistrationConfig,
    pub zones_dir: PathBuf,
    pub default_zone: String,
    pub forward: ForwardConfig,
    pub data_dir: Option<PathBuf>,
    pub http: Option<HttpConfig>,
    /// Keep the registry in etcd, shared with every node on the same prefix.
    pub etcd: Option<EtcdConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// UDP and TCP on each address.
    pub listen: Vec<SocketAddr>,
    /// Default record TTL in seconds.
    pub ttl: u32,
    /// Idle time after which a DNS-over-TCP connection is closed, in seconds.
    pub tcp_idle_timeout: u64,
    /// Seconds after which a DNS-over-TCP connection is closed, however busy.
    pub tcp_max_lifetime: u64,
    /// A, AAAA and SRV answers drawn from more instances than this carry a random
    /// sample of this many; unset: every instance, with TC when they do not fit.
    pub max_answer_records: Option<usize>,
    /// Most DNS-over-TCP connections served at once; more are closed on accept.
    pub tcp_max_connections: usize,
    /// Threads answering UDP per listen address, each with its own socket
    /// (SO_REUSEPORT); unset: one per CPU.
    pub udp_threads: Option<usize>,
    /// Response-rate limiting over UDP per client network; unset: off.
    pub rate_limit: Option<RateLimitConfig>,
    /// Answer plain queries in our zones on svcdns's own wire path. `false` sends every
    /// query through hickory's Catalog instead: slower, for comparing the two.
    pub fast_path: bool,
    /// Zone transfers to secondaries, and NOTIFY when a zone changes.
    pub transfer: TransferConfig,
    /// Registration through DNS UPDATE (RFC 2136).
    pub update: UpdateConfig,
}

/// `dns.update`: who may register through DNS UPDATE. Off (every UPDATE REFUSED)
/// unless `keys_file` is set.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// TSIG keys, each limited to service patterns (see `dns::update_keys`).
    pub keys_file: Option<PathBuf>,
}

impl UpdateConfig {
    /// The keys in force, read from `keys_file`; `None` when updates are off.
    pub fn keys(&self) -> Result<Option<UpdateKeys>, ConfigError> {
        self.keys_file.as_deref().map(UpdateKeys::load).transpose()
    }
}

/// `dns.transfer`: secondaries (Knot, NSD, BIND) that copy our zones.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// Clients that may AXFR and IXFR our zones; the rest are REFUSED. Empty: nobody.
    pub allow: Vec<IpPrefix>,
    /// Secondaries sent a NOTIFY when a zone's serial moves.
    pub notify: Vec<SocketAddr>,
}

impl TransferConfig {
    /// What the DNS side takes.
    pub fn settings(&self) -> TransferSettings {
        TransferSettings {
            allow: self.allow.iter().map(|prefix| prefix.0).collect(),
            notify: self.notify.clone(),
        }
    }
}

/// An IP prefix (`10.0.0.0/8`, `::1/128`), or one address, which stands for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IpPrefix(pub IpNet);

impl TryFrom<String> for IpPrefix {
    type Error = String;

    fn try_from(text: String) -> Result<IpPrefix, String> {
        let prefix = match text.parse::<IpNet>() {
            Ok(prefix) => prefix,
            Err(_) => text
                .trim()
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| {
                    format!("{text:?} is not an IP prefix such as \"127.0.0.0/8\" or \"::1/128\"")
                })?,
        };
        Ok(IpPrefix(prefix.trunc()))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// Unix socket path; `null` disables it.
    pub unix: Option<PathBuf>,
    /// The Unix socket's mode, in octal (`"0660"`).
    pub unix_mode: String,
    /// The Unix socket's owner and group (names or numbers); unset: svcdns's own.
    pub unix_owner: Option<String>,
    pub unix_group: Option<String>,
    /// TCP address; `null` disables it. Off loopback it needs `tokens_file`.
    pub tcp: Option<SocketAddr>,
    /// When set, connections authenticate with a token from this file first.
    pub tokens_file: Option<PathBuf>,
    /// Most registration connections served at once (Unix and TCP together).
    pub max_connections: usize,
    /// Seconds after which a connection with no request, no ephemeral instance and no
    /// watch is closed.
    pub idle_timeout: u64,
    /// Instances one service may have (in one zone); more are refused.
    pub max_instances_per_service: usize,
    /// Instances the whole registry may hold; more are refused.
    pub max_instances: usize,
    /// Ephemeral instances one connection may hold at once.
    pub max_instances_per_connection: usize,
    /// Longest request line, in bytes; a longer one gets `request_too_large`.
    pub max_line_bytes: usize,
    /// Addresses one instance may have.
    pub max_addresses: usize,
    /// Tags one instance may have.
    pub max_tags: usize,
    /// Bytes an instance's metadata may take as its TXT record.
    pub max_meta_bytes: usize,
}

/// Where names outside our zones are resolved.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Upstream resolvers, tried in turn; none (and no `from_resolv_conf`): names
    /// outside our zones are REFUSED.
    pub upstreams: Vec<SocketAddr>,
    /// Also forward to the nameservers of this resolv.conf (port 53).
    pub from_resolv_conf: Option<PathBuf>,
    /// Seconds to wait for one upstream before trying the next.
    pub timeout: u64,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            upstreams: Vec::new(),
            from_resolv_conf: None,
            timeout: 2,
        }
    }
}

/// `dns.rate_limit`: as Knot's and NSD's response-rate limiting.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// UDP responses per second to one client network; more are dropped or slipped.
    pub responses_per_second: u32,
    /// Every this many limited responses, one goes out truncated (TC) so a real client
    /// retries over TCP; 0: all are dropped.
    #[serde(default = "default_slip")]
    pub slip: u32,
    #[serde(default = "default_ipv4_prefix")]
    pub ipv4_prefix: u8,
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
}

fn default_slip() -> u32 {
    2
}

fn default_ipv4_prefix() -> u8 {
    24
}

fn default_ipv6_prefix() -> u8 {
    56
}

/// The registry in etcd (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Members to connect to (`host:port` or URLs); the client uses any that answers.
    pub endpoints: Vec<String>,
    /// Key prefix of this registry; nodes sharing it share the registry.
    #[serde(default = "EtcdConfig::default_prefix")]
    pub prefix: String,
    /// Seconds a node's ephemeral instances outlive the node (its lease's TTL).
    #[serde(default = "EtcdConfig::default_lease_ttl")]
    pub lease_ttl: u64,
}

impl EtcdConfig {
    fn default_prefix() -> String {
        "/svcdns/".to_string()
    }

    fn default_lease_ttl() -> u64 {
        10
    }
}

/// The operations endpoint: `/metrics`, `/health`, `/ready`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dns: DnsConfig::default(),
            registration: RegistrationConfig::default(),
            zones_dir: PathBuf::from("zones"),
            default_zone: "svc.internal.".to_string(),
            forward: ForwardConfig::default(),
            data_dir: None,
            etcd: None,
            http: None,
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8053))],
            ttl: 5,
            tcp_idle_timeout: 5,
            tcp_max_lifetime: 300,
            max_answer_records: None,
            tcp_max_connections: 1024,
            udp_threads: None,
            fast_path: true,
            rate_limit: None,
            transfer: TransferConfig::default(),
            update: UpdateConfig::default(),
        }
    }
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        let limits = Limits::default();
        RegistrationConfig {
            unix: Some(PathBuf::from("svcdns.sock")),
            unix_mode: "0660".to_string(),
            unix_owner: None,
            unix_group: None,
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], 8054))),
            tokens_file: None,
            max_connections: 1024,
            idle_timeout: 60,
            max_instances_per_service: limits.max_instances_per_service,
            max_instances: limits.max_instances,
            max_instances_per_connection: limits.max_instances_per_connection,
            max_line_bytes: 64 * 1024,
            max_addresses: limits.instance.max_addresses,
            max_tags: limits.instance.max_tags,
            max_meta_bytes: limits.instance.max_meta_bytes,
        }
    }
}

impl RegistrationConfig {
    /// What the registry takes.
    pub fn limits(&self) -> Limits {
        Limits {
            instance: InstanceLimits {
                max_addresses: self.max_addresses,
                max_tags: self.max_tags,
                max_meta_bytes: self.max_meta_bytes,
            },
            max_instances_per_service: self.max_instances_per_service,
            max_instances: self.max_instances,
            max_instances_per_connection: self.max_instances_per_connection,
        }
    }

    /// Refuses a limit outside the range it can work in.
    fn check_limits(&self) -> Result<(), String> {
        let ceiling = InstanceLimits::CEILING;
        let ranges = [
            ("max_connections", self.max_connections, 1, usize::MAX),
            (
                "max_instances_per_service",
                self.max_instances_per_service,
                1,
                usize::MAX,
            ),
            ("max_instances", self.max_instances, 1, usize::MAX),
            (
                "max_instances_per_connection",
                self.max_instances_per_connection,
                1,
                usize::MAX,
            ),
            // Below 1 KiB an ordinary registration would not fit; above 1 MiB one
            // client could make us buffer more than any request needs.
            ("max_line_bytes", self.max_line_bytes, 1024, 1024 * 1024),
            (
                "max_addresses",
                self.max_addresses,
                1,
                ceiling.max_addresses,
            ),
            ("max_tags", self.max_tags, 0, ceiling.max_tags),
            (
                "max_meta_bytes",
                self.max_meta_bytes,
                0,
                ceiling.max_meta_bytes,
            ),
        ];
        for (key, value, min, max) in ranges {
            if value < min || value > max {
                let range = if max == usize::MAX {
                    format!("at least {min}")
                } else {
                    format!("{min}-{max}")
                };
                return Err(format!("registration.{key} is {value}; it must be {range}"));
            }
        }
        Ok(())
    }

    /// `unix_mode` as permission bits.
    pub fn socket_mode(&self) -> Result<u32, String> {
        u32::from_str_radix(self.unix_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| {
                format!(
                    "registration.unix_mode {:?} is not an octal mode such as \"0660\"",
                    self.unix_mode
                )
            })
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        // An empty file is a valid "all defaults" configuration.
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml::from_str(&text).map_err(|e| ConfigError::yaml(path, &e))?
        };
        config
            .check()
            .map_err(|message| ConfigError::in_file(path, message))?;
        Ok(config)
    }

    /// Cross-field rules, and refusal of settings this version does not implement
    /// yet: accepting them and doing nothing would be a silent lie.
    pub fn check(&self) -> Result<(), String> {
        if self.dns.listen.is_empty() {
            return Err("dns.listen must name at least one address".into());
        }
        if let Some(limit) = &self.dns.rate_limit {
            if limit.responses_per_second == 0 {
                return Err("dns.rate_limit.responses_per_second must be at least 1".into());
            }
            if limit.ipv4_prefix > 32 || limit.ipv6_prefix > 128 {
                return Err("dns.rate_limit prefixes are at most 32 (IPv4) and 128 (IPv6)".into());
            }
        }
        if self.dns.tcp_max_lifetime == 0 {
            return Err("dns.tcp_max_lifetime must be at least 1 second".into());
        }
        if self.dns.tcp_max_connections == 0 {
            return Err("dns.tcp_max_connections must be at least 1".into());
        }
        if self.dns.udp_threads == Some(0) {
            return Err("dns.udp_threads must be at least 1 (or left out: one per CPU)".into());
        }
        if self.dns.max_answer_records == Some(0) {
            return Err("dns.max_answer_records must be at least 1 (or left out)".into());
        }
        if self.dns.ttl > 86_400 {
            return Err(format!("dns.ttl {} is over a day (86400)", self.dns.ttl));
        }
        if canonical_zone(&self.default_zone).is_none() {
            return Err(format!(
                "default_zone {:?} is not a valid zone name",
                self.default_zone
            ));
        }
        if self.registration.unix.is_none() && self.registration.tcp.is_none() {
            return Err("registration needs a unix socket, a tcp address, or both".into());
        }
        if self.forward.timeout == 0 || self.forward.timeout > 60 {
            return Err(format!(
                "forward.timeout {} must be 1-60 seconds",
                self.forward.timeout
            ));
        }
        self.registration.check_limits()?;
        if let Some(etcd) = &self.etcd {
            if etcd.endpoints.is_empty() {
                return Err("etcd.endpoints is empty: list at least one member".into());
            }
            if !etcd.prefix.starts_with('/') || !etcd.prefix.ends_with('/') {
                return Err(format!(
                    "etcd.prefix {:?} must start and end with '/'",
                    etcd.prefix
                ));
            }
            if !(2..=3600).contains(&etcd.lease_ttl) {
                return Err(format!(
                    "etcd.lease_ttl {} must be 2-3600 seconds",
                    etcd.lease_ttl
                ));
            }
            if self.data_dir.is_some() {
                return Err("data_dir and etcd are two homes for the registry: set one".into());
            }
        }
        if self.registration.idle_timeout == 0 {
            return Err("registration.idle_timeout must be at least 1 second".into());
        }
        self.registration.socket_mode()?;
        if let Some(address) = self.registration.tcp {
            if !address.ip().is_loopback() && self.registration.tokens_file.is_none() {
                return Err(format!(
                    "registration.tcp {address} is reachable from other hosts, and without registration.tokens_file anyone there could register or remove any service: set a tokens_file, or listen on loopback"
                ));
            }
        }
        Ok(())
    }

    /// The default zone in canonical form (checked by `check`).
    pub fn default_zone(&self) -> String {
        canonical_zone(&self.default_zone).unwrap_or_else(|| "svc.internal.".to_string())
    }
}
