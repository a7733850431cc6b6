//! The handle through which a room link reaches one client socket, and the
//! per-connection rate limiter.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rooms_proto::client::ErrorCode;
use rooms_proto::server;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Gateway-local connection id (never 0: 0 means "none" on the wire).
pub type ConnId = u64;

pub use rooms_proto::server::close_code;

/// A request to close one socket with a code; the first request wins.
#[derive(Default)]
pub struct CloseSignal {
    reason: Mutex<Option<(u16, String)>>,
    notify: Notify,
}

impl CloseSignal {
    pub fn trigger(&self, code: u16, reason: impl Into<String>) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some((code, reason.into()));
            self.notify.notify_one();
        }
    }

    /// Resolves once a close was requested, with its code and reason.
    pub async fn requested(&self) -> (u16, String) {
        loop {
            if let Some(reason) = self.get() {
                return reason;
            }
            self.notify.notified().await;
        }
    }

    pub fn get(&self) -> Option<(u16, String)> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Frames queued for one socket as one unit. A batch from the roomhost is
/// shared by every connection of the room: one refcount each, no copy.
pub type Frames = Arc<[Utf8Bytes]>;

/// What a socket's writer is asked to send.
pub enum Outgoing {
    Frames(Frames),
    /// The answer to a client's ping, with its payload.
    Pong(Bytes),
}

/// Sends frames to one client socket without ever waiting: a full queue
/// closes that client (1013) so it never slows the room.
#[derive(Clone)]
pub struct ConnHandle {
    tx: mpsc::Sender<Outgoing>,
    close: Arc<CloseSignal>,
}

/// What happened to a frame handed to [`ConnHandle::deliver`].
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The queue was full: the client is being closed with 1013.
    Overflow,
    /// The socket is already gone.
    Closed,
}

impl ConnHandle {
    pub fn new(tx: mpsc::Sender<Outgoing>, close: Arc<CloseSignal>) -> Self {
        Self { tx, close }
    }

    pub fn deliver(&self, frames: Frames) -> Delivery {
        match self.tx.try_send(Outgoing::Frames(frames)) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close.trigger(close_code::TRY_AGAIN_LATER, "client too slow: send queue full");
                Delivery::Overflow
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
        }
    }

    /// Queues a pong; dropped if the queue is full (the client is then
    /// about to be closed as too slow anyway).
    pub fn pong(&self, payload: Bytes) {
        let _ = self.tx.try_send(Outgoing::Pong(payload));
    }

    pub fn close(&self, code: u16, reason: impl Into<String>) {
        self.close.trigger(code, reason);
    }

    /// Queues an `error` frame made at the gateway.
    pub fn send_error(&self, code: ErrorCode, message: &str) {
        if let Ok(frame) = Utf8Bytes::try_from(server::error(code, message)) {
            self.deliver(Arc::new([frame]));
        }
    }
}

/// Token bucket: `rate` messages per second, `burst` at once. Refusals are
/// counted per second; [`Verdict::Flood`] when they exceed the flood limit.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    refused_window: Instant,
    refused: u32,
    flood_limit: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Drop this message and tell the client `rate_limited`.
    Limited,
    /// Sustained flooding: close the connection with 1008.
    Flood,
}

impl RateLimiter {
    pub fn new(rate: u32, burst: u32) -> Self {
        let now = Instant::now();
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
            refused_window: now,
            refused: 0,
            // Refusing more than a burst's worth within one second is flooding.
            flood_limit: burst.max(rate),
        }
    }

    pub fn check(&mut self) -> Verdict {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now.duration_since(self.refused_window).as_secs() >= 1 {
            self.refused_window = now;
            self.refused = 0;
        }
        self.refused += 1;
        if self.refused > self.flood_limit { Verdict::Flood } else { Verdict::Limited }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_allows_burst_then_rate_then_detects_flood() {
        let mut limiter = RateLimiter::new(20, 40);
        for _ in 0..40 {
            assert_eq!(limiter.check(), Verdict::Allow);
        }
        assert_eq!(limiter.check(), Verdict::Limited);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(limiter.check(), Verdict::Allow);
        assert_eq!(limiter.check(), Verdict::Allow);
        let mut verdicts = Vec::new();
        for _ in 0..60 {
            verdicts.push(limiter.check());
        }
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Limited).count(), 39);
        assert_eq!(verdicts.last(), Some(&Verdict::Flood));
    }

    #[tokio::test]
    async fn full_queue_requests_close_1013() {
        let (tx, _rx) = mpsc::channel(1);
        let signal = Arc::new(CloseSignal::default());
        let handle = ConnHandle::new(tx, Arc::clone(&signal));
        assert_eq!(handle.deliver(Arc::new(["a".into()])), Delivery::Queued);
        assert_eq!(handle.deliver(Arc::new(["b".into()])), Delivery::Overflow);
        assert_eq!(signal.requested().await.0, close_code::TRY_AGAIN_LATER);
    }
}
