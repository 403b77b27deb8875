//! The registry's changes in the log, at INFO: one line per instance registered,
//! deregistered, expired, released or marked, so an operator can follow what happened, but at
//! most [`LINES_PER_WINDOW`] a second. A burst beyond that (a deployment, a mass
//! expiry) is summed up in one line per second instead of flooding the log.

use std::time::{Duration, Instant};

use tracing::info;

use super::watch::{Event, Reason};

/// Individual lines per window, at most.
const LINES_PER_WINDOW: usize = 20;
const WINDOW: Duration = Duration::from_secs(1);

pub struct ChangeLog {
    window_start: Instant,
    lines: usize,
    /// Changes left out of this window, by [`Reason::index`].
    left_out: [u64; Reason::ALL.len()],
}

impl ChangeLog {
    pub fn new(now: Instant) -> ChangeLog {
        ChangeLog {
            window_start: now,
            lines: 0,
            left_out: [0; Reason::ALL.len()],
        }
    }

    /// Logs a batch's changes (and the summary of the previous window, if it is over).
    pub fn record(&mut self, events: &[Event], now: Instant) {
        self.flush_if_due(now);
        for event in events {
            if self.lines < LINES_PER_WINDOW {
                self.lines += 1;
                info!(
                    zone = %event.zone,
                    service = %event.service,
                    id = %event.id,
                    "{}",
                    what_happened(event.reason)
                );
            } else {
                self.left_out[event.reason.index()] += 1;
            }
        }
    }

    /// When the writer must wake to log the summary of a window, if one is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.left_out
            .iter()
            .any(|&n| n > 0)
            .then_some(self.window_start + WINDOW)
    }

    /// Ends the window once it is over: logs what it left out, and starts a new one.
    pub fn flush_if_due(&mut self, now: Instant) {
        if now < self.window_start + WINDOW {
            return;
        }
        let [registered, deregistered, expired, released, critical, healthy] = self.left_out;
        if self.left_out.iter().any(|&n| n > 0) {
            info!(
                registered,
                deregistered,
                expired,
                released,
                marked_critical = critical,
                marked_healthy = healthy,
                "more changes in the last second than are logged one by one"
            );
        }
        *self = ChangeLog::new(now);
    }
}

fn what_happened(reason: Reason) -> &'static str {
    match reason {
        Reason::Registered => "instance registered",
        Reason::Deregistered => "instance deregistered",
        Reason::Expired => "instance's lease expired",
        Reason::Disconnected => "ephemeral instance released: its connection closed",
        Reason::Critical => "instance marked critical: it leaves every answer",
        Reason::Healthy => "instance marked healthy: it is back in the answers",
    }
}
