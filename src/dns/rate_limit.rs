//! Response-rate limiting over UDP (`dns.rate_limit`, off by default), as Knot and NSD
//! do it: each client network (a /24 for IPv4, a /56 for IPv6 by default) gets a
//! bucket of `responses_per_second` tokens. Past it, responses are dropped, except
//! every `slip`-th, which goes out truncated (TC, no records) so that a real client
//! behind a spoofed flood retries over TCP and is answered there. UDP is where source
//! addresses can be forged; TCP is never limited.
//!
//! Each UDP thread keeps its own buckets (no shared state on the hot path). The kernel
//! spreads one client's datagrams over the threads by source port, so a client that
//! varies its port may get up to the rate times the number of threads.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use super::wire::{WireName, HEADER_LEN};

/// `dns.rate_limit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitSettings {
    pub responses_per_second: u32,
    /// Every this many limited responses, one goes out truncated; 0: none do.
    pub slip: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}

/// What to do with a response.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send it truncated: header and question only, TC set.
    Slip,
    Drop,
}

/// Buckets kept before stale ones are swept.
const SWEEP_AT: usize = 65_536;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Limited responses since the last slip.
    limited: u32,
}

/// One thread's buckets.
pub struct RateLimiter {
    settings: RateLimitSettings,
    /// By client network: (is IPv6, the address masked to its prefix).
    buckets: HashMap<(bool, u128), Bucket>,
}

impl RateLimiter {
    pub fn new(settings: RateLimitSettings) -> RateLimiter {
        RateLimiter {
            settings,
            buckets: HashMap::new(),
        }
    }

    /// Takes a token from `client`'s network's bucket.
    pub fn check(&mut self, client: IpAddr, now: Instant) -> Verdict {
        let rate = f64::from(self.settings.responses_per_second);
        if self.buckets.len() >= SWEEP_AT {
            // A bucket that has refilled completely holds nothing worth keeping.
            self.buckets
                .retain(|_, bucket| now.duration_since(bucket.refilled).as_secs_f64() < 1.0);
        }
        let bucket = self.buckets.entry(self.network(client)).or_insert(Bucket {
            tokens: rate,
            refilled: now,
            limited: 0,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Send;
        }
        bucket.limited += 1;
        if self.settings.slip > 0 && bucket.limited >= self.settings.slip {
            bucket.limited = 0;
            return Verdict::Slip;
        }
        Verdict::Drop
    }

    /// The client's network: its address masked to the family's prefix.
    fn network(&self, client: IpAddr) -> (bool, u128) {
        let (is_v6, bits, width, prefix) = match client {
            IpAddr::V4(v4) => (
                false,
                u128::from(u32::from(v4)),
                32,
                self.settings.ipv4_prefix,
            ),
            IpAddr::V6(v6) => (true, u128::from(v6), 128, self.settings.ipv6_prefix),
        };
        let prefix = u32::from(prefix).min(width);
        let kept = if prefix == 0 {
            0
        } else {
            bits >> (width - prefix)
        };
        (is_v6, kept)
    }
}

/// `response` cut to its header and question, with TC set and no records: the reply a
/// slipped response becomes. `None` if it has no readable question.
pub fn truncated(response: &[u8]) -> Option<Vec<u8>> {
    let header = response.get(..HEADER_LEN)?;
    let questions = u16::from_be_bytes([header[4], header[5]]);
    let end = if questions == 0 {
        HEADER_LEN
    } else {
        WireName::first_question(response)?.1
    };
    let mut cut = response[..end].to_vec();
    cut[2] |= 0x02; // TC
    cut[4..6].copy_from_slice(&questions.min(1).to_be_bytes());
    cut[6..12].fill(0);
    Some(cut)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limiter(rate: u32, slip: u32) -> RateLimiter {
        RateLimiter::new(RateLimitSettings {
            responses_per_second: rate,
            slip,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
        })
    }

    #[test]
    fn a_network_gets_its_rate_then_slips_and_drops_and_refills() {
        let mut limiter = limiter(5, 2);
        let now = Instant::now();
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let neighbour: IpAddr = "192.0.2.200".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..9).map(|_| limiter.check(client, now)).collect();
        assert!(verdicts[..5].iter().all(|v| *v == Verdict::Send));
        assert_eq!(
            &verdicts[5..],
            &[Verdict::Drop, Verdict::Slip, Verdict::Drop, Verdict::Slip]
        );
        assert_eq!(limiter.check(neighbour, now), Verdict::Drop, "same /24");
        assert_eq!(limiter.check(other, now), Verdict::Send, "another network");
        let later = now + Duration::from_millis(400);
        assert_eq!(
            limiter.check(client, later),
            Verdict::Send,
            "refilled 2 tokens"
        );
        assert_eq!(limiter.check(client, later), Verdict::Send);
    }

    #[test]
    fn a_truncated_reply_keeps_header_and_question_only() {
        let mut response = vec![0x12, 0x34, 0x84, 0x00, 0, 1, 0, 2, 0, 1, 0, 1];
        response.extend_from_slice(b"\x03svc\x08internal\x00\x00\x01\x00\x01");
        let question_end = response.len();
        response.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1]);
        let cut = truncated(&response).unwrap();
        assert_eq!(cut.len(), question_end);
        assert_eq!(cut[2] & 0x02, 0x02);
        assert_eq!(&cut[6..12], &[0; 6]);
        assert_eq!(truncated(&response[..15]), None);
    }
}
