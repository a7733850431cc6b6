//! The threads room classes run on. JavaScript never runs on the async
//! runtime's workers: each instance lives on one thread of a fixed pool
//! (QuickJS runtimes stay on the thread that made them), chosen by the
//! instance's number, and a room's actor awaits its events' answers. A
//! runaway handler holds its thread for at most the CPU limit; rooms on
//! other threads never notice.
//!
//! Bounded: each thread takes at most [`QUEUE`] jobs; a room sending more
//! waits (its own commands queue up behind, bounded as well).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use tokio::sync::{mpsc, oneshot};

use crate::bundle::Bundle;
use crate::effect::Payload;
use crate::instance::{
    ClassError, HttpRequest, HttpResponse, Instance, Limits, Outcome, Restored, Stored,
};

/// Jobs queued per thread.
pub const QUEUE: usize = 1024;

/// What an instance is asked to do.
enum Job {
    Start {
        bundle: Arc<Bundle>,
        room: String,
        env_json: Arc<str>,
        stored: Stored,
        restored: Vec<Restored>,
        reply: oneshot::Sender<Result<Outcome<()>, ClassError>>,
    },
    Fetch {
        socket: u64,
        request: HttpRequest,
        reply: oneshot::Sender<Result<Outcome<HttpResponse>, ClassError>>,
    },
    Message {
        socket: u64,
        payload: Payload,
        reply: oneshot::Sender<Result<Outcome<()>, ClassError>>,
    },
    Close {
        socket: u64,
        code: u16,
        reason: String,
        clean: bool,
        reply: oneshot::Sender<Result<Outcome<()>, ClassError>>,
    },
    Error {
        socket: u64,
        message: String,
        reply: oneshot::Sender<Result<Outcome<()>, ClassError>>,
    },
    Alarm {
        name: String,
        retry: u32,
        reply: oneshot::Sender<Result<Outcome<()>, ClassError>>,
    },
    Invoke {
        method: String,
        args_json: String,
        reply: oneshot::Sender<Result<Outcome<String>, ClassError>>,
    },
    Memory {
        reply: oneshot::Sender<usize>,
    },
    Drop,
}

/// The pool's threads.
pub struct Pool {
    threads: Vec<mpsc::Sender<(u64, Job)>>,
    next: AtomicU64,
    limits: Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the room class threads stopped")]
    Stopped,
    #[error(transparent)]
    Class(#[from] ClassError),
}

impl Pool {
    /// Starts `threads` threads (at least one).
    pub fn new(threads: usize, limits: Limits) -> std::io::Result<Arc<Self>> {
        let mut senders = Vec::new();
        for i in 0..threads.max(1) {
            let (tx, rx) = mpsc::channel(QUEUE);
            let limits = limits.clone();
            thread::Builder::new().name(format!("room-class-{i}")).spawn(move || {
                lower_priority();
                serve(rx, limits)
            })?;
            senders.push(tx);
        }
        Ok(Arc::new(Self { threads: senders, next: AtomicU64::new(1), limits }))
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Starts a room's instance; the handle drops it when dropped.
    pub async fn start(
        self: &Arc<Self>,
        bundle: Arc<Bundle>,
        room: &str,
        env_json: Arc<str>,
        stored: Stored,
        restored: Vec<Restored>,
    ) -> Result<(InstanceHandle, Outcome<()>), PoolError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let thread = self.threads[(id % self.threads.len() as u64) as usize].clone();
        let handle = InstanceHandle { id, thread };
        let outcome = handle
            .ask(|reply| Job::Start {
                bundle,
                room: room.to_owned(),
                env_json,
                stored,
                restored,
                reply,
            })
            .await??;
        Ok((handle, outcome))
    }
}

/// One instance on its thread.
pub struct InstanceHandle {
    id: u64,
    thread: mpsc::Sender<(u64, Job)>,
}

impl InstanceHandle {
    async fn ask<T>(&self, job: impl FnOnce(oneshot::Sender<T>) -> Job) -> Result<T, PoolError> {
        let (reply, answer) = oneshot::channel();
        self.thread.send((self.id, job(reply))).await.map_err(|_| PoolError::Stopped)?;
        answer.await.map_err(|_| PoolError::Stopped)
    }

    pub async fn fetch(
        &self,
        socket: u64,
        request: HttpRequest,
    ) -> Result<Outcome<HttpResponse>, PoolError> {
        Ok(self.ask(|reply| Job::Fetch { socket, request, reply }).await??)
    }

