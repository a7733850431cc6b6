//! Seeded randomness for fault schedules: the seed comes from
//! `ROOMS_CHAOS_SEED` or the clock, and is printed, so a failing schedule
//! replays exactly.

use std::time::Duration;

/// xorshift64: small, deterministic for a seed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `ROOMS_CHAOS_SEED`, else the clock; returns the seed too.
    pub fn from_env() -> (Self, u64) {
        let seed = std::env::var("ROOMS_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                now.map_or(1, |d| d.as_nanos() as u64) | 1
            });
        (Self(seed | 1), seed)
    }

    /// A number below `below` (which must not be 0).
    pub fn below(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }

    /// One of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A duration between `min` and `max`.
    pub fn between(&mut self, min: Duration, max: Duration) -> Duration {
        let span = max.saturating_sub(min).as_millis() as u64;
        min + Duration::from_millis(self.below(span + 1))
    }
}

/// How long a chaos run lasts: `ROOMS_CHAOS_SECONDS`, else `default`.
pub fn chaos_duration(default: Duration) -> Duration {
    std::env::var("ROOMS_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(default, Duration::from_secs)
}
