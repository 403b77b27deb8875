//! Any message that parses, made an UPDATE of our zone (most of the time) and signed
//! with a configured key, through the whole UPDATE path: form checks, then the
//! prerequisites and changes on the registry's writer. What a key holder can send is
//! what this reaches. Never a panic (on the writer that would stop svcdns), always a
//! response, and the registry keeps taking updates.
#![no_main]

mod setup;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use libfuzzer_sys::fuzz_target;
use svcdns::dns::update::keys::UpdateKeys;
use svcdns::dns::update::Updates;

const SECRET: &str = "Ly0y+VtSJ17dXR8aErXiONoocf7n2l6uDkMvE7Rk5tE=";

fn updates() -> &'static (Updates, UpdateKeys, tokio::runtime::Runtime) {
    static READY: OnceLock<(Updates, UpdateKeys, tokio::runtime::Runtime)> = OnceLock::new();
    READY.get_or_init(|| {
        let (registry, responder) = setup::served();
        let path = std::env::temp_dir().join(format!("svcdns-fuzz-keys-{}.yaml", std::process::id()));
        let keys = format!("- {{name: upd-key, algorithm: hmac-sha256, secret: \"{SECRET}\", services: [\"*\"]}}\n");
        std::fs::write(&path, keys).expect("keys file");
        let load = || UpdateKeys::load(&path).expect("keys");
        let updates = Updates::new(Arc::clone(responder), registry.clone(), Some(load()));
        let signer_keys = load();
        let _ = std::fs::remove_file(&path);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        (updates, signer_keys, runtime)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&steer, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut message) = Message::from_vec(rest) else {
        return;
    };
    let (updates, keys, runtime) = updates();
    message.metadata.message_type = MessageType::Query;
    message.metadata.op_code = OpCode::Update;
    if steer & 1 == 0 {
        let zone = Name::from_ascii("svc.internal.").expect("zone");
        message.queries = vec![Query::query(zone, RecordType::SOA)];
    }
    message.signature = None;
    let Some(key) = keys.find(&Name::from_ascii("upd-key.").expect("key name")) else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    if message.finalize(&key.signer, now).is_err() {
        return;
    }
    let Ok(packet) = message.to_vec() else {
        return;
    };
    let source = SocketAddr::from(([127, 0, 0, 1], 5353));
    let response = runtime.block_on(updates.answer(&packet, source));
    let response = response.expect("a signed message that parsed gets a response");
    assert!(response.len() >= 12, "a response without a header");
});
