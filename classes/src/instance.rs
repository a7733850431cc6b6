//! One room's JavaScript instance: its own QuickJS runtime (heap and CPU
//! limits of its own), the Durable Object API, the class's bundle and the
//! class object. Each event runs to completion — storage is in the instance,
//! so nothing a handler awaits waits on the network — and returns what it
//! did as effects.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rquickjs::{
    ArrayBuffer, CatchResultExt, CaughtError, Context, Ctx, Function, Object, Promise, Runtime,
    Value,
};

use crate::bundle::Bundle;
use crate::effect::{Effect, Payload};
use crate::engine::{engine, load_class};
use crate::natives;

/// What one instance may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// JavaScript heap, bytes.
    pub memory: usize,
    /// CPU time one event may take.
    pub cpu: Duration,
    /// Stored keys and values of one room, bytes.
    pub storage: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { memory: 64 << 20, cpu: Duration::from_millis(500), storage: 64 << 20 }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClassError {
    /// The class threw (or a promise it returned rejected).
    #[error("{message}")]
    Exception { message: String },
    /// A handler waited for something that never comes (rooms has no
    /// timers or outgoing requests).
    #[error(
        "the handler is still waiting after its last job ran (setTimeout and fetch are not available)"
    )]
    Stalled,
    #[error("the event ran past its CPU limit of {0:?}")]
    CpuLimit(Duration),
    #[error("the instance ran out of its memory limit")]
    OutOfMemory,
    /// The bundle does not export the class.
    #[error("the bundle exports no class `{0}`")]
    NoClass(String),
    #[error("{0}")]
    Engine(String),
}

/// A socket the room had before this instance started (after hibernation
/// or a move): its id, tags and attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub socket: u64,
    pub tags: Vec<String>,
    pub attachment: Option<String>,
}

/// The client's handshake, as the class's `fetch` sees it.
/// What a room has stored: its keys and encoded values, and its alarm
/// (name empty) and named timers with when they fire (ms since the epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub entries: Vec<(String, String)>,
    pub alarms: Vec<(String, u64)>,
}

#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    /// The request's body, if it has one (text only).
    pub body: Option<String>,
}

/// The class's answer to a handshake: 101 (with `socket` accepted) or any
/// other status and body, sent to the client as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

/// What one event did: its answer, or the exception the class threw, and
/// its effects in order either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<T> {
    pub result: Result<T, String>,
    pub effects: Vec<Effect>,
    /// How long the handler ran (its share of the CPU limit).
    pub elapsed: Duration,
    /// The room's stored bytes (keys and encoded values) after the event:
    /// known at the start and after an event that wrote (None: unchanged).
    pub stored_bytes: Option<u64>,
}

pub struct Instance {
    runtime: Runtime,
    context: Context,
    limits: Limits,
    /// Until when the running event may compute.
    deadline: Rc<Cell<Option<Instant>>>,
}

impl Instance {
    /// Builds the room's instance: evaluates the bundle, gives the class its
    /// stored values (`(key, encoded value)`) and the sockets it already
    /// has, and runs its constructor.
    pub fn start(
        bundle: &Bundle,
        room: &str,
        env_json: &str,
        stored: &Stored,
        restored: &[Restored],
        limits: Limits,
    ) -> Result<(Self, Outcome<()>), ClassError> {
        let began = Instant::now();
        let deadline = Rc::new(Cell::new(None));
        let (runtime, context) = engine(&limits, room, &deadline)?;
        let instance = Self { runtime, context, limits, deadline };
        let entries = serde_json::to_string(&(&stored.entries, &stored.alarms))
            .map_err(|e| ClassError::Engine(e.to_string()))?;
        let sockets: Vec<(u64, &[String], Option<&str>)> = restored
            .iter()
            .map(|r| (r.socket, r.tags.as_slice(), r.attachment.as_deref()))
            .collect();
        let sockets =
            serde_json::to_string(&sockets).map_err(|e| ClassError::Engine(e.to_string()))?;
        let storage_limit = instance.limits.storage as f64;
        let limits = instance.limits.clone();
        let outcome = instance.run(
            "start",
            |ctx, start| {
                let class = load_class(ctx, bundle)?;
                let args =
                    (class, room, env_json, entries.as_str(), sockets.as_str(), storage_limit);
                call(ctx, start, args, &limits)
            },
            |_, _| Ok(()),
        )?;
        // Its time is the whole start: engine, prelude, bundle, constructor.
        let outcome = Outcome { elapsed: began.elapsed(), ..outcome };
        match outcome.result {
            Ok(()) => Ok((instance, outcome)),
            Err(message) => Err(ClassError::Exception { message }),
        }
    }

