//! Giving freed memory back to the system. glibc's allocator keeps the
//! pages of freed memory inside its heaps for later allocations: after
//! thousands of rooms hibernated or thousands of clients left, a process
//! would keep its peak size for good.
//!
//! The reclaimer follows the process's load (its rooms, its connections)
//! every [`LOOK_EVERY`] and, when the load fell by a quarter or more from
//! its peak (at least [`MIN_DROP`] of it), has the allocator release its
//! free pages (`malloc_trim`) on a blocking thread, and again on the next
//! [`FOLLOW_UPS`] looks: what a departure frees comes in stages (a gateway
//! keeps an empty room's stream a few seconds). Nothing is asked of the
//! allocator while the load holds or grows: walking a large heap costs CPU
//! and holds the allocator's locks, which showed as latency when it was done
//! on a timer.

use std::time::Duration;

/// How often the load is looked at.
pub const LOOK_EVERY: Duration = Duration::from_secs(5);
/// The smallest fall of the load (rooms or connections) worth a trim.
pub const MIN_DROP: u64 = 64;
/// Trims after the one a fall of the load set off, one per look.
pub const FOLLOW_UPS: u32 = 2;

/// Starts the reclaimer on the current runtime, following `load` (a no-op
/// where the C library is not glibc).
pub fn spawn_reclaimer(load: impl Fn() -> i64 + Send + 'static) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async move {
        let mut every = tokio::time::interval(LOOK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut peak, mut follow_ups) = (0, 0);
        loop {
            every.tick().await;
            let now = u64::try_from(load()).unwrap_or(0);
            peak = peak.max(now);
            let fell = fell_enough(peak, now);
            if !fell && follow_ups == 0 {
                continue;
            }
            if tokio::task::spawn_blocking(glibc::trim).await.is_err() {
                return;
            }
            if fell {
                tracing::debug!(peak, now, "load fell; returned free memory to the system");
                (peak, follow_ups) = (now, FOLLOW_UPS);
            } else {
                follow_ups -= 1;
            }
        }
    });
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = load;
}

/// Whether the load fell far enough from its peak to trim.
fn fell_enough(peak: u64, now: u64) -> bool {
    peak.saturating_sub(now) >= MIN_DROP.max(peak / 4)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    /// Releases the allocator's free pages, in every arena.
    pub(super) fn trim() {
        // SAFETY: malloc_trim takes the allocator's own locks; it may be
        // called from any thread at any time.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_of_the_load_gone_is_worth_a_trim_small_changes_are_not() {
        assert!(fell_enough(10_000, 7_500));
        assert!(fell_enough(10_000, 0));
        assert!(!fell_enough(10_000, 7_501));
        assert!(!fell_enough(100, 50), "fewer than MIN_DROP");
        assert!(fell_enough(100, 0));
        assert!(!fell_enough(0, 0));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: usize =
            statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        pages * 4096
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_in_the_middle_of_the_heap_goes_back_to_the_system() {
        // 64 MiB in 1 KiB blocks, every 64th kept: the freed blocks lie
        // between live ones, where the allocator does not trim by itself.
        let mut blocks: Vec<Box<[u8; 1024]>> = (0..65_536).map(|_| Box::new([1u8; 1024])).collect();
        let kept: Vec<Box<[u8; 1024]>> = blocks.drain(..).step_by(64).collect();
        let before = resident_bytes();
        glibc::trim();
        let after = resident_bytes();
        assert!(
            before.saturating_sub(after) > 32 << 20,
            "resident {before} -> {after} bytes: the freed blocks stayed"
        );
        assert_eq!(kept.iter().map(|b| b[0] as usize).sum::<usize>(), kept.len());
    }
}
