//! The registration protocol (DESIGN §2): one JSON request per line in, one JSON
//! response per line out. This module turns a line into a registry request and an
//! acknowledgement into a reply; it knows nothing about sockets.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::auth::{Grant, LiveTokens, Tokens};
use crate::metrics;
use crate::registry::spec::{
    key_from_json, mark_from_json, registration_from_json, reject_unknown,
};
use crate::registry::{
    listing, stored_instances, stored_records, ConnectionId, Health, InstanceJson, InstanceKey,
    Label, LabelKind, Pending, Registry, RegistryError, View,
};
use crate::store::{StoredInstance, StoredRecords, BACKUP_FORMAT};

/// The reply to one request line, or what it waits for. Replies go out in the order of
/// their requests, so a connection may pipeline many requests and read the replies later.
pub enum PendingReply {
    Ready(Value),
    /// A change queued at the registry's writer, acknowledged once published.
    Change {
        op: &'static str,
        key: InstanceKey,
        /// The lease length the reply reports, when the acknowledgement does not.
        ack: Ack,
    },
    /// `list`: read from the snapshot current when its turn comes, so it sees every
    /// change the connection made before it.
    List(Option<Label>),
    /// `watch`: the connection turns into a stream of change events.
    Watch(Option<Label>),
    /// `snapshot`: every stored instance, for a backup.
    Snapshot,
}

pub enum Ack {
    Lease(Pending<Option<u32>>),
    Done(Pending<()>),
    /// A `mark`: the reply repeats the health the instance now has.
    Marked(Pending<()>, Health),
}

/// What one connection has established: who it is (when tokens are required) and
/// what it holds.
pub struct Session {
    pub connection: ConnectionId,
    access: Access,
    /// It registered instances (its ephemeral ones go when it closes).
    pub registered: bool,
    /// It registered ephemeral instances: it is never closed for being idle.
    pub holds_ephemeral: bool,
}

enum Access {
    /// No tokens file: anyone who can reach the socket may write.
    Open,
    /// Tokens required, none presented yet.
    Required(Arc<LiveTokens>),
    Granted {
        live: Arc<LiveTokens>,
        token: String,
        /// The tokens `grant` was read from: when the file has been read again since,
        /// the token is checked again before it is trusted.
        checked_in: Arc<Tokens>,
        grant: Grant,
    },
}

impl Session {
    /// A new connection's session; `tokens` when a tokens file is configured.
    pub fn new(connection: ConnectionId, tokens: Option<Arc<LiveTokens>>) -> Session {
        Session {
            connection,
            access: match tokens {
                Some(tokens) => Access::Required(tokens),
                None => Access::Open,
            },
            registered: false,
            holds_ephemeral: false,
        }
    }

    /// `auth`: checks the token; a connection authenticates once.
    fn authenticate(&mut self, request: &Map<String, Value>) -> Result<Value, ProtocolError> {
        reject_unknown(request, &["op", "token"], &[])?;
        let token = match request.get("token") {
            Some(Value::String(token)) => token,
            _ => {
                return Err(ProtocolError {
                    code: "unauthorized",
                    message: "auth needs a token (a string)".into(),
                })
            }
        };
        let live = match &self.access {
            Access::Required(live) => live.clone(),
            Access::Open => {
                return Ok(json!({"ok": true, "op": "auth", "services": ["*"]}));
            }
            Access::Granted { .. } => {
                return Err(ProtocolError {
                    code: "invalid_request",
                    message: "this connection is authenticated already".into(),
                })
            }
        };
        let tokens = live.load_full();
        match tokens.check(token) {
            Some(grant) => {
                let reply = json!({"ok": true, "op": "auth", "services": grant.patterns()});
                self.access = Access::Granted {
                    live,
                    token: token.clone(),
                    checked_in: tokens,
                    grant,
                };
                Ok(reply)
            }
            None => Err(ProtocolError {
                code: "unauthorized",
                message: "unknown token".into(),
            }),
        }
    }

