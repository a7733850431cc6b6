// The demo chat, built on the rooms client library (served at /rooms-client.js).
// All user-provided text is rendered with textContent, never as HTML.
import { RoomsClient } from "/rooms-client.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const TYPING_SHOWN_MS = 3000;

// A stable user id per browser (`?user=` overrides it), and the last name used.
const userId =
  params.get("user") ||
  localStorage.getItem("rooms.user") ||
  (() => {
    const id = `u-${Math.random().toString(36).slice(2, 10)}`;
    localStorage.setItem("rooms.user", id);
    return id;
  })();
$("name").value = params.get("name") || localStorage.getItem("rooms.name") || "";
if (params.get("room")) $("room").value = params.get("room");

let client = null;
let countdown = null;
const typing = new Map(); // userId -> {name, until}

function clock(time) {
  return time ? new Date(time).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
}

function span(text, cls) {
  const s = document.createElement("span");
  s.textContent = text;
  if (cls) s.className = cls;
  return s;
}

/** One list item for a persisted event (or an own message still on its way). */
function item(ev) {
  const li = document.createElement("li");
  li.className = "msg";
  if (ev.seq) li.dataset.seq = ev.seq;
  li.append(span(clock(ev.time), "time"));
  if (ev.type === "chat") {
    li.append(span(ev.userName || ev.userId, "who"), span(ev.text, "text"));
    if (ev.userId === client.userId) {
      li.dataset.id = ev.id;
      li.classList.add("delivered");
      li.append(span("✓", "tick"));
      li.lastChild.title = "delivered";
    }
  } else if (ev.type === "name") {
    li.append(span(`${ev.userId} is now ${ev.name}`, "note"));
  } else if (ev.type === "system") {
    li.append(span(`📣 ${JSON.stringify(ev.data)}`, "system"));
  }
  return li;
}

function note(text, cls = "note") {
  const li = document.createElement("li");
  li.append(span(text, cls));
  append(li);
}

/** Adds to the end of the list, above own messages still waiting for their echo. */
function append(li) {
  const log = $("log");
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
  log.insertBefore(li, log.querySelector("li.pending"));
  if (atBottom) log.scrollTop = log.scrollHeight;
}

let gapSeen = false;

function renderAll() {
  const log = $("log");
  const pending = [...log.querySelectorAll("li.pending")];
  log.replaceChildren(...client.messages.map(item), ...pending);
  if (gapSeen) {
    // Said after the list restarted from what the server still has.
    note("Some messages from while you were away are no longer stored.");
    gapSeen = false;
  }
  log.scrollTop = log.scrollHeight;
  $("older").hidden = !client.hasMore;
}

function renderUsers() {
  $("users").replaceChildren(
    ...client.users.map((u) => {
      const li = document.createElement("li");
      li.textContent = u.name + (u.userId === client.userId ? " (you)" : "");
      return li;
    }),
  );
}

function renderTyping() {
  const now = Date.now();
  for (const [id, t] of typing) if (t.until < now) typing.delete(id);
  const names = [...typing.values()].map((t) => t.name);
  $("typing").textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
}

function renderState() {
  const s = $("status");
  clearInterval(countdown);
  const { state, nextRetryAt, closeReason } = client;
  const enabled = state === "connected" || state === "reconnecting";
  $("text").disabled = !enabled && state !== "connecting";
  $("go").disabled = $("text").disabled;
  s.title = "";
  if (state === "connected") {
    s.textContent = `connected to ${client.room}`;
    s.className = "live";
  } else if (state === "connecting") {
    s.textContent = "connecting…";
    s.className = "warn";
  } else if (state === "reconnecting") {
    const tick = () => {
      const left = client.nextRetryAt ? Math.max(0, Math.ceil((client.nextRetryAt - Date.now()) / 1000)) : 0;
      s.textContent = left > 0 ? `reconnecting in ${left}s` : "reconnecting…";
    };
    s.className = "warn";
    s.title = client.retryReason ?? "";
    tick();
    if (nextRetryAt) countdown = setInterval(tick, 250);
  } else {
    s.textContent = `disconnected: ${closeReason?.reason ?? "closed"}`;
    s.className = "dead";
  }
}

function join() {
  const room = $("room").value.trim();
  const name = $("name").value.trim();
  if (!/^[A-Za-z0-9._:-]{1,128}$/.test(room)) {
    $("status").textContent = "room: 1–128 of A-Z a-z 0-9 . _ : -";
    return;
  }
  if (name) localStorage.setItem("rooms.name", name);
  client?.close();
  typing.clear();
  $("log").replaceChildren();
  history.replaceState(null, "", `?room=${encodeURIComponent(room)}`);
  const token = params.get("token");
  client = new RoomsClient({
    url: location.origin,
    room,
    ...(token ? { token } : { user: userId }),
    ...(name ? { name } : {}),
  });
  client.on("state", renderState);
  client.on("reset", renderAll);
  client.on("message", (ev) => {
    // An own message already shown as pending becomes delivered in place.
    $("log").querySelector(`li.pending[data-id="${CSS.escape(ev.id ?? "")}"]`)?.remove();
    append(item(ev));
    $("older").hidden = !client.hasMore;
  });
  client.on("history", (older) => {
    const log = $("log");
    const top = log.scrollHeight - log.scrollTop;
    log.prepend(...older.map(item));
    log.scrollTop = log.scrollHeight - top;
    $("older").hidden = !client.hasMore;
  });
  client.on("presence", renderUsers);
  client.on("typing", (t) => {
    if (t.userId === client.userId) return;
    typing.set(t.userId, { name: t.name, until: Date.now() + TYPING_SHOWN_MS });
    renderTyping();
  });
  client.on("chat", (ev) => {
    typing.delete(ev.userId);
    renderTyping();
  });
  client.on("gap", () => {
    gapSeen = true;
  });
  client.on("error", (e) => note(`${e.code}: ${e.message}`, "error"));
  renderState();
}

function send(event) {
  event.preventDefault();
  const input = $("text");
  const text = input.value;
  if (!text.trim() || !client) return;
  input.value = "";
  const sending = client.send(text);
  // Shown at once with a pending tick; the echo replaces it (✓), a refusal marks it (✗).
  const li = document.createElement("li");
  li.className = "msg pending";
  li.dataset.id = sending.id;
  li.append(span("", "time"), span($("name").value.trim() || client.userId || userId, "who"), span(text, "text"));
  li.append(span("…", "tick"));
  li.lastChild.title = "sending";
  const log = $("log");
  log.append(li);
  log.scrollTop = log.scrollHeight;
  sending.catch((e) => {
    li.classList.replace("pending", "failed");
    li.lastChild.textContent = "✗";
    li.lastChild.title = `not sent: ${e.code}`;
  });
}

$("join").addEventListener("click", join);
$("room").addEventListener("keydown", (e) => e.key === "Enter" && join());
$("name").addEventListener("keydown", (e) => e.key === "Enter" && join());
$("send").addEventListener("submit", send);
$("text").addEventListener("input", () => client?.typing());
$("older").addEventListener("click", () => client?.loadMore().catch((e) => note(`history: ${e.code}`, "error")));
setInterval(renderTyping, 1000);
join();
