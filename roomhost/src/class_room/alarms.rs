//! A class room's alarm and named timers, as its owner keeps them: when the
//! next fires, which are due, and retries. The stored copy is in Redis
//! (`rooms:{R}:alarms`, written in the room's fenced commit); the room's
//! entry in the alarm index wakes it when it is not in memory.
//!
//! * A due alarm is deleted from this map before it fires, so it never
//!   fires twice while this owner lives. Its deletion is stored with the
//!   handler's writes; if the owner dies first, the next owner fires it
//!   again (at least once).
//! * A handler that throws or fails is retried, as on Cloudflare, up to
//!   [`MAX_RETRIES`] times, 2 s, 4 s, 8 s … after the failure.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Retries of a failing alarm handler before it is given up.
pub const MAX_RETRIES: u32 = 6;

/// Now, in ms since the epoch (the unit alarms are kept in).
pub(crate) fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Default)]
pub(super) struct Alarms {
    /// Name ("" for the room's alarm) -> when it fires; None until loaded.
    at: Option<HashMap<String, u64>>,
    /// Failures so far, per alarm being retried.
    retries: HashMap<String, u32>,
}

impl Alarms {
    pub(super) fn is_loaded(&self) -> bool {
        self.at.is_some()
    }

    pub(super) fn loaded(&mut self, stored: Vec<(String, u64)>) {
        self.at = Some(stored.into_iter().collect());
    }

    /// Forgets the map: the store's copy is the truth again (a commit
    /// failed), loaded with the next instance.
    pub(super) fn forget(&mut self) {
        self.at = None;
    }

    /// All of them, for a new instance.
    pub(super) fn list(&self) -> Vec<(String, u64)> {
        self.at.iter().flatten().map(|(name, at)| (name.clone(), *at)).collect()
    }

    pub(super) fn set(&mut self, name: &str, at: Option<u64>) {
        let Some(map) = &mut self.at else { return };
        match at {
            Some(at) => map.insert(name.to_owned(), at),
            None => map.remove(name),
        };
    }

    /// When the next one fires (ms since the epoch).
    pub(super) fn next(&self) -> Option<u64> {
        self.at.as_ref()?.values().min().copied()
    }

    /// Those due at `now`, earliest first, taken out of the map, each with
    /// how many times it failed before.
    pub(super) fn take_due(&mut self, now: u64) -> Vec<(String, u32)> {
        let Some(map) = &mut self.at else { return Vec::new() };
        let mut due: Vec<(u64, String)> =
            map.iter().filter(|(_, at)| **at <= now).map(|(n, at)| (*at, n.clone())).collect();
        due.sort();
        due.into_iter()
            .map(|(_, name)| {
                map.remove(&name);
                let retry = self.retries.get(&name).copied().unwrap_or(0);
                (name, retry)
            })
            .collect()
    }

    pub(super) fn succeeded(&mut self, name: &str) {
        self.retries.remove(name);
    }

    /// It failed at `now`: when to try again, or None (given up).
    pub(super) fn failed(&mut self, name: &str, now: u64) -> Option<u64> {
        let failures = self.retries.entry(name.to_owned()).or_insert(0);
        *failures += 1;
        if *failures > MAX_RETRIES {
            self.retries.remove(name);
            return None;
        }
        let backoff = Duration::from_secs(1 << *failures);
        let at = now + u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
        self.set(name, Some(at));
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_alarms_are_taken_once_earliest_first_and_failures_back_off_then_give_up() {
        let mut alarms = Alarms::default();
        assert_eq!(alarms.next(), None);
        let later = 1 << 40;
        alarms.loaded(vec![("b".into(), 20), (String::new(), 10), ("c".into(), later)]);
        assert_eq!(alarms.next(), Some(10));
        assert_eq!(alarms.take_due(50), [(String::new(), 0), ("b".into(), 0)]);
        assert!(alarms.take_due(50).is_empty(), "never twice");
        assert_eq!(alarms.next(), Some(later));
        let mut at = 1_000;
        for failure in 1..=MAX_RETRIES {
            let retry = alarms.failed("b", at).expect("retried");
            assert_eq!(retry, at + (1000 << failure));
            assert_eq!(alarms.take_due(retry), [("b".into(), failure)]);
            at = retry;
        }
        assert_eq!(alarms.failed("b", at), None, "given up after {MAX_RETRIES} retries");
        alarms.set("d", Some(5));
        assert_eq!(alarms.take_due(5), [("d".into(), 0)]);
    }
}