    /// Refuses every request but `auth` and `ping` before authentication, and after
    /// a reload of the tokens file withdrew the connection's token.
    fn check_authenticated(&mut self) -> Result<(), ProtocolError> {
        let withdrawn = match &mut self.access {
            Access::Open => return Ok(()),
            Access::Required(_) => false,
            Access::Granted {
                live,
                token,
                checked_in,
                grant,
            } => {
                let current = live.load_full();
                if Arc::ptr_eq(&current, checked_in) {
                    return Ok(());
                }
                match current.check(token) {
                    Some(renewed) => {
                        *grant = renewed;
                        *checked_in = current;
                        return Ok(());
                    }
                    None => {
                        self.access = Access::Required(live.clone());
                        true
                    }
                }
            }
        };
        Err(ProtocolError {
            code: "unauthorized",
            message: if withdrawn {
                "this connection's token was withdrawn when the tokens file was read again: send {\"op\":\"auth\",\"token\":\"…\"} with a current one".into()
            } else {
                "tokens are required here: send {\"op\":\"auth\",\"token\":\"…\"} first".into()
            },
        })
    }

    /// Refuses a change to a service the connection's token does not cover. Runs
    /// after [`Session::check_authenticated`], so the grant is current.
    fn check_may_write(&self, service: &Label) -> Result<(), ProtocolError> {
        match &self.access {
            Access::Granted { grant, .. } if !grant.allows(service.as_str()) => {
                Err(ProtocolError {
                    code: "forbidden",
                    message: format!(
                        "this token may write services {:?}, not {service:?}",
                        grant.patterns()
                    ),
                })
            }
            _ => Ok(()),
        }
    }
}

/// A protocol-level refusal (the request never reached the registry).
struct ProtocolError {
    code: &'static str,
    message: String,
}