    /// Runs the class's `fetch` for a client's handshake on socket `socket`.
    pub fn fetch(
        &self,
        socket: u64,
        request: &HttpRequest,
    ) -> Result<Outcome<HttpResponse>, ClassError> {
        let headers = serde_json::to_string(&request.headers)
            .map_err(|e| ClassError::Engine(e.to_string()))?;
        let body = request.body.as_deref();
        let args =
            (socket as f64, request.url.as_str(), request.method.as_str(), headers.as_str(), body);
        self.run(
            "fetch",
            |ctx, f| call(ctx, f, args, &self.limits),
            |ctx, answer| {
                let object = answer
                    .as_object()
                    .ok_or_else(|| ClassError::Engine("fetch answered nothing".into()))?;
                let status: u16 = object.get("status").map_err(engine_error)?;
                let pairs: Vec<Vec<String>> = object.get("headers").map_err(engine_error)?;
                let headers = pairs
                    .into_iter()
                    .filter_map(|pair| match <[String; 2]>::try_from(pair) {
                        Ok([name, value]) => Some((name, value)),
                        Err(_) => None,
                    })
                    .collect();
                let body: Option<String> = object.get("body").map_err(engine_error)?;
                let _ = ctx;
                Ok(HttpResponse { status, headers, body })
            },
        )
    }

    /// Delivers a client's message to `webSocketMessage`.
    pub fn message(&self, socket: u64, payload: &Payload) -> Result<Outcome<()>, ClassError> {
        self.run(
            "message",
            |ctx, f| {
                let data: Value = match payload {
                    Payload::Text(text) => rquickjs::String::from_str(ctx.clone(), text)
                        .map_err(engine_error)?
                        .into_value(),
                    Payload::Binary(bytes) => ArrayBuffer::new(ctx.clone(), bytes.clone())
                        .map_err(engine_error)?
                        .into_value(),
                };
                call(ctx, f, (socket as f64, data), &self.limits)
            },
            |_, _| Ok(()),
        )
    }

    /// A socket closed: `webSocketClose`.
    pub fn close(
        &self,
        socket: u64,
        code: u16,
        reason: &str,
        clean: bool,
    ) -> Result<Outcome<()>, ClassError> {
        self.run(
            "close",
            |ctx, f| call(ctx, f, (socket as f64, code, reason, clean), &self.limits),
            |_, _| Ok(()),
        )
    }

    /// A socket failed: `webSocketError`.
    pub fn error(&self, socket: u64, message: &str) -> Result<Outcome<()>, ClassError> {
        self.run(
            "error",
            |ctx, f| call(ctx, f, (socket as f64, message), &self.limits),
            |_, _| Ok(()),
        )
    }

    /// An operator calls a public method with JSON arguments (an array);
    /// its result comes back as JSON.
    pub fn invoke(&self, method: &str, args_json: &str) -> Result<Outcome<String>, ClassError> {
        self.run(
            "invoke",
            |ctx, f| call(ctx, f, (method, args_json), &self.limits),
            |_, answer| answer.get().map_err(engine_error),
        )
    }

    /// Fires the room's alarm (`name` empty: the class's `alarm`) or a
    /// named timer (`timer(name)`); it is deleted first, so that one the
    /// handler sets again stands. `retry`: how many times it failed before.
    pub fn alarm(&self, name: &str, retry: u32) -> Result<Outcome<()>, ClassError> {
        self.run("alarm", |ctx, f| call(ctx, f, (name, retry), &self.limits), |_, _| Ok(()))
    }

    /// Bytes of JavaScript heap in use.
    pub fn memory_used(&self) -> usize {
        usize::try_from(self.runtime.memory_usage().memory_used_size).unwrap_or(usize::MAX)
    }

    /// Calls the prelude's entry point `entry` with `args`, runs its promise
    /// to the end within the CPU limit, reads its answer with `read`, and
    /// takes the effects it recorded. An exception the class threw is the
    /// outcome's error, with what it did before (as on Cloudflare); a limit
    /// or a stall is an error with nothing of what it did: its instance must
    /// go.
    fn run<T>(
        &self,
        entry: &str,
        start: impl for<'js> FnOnce(&Ctx<'js>, &Function<'js>) -> Result<Promise<'js>, ClassError>,
        read: impl for<'js> FnOnce(&Ctx<'js>, Value<'js>) -> Result<T, ClassError>,
    ) -> Result<Outcome<T>, ClassError> {
        let started = Instant::now();
        self.deadline.set(Some(started + self.limits.cpu));
        let outcome = self.context.with(|ctx| {
            let rooms: Object = ctx.globals().get("__rooms").map_err(engine_error)?;
            let function: Function = rooms.get(entry).map_err(engine_error)?;
            let settled =
                start(&ctx, &function).and_then(|promise| settle(&ctx, &promise, &self.limits));
            let settled = match settled {
                Err(ClassError::Stalled)
                    if self.deadline.get().is_some_and(|d| Instant::now() > d) =>
                {
                    Err(ClassError::CpuLimit(self.limits.cpu))
                }
                other => other,
            };
            let result = match settled {
                Ok(value) => read(&ctx, value).map_err(|e| e.to_string()),
                Err(ClassError::Exception { message }) => Err(message),
                Err(fatal) => {
                    let drop_effects: Function = rooms.get("dropEffects").map_err(engine_error)?;
                    let _ = drop_effects.call::<_, ()>(());
                    return Err(fatal);
                }
            };
            let effects = take_effects(&ctx, &rooms)?;
            // Asked only when it may have changed: not on every message.
            let stored_bytes = if entry == "start" || effects.iter().any(Effect::is_write) {
                let bytes: Function = rooms.get("storedBytes").map_err(engine_error)?;
                Some(bytes.call::<_, f64>(()).map_err(engine_error)? as u64)
            } else {
                None
            };
            Ok(Outcome { result, effects, elapsed: started.elapsed(), stored_bytes })
        });
        self.deadline.set(None);
        outcome
    }
}

