//! Finding the room's owner and opening a stream to it: the ring's choice
//! or where a roomhost sent the room, skipping roomhosts that cannot be
//! reached, while the link keeps taking its connections' commands.

use std::time::Duration;

use rooms_proto::host::{GatewayFrame, HostFrame, Join, Leave, Open, gateway_frame};
use rooms_server::Inbox;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::actor::{Link, Target, frame};
use super::phase::Stream;
use super::{LinkCmd, OPEN_TIMEOUT, UPSTREAM_QUEUE};

/// Each failed open waits one more step before the next (at most ten).
const BACKOFF_STEP: Duration = Duration::from_millis(50);
/// Redirects followed in a row before the link waits between them.
const BOUNCES_BEFORE_BACKOFF: u32 = 3;
/// How long to wait when the ring has no member left to try.
const NO_MEMBER_WAIT: Duration = Duration::from_millis(100);

/// Why a roomhost did not take a stream.
#[derive(Debug, thiserror::Error)]
pub(super) enum OpenError {
    #[error("{0}")]
    Route(#[from] crate::router::RouteError),
    #[error("did not answer in time")]
    Timeout,
    #[error("{0}")]
    Refused(String),
}

impl Link {
    /// Opens a stream to the room's owner (`target`), skipping owners that
    /// cannot be reached, until `deadline` passes. Client commands keep
    /// being taken meanwhile. None: gave up, sockets closed.
    pub(super) async fn attach(
        &mut self,
        rx: &mut Inbox<LinkCmd>,
        target: Target,
        deadline: Duration,
    ) -> Option<Streaming<HostFrame>> {
        let started = tokio::time::Instant::now();
        let (mut target, mut unreachable) = match target {
            Target::Redirect(address) => (Some(address), Vec::new()),
            Target::Ring { avoid } => (None, avoid.into_iter().collect()),
        };
        let mut attempt: u32 = 0;
        self.bounces += 1;
        if self.bounces > BOUNCES_BEFORE_BACKOFF {
            // Two roomhosts disagree about the room (membership changing):
            // let them settle instead of bouncing between them.
            self.pause(rx, BACKOFF_STEP * self.bounces.min(20)).await;
        }
        loop {
            if self.links.stopping.is_stopping() {
                self.give_up(rx);
                return None;
            }
            // Sent there by a roomhost (the previous owner or a lease holder),
            // or the ring's first choice is unreachable: the roomhost asked
            // may serve the room even if its own ring says otherwise, once it
            // holds the lease (claiming it from an owner nobody reaches).
            let redirected = target.is_some();
            let address = target
                .take()
                .or_else(|| self.links.router.ring().owner_without(&self.room, &unreachable));
            let Some(address) = address else {
                unreachable.clear();
                self.pause(rx, NO_MEMBER_WAIT).await;
                continue;
            };
            let fallback = redirected || !unreachable.is_empty();
            match self.open(&address, fallback).await {
                Ok(inbound) => {
                    tracing::debug!(room.id = %self.room, roomhost.addr = %address, fallback, "room stream open");
                    return Some(inbound);
                }
                Err(error) => {
                    tracing::warn!(room.id = %self.room, roomhost.addr = %address, %error, "roomhost unreachable");
                    unreachable.push(address);
                }
            }
            attempt += 1;
            if started.elapsed() > deadline {
                tracing::error!(room.id = %self.room, "no roomhost took the room; closing its sockets");
                self.give_up(rx);
                return None;
            }
            self.pause(rx, BACKOFF_STEP * attempt.min(10)).await;
        }
    }

    /// Waits, still taking client commands.
    async fn pause(&mut self, rx: &mut Inbox<LinkCmd>, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        while let Ok(Some(cmd)) = tokio::time::timeout_at(until, rx.recv()).await {
            self.command(cmd);
        }
    }

    /// Opens the stream: Open, every connection (silently if it was already
    /// welcomed), the departed, then the held client frames.
    async fn open(
        &mut self,
        address: &str,
        fallback: bool,
    ) -> Result<Streaming<HostFrame>, OpenError> {
        let ring = self.links.router.ring();
        let mut client = self.links.router.client(address, &ring)?;
        let rejoins: Vec<_> = self.class.rejoins().collect();
        let open = Open {
            room: self.room.to_string(),
            gateway_id: self.links.gateway_id.clone(),
            resume_after: self.last_seq,
            fallback,
            rejoins: u32::try_from(rejoins.len()).unwrap_or(u32::MAX),
            writes_welcome: true,
            // Who our clients were told is present: those nobody brings
            // back to the room's new owner are told gone.
            known_users: self.roster.user_ids().map(str::to_owned).collect(),
        };
        let mut first = vec![frame(gateway_frame::Kind::Open(open))];
        for (conn, local) in &self.conns {
            let join = Join {
                conn: *conn,
                user_id: local.user.to_string(),
                since: local.since,
                epoch: local.epoch.clone(),
                rejoin: local.welcomed.is_some(),
                socket: None,
            };
            first.push(frame(gateway_frame::Kind::Join(join)));
        }
        // Class rooms: the sockets this gateway keeps, as the room left them.
        for (conn, socket) in rejoins {
            let join = Join { conn, rejoin: true, socket: Some(socket), ..Join::default() };
            first.push(frame(gateway_frame::Kind::Join(join)));
        }
        if let Some(held) = self.phase.held() {
            for (conn, user) in &held.departed {
                let join = Join {
                    conn: *conn,
                    user_id: user.to_string(),
                    rejoin: true,
                    ..Join::default()
                };
                first.push(frame(gateway_frame::Kind::Join(join)));
                first.push(frame(gateway_frame::Kind::Leave(Leave { conn: *conn })));
            }
            first.extend(held.frames.iter().cloned());
        }
        let (up, up_rx) = mpsc::channel(UPSTREAM_QUEUE);
        let outbound = tokio_stream::iter(first)
            .chain(ReceiverStream::new(up_rx).map(|frame: Box<GatewayFrame>| *frame));
        let response = tokio::time::timeout(OPEN_TIMEOUT, client.attach(outbound))
            .await
            .map_err(|_| OpenError::Timeout)?
            .map_err(|status| OpenError::Refused(status.message().to_owned()))?;
        self.last_seq.get_or_insert(0);
        self.streams = self.streams.wrapping_add(1);
        self.phase.opened(Stream { up, address: address.to_owned() });
        Ok(response.into_inner())
    }
}