impl From<RegistryError> for ProtocolError {
    fn from(e: RegistryError) -> Self {
        ProtocolError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// The reply to a line that was longer than the server accepts.
pub fn too_large(limit: usize) -> Value {
    error_reply(
        None,
        ProtocolError {
            code: "request_too_large",
            message: format!("request line is longer than {limit} bytes"),
        },
    )
}

/// Handles one request line (without its newline) from the connection of `session`:
/// queues what it asks of the registry and says what its reply waits for.
pub fn handle_line(registry: &Registry, session: &mut Session, line: &[u8]) -> PendingReply {
    let object = match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(object)) => object,
        Ok(other) => {
            return PendingReply::Ready(error_reply(
                None,
                ProtocolError {
                    code: "invalid_request",
                    message: format!("a request must be a JSON object, not {}", kind_of(&other)),
                },
            ))
        }
        Err(e) => {
            return PendingReply::Ready(error_reply(
                None,
                ProtocolError {
                    code: "invalid_json",
                    message: format!("request is not valid JSON: {e}"),
                },
            ))
        }
    };
    let op = match object.get("op") {
        Some(Value::String(op)) => op.as_str(),
        Some(other) => {
            return PendingReply::Ready(error_reply(
                None,
                ProtocolError {
                    code: "unknown_op",
                    message: format!("op {other} is not a string"),
                },
            ))
        }
        None => {
            return PendingReply::Ready(error_reply(None, RegistryError::MissingField("op").into()))
        }
    };
    match op {
        "ping" => {
            return PendingReply::Ready(match reject_unknown(&object, &["op"], &[]) {
                Err(e) => error_reply(Some("ping"), e.into()),
                Ok(()) => {
                    metrics::request_succeeded("ping");
                    json!({"ok": true, "op": "ping"})
                }
            })
        }
        "auth" => {
            return PendingReply::Ready(match session.authenticate(&object) {
                Ok(reply) => {
                    metrics::request_succeeded("auth");
                    reply
                }
                Err(e) => error_reply(Some("auth"), e),
            })
        }
        _ => {
            if let Err(e) = session.check_authenticated() {
                return PendingReply::Ready(error_reply(Some(op), e));
            }
        }
    }
    let default_zone = registry.default_zone();
    let request: Result<PendingReply, ProtocolError> = match op {
        "register" => registration_from_json(&object, default_zone, &["op"])
            .map_err(ProtocolError::from)
            .and_then(|registration| {
                session.check_may_write(&registration.service)?;
                let key = InstanceKey {
                    zone: registration.zone.clone(),
                    service: registration.service.clone(),
                    id: registration.instance.id.clone(),
                };
                session.registered = true;
                session.holds_ephemeral |= registration.instance.ephemeral;
                Ok(PendingReply::Change {
                    op: "register",
                    key,
                    ack: Ack::Lease(registry.register(registration, Some(session.connection))),
                })
            }),
        "renew" => key_from_json(&object, default_zone, &["op"])
            .map_err(ProtocolError::from)
            .and_then(|key| {
                session.check_may_write(&key.service)?;
                let ack = Ack::Lease(registry.renew(&key));
                Ok(PendingReply::Change {
                    op: "renew",
                    key,
                    ack,
                })
            }),
        "deregister" => key_from_json(&object, default_zone, &["op"])
            .map_err(ProtocolError::from)
            .and_then(|key| {
                session.check_may_write(&key.service)?;
                let ack = Ack::Done(registry.deregister(&key));
                Ok(PendingReply::Change {
                    op: "deregister",
                    key,
                    ack,
                })
            }),
        "mark" => mark_from_json(&object, default_zone, &["op"])
            .map_err(ProtocolError::from)
            .and_then(|(key, health)| {
                session.check_may_write(&key.service)?;
                let ack = Ack::Marked(registry.mark(&key, health), health);
                Ok(PendingReply::Change {
                    op: "mark",
                    key,
                    ack,
                })
            }),
        "list" => {
            return match service_filter(&object) {
                Ok(filter) => PendingReply::List(filter),
                Err(e) => PendingReply::Ready(error_reply(Some("list"), e)),
            }
        }
        "snapshot" => {
            return match reject_unknown(&object, &["op"], &[]) {
                Err(e) => PendingReply::Ready(error_reply(Some("snapshot"), e.into())),
                Ok(()) => PendingReply::Snapshot,
            }
        }
        "watch" => {
            return match service_filter(&object) {
                Ok(filter) => PendingReply::Watch(filter),
                Err(e) => PendingReply::Ready(error_reply(Some("watch"), e)),
            }
        }
        _ => {
            return PendingReply::Ready(error_reply(
                None,
                ProtocolError {
                    code: "unknown_op",
                    message: format!(
                        "op {op:?} is not one of register, renew, deregister, mark, list, watch, snapshot, auth, ping"
                    ),
                },
            ))
        }
    };
    match request {
        Ok(pending) => pending,
        Err(e) => PendingReply::Ready(error_reply(Some(op), e)),
    }
}

/// The reply to a change once the registry has acknowledged (or refused) it.
pub async fn change_reply(op: &'static str, key: InstanceKey, ack: Ack) -> Value {
    let mut health = None;
    let result = match ack {
        Ack::Lease(pending) => pending.await,
        Ack::Done(pending) => pending.await.map(|()| None),
        Ack::Marked(pending, marked) => {
            health = Some(marked);
            pending.await.map(|()| None)
        }
    };
    match result {
        Ok(ttl) => {
            metrics::request_succeeded(op);
            let mut reply = Map::new();
            reply.insert("ok".into(), Value::Bool(true));
            reply.insert("op".into(), json!(op));
            reply.insert("zone".into(), json!(key.zone));
            reply.insert("service".into(), json!(key.service));
            reply.insert("id".into(), json!(key.id));
            if let Some(ttl) = ttl {
                reply.insert("ttl".into(), json!(ttl));
            }
            if let Some(health) = health {
                reply.insert("health".into(), json!(health));
            }
            Value::Object(reply)
        }
        Err(e) => error_reply(Some(op), e.into()),
    }
}

