// Types of rooms-client.js.

/** `connecting` (first attempt), `connected` (caught up, live),
 * `reconnecting` (waiting until `nextRetryAt`, or attempting when it is null),
 * `closed` (for good: see `closeReason`). */
export type ConnectionState = "connecting" | "connected" | "reconnecting" | "closed";

/** Server error codes, and the client's own refusals. */
export type ErrorCode =
  | "invalid_message"
  | "too_large"
  | "rate_limited"
  | "unavailable"
  | "forbidden"
  | "queue_full"
  | "closed"
  | "not_connected"
  | "timeout";

export interface User {
  userId: string;
  name: string;
}

export interface ChatEvent {
  type: "chat";
  seq: number;
  /** The client id the sender gave (or one the server made). */
  id: string;
  userId: string;
  userName: string;
  text: string;
  /** RFC 3339 UTC. */
  time: string;
}

export interface NameEvent {
  type: "name";
  seq: number;
  userId: string;
  name: string;
  time: string;
}

export interface SystemEvent {
  type: "system";
  /** 0 when the operator published without persisting. */
  seq: number;
  data: Record<string, unknown>;
  time: string;
}

/** A persisted event, as kept in `messages`. */
export type RoomEvent = ChatEvent | NameEvent | SystemEvent;

export interface StateChange {
  state: ConnectionState;
  nextRetryAt: number | null;
  /** While reconnecting: why the last connection ended, e.g. "closed (1012): gateway restarting; reconnect". */
  reason?: string;
  closeReason: CloseReason | null;
}

export interface CloseReason {
  /** A WebSocket close code (4001 kicked, 4003 token expired), an HTTP status
   * of the refused handshake (401, 403), or 1000 after `close()`. */
  code: number;
  reason: string;
}

export interface RoomsClientOptions {
  /** Gateway base URL: http(s) or ws(s), optionally with a path prefix. */
  url: string;
  /** 1–128 characters of `[A-Za-z0-9._:-]`. */
  room: string;
  /** A JWT (`--auth jwt`), or a function returning a fresh one for every
   * connection (then an expired token is renewed instead of closing). */
  token?: string | (() => string | Promise<string>);
  /** The user id with `--auth none`. */
  user?: string;
  /** Display name, set in the room once connected. */
  name?: string;
  /** Resume after this seq of `epoch` (e.g. saved from an earlier session). */
  since?: number;
  epoch?: string;
  /** Milliseconds; defaults in parentheses. First reconnect delay (500), doubled up to maxRetryDelay (30000), with jitter. */
  minRetryDelay?: number;
  maxRetryDelay?: number;
  /** Quiet for pingAfter (15000): send a ping; for deadAfter (25000): reconnect. */
  pingAfter?: number;
  deadAfter?: number;
  /** No welcome within this (10000): retry. */
  connectTimeout?: number;
  /** loadMore answer deadline (15000). */
  requestTimeout?: number;
  /** Sends waiting for their echo (100); past it, send rejects with `queue_full`. */
  maxQueue?: number;
  /** Live events kept in `messages` (1000); the oldest are dropped first. */
  maxMessages?: number;
  /** Retries of a send refused as `unavailable` or `rate_limited` (5). */
  unavailableRetries?: number;
  /** Chats sent per second at most (10), after a burst of sendBurst (20): a queue sent after a
   * reconnect stays within the gateway's rate limit. */
  sendRate?: number;
  sendBurst?: number;
  /** A send with neither its echo nor an error after echoTimeout (5000) is sent again (same id),
   * at most maxResends (5) times, then rejects with `timeout`. */
  echoTimeout?: number;
  maxResends?: number;
  /** Minimum time between typing signals (2000). */
  typingInterval?: number;
  /** Default loadMore page (100, the server's maximum). */
  pageSize?: number;
  /** WebSocket and fetch implementations (default: the global ones). */
  WebSocket?: unknown;
  fetch?: unknown;
}

export interface RoomsClientEvents {
  state: StateChange;
  chat: ChatEvent;
  name: NameEvent;
  system: SystemEvent;
  /** Any persisted event, in seq order, once. */
  message: RoomEvent;
  /** `messages` was replaced (first join, or after a gap). */
  reset: RoomEvent[];
  /** An older page was prepended by loadMore. */
  history: RoomEvent[];
  presence: User[];
  join: User;
  leave: User;
  typing: User;
  /** Events were lost while away (history trimmed or reset): the list restarts from the latest. */
  gap: { epoch: string | null };
  /** A refusal not tied to a send. */
  error: RoomsError;
  closed: CloseReason;
}

export class RoomsError extends Error {
  constructor(code: ErrorCode, message?: string);
  readonly code: ErrorCode;
  /** With code `closed`: the close code or HTTP status that ended the client. */
  closeCode?: number;
}

export class RoomsClient {
  constructor(options: RoomsClientOptions);
  readonly room: string;
  readonly state: ConnectionState;
  readonly nextRetryAt: number | null;
  /** Why the client is reconnecting. */
  readonly retryReason: string | undefined;
  readonly closeReason: CloseReason | null;
  readonly userId: string | null;
  readonly epoch: string | null;
  /** The last seq seen: save it with `epoch` to resume later. */
  readonly seq: number;
  readonly messages: RoomEvent[];
  readonly hasMore: boolean;
  readonly users: User[];

  on<K extends keyof RoomsClientEvents>(event: K, listener: (value: RoomsClientEvents[K]) => void): () => void;
  off<K extends keyof RoomsClientEvents>(event: K, listener: (value: RoomsClientEvents[K]) => void): void;
  /** Resolves with the stored message once its echo arrives; rejects with RoomsError. */
  send(text: string, options?: { id?: string }): Promise<ChatEvent> & { id: string };
  setName(name: string): Promise<NameEvent>;
  typing(): void;
  /** Prepends the page before `messages[0]`; resolves with it (empty when there is none). */
  loadMore(limit?: number): Promise<RoomEvent[]>;
  close(): void;
}
