//! A datagram, whatever its bytes, through the fast path's parse and answer, over UDP
//! and TCP, against a zone with static records and registered instances. Never a
//! panic; a response, when there is one, is within the transport's limit.
#![no_main]

mod setup;

use libfuzzer_sys::fuzz_target;
use svcdns::dns::front::{Reply, Transport};
use svcdns::dns::wire::Scratch;

fuzz_target!(|packet: &[u8]| {
    let (_, responder) = setup::served();
    let mut scratch = Scratch::default();
    for (transport, limit) in [(Transport::Udp, 4096), (Transport::Tcp, 65_535)] {
        if let Reply::Send(response) = responder.respond(packet, transport, &mut scratch) {
            assert!(
                response.len() <= limit,
                "{} bytes over {transport:?}",
                response.len()
            );
            assert!(response.len() >= 12, "a response without a header");
        }
    }
});