/// The `list` reply, or the first line of a `watch`: `{"ok":true,"op":…,"instances":[…]}`
/// with the instances of `snapshot` (of one service name, when filtered), as one line
/// of JSON with its newline. Serialized straight from the snapshot: a registry of a
/// million instances makes a reply of hundreds of megabytes.
pub fn listing_line(op: &str, snapshot: &View, filter: Option<&Label>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Listing<'a> {
        ok: bool,
        op: &'a str,
        instances: Vec<InstanceJson<'a>>,
    }
    let reply = Listing {
        ok: true,
        op,
        instances: listing(snapshot, filter.map(Label::as_str)),
    };
    metrics::request_succeeded(op);
    let mut line = serde_json::to_vec(&reply).unwrap_or_else(|e| {
        let failed = error_reply(
            Some(op),
            ProtocolError {
                code: "internal_error",
                message: format!("the listing could not be written: {e}"),
            },
        );
        failed.to_string().into_bytes()
    });
    line.push(b'\n');
    line
}

/// The `snapshot` reply: `{"ok":true,"op":"snapshot","format":1,"serial":…,
/// "instances":[…],"records":[…]}` with every stored instance of `view` (not
/// ephemeral, not static) and its lease deadline, and every zone's records written
/// through DNS UPDATE, as one line with its newline.
pub fn snapshot_line(view: &View) -> Vec<u8> {
    // With etcd, ephemeral instances are stored too; a backup never holds them (they
    // live with a connection that a restore cannot bring back).
    let instances: Vec<Value> = stored_instances(view)
        .iter()
        .filter(|stored| !stored.registration.instance.ephemeral)
        .map(StoredInstance::to_backup)
        .collect();
    let records: Vec<Value> = stored_records(view)
        .iter()
        .map(StoredRecords::to_value)
        .collect();
    let zones: Vec<usize> = (0..view.zones().len()).collect();
    let reply = json!({
        "ok": true,
        "op": "snapshot",
        "format": BACKUP_FORMAT,
        "serial": view.max_serial(&zones),
        "instances": instances,
        "records": records,
    });
    metrics::request_succeeded("snapshot");
    let mut line = reply.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// The last line to a connection closed for being idle.
pub fn idle_timeout(limit: std::time::Duration) -> Value {
    error_reply(
        None,
        ProtocolError {
            code: "idle_timeout",
            message: format!(
                "closed after {} s without a request (registration.idle_timeout); connections holding ephemeral instances or a watch are kept",
                limit.as_secs()
            ),
        },
    )
}

/// The only line to a connection refused because too many are open.
pub fn too_many_connections(limit: usize) -> Value {
    error_reply(
        None,
        ProtocolError {
            code: "too_many_connections",
            message: format!(
                "the server has {limit} registration connections open (registration.max_connections); try again later"
            ),
        },
    )
}

/// The reply that ends a watch whose watcher fell too far behind.
pub fn watch_lagged() -> Value {
    error_reply(
        Some("watch"),
        ProtocolError {
            code: "watch_lagged",
            message: format!(
                "the watcher fell {} events behind; watch again to resynchronise",
                crate::registry::watch::WATCH_BUFFER
            ),
        },
    )
}

/// The reply to a request the registry can no longer take.
pub fn unavailable(op: &str) -> Value {
    error_reply(Some(op), RegistryError::Unavailable.into())
}

/// The optional `service` of list and watch; other fields are refused.
fn service_filter(request: &Map<String, Value>) -> Result<Option<Label>, ProtocolError> {
    reject_unknown(request, &["op", "service"], &[])?;
    match request.get("service") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(Label::parse(text, LabelKind::Service)?)),
        Some(other) => Err(ProtocolError {
            code: "invalid_service",
            message: format!("service {other} is not a string"),
        }),
    }
}

/// Every refusal goes through here, which is where it is counted.
fn error_reply(op: Option<&str>, error: ProtocolError) -> Value {
    metrics::request_failed(op, error.code);
    let mut reply = json!({
        "ok": false,
        "error": {"code": error.code, "message": error.message},
    });
    if let (Some(op), Value::Object(map)) = (op, &mut reply) {
        map.insert("op".into(), json!(op));
    }
    reply
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