/// Calls an entry point of the prelude (each answers with a promise).
fn call<'js, A: rquickjs::function::IntoArgs<'js>>(
    ctx: &Ctx<'js>,
    function: &Function<'js>,
    args: A,
    limits: &Limits,
) -> Result<Promise<'js>, ClassError> {
    function.call(args).catch(ctx).map_err(|e| caught(e, limits))
}

/// Runs jobs until `promise` settles.
fn settle<'js>(
    ctx: &Ctx<'js>,
    promise: &Promise<'js>,
    limits: &Limits,
) -> Result<Value<'js>, ClassError> {
    loop {
        if let Some(result) = promise.result::<Value<'js>>() {
            return result.catch(ctx).map_err(|e| caught(e, limits));
        }
        if !ctx.execute_pending_job() {
            return Err(ClassError::Stalled);
        }
    }
}

/// The effects the prelude recorded, converted.
fn take_effects<'js>(ctx: &Ctx<'js>, rooms: &Object<'js>) -> Result<Vec<Effect>, ClassError> {
    let take: Function = rooms.get("takeEffects").map_err(engine_error)?;
    let list: rquickjs::Array =
        take.call(()).catch(ctx).map_err(|e| caught(e, &Limits::default()))?;
    let mut effects = Vec::with_capacity(list.len());
    for item in list.iter::<Object>() {
        let item = item.map_err(engine_error)?;
        effects.push(effect_of(&item).map_err(engine_error)?);
    }
    Ok(effects)
}

fn effect_of(item: &Object<'_>) -> rquickjs::Result<Effect> {
    let id = |key: &str| -> rquickjs::Result<Option<u64>> {
        Ok(item.get::<_, Option<f64>>(key)?.map(|n| n as u64))
    };
    if let Some(sockets) = item.get::<_, Option<Vec<f64>>>("send")? {
        let sockets = sockets.into_iter().map(|n| n as u64).collect();
        let payload = match item.get::<_, Option<String>>("text")? {
            Some(text) => Payload::Text(text),
            None => {
                let bytes: ArrayBuffer = item.get("binary")?;
                Payload::Binary(natives::bytes_of(&bytes))
            }
        };
        return Ok(Effect::Send { sockets, payload });
    }
    if let Some(socket) = id("close")? {
        let code: f64 = item.get("code")?;
        let code = if (1000.0..=4999.0).contains(&code) { code as u16 } else { 1000 };
        return Ok(Effect::Close { socket, code, reason: item.get("reason")? });
    }
    if let Some(socket) = id("accept")? {
        let plain: Option<bool> = item.get("plain")?;
        let hibernatable = !plain.unwrap_or(false);
        return Ok(Effect::Accept { socket, tags: item.get("tags")?, hibernatable });
    }
    if let Some(socket) = id("attach")? {
        return Ok(Effect::Attach { socket, value: item.get("value")? });
    }
    if let Some(key) = item.get::<_, Option<String>>("put")? {
        return Ok(Effect::Put { key, value: item.get("value")? });
    }
    if let Some(key) = item.get::<_, Option<String>>("delete")? {
        return Ok(Effect::Delete { key });
    }
    if let Some(name) = item.get::<_, Option<String>>("alarm")? {
        let at = item.get::<_, Option<f64>>("at")?.map(|ms| ms.max(0.0) as u64);
        return Ok(Effect::Alarm { name, at });
    }
    Ok(Effect::DeleteAll)
}

pub(crate) fn engine_error(error: rquickjs::Error) -> ClassError {
    ClassError::Engine(error.to_string())
}

/// A JavaScript error as the operator reads it: message and stack.
pub(crate) fn caught(error: CaughtError<'_>, limits: &Limits) -> ClassError {
    let text = match &error {
        CaughtError::Exception(exception) => {
            let message = exception.message().unwrap_or_default();
            match exception.stack() {
                Some(stack) if !stack.is_empty() => format!("{message}\n{}", stack.trim_end()),
                _ => message,
            }
        }
        // Out of memory, QuickJS throws `null` when it cannot even make an
        // error object (a class that throws null itself is taken for that).
        CaughtError::Value(value) if value.is_null() => return ClassError::OutOfMemory,
        CaughtError::Value(value) => format!("uncaught {value:?}"),
        CaughtError::Error(error) => error.to_string(),
    };
    if text.contains("interrupted") {
        ClassError::CpuLimit(limits.cpu)
    } else if text.contains("out of memory") {
        ClassError::OutOfMemory
    } else {
        ClassError::Exception { message: text }
    }
}
