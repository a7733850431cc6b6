//! Wakes class rooms whose alarm is due while they are not in memory
//! (hibernated, or their owner died): every [`SCAN_EVERY`] each roomhost
//! reads the alarm index and starts the rooms the ring gives it. A room
//! whose ring owner has not fired it [`TAKEOVER`] lease TTLs after it was
//! due is woken by any roomhost: the lease decides which one serves it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use crate::registry::{LeaseWait, Registry};
use crate::room::Command;

/// How often the alarm index is read.
pub const SCAN_EVERY: Duration = Duration::from_secs(1);
/// Most due rooms taken from the index per scan (the earliest first).
pub const SCAN_LIMIT: usize = 1024;
/// Lease TTLs after which any roomhost wakes a room whose alarm is due.
pub const TAKEOVER: u32 = 2;

pub async fn run(registry: Arc<Registry>, lease_ttl: Duration) {
    let mut tick = tokio::time::interval(SCAN_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if registry.is_closed() {
            return;
        }
        let now = crate::class_room::now_ms();
        let due = match registry.store().due_alarms(now, SCAN_LIMIT).await {
            Ok(due) => due,
            Err(error) => {
                tracing::debug!(%error, "reading the alarm index failed");
                continue;
            }
        };
        for (room, at) in due {
            if !registry.runs_class(&room) {
                continue; // a class this roomhost does not run: its owners wake it
            }
            let overdue = Duration::from_millis(now.saturating_sub(at));
            let ours = registry.get(&room).is_some()
                || registry.ring_owner(&room).is_none_or(|owner| owner == registry.address())
                || overdue > lease_ttl * TAKEOVER;
            if ours {
                // Held elsewhere: the wake is redirected there and dropped.
                let _ = registry.dispatch(&room, Command::Wake, LeaseWait::Redirect).await;
            }
        }
    }
}
