//! Steady chat load for fault tests: every client sends a numbered message
//! at a fixed interval and records every event it receives, until stopped.
//! [`verify`] then checks what users would notice.

use std::collections::BTreeMap;
use std::time::Duration;

use rooms_proto::server::ServerFrame;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{Client, Received};

/// What one client saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub user: String,
    /// (arrival, seq, text) of every chat, in arrival order.
    pub chats: Vec<(Instant, u64, String)>,
    /// (when, text) of the chats it sent; the text is also the client id.
    pub sent: Vec<(Instant, String)>,
    /// `error` frames received (code).
    pub errors: Vec<String>,
    /// (arrival, id) of the ids the `error` frames named: which sends were
    /// refused, and when.
    pub refused: Vec<(Instant, String)>,
    /// Set if the server closed the connection (code).
    pub closed: Option<Option<u16>>,
    /// Presence events received before the load was stopped.
    pub joins_and_leaves: Vec<ServerFrame>,
    /// When the load was told to stop (sending ended there).
    pub stopped: Option<Instant>,
}

pub struct Load {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Outcome>>,
}

impl Load {
    /// Starts `clients` (already joined), each sending every `every`.
    pub fn start(clients: Vec<(String, Client)>, every: Duration) -> Self {
        Self::start_mixed(clients.into_iter().map(|(u, c)| (u, c, Some(every))).collect())
    }

    /// Starts `clients` (already joined): those with an interval send at
    /// it, the others only receive.
    pub fn start_mixed(clients: Vec<(String, Client, Option<Duration>)>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let tasks = clients
            .into_iter()
            .map(|(user, client, every)| tokio::spawn(drive(user, client, every, stopped.clone())))
            .collect();
        Self { stop, tasks }
    }

    /// Stops sending, lets the last messages arrive, and returns what each
    /// client saw.
    pub async fn stop(self) -> Vec<Outcome> {
        let _ = self.stop.send(true);
        let mut outcomes = Vec::new();
        for task in self.tasks {
            outcomes.push(task.await.expect("load task"));
        }
        outcomes
    }
}

async fn drive(
    user: String,
    mut client: Client,
    every: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) -> Outcome {
    let mut outcome = Outcome { user: user.clone(), ..Outcome::default() };
    let sends = every.is_some();
    let mut ticker = tokio::time::interval(every.unwrap_or(Duration::from_secs(3600)));
    let mut n = 0usize;
    let mut draining_until: Option<Instant> = None;
    loop {
        if draining_until.is_some_and(|until| Instant::now() > until) {
            break;
        }
        tokio::select! {
            _ = ticker.tick(), if sends && draining_until.is_none() => {
                let text = format!("{user}-{n}");
                n += 1;
                if !client.try_send_text(&serde_json::json!({"type": "chat", "text": text, "id": text}).to_string()).await {
                    outcome.closed.get_or_insert(None);
                    break;
                }
                outcome.sent.push((Instant::now(), text));
            }
            _ = stop.changed(), if draining_until.is_none() => {
                outcome.stopped = Some(Instant::now());
                draining_until = Some(Instant::now() + Duration::from_secs(3));
            }
            event = client.next_within(Duration::from_millis(200)) => match event {
                Some(Received::Frame(ServerFrame::Chat { seq, text, .. })) => {
                    outcome.chats.push((Instant::now(), seq.unwrap_or(0), text));
                }
                Some(Received::Frame(ServerFrame::Error { code, id, .. })) => {
                    outcome.errors.push(code);
                    outcome.refused.extend(id.map(|id| (Instant::now(), id)));
                }
                // While draining, the others closing is no news.
                Some(Received::Frame(frame @ (ServerFrame::Join { .. } | ServerFrame::Leave { .. })))
                    if draining_until.is_none() =>
                {
                    outcome.joins_and_leaves.push(frame);
                }
                Some(Received::Frame(_)) => {}
                Some(Received::Closed(code, _)) => {
                    outcome.closed = Some(code);
                    break;
                }
                None => {}
            },
        }
    }
    client.close().await;
    outcome
}

/// What the clients saw, checked: nobody disconnected, every client saw a
/// contiguous run of seqs without duplicates, all saw the same event for a
/// seq, and every sent message that was not refused arrived.
#[derive(Debug)]
pub struct Verified {
    /// seq -> text, the union of everything received.
    pub events: BTreeMap<u64, String>,
    /// Sends answered with an `error` frame.
    pub refused: usize,
    /// Sends that neither arrived nor were refused.
    pub unacknowledged: usize,
}

/// `all_sent_arrive`: also every sent message that was not refused arrived
/// (planned moves). After a crash, messages in flight to the dead roomhost
/// were never acknowledged and may be missing; they are counted.
pub fn verify(outcomes: &[Outcome], all_sent_arrive: bool) -> Verified {
    let mut events: BTreeMap<u64, String> = BTreeMap::new();
    let mut refused = 0;
    for outcome in outcomes {
        assert_eq!(outcome.closed, None, "{} was disconnected", outcome.user);
        assert!(!outcome.chats.is_empty(), "{} received nothing", outcome.user);
        let seqs: Vec<u64> = outcome.chats.iter().map(|(_, seq, _)| *seq).collect();
        for pair in seqs.windows(2) {
            assert_eq!(
                pair[1],
                pair[0] + 1,
                "{}: seq {} then {} (gap or duplicate)",
                outcome.user,
                pair[0],
                pair[1]
            );
        }
        for (_, seq, text) in &outcome.chats {
            if let Some(previous) = events.insert(*seq, text.clone()) {
                assert_eq!(&previous, text, "seq {seq} was given to two different events");
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (_, seq, text) in &outcome.chats {
            assert!(
                seen.insert(text),
                "{}: `{text}` delivered twice (again as seq {seq})",
                outcome.user
            );
        }
        refused += outcome.errors.len();
    }
    // Every message a sender got no error for arrived (at everyone, as checked
    // by contiguity over the common range).
    // Every refusal names the message it refused, so the check is per message.
    let mut stored_as: std::collections::HashMap<&String, u64> = Default::default();
    for (seq, text) in &events {
        if let Some(first) = stored_as.insert(text, *seq) {
            panic!("`{text}` stored twice: seq {first} and {seq}");
        }
    }
    let delivered: std::collections::HashSet<&String> = events.values().collect();
    let mut unacknowledged = 0;
    for outcome in outcomes {
        assert_eq!(
            outcome.refused.len(),
            outcome.errors.len(),
            "{}: an error did not name the refused message",
            outcome.user
        );
        let refused: std::collections::HashSet<&String> =
            outcome.refused.iter().map(|(_, id)| id).collect();
        let unexplained: Vec<&String> = outcome
            .sent
            .iter()
            .map(|(_, t)| t)
            .filter(|t| !delivered.contains(t) && !refused.contains(t))
            .collect();
        assert!(
            !all_sent_arrive || unexplained.is_empty(),
            "{}: sent, never arrived and never refused: {unexplained:?}",
            outcome.user,
        );
        unacknowledged += unexplained.len();
    }
    Verified { events, refused, unacknowledged }
}

/// The pause a fault caused: the longest any client waited between two
/// consecutive events, among waits that end after `at` (within 30 s).
pub fn pause_after(outcomes: &[Outcome], at: Instant) -> Duration {
    let horizon = at + Duration::from_secs(30);
    outcomes
        .iter()
        .flat_map(|o| o.chats.windows(2))
        .filter(|pair| pair[1].0 > at && pair[1].0 < horizon)
        .map(|pair| pair[1].0.duration_since(pair[0].0))
        .max()
        .expect("events after the fault")
}
