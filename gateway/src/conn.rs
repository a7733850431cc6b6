//! The handle through which a room link reaches one client socket, and the
//! per-connection rate limiter.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rooms_proto::client::ErrorCode;
use rooms_proto::server;
use tokio::sync::Notify;
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
    /// The answer to a client's ping, with its payload (rare: boxed, so
    /// the common case stays two words).
    Pong(Box<Bytes>),
    /// A binary message (class rooms only; boxed for the same reason).
    Binary(Box<Bytes>),
}

/// Queue capacity kept after the queue drains; a burst beyond it is given
/// back, so an idle socket holds almost nothing.
const KEPT_CAPACITY: usize = 4;

/// One socket's outgoing queue: bounded, never waits on the sending side,
/// one consumer (the socket's writer). Lighter than a channel: an empty
/// queue holds no buffer.
pub struct Outbox {
    state: Mutex<OutboxState>,
    ready: Notify,
    capacity: usize,
}

struct OutboxState {
    queue: VecDeque<Outgoing>,
    closed: bool,
    /// Items ever queued: tells a closing session whether answers are
    /// still arriving.
    pushed: u64,
}

impl OutboxState {
    /// Moves up to `limit` items into `out`; a drained queue gives back
    /// what a burst made it grow to.
    fn take(&mut self, out: &mut Vec<Outgoing>, limit: usize) -> usize {
        let n = self.queue.len().min(limit);
        out.extend(self.queue.drain(..n));
        if self.queue.is_empty() && self.queue.capacity() > KEPT_CAPACITY {
            self.queue.shrink_to(KEPT_CAPACITY);
        }
        n
    }
}

impl Outbox {
    pub fn new(capacity: usize) -> Arc<Self> {
        let state = OutboxState { queue: VecDeque::new(), closed: false, pushed: 0 };
        Arc::new(Self { state: Mutex::new(state), ready: Notify::new(), capacity: capacity.max(1) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, item: Outgoing) -> Delivery {
        let mut state = self.lock();
        if state.closed {
            return Delivery::Closed;
        }
        if state.queue.len() >= self.capacity {
            return Delivery::Overflow;
        }
        let was_empty = state.queue.is_empty();
        state.queue.push_back(item);
        state.pushed += 1;
        drop(state);
        if was_empty {
            // A permit is kept if the writer is not waiting yet.
            self.ready.notify_one();
        }
        Delivery::Queued
    }

    /// Waits for items and moves up to `limit` of them into `out`; 0 once
    /// the outbox is closed.
    pub async fn recv_many(&self, out: &mut Vec<Outgoing>, limit: usize) -> usize {
        loop {
            {
                let mut state = self.lock();
                if !state.queue.is_empty() {
                    return state.take(out, limit);
                }
                if state.closed {
                    return 0;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Moves up to `limit` queued items into `out` without waiting.
    pub fn try_take(&self, out: &mut Vec<Outgoing>, limit: usize) {
        let room = limit.saturating_sub(out.len());
        self.lock().take(out, room);
    }

    /// Refuses everything from now on and drops what is queued.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.queue = VecDeque::new();
        drop(state);
        self.ready.notify_one();
    }

    /// Refuses everything from now on; what is queued is still handed to
    /// the writer, which then sees the end.
    pub fn finish(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Whether nothing is queued, and how many items were ever queued.
    pub fn activity(&self) -> (bool, u64) {
        let state = self.lock();
        (state.queue.is_empty(), state.pushed)
    }
}

/// Sends frames to one client socket without ever waiting: a full queue
/// closes that client (1013) so it never slows the room.
#[derive(Clone)]
pub struct ConnHandle {
    outbox: Arc<Outbox>,
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
    pub fn new(outbox: Arc<Outbox>, close: Arc<CloseSignal>) -> Self {
        Self { outbox, close }
    }

    pub fn deliver(&self, frames: Frames) -> Delivery {
        let delivery = self.outbox.push(Outgoing::Frames(frames));
        if delivery == Delivery::Overflow {
            self.close.trigger(close_code::TRY_AGAIN_LATER, "client too slow: send queue full");
        }
        delivery
    }

    /// Queues a binary message; a full queue closes the client as for text.
    pub fn deliver_binary(&self, payload: Bytes) -> Delivery {
        let delivery = self.outbox.push(Outgoing::Binary(Box::new(payload)));
        if delivery == Delivery::Overflow {
            self.close.trigger(close_code::TRY_AGAIN_LATER, "client too slow: send queue full");
        }
        delivery
    }

    /// Queues a pong; dropped if the queue is full (the client is then
    /// about to be closed as too slow anyway).
    pub fn pong(&self, payload: Bytes) {
        let _ = self.outbox.push(Outgoing::Pong(Box::new(payload)));
    }

    pub fn close(&self, code: u16, reason: impl Into<String>) {
        self.close.trigger(code, reason);
    }

    /// Queues an `error` frame made at the gateway, naming the refused
    /// request's client `id` when it had one (else empty).
    pub fn send_error(&self, code: ErrorCode, message: &str, id: &str) {
        self.send(server::error_for(code, message, id));
    }

    /// Queues one frame made at the gateway.
    pub fn send(&self, frame: Bytes) {
        if let Ok(frame) = Utf8Bytes::try_from(frame) {
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
        let outbox = Outbox::new(1);
        let signal = Arc::new(CloseSignal::default());
        let handle = ConnHandle::new(Arc::clone(&outbox), Arc::clone(&signal));
        assert_eq!(handle.deliver(Arc::new(["a".into()])), Delivery::Queued);
        assert_eq!(handle.deliver(Arc::new(["b".into()])), Delivery::Overflow);
        assert_eq!(signal.requested().await.0, close_code::TRY_AGAIN_LATER);
        let mut got = Vec::new();
        assert_eq!(outbox.recv_many(&mut got, 8).await, 1);
        outbox.close();
        assert_eq!(handle.deliver(Arc::new(["c".into()])), Delivery::Closed);
        assert_eq!(outbox.recv_many(&mut got, 8).await, 0);
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_for_each_delivery_and_bursts_are_given_back() {
        let outbox = Outbox::new(1000);
        let handle = ConnHandle::new(Arc::clone(&outbox), Arc::new(CloseSignal::default()));
        let writer = {
            let outbox = Arc::clone(&outbox);
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < 500 {
                    outbox.recv_many(&mut got, 64).await;
                }
                got.len()
            })
        };
        for i in 0..500 {
            assert_eq!(handle.deliver(Arc::new([i.to_string().into()])), Delivery::Queued);
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(writer.await.unwrap(), 500);
        assert!(outbox.lock().queue.capacity() <= KEPT_CAPACITY);
    }

    #[tokio::test]
    async fn a_finished_outbox_hands_over_what_was_queued_then_ends() {
        let outbox = Outbox::new(8);
        let handle = ConnHandle::new(Arc::clone(&outbox), Arc::new(CloseSignal::default()));
        handle.deliver(Arc::new(["a".into()]));
        handle.deliver(Arc::new(["b".into()]));
        outbox.finish();
        assert_eq!(handle.deliver(Arc::new(["late".into()])), Delivery::Closed);
        let mut got = Vec::new();
        assert_eq!(outbox.recv_many(&mut got, 8).await, 2);
        assert_eq!(outbox.recv_many(&mut got, 8).await, 0);
        assert_eq!(outbox.activity(), (true, 2));
    }
}
