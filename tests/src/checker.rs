//! A history checker in the style of Jepsen's: every client operation of a
//! [`Load`](crate::load::Load) is recorded (each send with its id and time,
//! each delivered event per client with its arrival, each error and close),
//! the faults injected meanwhile are listed with their bounds, and the whole
//! history is checked at the end.
//!
//! * Safety ([`verify`]): per client, seqs strictly increasing and
//!   contiguous, no event delivered twice, one event per seq (one writer),
//!   no message stored twice, nobody disconnected.
//! * Liveness: after each fault, every client receives new events within the
//!   fault's bound (a silence is measured from the later of the fault's start
//!   and the client's last event before it), and every message sent is
//!   answered — its echo or an `error` naming it — within that bound too.
//!
//! [`Report::table`] prints the worst pause per fault kind.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use crate::load::{Outcome, Verified, verify};

/// How long a client may wait for the next event, or a sender for its answer,
/// when no fault is going on (the senders' rhythm plus scheduling noise).
pub const QUIET_BOUND: Duration = Duration::from_millis(1000);
/// A planned move (handoff, scale-out, SIGTERM) pauses a room at most this.
pub const PLANNED_BOUND: Duration = Duration::from_millis(250);

/// One injected fault: from `start` to `end` (equal for an instant fault),
/// after which the room must serve again within `bound` of `start`.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: String,
    pub start: Instant,
    pub end: Instant,
    pub bound: Duration,
}

impl Fault {
    /// An instant fault with its bound.
    pub fn at(kind: &str, start: Instant, bound: Duration) -> Self {
        Self { kind: kind.to_owned(), start, end: start, bound }
    }

    /// A planned move: bounded by [`PLANNED_BOUND`].
    pub fn planned(kind: &str, start: Instant) -> Self {
        Self::at(kind, start, PLANNED_BOUND)
    }

    /// A crash or a partition: another roomhost serves the room within the
    /// lease TTL and a second.
    pub fn crash(kind: &str, start: Instant, lease_ttl: Duration) -> Self {
        Self::at(kind, start, lease_ttl + Duration::from_secs(1))
    }

    /// Marks the fault as lasting until `end` (a partition healed, a process
    /// continued).
    pub fn until(mut self, end: Instant) -> Self {
        self.end = end;
        self
    }

    /// The moment by which a wait that was going on at `from` must be over.
    fn deadline(&self, from: Instant) -> Instant {
        from.max(self.start) + self.bound
    }

    /// Whether a wait from `from` to `to` overlaps this fault's window.
    fn covers(&self, from: Instant, to: Instant) -> bool {
        to > self.start && from < self.end + self.bound
    }
}

/// One liveness violation.
#[derive(Debug, Clone)]
pub struct Stall {
    pub who: String,
    pub what: String,
    pub waited: Duration,
    pub allowed: Duration,
}

/// The verdict on a history.
#[derive(Debug)]
pub struct Report {
    pub verified: Verified,
    /// Per fault kind: how many, and the longest silence any client saw.
    pub worst: BTreeMap<String, (usize, Duration)>,
    /// Per fault, in the order given: the longest silence any client saw.
    pub pauses: Vec<Duration>,
    /// The longest wait for an answer to a send.
    pub slowest_answer: Duration,
    pub stalls: Vec<Stall>,
}

impl Report {
    /// Panics with every stall found.
    pub fn assert_live(&self) {
        assert!(self.stalls.is_empty(), "liveness violated:\n{}", self.table());
    }

    /// The worst pause per fault kind, and any stall.
    pub fn table(&self) -> String {
        let mut out = String::from("| fault | count | worst pause |\n| --- | --- | --- |\n");
        for (kind, (count, pause)) in &self.worst {
            let _ = writeln!(out, "| {kind} | {count} | {} ms |", pause.as_millis());
        }
        let _ = writeln!(
            out,
            "events {}, refused {}, unanswered {}, slowest answer {} ms",
            self.verified.events.len(),
            self.verified.refused,
            self.verified.unacknowledged,
            self.slowest_answer.as_millis()
        );
        for stall in self.stalls.iter().take(20) {
            let _ = writeln!(
                out,
                "STALL {}: {} waited {} ms (allowed {} ms)",
                stall.who,
                stall.what,
                stall.waited.as_millis(),
                stall.allowed.as_millis()
            );
        }
        out
    }
}

/// The allowed end of a wait that started at `from` and ended (or not) at
/// `to`: the latest deadline among the faults it overlaps, else the quiet
/// bound.
fn allowed_end(faults: &[Fault], from: Instant, to: Instant) -> Instant {
    faults
        .iter()
        .filter(|f| f.covers(from, to))
        .map(|f| f.deadline(from))
        .fold(from + QUIET_BOUND, Instant::max)
}

/// Checks `outcomes` (safety: panics on a violation) and measures liveness
/// against `faults`. `all_answered`: every send must be answered (no crash
/// swallowed one).
pub fn check(outcomes: &[Outcome], faults: &[Fault], all_answered: bool) -> Report {
    let verified = verify(outcomes, all_answered);
    let mut worst: BTreeMap<String, (usize, Duration)> = BTreeMap::new();
    for fault in faults {
        worst.entry(fault.kind.clone()).or_default().0 += 1;
    }
    let mut pauses = vec![Duration::ZERO; faults.len()];
    let mut stalls = Vec::new();
    let mut slowest_answer = Duration::ZERO;
    for outcome in outcomes {
        // Deliveries, then the end of the run: a room that stopped
        // delivering before the load stopped is a silence too.
        let mut times: Vec<Instant> = outcome.chats.iter().map(|(t, _, _)| *t).collect();
        times.extend(outcome.stopped);
        for pair in times.windows(2) {
            let (from, to) = (pair[0], pair[1]);
            let waited = to.duration_since(from);
            for (i, fault) in faults.iter().enumerate().filter(|(_, f)| f.covers(from, to)) {
                let silence = to.saturating_duration_since(from.max(fault.start));
                pauses[i] = pauses[i].max(silence);
                let entry = worst.entry(fault.kind.clone()).or_default();
                entry.1 = entry.1.max(silence);
            }
            let allowed = allowed_end(faults, from, to);
            if to > allowed {
                stalls.push(Stall {
                    who: outcome.user.clone(),
                    what: "no event".into(),
                    waited,
                    allowed: allowed.duration_since(from),
                });
            }
        }
        // Every send answered in time: its echo, or an error naming it.
        let mut answered: BTreeMap<&str, Instant> = BTreeMap::new();
        for (at, _, text) in &outcome.chats {
            answered.entry(text.as_str()).or_insert(*at);
        }
        for (at, id) in &outcome.refused {
            answered.entry(id.as_str()).or_insert(*at);
        }
        for (sent, text) in &outcome.sent {
            let Some(answer) = answered.get(text.as_str()) else {
                continue; // counted by verify as unacknowledged
            };
            let waited = answer.saturating_duration_since(*sent);
            slowest_answer = slowest_answer.max(waited);
            let allowed = allowed_end(faults, *sent, *answer);
            if *answer > allowed {
                stalls.push(Stall {
                    who: outcome.user.clone(),
                    what: format!("answer to `{text}`"),
                    waited,
                    allowed: allowed.duration_since(*sent),
                });
            }
        }
    }
    Report { verified, worst, pauses, slowest_answer, stalls }
}
