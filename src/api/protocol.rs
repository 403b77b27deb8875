//! The registration protocol (DESIGN §2): one JSON request per line in, one JSON
//! response per line out. This module turns a line into a registry call and a reply;
//! it knows nothing about sockets.

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use crate::registry::spec::{instance_from_json, key_from_json};
use crate::registry::{
    ConnectionId, Event, InstanceKey, Label, LabelKind, Registry, RegistryError,
};

/// What one connection remembers between requests.
pub struct Session {
    pub id: ConnectionId,
    /// Ephemeral instances this connection registered, removed when it closes.
    pub ephemeral: Vec<InstanceKey>,
}

/// The result of one request line.
pub enum Outcome {
    Reply(Value),
    /// Reply, then stream the events that pass `filter` until the connection closes.
    Watch {
        reply: Value,
        filter: Option<Label>,
        events: broadcast::Receiver<Event>,
    },
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

/// Handles one request line (without its newline).
pub fn handle_line(registry: &Registry, session: &mut Session, line: &[u8]) -> Outcome {
    let object = match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(object)) => object,
        Ok(other) => {
            return Outcome::Reply(error_reply(
                None,
                ProtocolError {
                    code: "invalid_request",
                    message: format!("a request must be a JSON object, not {}", kind_of(&other)),
                },
            ))
        }
        Err(e) => {
            return Outcome::Reply(error_reply(
                None,
                ProtocolError {
                    code: "invalid_json",
                    message: format!("request is not valid JSON: {e}"),
                },
            ))
        }
    };
    let op = match object.get("op") {
        Some(Value::String(op)) => op.clone(),
        Some(other) => {
            return Outcome::Reply(error_reply(
                None,
                ProtocolError {
                    code: "unknown_op",
                    message: format!("op {other} is not a string"),
                },
            ))
        }
        None => return Outcome::Reply(error_reply(None, RegistryError::MissingField("op").into())),
    };
    let result = match op.as_str() {
        "register" => register(registry, session, &object),
        "renew" => renew(registry, &object),
        "deregister" => deregister(registry, &object),
        "list" => list(registry, &object),
        "watch" => return watch(registry, &object),
        _ => Err(ProtocolError {
            code: "unknown_op",
            message: format!("op {op:?} is not one of register, renew, deregister, list, watch"),
        }),
    };
    Outcome::Reply(match result {
        Ok(mut reply) => {
            reply.insert("ok".into(), Value::Bool(true));
            reply.insert("op".into(), Value::String(op));
            Value::Object(reply)
        }
        Err(e) => error_reply(Some(&op), e),
    })
}

fn register(
    registry: &Registry,
    session: &mut Session,
    request: &Map<String, Value>,
) -> Result<Map<String, Value>, ProtocolError> {
    let instance = instance_from_json(request, registry.default_zone(), &["op"])?;
    let instance = registry.register(instance, Some(session.id))?;
    let key = InstanceKey {
        zone: instance.zone.clone(),
        service: instance.service.clone(),
        id: instance.id.clone(),
    };
    if instance.ephemeral && !session.ephemeral.contains(&key) {
        session.ephemeral.push(key);
    }
    Ok(instance_reply(
        &instance.zone,
        &instance.service,
        &instance.id,
        instance.ttl,
    ))
}

fn renew(
    registry: &Registry,
    request: &Map<String, Value>,
) -> Result<Map<String, Value>, ProtocolError> {
    let key = key_from_json(request, registry.default_zone(), &["op"])?;
    let instance = registry.renew(&key)?;
    Ok(instance_reply(
        &key.zone,
        &key.service,
        &key.id,
        instance.ttl,
    ))
}

fn deregister(
    registry: &Registry,
    request: &Map<String, Value>,
) -> Result<Map<String, Value>, ProtocolError> {
    let key = key_from_json(request, registry.default_zone(), &["op"])?;
    registry.deregister(&key)?;
    Ok(instance_reply(&key.zone, &key.service, &key.id, None))
}

fn list(
    registry: &Registry,
    request: &Map<String, Value>,
) -> Result<Map<String, Value>, ProtocolError> {
    let filter = service_filter(request)?;
    let instances = registry.list(filter.as_ref());
    let mut reply = Map::new();
    reply.insert("instances".into(), json!(instances));
    Ok(reply)
}

fn watch(registry: &Registry, request: &Map<String, Value>) -> Outcome {
    let filter = match service_filter(request) {
        Ok(filter) => filter,
        Err(e) => return Outcome::Reply(error_reply(Some("watch"), e)),
    };
    let (instances, events) = registry.watch(filter.as_ref());
    Outcome::Watch {
        reply: json!({"ok": true, "op": "watch", "instances": instances}),
        filter,
        events,
    }
}

/// The optional `service` of list and watch; other fields are refused.
fn service_filter(request: &Map<String, Value>) -> Result<Option<Label>, ProtocolError> {
    if let Some(key) = request.keys().find(|k| *k != "op" && *k != "service") {
        return Err(RegistryError::UnknownField(key.clone()).into());
    }
    match request.get("service") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(Label::parse(text, LabelKind::Service)?)),
        Some(other) => Err(ProtocolError {
            code: "invalid_service",
            message: format!("service {other} is not a string"),
        }),
    }
}

/// Whether a watcher with `filter` wants `event`.
pub fn wanted(filter: &Option<Label>, event: &Event) -> bool {
    filter
        .as_ref()
        .is_none_or(|service| *service == event.service)
}

fn instance_reply(zone: &str, service: &Label, id: &Label, ttl: Option<u64>) -> Map<String, Value> {
    let mut reply = Map::new();
    reply.insert("zone".into(), json!(zone));
    reply.insert("service".into(), json!(service));
    reply.insert("id".into(), json!(id));
    if let Some(ttl) = ttl {
        reply.insert("ttl".into(), json!(ttl));
    }
    reply
}

fn error_reply(op: Option<&str>, error: ProtocolError) -> Value {
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
