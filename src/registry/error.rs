//! Why the registry refused a change. Each variant maps to one stable protocol `code`,
//! and its message names the field and the value, so a user can fix the request
//! without reading our source.

use thiserror::Error;

use super::model::LabelKind;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegistryError {
    #[error("{} {value:?} {problem}", kind.field())]
    InvalidLabel {
        kind: LabelKind,
        value: String,
        problem: &'static str,
    },
    #[error("address {value:?} {problem}")]
    InvalidAddress {
        value: String,
        problem: &'static str,
    },
    #[error("port {0} is out of range 1-65535")]
    InvalidPort(u64),
    #[error("proto {0:?} is neither \"tcp\" nor \"udp\"")]
    InvalidProto(String),
    #[error("health {0:?} is neither \"healthy\" nor \"critical\"")]
    InvalidHealth(String),
    #[error("{field} {value} is out of range {min}-{max}")]
    InvalidTtl {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("meta {key:?} {problem}")]
    InvalidMeta { key: String, problem: &'static str },
    #[error("{field} has {count} entries, at most {max} are allowed ({setting})")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
        setting: &'static str,
    },
    #[error("meta takes {bytes} bytes as a TXT record, at most {max} are allowed (registration.max_meta_bytes)")]
    MetaTooLarge { bytes: usize, max: usize },
    #[error("{field} {value} is not {expected}")]
    BadValue {
        code: &'static str,
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{field} {value} is out of range 0-{max}")]
    OutOfRange {
        code: &'static str,
        field: &'static str,
        value: u64,
        max: u64,
    },
    #[error("unknown field {0:?}")]
    UnknownField(String),
    #[error("{0} is required")]
    MissingField(&'static str),
    #[error(
        "label {label:?} of service {service:?} would be both an instance id and a tag: {detail}"
    )]
    LabelConflict {
        service: String,
        label: String,
        detail: &'static str,
    },
    #[error("service {service:?} collides with the static record {name} in zone {zone}")]
    NameConflict {
        service: String,
        zone: String,
        name: String,
    },
    #[error("service {service:?} would take names that records written through DNS UPDATE hold in zone {zone}; delete those records first")]
    RecordConflict { service: String, zone: String },
    #[error("service {service:?} would need a {length}-byte name in zone {zone}, over DNS's 255")]
    NameTooLong {
        service: String,
        zone: String,
        length: usize,
    },
    #[error("zone {0:?} is not served here")]
    UnknownZone(String),
    #[error("instance {id:?} of service {service:?} is not registered (deregistered, or its lease expired or its connection closed before this request)")]
    NotFound { service: String, id: String },
    #[error("the registry is shutting down")]
    Unavailable,
    #[error(
        "{what} has {count} instances, the most allowed ({setting}); deregister some or raise it"
    )]
    Full {
        what: String,
        count: usize,
        setting: &'static str,
    },
    #[error("the change was not made: the store cannot take it ({0}); DNS still answers from memory, try again")]
    StoreUnavailable(String),
    /// The store took the change, but this node's copy of it (its watch) did not come
    /// back in time, so the change is not answered here yet. It is not lost: the node
    /// applies it when its watch catches up, and sending the request again is safe.
    #[error("the store took the change (revision {revision}) but this node has not seen it come back after {waited_secs} s (its watch of the store is behind, up to revision {applied}); it will answer once the watch catches up; sending the request again is safe")]
    NotSeenYet {
        revision: u64,
        applied: u64,
        waited_secs: u64,
    },
    /// A request failed for a reason of ours, not the client's (a bug, logged).
    #[error("{0}")]
    Failed(String),
    /// A transaction's own check of the registry refused it (a DNS UPDATE whose
    /// prerequisite does not hold). `code` is the requester's, handed back as it was.
    #[error("{reason}")]
    Declined { code: u16, reason: String },
}

impl RegistryError {
    /// The stable machine-readable code of the protocol (DESIGN §2). Clients match on
    /// these, so they never change once published.
    pub fn code(&self) -> &'static str {
        match self {
            RegistryError::InvalidLabel { kind, .. } => match kind {
                LabelKind::Service => "invalid_service",
                LabelKind::Id => "invalid_id",
                LabelKind::Tag => "invalid_tag",
            },
            RegistryError::InvalidAddress { .. } => "invalid_address",
            RegistryError::InvalidPort(_) => "invalid_port",
            RegistryError::InvalidProto(_) => "invalid_proto",
            RegistryError::InvalidHealth(_) => "invalid_health",
            RegistryError::InvalidTtl { field, .. } => match *field {
                "dns_ttl" => "invalid_dns_ttl",
                _ => "invalid_ttl",
            },
            RegistryError::InvalidMeta { .. } | RegistryError::MetaTooLarge { .. } => {
                "invalid_meta"
            }
            RegistryError::TooMany { field, .. } => match *field {
                "tags" => "invalid_tag",
                _ => "invalid_address",
            },
            RegistryError::BadValue { code, .. } | RegistryError::OutOfRange { code, .. } => code,
            RegistryError::UnknownField(_) => "unknown_field",
            RegistryError::MissingField(_) => "missing_field",
            RegistryError::LabelConflict { .. } => "label_conflict",
            RegistryError::NameConflict { .. } | RegistryError::RecordConflict { .. } => {
                "name_conflict"
            }
            RegistryError::NameTooLong { .. } => "name_too_long",
            RegistryError::UnknownZone(_) => "unknown_zone",
            RegistryError::NotFound { .. } => "not_found",
            RegistryError::Unavailable => "unavailable",
            RegistryError::Full { .. } => "too_many_instances",
            // A client's answer to both is the same: try again later.
            RegistryError::StoreUnavailable(_) | RegistryError::NotSeenYet { .. } => {
                "store_unavailable"
            }
            RegistryError::Declined { .. } => "declined",
            RegistryError::Failed(_) => "internal",
        }
    }
}
