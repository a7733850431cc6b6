// rooms-client: the browser (and Node) client of a rooms gateway.
//
// One WebSocket per room. It keeps the server's guarantees visible to the
// application: events arrive once and in `seq` order, a dropped connection
// resumes where it left off (`since`/`epoch`), sends made while offline are
// queued and re-sent with their client ids (the server drops duplicates), and
// each send settles when its own echo arrives. No dependencies.

const ROOM_NAME = /^[A-Za-z0-9._:-]{1,128}$/;
const MAX_TEXT_CHARS = 4096;
const MAX_NAME_CHARS = 64;
// Close codes after which retrying cannot help: kicked, token expired.
const FINAL_CLOSE_CODES = new Set([4001, 4003]);
// Handshake statuses after which retrying cannot help: unauthorized, forbidden.
const FINAL_STATUSES = new Set([401, 403]);
// Unanswered sends re-sent per liveness check (about once a second).
const RESENDS_PER_TICK = 5;

const DEFAULTS = {
  minRetryDelay: 500, // first reconnect waits 250–500 ms (equal jitter)
  maxRetryDelay: 30_000, // the wait doubles up to this
  pingAfter: 15_000, // no frame for this long: send a `ping`
  deadAfter: 25_000, // no frame for this long: the connection is dead, reconnect
  connectTimeout: 10_000, // no `welcome` within this: try again
  requestTimeout: 15_000, // a `loadMore` without an answer rejects with `timeout`
  maxQueue: 100, // sends not yet echoed; past it `send` rejects with `queue_full`
  maxMessages: 1000, // live events kept in `messages`; the oldest go first
  unavailableRetries: 5, // an `unavailable` or `rate_limited` send is retried this often
  sendRate: 10, // chats sent per second at most (the gateway allows 20, burst 40) ...
  sendBurst: 20, // ... after a burst of this many: a queue sent after a reconnect is paced
  echoTimeout: 5_000, // a send without its echo (nor an error) this long is sent again
  maxResends: 5, // ... this often; then it rejects with `timeout`
  typingInterval: 2_000, // `typing()` sends at most once per interval
  pageSize: 100, // default `loadMore` page (the server's maximum)
};

/** A refusal: `code` is the server's error code, or one of the client's own
 * (`queue_full`, `closed`, `not_connected`, `timeout`). */
export class RoomsError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "RoomsError";
    this.code = code;
  }
}

