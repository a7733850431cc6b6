//! Giving freed memory back to the system. glibc's allocator keeps the
//! pages of freed memory inside its heaps for later allocations: after a
//! connect storm (welcome frames, handshakes) or after thousands of rooms
//! hibernated, a process would keep its peak size for good. A reclaimer task
//! looks every [`RECLAIM_EVERY`] at how much the allocator holds free and,
//! past [`RECLAIM_ABOVE`] and a quarter of what is in use, has it release
//! those pages (`malloc_trim`), on a blocking thread.

use std::time::Duration;

/// How often the allocator's free memory is looked at.
pub const RECLAIM_EVERY: Duration = Duration::from_secs(5);
/// Free memory the allocator may keep without being asked to release it.
pub const RECLAIM_ABOVE: usize = 1 << 20;

/// Starts the reclaimer on the current runtime (a no-op where the C library
/// is not glibc).
pub fn spawn_reclaimer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut every = tokio::time::interval(RECLAIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if tokio::task::spawn_blocking(glibc::reclaim).await.is_err() {
                return;
            }
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use super::RECLAIM_ABOVE;

    /// Releases the allocator's free pages if it holds enough of them.
    pub(super) fn reclaim() {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        #[allow(unsafe_code)]
        let info = unsafe { libc::mallinfo2() };
        let (free, used) = (info.fordblks, info.uordblks);
        if free > RECLAIM_ABOVE && free > used / 4 {
            // SAFETY: malloc_trim takes the allocator's own locks; it is
            // safe to call from any thread at any time.
            #[allow(unsafe_code)]
            let released = unsafe { libc::malloc_trim(0) };
            tracing::debug!(
                free,
                used,
                released = released != 0,
                "returned free memory to the system"
            );
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: usize =
            statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        pages * 4096
    }

    #[test]
    fn freed_memory_in_the_middle_of_the_heap_goes_back_to_the_system() {
        // 64 MiB in 1 KiB blocks, every 64th kept: the freed blocks lie
        // between live ones, where the allocator does not trim by itself.
        let mut blocks: Vec<Box<[u8; 1024]>> = (0..65_536).map(|_| Box::new([1u8; 1024])).collect();
        let kept: Vec<Box<[u8; 1024]>> = blocks.drain(..).step_by(64).collect();
        let before = resident_bytes();
        glibc::reclaim();
        let after = resident_bytes();
        assert!(
            before.saturating_sub(after) > 32 << 20,
            "resident {before} -> {after} bytes: the freed blocks stayed"
        );
        assert_eq!(kept.iter().map(|b| b[0] as usize).sum::<usize>(), kept.len());
    }
}
