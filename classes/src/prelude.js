// The Durable Object API, as rooms gives it to a room class. Evaluated once
// per instance before the class's bundle. Natives come from the host as
// `__host` (utf8, base64, random bytes, logging); everything the class does
// that leaves the instance — sends, closes, accepted sockets, attachments,
// storage writes — is recorded in order as an effect, which the host applies
// once the event's writes are durable (the output gate).
"use strict";
(() => {
  const host = globalThis.__host;
  delete globalThis.__host;

  const KEY_LIMIT = 2048;
  // Kept in step with `rooms_classes::NOT_A_METHOD`.
  const NOT_A_METHOD = "is not a public method of this room class";
  const VALUE_LIMIT = 128 * 1024;
  const ATTACHMENT_LIMIT = 16 * 1024;
  const TIMER_LIMIT = 1000;       // alarm + named timers per room
  const TIMER_NAME_LIMIT = 256;

  let effects = [];
  const effect = (e) => { effects.push(e); };

  // ---- text, bytes, base64 -------------------------------------------------
  const bytesOf = (data) => {
    if (data instanceof ArrayBuffer) return new Uint8Array(data);
    if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    throw new TypeError("expected an ArrayBuffer or a typed array");
  };
  const copyBuffer = (view) => view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength);

  class TextEncoder {
    get encoding() { return "utf-8"; }
    encode(text = "") { return new Uint8Array(host.utf8Encode(String(text))); }
  }
  class TextDecoder {
    constructor(label = "utf-8") {
      const l = String(label).toLowerCase();
      if (l !== "utf-8" && l !== "utf8") throw new RangeError(`unsupported encoding ${label}`);
    }
    get encoding() { return "utf-8"; }
    decode(data) { return data === undefined ? "" : host.utf8Decode(copyBuffer(bytesOf(data))); }
  }
  const btoa = (text) => {
    const s = String(text);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c > 255) throw new DOMException("btoa: character out of range", "InvalidCharacterError");
      out[i] = c;
    }
    return host.base64Encode(out.buffer);
  };
  const atob = (b64) => {
    const bytes = new Uint8Array(host.base64Decode(String(b64)));
    let s = "";
    for (const b of bytes) s += String.fromCharCode(b);
    return s;
  };

  class DOMException extends Error {
    constructor(message = "", name = "Error") { super(message); this.name = name; }
  }

  // The part of Node's Buffer that Cloudflare's nodejs_compat gives classes
  // for base64 and UTF-8.
  class Buffer extends Uint8Array {
    static from(value, encoding = "utf-8") {
      if (typeof value === "string") {
        const enc = String(encoding).toLowerCase();
        const bytes = enc === "base64" || enc === "base64url"
          ? host.base64Decode(value)
          : enc === "hex" ? hexDecode(value) : host.utf8Encode(value);
        const buf = new Buffer(bytes.byteLength);
        buf.set(new Uint8Array(bytes));
        return buf;
      }
      const src = Array.isArray(value) ? Uint8Array.from(value) : bytesOf(value);
      const buf = new Buffer(src.length);
      buf.set(src);
      return buf;
    }
    static isBuffer(v) { return v instanceof Buffer; }
    static byteLength(s, encoding = "utf-8") { return Buffer.from(s, encoding).length; }
    static concat(list) {
      const out = new Buffer(list.reduce((n, b) => n + b.length, 0));
      let at = 0;
      for (const b of list) { out.set(b, at); at += b.length; }
      return out;
    }
    toString(encoding = "utf-8") {
      const enc = String(encoding).toLowerCase();
      const buf = copyBuffer(this);
      if (enc === "base64") return host.base64Encode(buf);
      if (enc === "hex") return Array.from(this, (b) => b.toString(16).padStart(2, "0")).join("");
      return host.utf8Decode(buf);
    }
  }
  const hexDecode = (s) => {
    const out = new Uint8Array(s.length >> 1);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(i * 2, 2), 16);
    return out.buffer;
  };

  // ---- crypto ----------------------------------------------------------------
  const crypto = {
    getRandomValues(view) {
      const bytes = bytesOf(view);
      if (bytes.length > 65536) throw new DOMException("too many bytes requested", "QuotaExceededError");
      bytes.set(new Uint8Array(host.randomBytes(bytes.length)));
      return view;
    },
    randomUUID() {
      const b = new Uint8Array(host.randomBytes(16));
      b[6] = (b[6] & 0x0f) | 0x40;
      b[8] = (b[8] & 0x3f) | 0x80;
      const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
      return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
    },
  };

  // ---- console ----------------------------------------------------------------
  const show = (v) => {
    if (typeof v === "string") return v;
    if (v instanceof Error) return v.stack ? `${v.name}: ${v.message}\n${v.stack}` : `${v.name}: ${v.message}`;
    try { return JSON.stringify(v) ?? String(v); } catch { return String(v); }
  };
  const log = (level) => (...args) => host.log(level, args.map(show).join(" "));
  const console = {
    log: log("info"), info: log("info"), debug: log("debug"), trace: log("debug"),
    warn: log("warn"), error: log("error"),
  };

  // ---- URL ------------------------------------------------------------------
  class URLSearchParams {
    constructor(init = "") {
      this._list = [];
      if (typeof init === "string") {
        for (const part of init.replace(/^\?/, "").split("&")) {
          if (!part) continue;
          const i = part.indexOf("=");
          const dec = (s) => decodeURIComponent(s.replace(/\+/g, " "));
          this._list.push(i < 0 ? [dec(part), ""] : [dec(part.slice(0, i)), dec(part.slice(i + 1))]);
        }
      } else if (init && typeof init === "object") {
        const entries = Symbol.iterator in init ? init : Object.entries(init);
        for (const [k, v] of entries) this._list.push([String(k), String(v)]);
      }
    }
    get(name) { const e = this._list.find(([k]) => k === name); return e ? e[1] : null; }
    getAll(name) { return this._list.filter(([k]) => k === name).map(([, v]) => v); }
    has(name) { return this._list.some(([k]) => k === name); }
    set(name, value) { this.delete(name); this._list.push([String(name), String(value)]); }
    append(name, value) { this._list.push([String(name), String(value)]); }
    delete(name) { this._list = this._list.filter(([k]) => k !== name); }
    entries() { return this._list.map((e) => [...e])[Symbol.iterator](); }
    keys() { return this._list.map(([k]) => k)[Symbol.iterator](); }
    values() { return this._list.map(([, v]) => v)[Symbol.iterator](); }
    forEach(f) { for (const [k, v] of this._list) f(v, k, this); }
    [Symbol.iterator]() { return this.entries(); }
    toString() {
      const enc = (s) => encodeURIComponent(s).replace(/%20/g, "+");
      return this._list.map(([k, v]) => `${enc(k)}=${enc(v)}`).join("&");
    }
  }
  const URL_RE = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\/(?:([^:@/?#]*)(?::([^@/?#]*))?@)?(\[[^\]]*\]|[^:/?#]*)(?::(\d*))?([^?#]*)(\?[^#]*)?(#.*)?$/;
  const DEFAULT_PORTS = { "http:": "80", "https:": "443", "ws:": "80", "wss:": "443" };
  class URL {
    constructor(input, base) {
      let text = String(input);
      if (base !== undefined && !/^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(text)) {
        const b = new URL(base);
        text = text.startsWith("/") ? `${b.origin}${text}`
          : `${b.origin}${b.pathname.replace(/[^/]*$/, "")}${text}`;
      }
      const m = URL_RE.exec(text);
      if (!m) throw new TypeError(`Invalid URL: ${text}`);
      this.protocol = `${m[1].toLowerCase()}:`;
      this.username = m[2] ?? "";
      this.password = m[3] ?? "";
      this.hostname = m[4].toLowerCase();
      const port = m[5] ?? "";
      this.port = port === DEFAULT_PORTS[this.protocol] ? "" : port;
      this.pathname = m[6] || "/";
      this.searchParams = new URLSearchParams(m[7] ?? "");
      this.hash = m[8] ?? "";
    }
    get host() { return this.port ? `${this.hostname}:${this.port}` : this.hostname; }
    get origin() { return `${this.protocol}//${this.host}`; }
    get search() { const s = this.searchParams.toString(); return s ? `?${s}` : ""; }
    get href() { return `${this.origin}${this.pathname}${this.search}${this.hash}`; }
    toString() { return this.href; }
    toJSON() { return this.href; }
  }

  // ---- Headers, Request, Response ---------------------------------------------
  class Headers {
    constructor(init) {
      this._map = new Map();
      if (init instanceof Headers) init.forEach((v, k) => this.append(k, v));
      else if (Array.isArray(init)) for (const [k, v] of init) this.append(k, v);
      else if (init) for (const k of Object.keys(init)) this.append(k, init[k]);
    }
    get(name) { return this._map.get(String(name).toLowerCase()) ?? null; }
    has(name) { return this._map.has(String(name).toLowerCase()); }
    set(name, value) { this._map.set(String(name).toLowerCase(), String(value)); }
    append(name, value) {
      const k = String(name).toLowerCase();
      this._map.set(k, this._map.has(k) ? `${this._map.get(k)}, ${value}` : String(value));
    }
    delete(name) { this._map.delete(String(name).toLowerCase()); }
    forEach(f) { for (const [k, v] of this._map) f(v, k, this); }
    entries() { return this._map.entries(); }
    keys() { return this._map.keys(); }
    values() { return this._map.values(); }
    [Symbol.iterator]() { return this._map.entries(); }
  }
  const bodyText = (body) => {
    if (body == null) return null;
    if (typeof body === "string") return body;
    return new TextDecoder().decode(body);
  };
  class Request {
    constructor(input, init = {}) {
      this.url = input instanceof Request ? input.url : String(input);
      this.method = (init.method ?? (input instanceof Request ? input.method : "GET")).toUpperCase();
      this.headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : undefined));
      this._body = init.body ?? null;
    }
    async text() { return bodyText(this._body) ?? ""; }
    async json() { return JSON.parse(await this.text()); }
  }
  class Response {
    constructor(body = null, init = {}) {
      this.status = init.status ?? 200;
      this.statusText = init.statusText ?? "";
      this.headers = new Headers(init.headers);
      this.webSocket = init.webSocket ?? null;
      this._body = body;
      if (this.status === 101 && !this.webSocket) throw new RangeError("status 101 needs a webSocket");
    }
    get ok() { return this.status >= 200 && this.status < 300; }
    async text() { return bodyText(this._body) ?? ""; }
    async json() { return JSON.parse(await this.text()); }
    static json(value, init = {}) {
      const headers = new Headers(init.headers);
      if (!headers.has("content-type")) headers.set("content-type", "application/json");
      return new Response(JSON.stringify(value), { ...init, headers });
    }
  }

  // ---- WebSockets -------------------------------------------------------------
  const sockets = new Map(); // id -> WebSocket (accepted, open)
  let handshake = null; // the socket id of the handshake being answered

  class WebSocket {
    constructor() {
      this._id = null;
      this._tags = [];
      this._attachment = null; // encoded JSON, or null
      this._peer = null;
      this._listeners = null; // accepted with accept(): its event listeners
      this.readyState = 0;
    }
    // The API without hibernation: events go to listeners, and the socket
    // lives only as long as this instance (it closes with 1012 if the
    // instance is re-created).
    accept() {
      if (handshake === null) throw new Error("accept is only possible while answering fetch");
      this._id = handshake;
      this._listeners = { message: [], close: [], error: [] };
      this.readyState = 1;
      sockets.set(this._id, this);
      effect({ accept: this._id, tags: [], plain: true });
    }
    addEventListener(type, listener) {
      if (this._listeners === null) {
        throw new Error("addEventListener needs accept(); with acceptWebSocket, define webSocketMessage on the class");
      }
      if (this._listeners[type]) this._listeners[type].push(listener);
    }
    removeEventListener(type, listener) {
      if (this._listeners?.[type]) this._listeners[type] = this._listeners[type].filter((l) => l !== listener);
    }
    send(data) {
      if (this._id === null || !sockets.has(this._id)) throw new Error("WebSocket is not open");
      // The same text sent to socket after socket (the broadcast loop of
      // every chat class) is one effect: the owner sends it once per gateway.
      const last = effects[effects.length - 1];
      if (typeof data === "string") {
        if (last !== undefined && last.send !== undefined && last.text === data) last.send.push(this._id);
        else effect({ send: [this._id], text: data });
      } else effect({ send: [this._id], binary: copyBuffer(bytesOf(data)) });
    }
    close(code = 1000, reason = "") {
      if (this._id === null) return;
      if (sockets.delete(this._id)) effect({ close: this._id, code, reason: String(reason) });
      this.readyState = 3;
    }
    serializeAttachment(value) {
      const encoded = value === undefined ? null : JSON.stringify(value);
      if (encoded !== null && host.utf8Encode(encoded).byteLength > ATTACHMENT_LIMIT) {
        throw new RangeError(`attachment larger than ${ATTACHMENT_LIMIT} bytes`);
      }
      this._attachment = encoded;
      if (this._id !== null) effect({ attach: this._id, value: encoded });
    }
    deserializeAttachment() { return this._attachment === null ? null : JSON.parse(this._attachment); }
  }
  const notify = async (ws, type, event) => {
    for (const listener of ws._listeners[type]) await listener(event);
  };
  WebSocket.CONNECTING = 0; WebSocket.OPEN = 1; WebSocket.CLOSING = 2; WebSocket.CLOSED = 3;

  class WebSocketPair {
    constructor() {
      const client = new WebSocket();
      const server = new WebSocket();
      client._peer = server;
      server._peer = client;
      this[0] = client;
      this[1] = server;
    }
  }

  const restoreSocket = (id, tags, attachment) => {
    const ws = new WebSocket();
    ws._id = id;
    ws._tags = tags;
    ws._attachment = attachment;
    ws.readyState = 1;
    sockets.set(id, ws);
    return ws;
  };

  // ---- storage ----------------------------------------------------------------
  // Values are kept encoded: JSON ("j" + text) or bytes ("b" + base64); every
  // get decodes a fresh copy, as Cloudflare's structured clone does.
  const encodeValue = (value) => {
    if (value === undefined) throw new TypeError("cannot store undefined");
    if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) {
      return "b" + host.base64Encode(copyBuffer(bytesOf(value)));
    }
    return "j" + JSON.stringify(value);
  };
  const decodeValue = (encoded) => {
    if (encoded === undefined) return undefined;
    if (encoded[0] === "b") return host.base64Decode(encoded.slice(1));
    return JSON.parse(encoded.slice(1));
  };
  const checkKey = (key) => {
    if (typeof key !== "string") throw new TypeError("storage keys are strings");
    if (host.utf8Encode(key).byteLength > KEY_LIMIT) throw new RangeError(`key longer than ${KEY_LIMIT} bytes`);
  };

  // The room's stored bytes (keys and encoded values), for the host.
  let storedBytes = () => 0;
  const makeStorage = (entries, limit) => {
    const data = new Map(entries);
    let size = 0;
    for (const [k, v] of data) size += k.length + v.length;
    storedBytes = () => size;
    const put1 = (key, value) => {
      checkKey(key);
      const encoded = encodeValue(value);
      if (encoded.length > VALUE_LIMIT) throw new RangeError(`value larger than ${VALUE_LIMIT} bytes`);
      const before = data.has(key) ? key.length + data.get(key).length : 0;
      if (size - before + key.length + encoded.length > limit) {
        throw new RangeError(`room storage over its limit of ${limit} bytes`);
      }
      size += key.length + encoded.length - before;
      data.set(key, encoded);
      effect({ put: key, value: encoded });
    };
    const delete1 = (key) => {
      checkKey(key);
      if (!data.has(key)) return false;
      size -= key.length + data.get(key).length;
      data.delete(key);
      effect({ delete: key });
      return true;
    };
    return {
      async get(keys) {
        if (Array.isArray(keys)) {
          const out = new Map();
          for (const k of keys) { checkKey(k); if (data.has(k)) out.set(k, decodeValue(data.get(k))); }
          return out;
        }
        checkKey(keys);
        return decodeValue(data.get(keys));
      },
      async put(key, value) {
        if (typeof key === "object" && key !== null) {
          for (const k of Object.keys(key)) put1(k, key[k]);
        } else put1(key, value);
      },
      async delete(keys) {
        if (Array.isArray(keys)) return keys.filter(delete1).length;
        return delete1(keys);
      },
      async deleteAll() {
        data.clear();
        size = 0;
        effect({ deleteAll: true });
      },
      async list(options = {}) {
        const { prefix, start, startAfter, end, limit, reverse } = options;
        let keys = [...data.keys()].sort();
        if (prefix !== undefined) keys = keys.filter((k) => k.startsWith(prefix));
        if (start !== undefined) keys = keys.filter((k) => k >= start);
        if (startAfter !== undefined) keys = keys.filter((k) => k > startAfter);
        if (end !== undefined) keys = keys.filter((k) => k < end);
        if (reverse) keys.reverse();
        if (limit !== undefined) keys = keys.slice(0, limit);
        return new Map(keys.map((k) => [k, decodeValue(data.get(k))]));
      },
      async transaction(f) { return f(this); },
      async sync() {},
      // The room's alarm (Cloudflare's), kept by the room's owner in Redis.
      async getAlarm() { return alarms.get("") ?? null; },
      async setAlarm(time) { setAlarm1("", time); },
      async deleteAlarm() { deleteAlarm1(""); },
      // rooms' extension: named timers, each firing the class's timer(name).
      async setTimer(name, time) { setAlarm1(checkTimer(name), time); },
      async getTimer(name) { return alarms.get(checkTimer(name)) ?? null; },
      async deleteTimer(name) { return deleteAlarm1(checkTimer(name)); },
      async listTimers() {
        return new Map([...alarms].filter(([name]) => name !== "").sort((a, b) => a[1] - b[1]));
      },
    };
  };

  // ---- alarms and timers ------------------------------------------------------
  // name -> when it fires (ms since the epoch); "" is the room's alarm.
  let alarms = new Map();
  const timeOf = (time) => {
    const ms = time instanceof Date ? time.getTime() : Number(time);
    if (!Number.isFinite(ms)) throw new TypeError("an alarm's time is a Date or milliseconds since the epoch");
    return Math.max(0, Math.floor(ms));
  };
  const checkTimer = (name) => {
    if (typeof name !== "string" || name === "") throw new TypeError("a timer's name is a non-empty string");
    if (host.utf8Encode(name).byteLength > TIMER_NAME_LIMIT) {
      throw new RangeError(`timer name longer than ${TIMER_NAME_LIMIT} bytes`);
    }
    return name;
  };
  const setAlarm1 = (name, time) => {
    const at = timeOf(time);
    if (!alarms.has(name) && alarms.size >= TIMER_LIMIT) {
      throw new RangeError(`at most ${TIMER_LIMIT} timers per room`);
    }
    alarms.set(name, at);
    effect({ alarm: name, at });
  };
  const deleteAlarm1 = (name) => {
    if (!alarms.delete(name)) return false;
    effect({ alarm: name, at: null });
    return true;
  };

  // ---- the class's context ----------------------------------------------------
  class DurableObject {
    constructor(ctx, env) { this.ctx = ctx; this.env = env; }
  }

  const makeState = (name, storage) => ({
    id: { name, toString() { return name; }, equals(other) { return String(other) === name; } },
    storage,
    acceptWebSocket(ws, tags = []) {
      if (!(ws instanceof WebSocket)) throw new TypeError("acceptWebSocket takes a WebSocket");
      if (handshake === null) throw new Error("acceptWebSocket is only possible while answering fetch");
      if (tags.length > 10) throw new RangeError("at most 10 tags per WebSocket");
      ws._id = handshake;
      ws._tags = tags.map(String);
      ws.readyState = 1;
      sockets.set(ws._id, ws);
      effect({ accept: ws._id, tags: ws._tags });
      if (ws._attachment !== null) effect({ attach: ws._id, value: ws._attachment });
    },
    getWebSockets(tag) {
      const all = [...sockets.values()].filter((ws) => ws._listeners === null);
      return tag === undefined ? all : all.filter((ws) => ws._tags.includes(tag));
    },
    getTags(ws) { return [...ws._tags]; },
    async blockConcurrencyWhile(f) { return f(); },
    waitUntil() {},
    setWebSocketAutoResponse() {},
  });

  // ---- what the host calls ----------------------------------------------------
  let instance = null;
  const rooms = {
    async start(Class, name, envJson, storedJson, restoredJson, storageLimit) {
      for (const [id, tags, attachment] of JSON.parse(restoredJson)) restoreSocket(id, tags, attachment);
      const [entries, stored] = JSON.parse(storedJson);
      alarms = new Map(stored);
      const state = makeState(name, makeStorage(entries, storageLimit));
      instance = new Class(state, JSON.parse(envJson));
    },
    async fetch(id, url, method, headersJson, requestBody) {
      const headers = JSON.parse(headersJson);
      if (typeof instance.fetch !== "function") return { status: 501, headers: [], body: "this room class has no fetch handler" };
      handshake = id;
      try {
        const response = await instance.fetch(new Request(url, { method, headers, body: requestBody }));
        if (!(response instanceof Response)) throw new TypeError("fetch must return a Response");
        const accepted = response.status === 101 && response.webSocket?._peer?._id === id;
        if (response.status === 101 && !accepted) {
          throw new Error("a 101 response needs the other end of a WebSocketPair accepted with this.ctx.acceptWebSocket");
        }
        const body = response._body == null ? null
          : typeof response._body === "string" ? response._body : new TextDecoder().decode(response._body);
        return { status: response.status, headers: [...response.headers], body };
      } finally {
        handshake = null;
      }
    },
    async message(id, data) {
      const ws = sockets.get(id);
      if (!ws) return;
      if (ws._listeners !== null) await notify(ws, "message", { type: "message", data });
      else if (typeof instance.webSocketMessage === "function") await instance.webSocketMessage(ws, data);
    },
    async close(id, code, reason, wasClean) {
      const ws = sockets.get(id);
      if (!ws) return;
      sockets.delete(id);
      ws.readyState = 3;
      if (ws._listeners !== null) await notify(ws, "close", { type: "close", code, reason, wasClean });
      else if (typeof instance.webSocketClose === "function") await instance.webSocketClose(ws, code, reason, wasClean);
    },
    async error(id, message) {
      const ws = sockets.get(id);
      if (!ws) return;
      sockets.delete(id);
      ws.readyState = 3;
      if (ws._listeners !== null) await notify(ws, "error", { type: "error", error: new Error(message) });
      else if (typeof instance.webSocketError === "function") await instance.webSocketError(ws, new Error(message));
    },
    async alarm(name, retryCount) {
      // Deleted as it fires: one the handler sets again stands.
      deleteAlarm1(name);
      if (name === "") {
        if (typeof instance.alarm === "function") await instance.alarm({ retryCount, isRetry: retryCount > 0 });
      } else if (typeof instance.timer === "function") {
        await instance.timer(name);
      }
    },
    async invoke(method, argsJson) {
      const f = instance[method];
      if (typeof f !== "function" || method.startsWith("_") || method === "constructor" ||
          ["fetch", "webSocketMessage", "webSocketClose", "webSocketError", "alarm", "timer"].includes(method)) {
        throw new TypeError(`${method} ${NOT_A_METHOD}`);
      }
      const result = await f.apply(instance, JSON.parse(argsJson));
      return result === undefined ? "null" : JSON.stringify(result);
    },
    takeEffects() { const taken = effects; effects = []; return taken; },
    storedBytes() { return storedBytes(); },
    dropEffects() { effects = []; },
  };

  Object.assign(globalThis, {
    TextEncoder, TextDecoder, atob, btoa, Buffer, crypto, console, URL, URLSearchParams,
    Headers, Request, Response, WebSocket, WebSocketPair, DOMException,
  });
  Object.defineProperty(globalThis, "__rooms", { value: rooms });
  globalThis.__roomsDurableObject = DurableObject;
})();