function charCount(s) {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

function randomId() {
  const c = globalThis.crypto;
  if (c && typeof c.getRandomValues === "function") {
    const bytes = c.getRandomValues(new Uint8Array(8));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  return Math.random().toString(16).slice(2, 18).padEnd(16, "0");
}

/** Closes a socket we are done with; its events are no longer listened to. */
function closeQuietly(ws) {
  try {
    ws.close(1000);
  } catch (e) {
    // already closing or closed
  }
}

/** `promise`, or a rejection after `ms`. */
function withTimeout(promise, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new RoomsError("timeout", `no answer in ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** `url` (http(s) or ws(s), with an optional path prefix) as ws(s) and http(s). */
function baseUrls(url) {
  const base = String(url).replace(/\/+$/, "");
  const m = /^(wss?|https?):\/\/(.+)$/i.exec(base);
  if (!m) throw new TypeError(`url must start with http://, https://, ws:// or wss://: ${url}`);
  const secure = /^(wss|https)$/i.test(m[1]);
  return { ws: `${secure ? "wss" : "ws"}://${m[2]}`, http: `${secure ? "https" : "http"}://${m[2]}` };
}

export class RoomsClient {
  /**
   * @param {object} options
   * @param {string} options.url gateway base URL, e.g. `location.origin` or `wss://rooms.example.com`
   * @param {string} options.room room name: 1–128 of `[A-Za-z0-9._:-]`
   * @param {string|(() => string|Promise<string>)} [options.token] a JWT, or a function
   *   returning a fresh one (called before every connection; then an expired
   *   token (4003) is renewed instead of ending the client)
   * @param {string} [options.user] user id when the gateway runs `--auth none`
   * @param {string} [options.name] display name, set in the room after connecting
   * @param {number} [options.since] resume after this seq (with `epoch`)
   * @param {string} [options.epoch] the history incarnation `since` belongs to
   */
  constructor(options) {
    if (!options || typeof options !== "object") throw new TypeError("options are required");
    const { url, room } = options;
    if (!ROOM_NAME.test(room ?? "")) {
      throw new TypeError("room must be 1-128 characters of [A-Za-z0-9._:-]");
    }
    this.options = { ...DEFAULTS, ...options };
    this.room = room;
    this._urls = baseUrls(url);
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    }

    /** Connection state: `connecting`, `connected`, `reconnecting` or `closed`. */
    this.state = "connecting";
    /** While `reconnecting`: when the next attempt starts (ms since epoch), else null. */
    this.nextRetryAt = null;
    /** While `reconnecting`: why the last connection ended. */
    this.retryReason = undefined;
    /** Once `closed`: `{ code, reason }` (code: a close code, an HTTP status, or 1000 for close()). */
    this.closeReason = null;
    /** This connection's user id, from `welcome`. */
    this.userId = null;
    /** The room's history incarnation and the last seq seen in it. */
    this.epoch = options.epoch ?? null;
    this.seq = options.since ?? 0;
    /** Persisted events (chat, name, system) in seq order; older pages via loadMore(). */
    this.messages = [];
    /** Whether older events exist than `messages[0]`. */
    this.hasMore = false;

    this._users = new Map(); // userId -> name
    this._listeners = new Map(); // event -> Set<fn>
    this._pending = new Map(); // client id -> {text, resolve, reject, sent, retries}
    this._names = []; // setName calls waiting for their echo
    this._history = null; // the one outstanding loadMore
    this._idPrefix = randomId();
    this._nextId = 0;
    this._attempt = 0;
    this._connected = false; // ever reached `connected`
    this._ws = null;
    this._retryTimer = null;
    this._liveTimer = null;
    this._lastTyping = 0;
    this._onOnline = () => this._retryNow();
    globalThis.addEventListener?.("online", this._onOnline);
    // The browser knows the network is gone: do not sit on a stalled socket.
    this._onOffline = () => this._ws && this._drop("browser offline");
    globalThis.addEventListener?.("offline", this._onOffline);
    this._tokens = this.options.sendBurst;
    this._tokensAt = Date.now();
    this._paceTimer = null;
    // Connect once the caller has attached its listeners.
    queueMicrotask(() => this._connect());
  }

  /** Presence: who is connected, `[{ userId, name }]`. */
  get users() {
    return Array.from(this._users, ([userId, name]) => ({ userId, name }));
  }

  /**
   * Listens to `state`, `chat`, `name`, `system`, `message` (any persisted
   * event), `reset` (`messages` replaced), `history` (older page prepended),
   * `presence`, `join`, `leave`, `typing`, `gap`, `error` or `closed`.
   * Returns a function that removes the listener.
   */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    this._listeners.get(event)?.delete(listener);
  }

  /**
   * Sends a chat message. Resolves with the stored `chat` event once its echo
   * arrives; rejects with a RoomsError carrying the server's error code.
   * Queued while disconnected and re-sent after resuming, never twice stored.
   * The returned promise has the message's client `id`.
   */
  send(text, { id } = {}) {
    const msgId = id ?? `${this._idPrefix}-${++this._nextId}`;
    let refusal = null;
    if (typeof text !== "string" || text.trim() === "") {
      refusal = new RoomsError("invalid_message", "text must not be empty");
    } else if (charCount(text) > MAX_TEXT_CHARS) {
      refusal = new RoomsError("too_large", `text is longer than ${MAX_TEXT_CHARS} characters`);
    } else if (this.state === "closed") {
      refusal = new RoomsError("closed", "the client is closed");
    } else if (this._pending.size >= this.options.maxQueue) {
      refusal = new RoomsError("queue_full", `${this.options.maxQueue} messages are already waiting`);
    } else if (this._pending.has(msgId)) {
      refusal = new RoomsError("invalid_message", `id ${msgId} is already waiting`);
    }
    let promise;
    if (refusal) {
      promise = Promise.reject(refusal);
    } else {
      promise = new Promise((resolve, reject) => {
        this._pending.set(msgId, { text, resolve, reject, sent: false, sentAt: 0, retries: 0, resends: 0 });
      });
      if (this._live()) this._transmit(msgId);
      // Typing after a send is news again.
      this._lastTyping = 0;
    }
    promise.id = msgId;
    return promise;
  }

  /** Sets the user's display name in this room; resolves on its echo. */
  setName(name) {
    const trimmed = typeof name === "string" ? name.trim() : "";
    if (trimmed === "") return Promise.reject(new RoomsError("invalid_message", "name must not be empty"));
    if (charCount(trimmed) > MAX_NAME_CHARS) {
      return Promise.reject(new RoomsError("too_large", `name is longer than ${MAX_NAME_CHARS} characters`));
    }
    if (this.state === "closed") return Promise.reject(new RoomsError("closed", "the client is closed"));
    this.options.name = trimmed;
    return new Promise((resolve, reject) => {
      // Only the latest unsent name matters; earlier ones settle with it.
      this._names.push({ name: trimmed, resolve, reject });
      if (this._names.length > this.options.maxQueue) this._names.shift().reject(new RoomsError("queue_full"));
      if (this._live()) this._raw({ type: "name", name: trimmed });
    });
  }

  /** Tells the room this user is typing (at most once per `typingInterval`). */
  typing() {
    const now = Date.now();
    if (!this._live() || now - this._lastTyping < this.options.typingInterval) return;
    this._lastTyping = now;
    this._raw({ type: "typing" });
  }

  /** Loads the page of events before `messages[0]` and prepends it. */
  loadMore(limit = this.options.pageSize) {
    if (this._history) return this._history.promise;
    if (!this.hasMore) return Promise.resolve([]);
    if (!this._live()) return Promise.reject(new RoomsError("not_connected", "not connected"));
    const before = this.messages.length ? this.messages[0].seq : this.seq + 1;
    const request = {};
    request.promise = new Promise((resolve, reject) => {
      request.resolve = resolve;
      request.reject = reject;
    });
    request.timer = setTimeout(
      () => this._settleHistory(new RoomsError("timeout", "no history page arrived")),
      this.options.requestTimeout,
    );
    this._history = request;
    this._raw({ type: "history", before, limit: Math.max(1, Math.min(100, limit | 0)) });
    return request.promise;
  }

  /** Closes for good: pending sends reject with `closed`. */
  close() {
    this._finish(1000, "closed by the client");
  }

  // --- connection ---------------------------------------------------------

  async _connect() {
    if (this.state === "closed") return;
    this._retryTimer = null;
    this.nextRetryAt = null;
    // `connecting` only until the first attempt fails; then `reconnecting`
    // (nextRetryAt null while an attempt is under way).
    this._setState(this._connected || this._attempt > 0 ? "reconnecting" : "connecting", true);
    const params = new URLSearchParams();
    let token = this.options.token;
    if (typeof token === "function") {
      try {
        token = await withTimeout(Promise.resolve(token()), this.options.connectTimeout);
      } catch (e) {
        return this._scheduleRetry(`no token: ${e.message ?? e}`);
      }
      if (this.state === "closed") return;
    }
    if (!token && this.options.user) params.set("user", this.options.user);
    if (this.epoch !== null || this.seq > 0) {
      params.set("since", String(this.seq));
      if (this.epoch !== null) params.set("epoch", this.epoch);
    }
    const query = params.toString();
    const path = `/rooms/${encodeURIComponent(this.room)}/ws${query ? `?${query}` : ""}`;
    this._token = token;
    this._phase = "handshake";
    let ws;
    try {
      // Browsers cannot set headers: the token travels as the first
      // subprotocol, and the server selects the second.
      ws = token ? new this._WebSocket(this._urls.ws + path, [token, "rooms"]) : new this._WebSocket(this._urls.ws + path);
    } catch (e) {
      return this._scheduleRetry(`cannot connect: ${e.message ?? e}`);
    }
    this._ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (e) => {
      if (this._ws === ws) this._onText(e.data);
    };
    ws.onclose = (e) => {
      if (this._ws === ws) this._onClose(e.code, e.reason, opened, path);
    };
    // Some implementations (Node's undici) report a failed handshake with
    // `error` alone, never `close`: handle it as a close unless one follows.
    ws.onerror = () => {
      if (!opened) setTimeout(() => this._ws === ws && this._onClose(1006, "", false, path), 0);
    };
    this._lastFrameAt = Date.now();
    this._pingSent = false;
    clearInterval(this._liveTimer);
    this._liveTimer = setInterval(() => this._checkLiveness(), Math.min(1000, this.options.pingAfter / 2));
  }

  /** Drops the current socket (dead, stalled, or out of sync) and retries. */
  _drop(reason) {
    const ws = this._ws;
    if (!ws) return;
    this._ws = null;
    closeQuietly(ws);
    this._disconnected();
    this._scheduleRetry(reason);
  }

  _checkLiveness() {
    const idle = Date.now() - this._lastFrameAt;
    if (this._phase !== "live") {
      // Handshake, or a replay that stopped arriving.
      if (idle > this.options.connectTimeout) this._drop("no welcome in time");
      return;
    }
    if (idle >= this.options.deadAfter) {
      this._drop("no frames; connection presumed dead");
      return;
    }
    if (idle >= this.options.pingAfter && !this._pingSent) {
      this._pingSent = true;
      this._raw({ type: "ping" });
    }
    this._resendUnanswered(Date.now());
  }

  async _onClose(code, reason, opened, path) {
    this._ws = null;
    this._disconnected();
    if (this.state === "closed") return;
    // An expired token that can be renewed: the next attempt asks for a fresh one.
    if (code === 4003 && typeof this.options.token === "function") return this._scheduleRetry("token expired; renewing");
    if (FINAL_CLOSE_CODES.has(code)) return this._finish(code, reason || (code === 4001 ? "kicked" : "token expired"));
    if (!opened) {
      // The handshake failed; browsers hide why. Ask again over plain HTTP:
      // a refused token answers 401/403, anything else is worth retrying.
      const status = await this._probe(path);
      if (this.state === "closed") return;
      if (status && FINAL_STATUSES.has(status.code)) return this._finish(status.code, status.reason);
      return this._scheduleRetry(status ? `handshake refused (${status.code}): ${status.reason}` : "gateway unreachable");
    }
    this._scheduleRetry(reason ? `closed (${code}): ${reason}` : `closed (${code})`);
  }

  async _probe(path) {
    if (!this._fetch) return null;
    const abort = typeof AbortController === "function" ? new AbortController() : null;
    const timer = setTimeout(() => abort?.abort(), this.options.connectTimeout);
    try {
      const headers = this._token ? { authorization: `Bearer ${this._token}` } : {};
      const res = await this._fetch(this._urls.http + path, { headers, signal: abort?.signal });
      const body = (await res.text()).trim().slice(0, 200);
      return { code: res.status, reason: body || res.statusText };
    } catch (e) {
      return null; // unreachable, or not allowed to read the answer: retry
    } finally {
      clearTimeout(timer);
    }
  }

  /** The socket is gone: in-flight work waits for the next connection. */
  _disconnected() {
    clearInterval(this._liveTimer);
    this._liveTimer = null;
    this._phase = "down";
    for (const p of this._pending.values()) p.sent = false;
    this._settleHistory(new RoomsError("not_connected", "disconnected"));
  }

  /** Waits (backoff with jitter), then connects again; `reason` says why, in the `state` event. */
  _scheduleRetry(reason) {
    if (this.state === "closed" || this._retryTimer) return;
    this.retryReason = reason;
    this._attempt += 1;
    const { minRetryDelay, maxRetryDelay } = this.options;
    const ceiling = Math.min(maxRetryDelay, minRetryDelay * 2 ** Math.min(this._attempt - 1, 30));
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    this.nextRetryAt = Date.now() + delay;
    this._retryTimer = setTimeout(() => this._connect(), delay);
    this._setState("reconnecting", true);
  }

  _retryNow() {
    if (this.state !== "reconnecting" || !this._retryTimer) return;
    clearTimeout(this._retryTimer);
    this._connect();
  }

  _finish(code, reason) {
    if (this.state === "closed") return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this.nextRetryAt = null;
    if (this._ws) closeQuietly(this._ws);
    this._ws = null;
    this._disconnected();
    globalThis.removeEventListener?.("online", this._onOnline);
    globalThis.removeEventListener?.("offline", this._onOffline);
    clearTimeout(this._paceTimer);
    this.closeReason = { code, reason };
    const error = new RoomsError("closed", reason);
    error.closeCode = code;
    for (const p of this._pending.values()) p.reject(error);
    this._pending.clear();
    for (const n of this._names.splice(0)) n.reject(error);
    this._setState("closed", true);
    this._emit("closed", this.closeReason);
  }

  _setState(state, force = false) {
    if (this.state === state && !force) return;
    this.state = state;
    const reason = state === "reconnecting" ? this.retryReason : undefined;
    this._emit("state", { state, nextRetryAt: this.nextRetryAt, reason, closeReason: this.closeReason });
  }

  _live() {
    return this._phase === "live" && this._ws !== null;
  }

  _raw(frame) {
    try {
      this._ws.send(JSON.stringify(frame));
    } catch (e) {
      this._drop("send failed");
    }
  }

  _transmit(id) {
    const p = this._pending.get(id);
    if (!p || p.sent) return;
    p.due = true;
    this._pump();
  }

  /** Sends due chats in order, within `sendRate`/`sendBurst`, so that a
   * queue sent at once after a reconnect is not refused `rate_limited`;
   * what does not fit waits for the next token. */
  _pump() {
    clearTimeout(this._paceTimer);
    this._paceTimer = null;
    if (!this._live()) return;
    const { sendRate, sendBurst } = this.options;
    const now = Date.now();
    this._tokens = Math.min(sendBurst, this._tokens + ((now - this._tokensAt) * sendRate) / 1000);
    this._tokensAt = now;
    for (const [id, p] of this._pending) {
      if (p.sent || !p.due) continue;
      if (this._tokens < 1) {
        const wait = Math.ceil(((1 - this._tokens) * 1000) / sendRate);
        this._paceTimer = setTimeout(() => this._pump(), wait);
        return;
      }
      this._tokens -= 1;
      p.sent = true;
      p.due = false;
      p.sentAt = now;
      this._raw({ type: "chat", text: p.text, id });
    }
  }

  /** Sends again what got neither its echo nor an error in time: a message
   * in flight to a roomhost that crashed is answered by nobody, while the
   * connection itself stays up. Safe: the server keeps an id once. */
  _resendUnanswered(now) {
    // A few per tick, oldest first: resends count against the rate limit.
    let budget = RESENDS_PER_TICK;
    for (const [id, p] of this._pending) {
      if (budget === 0) return;
      if (!p.sent || now - p.sentAt < this.options.echoTimeout) continue;
      budget -= 1;
      if (p.resends >= this.options.maxResends) {
        this._pending.delete(id);
        p.reject(new RoomsError("timeout", "no answer from the room"));
        continue;
      }
      p.resends += 1;
      p.sent = false;
      this._transmit(id);
    }
  }

  // --- frames -------------------------------------------------------------

  _onText(data) {
    this._lastFrameAt = Date.now();
    this._pingSent = false;
    if (typeof data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (!frame || typeof frame.type !== "string") return;
    switch (frame.type) {
      case "welcome":
        return this._onWelcome(frame);
      case "history":
        return this._onHistory(frame);
      case "chat":
      case "name":
      case "system":
        return this._onEvent(frame, true);
      case "join":
        this._users.set(frame.userId, frame.name);
        this._emit("join", frame);
        return this._emit("presence", this.users);
      case "leave":
        this._users.delete(frame.userId);
        this._emit("leave", frame);
        return this._emit("presence", this.users);
      case "typing":
        return this._emit("typing", { userId: frame.userId, name: this._users.get(frame.userId) ?? frame.userId });
      case "error":
        return this._onError(frame);
      default:
        return; // pong, and frames a newer server may add
    }
  }

  _onWelcome(frame) {
    this._resuming = this.epoch !== null || this.seq > 0;
    if (this.epoch !== null && frame.epoch !== this.epoch) {
      // The room's history was lost and started again: our seqs mean nothing.
      this.seq = 0;
    }
    this.userId = frame.userId;
    this.epoch = frame.epoch;
    this._catchUpTo = frame.seq;
    this._gapReplay = false;
    this._users = new Map((frame.users ?? []).map((u) => [u.userId, u.name]));
    this._phase = "replay";
    this._emit("presence", this.users);
  }

  _onHistory(frame) {
    const events = Array.isArray(frame.messages) ? frame.messages : [];
    if (this._phase === "replay") return this._onReplay(frame, events);
    if (this._phase === "live" && this._history) {
      const first = this.messages.length ? this.messages[0].seq : Infinity;
      const older = events.filter((e) => e.seq > 0 && e.seq < first);
      this.messages = older.concat(this.messages);
      this.hasMore = Boolean(frame.hasMore) && older.length > 0;
      this._emit("history", older);
      this._settleHistory(null, older);
    }
  }

  /** The history right after `welcome`: the latest page, or what was missed. */
  _onReplay(frame, events) {
    if (!this._resuming) {
      this.messages = events.filter((e) => e.seq > 0);
      this.hasMore = Boolean(frame.hasMore);
      this.seq = Math.max(this._catchUpTo, this.messages.at(-1)?.seq ?? 0);
      for (const e of this.messages) this._settle(e);
      this._trim();
      this._emit("reset", this.messages);
      return this._ready();
    }
    if (frame.gap) {
      // Some of what we missed is gone: start the list again from what the
      // server still has (it sends the latest events), and say so.
      this._gapReplay = true;
      this.messages = [];
      this.seq = 0;
      this._emit("gap", { epoch: this.epoch });
    }
    for (const e of events) this._onEvent(e, false);
    if (this.seq >= this._catchUpTo || events.length === 0) {
      if (this._gapReplay) {
        this.hasMore = (this.messages[0]?.seq ?? 1) > 1;
        this._trim();
        this._emit("reset", this.messages);
      }
      this._ready();
    }
  }

  /** Caught up: now connected; what waited is sent. */
  _ready() {
    this._phase = "live";
    this._attempt = 0;
    this._connected = true;
    this.nextRetryAt = null;
    this._setState("connected");
    const name = this.options.name;
    if (name && this._users.get(this.userId) !== name && !this._names.some((n) => n.name === name)) {
      this.setName(name).catch(() => {});
    } else if (this._names.length) {
      this._raw({ type: "name", name: this._names.at(-1).name });
    }
    for (const id of this._pending.keys()) this._transmit(id);
  }

  /** A persisted event (live, or replayed after a reconnect). */
  _onEvent(event, live) {
    if (!(event.seq > 0)) {
      // Not persisted (an operator's --no-persist publish): no order to keep.
      this._emit(event.type, event);
      return this._emit("message", event);
    }
    if (event.seq <= this.seq) {
      // Seen already (a resend's echo, or an overlap): only settle.
      return this._settle(event);
    }
    if (live && this._phase === "live" && event.seq !== this.seq + 1) {
      // A hole: resume from the last seq we have rather than show it.
      return this._drop(`missed events ${this.seq + 1}..${event.seq - 1}`);
    }
    this.seq = event.seq;
    this.messages.push(event);
    if (event.type === "name" && this._users.has(event.userId)) {
      this._users.set(event.userId, event.name);
      this._emit("presence", this.users);
    }
    this._settle(event);
    if (this._gapReplay && !live) return;
    this._trim();
    this._emit(event.type, event);
    this._emit("message", event);
  }

  _trim() {
    const over = this.messages.length - this.options.maxMessages;
    if (over > 0) {
      this.messages.splice(0, over);
      this.hasMore = true;
    }
  }

  /** Resolves the send or setName an event answers. */
  _settle(event) {
    if (event.userId !== this.userId) return;
    if (event.type === "chat") {
      const p = this._pending.get(event.id);
      if (p) {
        this._pending.delete(event.id);
        p.resolve(event);
      }
    } else if (event.type === "name") {
      const i = this._names.findIndex((n) => n.name === event.name);
      if (i >= 0) for (const n of this._names.splice(0, i + 1)) n.resolve(event);
    }
  }

  _onError(frame) {
    const p = frame.id ? this._pending.get(frame.id) : undefined;
    if (p) {
      const temporary = frame.code === "unavailable" || frame.code === "rate_limited";
      if (temporary && p.retries < this.options.unavailableRetries) {
        // The room is moving, its store hiccuped, or we sent too fast: the
        // server asks for a retry.
        if (frame.code === "rate_limited") this._tokens = 0;
        p.retries += 1;
        p.sent = false;
        const delay = 200 * 2 ** p.retries;
        setTimeout(() => this._live() && this._transmit(frame.id), delay);
        return;
      }
      this._pending.delete(frame.id);
      return p.reject(new RoomsError(frame.code, frame.message));
    }
    if (this._phase === "replay" && frame.code === "unavailable") {
      return this._drop("history unavailable");
    }
    if (this._history && frame.code === "unavailable") {
      return this._settleHistory(new RoomsError(frame.code, frame.message));
    }
    if (this._names.length && (frame.code === "invalid_message" || frame.code === "too_large")) {
      this._names.shift().reject(new RoomsError(frame.code, frame.message));
    }
    this._emit("error", new RoomsError(frame.code, frame.message));
  }

  _settleHistory(error, page) {
    const request = this._history;
    if (!request) return;
    this._history = null;
    clearTimeout(request.timer);
    if (error) request.reject(error);
    else request.resolve(page);
  }

  _emit(event, value) {
    const listeners = this._listeners.get(event);
    if (!listeners) return;
    for (const listener of [...listeners]) {
      try {
        listener(value);
      } catch (e) {
        // A listener's bug must not break the connection; report it.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}