    pub async fn message(&self, socket: u64, payload: Payload) -> Result<Outcome<()>, PoolError> {
        Ok(self.ask(|reply| Job::Message { socket, payload, reply }).await??)
    }

    pub async fn close(
        &self,
        socket: u64,
        code: u16,
        reason: String,
        clean: bool,
    ) -> Result<Outcome<()>, PoolError> {
        Ok(self.ask(|reply| Job::Close { socket, code, reason, clean, reply }).await??)
    }

    pub async fn error(&self, socket: u64, message: String) -> Result<Outcome<()>, PoolError> {
        Ok(self.ask(|reply| Job::Error { socket, message, reply }).await??)
    }

    pub async fn alarm(&self, name: String, retry: u32) -> Result<Outcome<()>, PoolError> {
        Ok(self.ask(|reply| Job::Alarm { name, retry, reply }).await??)
    }

    pub async fn invoke(
        &self,
        method: String,
        args_json: String,
    ) -> Result<Outcome<String>, PoolError> {
        Ok(self.ask(|reply| Job::Invoke { method, args_json, reply }).await??)
    }

    /// Bytes of JavaScript heap the instance uses.
    pub async fn memory(&self) -> Result<usize, PoolError> {
        self.ask(|reply| Job::Memory { reply }).await
    }
}

impl Drop for InstanceHandle {
    fn drop(&mut self) {
        // A full queue keeps the instance until its thread stops: rare, and
        // bounded by the rooms on that thread.
        let _ = self.thread.try_send((self.id, Job::Drop));
    }
}

/// One thread's loop: its instances, one job at a time.
/// How much lower than the process's the class threads run (`nice`): a
/// room that computes as long as its CPU limit lets it yields the cores to
/// the threads that move every other room's messages.
pub const NICENESS: i32 = 10;

/// Lowers this thread's scheduling priority by [`NICENESS`] (Linux: the
/// nice value is per thread). Failing to is not an error.
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: gettid and setpriority take plain integers and touch no
    // memory of ours; with PRIO_PROCESS and a thread id, Linux sets that
    // thread's nice value.
    let done = unsafe {
        let tid = libc::gettid();
        let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, now + NICENESS)
    };
    if done != 0 {
        tracing::debug!("could not lower the room class threads' priority");
    }
}

fn serve(mut rx: mpsc::Receiver<(u64, Job)>, limits: Limits) {
    let mut instances: HashMap<u64, Instance> = HashMap::new();
    while let Some((id, job)) = rx.blocking_recv() {
        let missing = || ClassError::Engine("the instance is gone".into());
        match job {
            Job::Start { bundle, room, env_json, stored, restored, reply } => {
                let started =
                    Instance::start(&bundle, &room, &env_json, &stored, &restored, limits.clone());
                let _ = reply.send(started.map(|(instance, outcome)| {
                    instances.insert(id, instance);
                    outcome
                }));
            }
            Job::Fetch { socket, request, reply } => {
                let _ = reply.send(
                    instances.get(&id).ok_or_else(missing).and_then(|i| i.fetch(socket, &request)),
                );
            }
            Job::Message { socket, payload, reply } => {
                let _ = reply.send(
                    instances
                        .get(&id)
                        .ok_or_else(missing)
                        .and_then(|i| i.message(socket, &payload)),
                );
            }
            Job::Close { socket, code, reason, clean, reply } => {
                let _ = reply.send(
                    instances
                        .get(&id)
                        .ok_or_else(missing)
                        .and_then(|i| i.close(socket, code, &reason, clean)),
                );
            }
            Job::Error { socket, message, reply } => {
                let _ = reply.send(
                    instances.get(&id).ok_or_else(missing).and_then(|i| i.error(socket, &message)),
                );
            }
            Job::Alarm { name, retry, reply } => {
                let _ = reply.send(
                    instances.get(&id).ok_or_else(missing).and_then(|i| i.alarm(&name, retry)),
                );
            }
            Job::Invoke { method, args_json, reply } => {
                let _ = reply.send(
                    instances
                        .get(&id)
                        .ok_or_else(missing)
                        .and_then(|i| i.invoke(&method, &args_json)),
                );
            }
            Job::Memory { reply } => {
                let _ = reply.send(instances.get(&id).map_or(0, Instance::memory_used));
            }
            Job::Drop => {
                instances.remove(&id);
            }
        }
    }
}
