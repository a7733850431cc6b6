// The client against a real cluster (redis-server, roomhosts, gateways):
// what an application sees through RoomsClient.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { RoomsClient, RoomsError } from "../rooms-client.js";
import { binary, Cluster, eventually, freePort, httpGet } from "./cluster.mjs";

const SECRET = "a-test-secret-of-32-bytes-length";
const clients = [];

/** A client that the test's cleanup closes; resolves once connected. */
async function connect(options) {
  const client = new RoomsClient(options);
  clients.push(client);
  await until(client, "connected");
  return client;
}

function until(client, state) {
  return eventually(`state ${state} (now ${client.state})`, () => client.state === state);
}

/** The chat texts a client holds, in order. */
function texts(client) {
  return client.messages.filter((m) => m.type === "chat").map((m) => m.text);
}

function closeAll() {
  for (const c of clients.splice(0)) c.close();
}

function jwt(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

/** A counter's value in a Prometheus page. */
function metric({ body }, name) {
  const line = body.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : 0;
}

/** Runs `roomctl` against gateway `g`'s Admin API. */
function roomctl(g, args) {
  const admin = g.proc.lines.find((l) => l.includes("gateway serving")).match(/admin=(\S+)/)[1];
  execFileSync(binary("roomctl"), ["--admin", `http://${admin}`, ...args]);
}

/** A raw WebSocket that collects frames, for what RoomsClient hides. */
async function rawSocket(url) {
  const ws = new WebSocket(url);
  const frames = [];
  ws.onmessage = (e) => frames.push(JSON.parse(e.data));
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = reject;
  });
  return { ws, frames };
}

test("reconnect delays grow exponentially with jitter while nothing answers", async () => {
  const port = await freePort(); // nothing listens there
  const client = new RoomsClient({ url: `http://127.0.0.1:${port}`, room: "void", user: "v", minRetryDelay: 100, maxRetryDelay: 800 });
  clients.push(client);
  const delays = [];
  client.on("state", ({ state, nextRetryAt }) => {
    if (state === "reconnecting" && nextRetryAt) delays.push(nextRetryAt - Date.now());
  });
  await eventually("six retries", () => delays.length >= 6);
  client.close();
  assert.equal(client.state, "closed");
  delays.slice(0, 6).forEach((delay, i) => {
    const ceiling = Math.min(800, 100 * 2 ** i);
    // Equal jitter: between half the ceiling and the ceiling (a few ms of slack for the clock).
    assert.ok(delay >= ceiling / 2 - 5 && delay <= ceiling + 5, `retry ${i + 1}: ${delay} ms, ceiling ${ceiling}`);
  });
  const ceilings = delays.slice(0, 6).map((_, i) => Math.min(800, 100 * 2 ** i));
  assert.ok(delays.slice(0, 6).some((d, i) => ceilings[i] - d > 5), "jittered, not the bare ceiling");
});

describe("one cluster", () => {
  let cluster;
  before(async () => {
    const unthrottled = ["--rate-limit=1000", "--rate-burst=1000"];
    cluster = await Cluster.start({ roomhosts: 2, gateways: 2, gatewayArgs: unthrottled });
  });
  after(async () => {
    closeAll();
    await cluster?.stop();
  });

  test("two users chat across gateways: sends resolve on their echo, presence and names follow", async () => {
    const [g1, g2] = cluster.gateways;
    const ann = await connect({ url: g1.url, room: "lobby", user: "ann", name: "Ann" });
    const bob = await connect({ url: g2.url, room: "lobby", user: "bob" });
    await eventually("presence of both", () => ann.users.length === 2 && bob.users.length === 2);
    await eventually("Ann's name", () => bob.users.find((u) => u.userId === "ann")?.name === "Ann");

    const seen = [];
    bob.on("chat", (m) => seen.push(m.text));
    const typing = [];
    bob.on("typing", (t) => typing.push(t.userId));
    ann.typing();
    const sent = ann.send("hello bob");
    assert.match(sent.id, /.+-1$/);
    const echo = await sent;
    assert.equal(echo.text, "hello bob");
    assert.equal(echo.id, sent.id);
    assert.equal(echo.userId, "ann");
    assert.equal(echo.userName, "Ann");
    await eventually("bob sees it", () => seen.includes("hello bob"));
    await eventually("bob sees ann typing", () => typing.includes("ann"));
    assert.deepEqual(texts(bob), ["hello bob"]);
    assert.equal(bob.seq, echo.seq);

    const left = new Promise((resolve) => ann.on("leave", resolve));
    bob.close();
    assert.equal((await left).userId, "bob");
    assert.deepEqual(ann.users.map((u) => u.userId), ["ann"]);
  });

  test("send rejects with the server's error code, and validates before sending", async () => {
    const g = await cluster.spawnGateway(0, ["--rate-limit=1", "--rate-burst=1"]);
    try {
      // rate_limited is retried by default; without retries it rejects.
      const cid = await connect({ url: g.url, room: "limits", user: "lim", unavailableRetries: 0 });
      const results = await Promise.allSettled([cid.send("one"), cid.send("two"), cid.send("three")]);
      assert.equal(results[0].status, "fulfilled");
      const refused = results.filter((r) => r.status === "rejected").map((r) => r.reason);
      assert.ok(refused.length >= 1, "the rate limit refused something");
      for (const e of refused) {
        assert.ok(e instanceof RoomsError);
        assert.equal(e.code, "rate_limited");
      }
      await assert.rejects(cid.send("   "), { code: "invalid_message" });
      await assert.rejects(cid.send("x".repeat(4097)), { code: "too_large" });
      await assert.rejects(cid.setName(""), { code: "invalid_message" });
    } finally {
      await g.proc.kill();
    }
  });

  test("the offline queue is bounded, and messages keeps the latest maxMessages", async () => {
    const g = cluster.gateways[0];
    // Not connected yet (connects on the next microtask): sends queue up.
    const client = new RoomsClient({ url: g.url, room: "bounded", user: "bee", maxQueue: 3, maxMessages: 5 });
    clients.push(client);
    const queued = [client.send("q1"), client.send("q2"), client.send("q3")];
    await assert.rejects(client.send("q4"), { code: "queue_full" });
    assert.deepEqual((await Promise.all(queued)).map((m) => m.text), ["q1", "q2", "q3"]);
    for (let i = 4; i <= 8; i++) await client.send(`q${i}`);
    assert.deepEqual(texts(client), ["q4", "q5", "q6", "q7", "q8"]);
    assert.equal(client.hasMore, true, "trimmed events can be paged back");
  });

  test("loadMore pages back through history with before, until hasMore is false", async () => {
    const writer = await connect({ url: cluster.gateways[0].url, room: "paging", user: "w" });
    for (let i = 1; i <= 230; i++) await writer.send(`m${i}`);
    const reader = await connect({ url: cluster.gateways[1].url, room: "paging", user: "r" });
    assert.equal(reader.messages.length, 100);
    assert.equal(reader.messages[0].text, "m131");
    assert.equal(reader.hasMore, true);
    const page = await reader.loadMore();
    assert.equal(page.length, 100);
    assert.equal(reader.messages[0].text, "m31");
    await reader.loadMore();
    assert.equal(reader.hasMore, false);
    assert.deepEqual(texts(reader), Array.from({ length: 230 }, (_, i) => `m${i + 1}`));
    assert.deepEqual(await reader.loadMore(), [], "nothing older");
  });

  test("a resend of a stored message is never stored twice", async () => {
    const g = cluster.gateways[0];
    const first = await rawSocket(`ws://${g.http}/rooms/dedup/ws?user=dee`);
    first.ws.send(JSON.stringify({ type: "chat", text: "once", id: "dee-7" }));
    const stored = await eventually("stored", () => first.frames.find((f) => f.type === "chat"));
    const welcome = first.frames[0];
    first.ws.close();

    // The client resumes after the message (its echo was never seen here)
    // and re-sends it with the same id: the server answers with the original.
    const resumed = new RoomsClient({ url: g.url, room: "dedup", user: "dee", since: stored.seq, epoch: welcome.epoch });
    clients.push(resumed);
    const again = await resumed.send("once", { id: "dee-7" });
    assert.equal(again.seq, stored.seq);
    // Resuming from before it: the replay settles the send, nothing is sent.
    const replayed = new RoomsClient({ url: g.url, room: "dedup", user: "dee", since: stored.seq - 1, epoch: welcome.epoch });
    clients.push(replayed);
    assert.equal((await replayed.send("once", { id: "dee-7" })).seq, stored.seq);
    const info = JSON.parse((await httpGet(g.http, "/rooms/dedup")).body);
    assert.equal(info.seq, stored.seq, "nothing new was stored");
  });

  test("gap: a resume from another epoch is reported and restarts from the latest page", async () => {
    const g = cluster.gateways[0];
    const writer = await connect({ url: g.url, room: "gappy", user: "w" });
    await writer.send("first");
    for (let i = 0; i < 5; i++) await writer.send(`later ${i}`);
    const gaps = [];
    const stale = new RoomsClient({ url: g.url, room: "gappy", user: "s", since: 1, epoch: "not-this-one" });
    clients.push(stale);
    stale.on("gap", (e) => gaps.push(e));
    await until(stale, "connected");
    assert.equal(gaps.length, 1);
    assert.equal(stale.epoch, writer.epoch, "now on the room's real epoch");
    assert.deepEqual(texts(stale), ["first", "later 0", "later 1", "later 2", "later 3", "later 4"]);
    assert.equal(stale.seq, writer.seq);
  });

  test("operator messages arrive as system events, in seq order with the rest", async () => {
    const g = cluster.gateways[0];
    const client = await connect({ url: g.url, room: "announce", user: "ola" });
    const system = new Promise((resolve) => client.on("system", resolve));
    await client.send("before the announcement");
    roomctl(g, ["publish", "announce", "--data", '{"text":"maintenance at noon"}']);
    const event = await system;
    assert.deepEqual(event.data, { text: "maintenance at noon" });
    assert.equal(event.seq, 2);
    assert.deepEqual(client.messages.map((m) => m.type), ["chat", "system"]);
  });

  test("gives up on 4001 (kicked), with the reason", async () => {
    const g = cluster.gateways[0];
    const kicked = await connect({ url: g.url, room: "kicks", user: "kim" });
    const closed = new Promise((resolve) => kicked.on("closed", resolve));
    const pending = kicked.send("about to go");
    await pending;
    roomctl(g, ["kick", "kicks", "kim", "--reason", "spamming"]);
    const reason = await closed;
    assert.equal(reason.code, 4001);
    assert.match(reason.reason, /spamming/);
    assert.equal(kicked.state, "closed");
    await assert.rejects(kicked.send("after"), { code: "closed" });
  });
});

describe("authentication", () => {
  let cluster;
  before(async () => {
    cluster = await Cluster.start({ roomhosts: 1, gateways: 1, gatewayArgs: ["--auth=jwt", `--jwt-secret=${SECRET}`] });
  });
  after(async () => {
    closeAll();
    await cluster?.stop();
  });

  test("a token (sent as a subprotocol) connects; 401 and 403 end the client with the reason", async () => {
    const url = cluster.gateways[0].url;
    const exp = Math.floor(Date.now() / 1000) + 600;
    const ok = await connect({ url, room: "vip", token: jwt({ sub: "tia", exp, rooms: ["vip"] }) });
    assert.equal(ok.userId, "tia");

    const forbidden = new RoomsClient({ url, room: "other", token: jwt({ sub: "tia", exp, rooms: ["vip"] }) });
    const expired = new RoomsClient({ url, room: "vip", token: jwt({ sub: "tia", exp: exp - 7200 }) });
    clients.push(forbidden, expired);
    await until(forbidden, "closed");
    await until(expired, "closed");
    assert.equal(forbidden.closeReason.code, 403);
    assert.equal(expired.closeReason.code, 401);
    assert.match(expired.closeReason.reason, /expired/i);
  });

  test("a token function is asked again for every connection", async () => {
    const exp = Math.floor(Date.now() / 1000) + 600;
    let asked = 0;
    const client = await connect({
      url: cluster.gateways[0].url,
      room: "vip",
      token: () => {
        asked += 1;
        return jwt({ sub: `fn-${asked}`, exp });
      },
    });
    assert.equal(client.userId, "fn-1");
  });

  test("an expired token (4003) ends a client with a fixed token, and is renewed by a token function", async () => {
    const url = cluster.gateways[0].url;
    // The gateway tolerates 30 s of clock skew on `exp`: this one lasts ~3 s.
    const soon = () => Math.floor(Date.now() / 1000) - 27;
    const fixed = await connect({ url, room: "vip", token: jwt({ sub: "fix", exp: soon() }) });
    let asked = 0;
    const renewing = await connect({
      url,
      room: "vip",
      minRetryDelay: 100,
      token: () => {
        asked += 1;
        // The first token expires in seconds, the next ones last.
        return jwt({ sub: "ren", exp: asked === 1 ? soon() : soon() + 900 });
      },
    });
    await until(fixed, "closed");
    assert.equal(fixed.closeReason.code, 4003);
    await eventually("a fresh token was asked for", () => asked >= 2);
    await until(renewing, "connected");
    assert.equal((await renewing.send("still here")).userId, "ren");
  });
});

describe("faults", () => {
  let cluster;
  before(async () => {
    const unthrottled = ["--rate-limit=1000", "--rate-burst=1000"];
    cluster = await Cluster.start({ roomhosts: 2, gateways: 2, gatewayArgs: unthrottled, roomhostArgs: ["--history-limit=150"] });
  });
  after(async () => {
    closeAll();
    await cluster?.stop();
  });

  test("a gateway restart: reconnecting, then exactly the missed messages, and the offline queue delivered once", async () => {
    const fast = { minRetryDelay: 100, maxRetryDelay: 400 };
    const ann = await connect({ url: cluster.gateways[0].url, room: "resume", user: "ann", ...fast });
    const bob = await connect({ url: cluster.gateways[1].url, room: "resume", user: "bob", ...fast });
    await ann.send("before");
    await eventually("bob has it", () => texts(bob).includes("before"));
    const states = [];
    ann.on("state", (s) => states.push(s));
    const live = [];
    ann.on("chat", (m) => live.push(m.text));

    let queued;
    // More than one replay page (100) is missed.
    const missed = Array.from({ length: 130 }, (_, i) => `missed ${i + 1}`);
    await cluster.restartGateway(0, async () => {
      await until(ann, "reconnecting");
      assert.ok(ann.nextRetryAt === null || ann.nextRetryAt > Date.now() - 1000);
      // While Ann is away: Bob talks, and Ann writes (queued).
      for (const text of missed) await bob.send(text);
      queued = ann.send("written offline");
    });
    assert.equal((await queued).text, "written offline");
    await until(ann, "connected");
    assert.ok(states.some((s) => s.state === "reconnecting" && s.nextRetryAt > 0), "a retry time was announced");
    assert.match(states.find((s) => s.state === "reconnecting").reason, /closed \(1012\)/, "and why");
    assert.deepEqual(live, [...missed, "written offline"]);
    const expected = ["before", ...missed, "written offline"];
    assert.deepEqual(texts(ann), expected);
    await eventually("bob sees the offline message once", () => texts(bob).length === expected.length);
    assert.deepEqual(texts(bob), expected);
  });

  test("sixty messages written offline all go out after the reconnect, paced under the rate limit", async () => {
    const fast = { minRetryDelay: 100, maxRetryDelay: 400 };
    const cy = await connect({ url: cluster.gateways[0].url, room: "paced", user: "cy", ...fast });
    const refused = [];
    cy.on("error", (e) => refused.push(e.code));
    let sends;
    await cluster.restartGateway(0, async () => {
      await until(cy, "reconnecting");
      sends = Array.from({ length: 60 }, (_, i) => cy.send(`offline ${i}`));
    });
    const stored = await Promise.all(sends);
    assert.deepEqual(stored.map((m) => m.text), Array.from({ length: 60 }, (_, i) => `offline ${i}`));
    assert.deepEqual(refused, [], "nothing was refused");
  });

  test("a resume older than retention reports a gap and restarts from what is stored", async () => {
    const g = cluster.gateways[0];
    const writer = await connect({ url: g.url, room: "retention", user: "w" });
    for (let i = 1; i <= 400; i++) await writer.send(`r${i}`);
    const gaps = [];
    const resets = [];
    const late = new RoomsClient({ url: g.url, room: "retention", user: "late", since: 3, epoch: writer.epoch });
    clients.push(late);
    late.on("gap", (e) => gaps.push(e));
    late.on("reset", (m) => resets.push(m.length));
    await until(late, "connected");
    assert.equal(gaps.length, 1, "the gap is reported once");
    assert.equal(resets.length, 1);
    const shown = texts(late);
    assert.equal(shown.at(-1), "r400");
    assert.ok(shown.length >= 150 && shown.length < 400, `the retained tail: ${shown.length}`);
    const first = Number(shown[0].slice(1));
    assert.deepEqual(shown, Array.from({ length: 401 - first }, (_, i) => `r${first + i}`), "contiguous");
    assert.equal(late.seq, writer.seq);
    assert.equal(late.hasMore, true);
  });

  test("a dead connection (no frames) is detected and replaced", async () => {
    const g = cluster.gateways[1];
    const client = await connect({
      url: g.url, room: "frozen", user: "fay",
      pingAfter: 300, deadAfter: 1000, connectTimeout: 1000, minRetryDelay: 100, maxRetryDelay: 300,
    });
    g.proc.child.kill("SIGSTOP");
    try {
      await until(client, "reconnecting");
    } finally {
      g.proc.child.kill("SIGCONT");
    }
    await until(client, "connected");
    assert.equal((await client.send("alive again")).text, "alive again");
  });

  test("the owner roomhost killed mid-conversation: nothing lost, nothing twice", async () => {
    const room = "owner-dies";
    const ann = await connect({ url: cluster.gateways[0].url, room, user: "ann" });
    const bob = await connect({ url: cluster.gateways[1].url, room, user: "bob" });
    const sends = [];
    for (let i = 0; i < 10; i++) sends.push(ann.send(`a${i}`), bob.send(`b${i}`));
    await Promise.all(sends);
    const owner = await cluster.ownerOf(room);
    await cluster.roomhosts[owner].proc.kill("SIGKILL");
    for (let i = 10; i < 20; i++) sends.push(ann.send(`a${i}`), bob.send(`b${i}`));
    const echoes = await Promise.all(sends);
    const seqs = echoes.map((e) => e.seq).sort((a, b) => a - b);
    assert.deepEqual(seqs, Array.from({ length: 40 }, (_, i) => i + 1), "40 messages, seqs 1..40");
    await eventually("both hold all 40", () => ann.messages.length === 40 && bob.messages.length === 40);
    assert.deepEqual(ann.messages.map((m) => m.seq), seqs);
    assert.deepEqual(bob.messages.map((m) => m.seq), seqs);
    assert.deepEqual(texts(ann), texts(bob));
  });
});

describe("a crash that takes a message along", () => {
  // Its own cluster: the roomhost it kills stays in the member list.
  let lost;
  before(async () => {
    lost = await Cluster.start({ roomhosts: 2, gateways: 2 });
  });
  after(async () => {
    closeAll();
    await lost?.stop();
  });

  test("a message lost with a crashed roomhost is sent again, and stored once", async () => {
    const room = "lost-in-flight";
    const g = lost.gateways[0];
    const lou = await connect({ url: g.url, room, user: "lou", echoTimeout: 500 });
    await lou.send("first");
    const owner = lost.roomhosts[await lost.ownerOf(room)];
    // Frozen, the owner takes the message into its socket buffer and never
    // reads it; killed, it takes it along. The connection to the gateway stays.
    owner.proc.child.kill("SIGSTOP");
    const framesIn = async () => metric(await httpGet(g.http, "/metrics"), "rooms_gateway_frames_in_total");
    const before = await framesIn();
    const sending = lou.send("in flight");
    await eventually("the gateway read it", async () => (await framesIn()) > before);
    await owner.proc.kill("SIGKILL");
    const stored = await sending;
    assert.equal(stored.text, "in flight");
    assert.deepEqual(texts(lou), ["first", "in flight"]);
    assert.equal(stored.seq, 2);
    // What the room stored, as a newcomer sees it: each message once.
    const newcomer = await connect({ url: lost.gateways[1].url, room, user: "new" });
    assert.deepEqual(texts(newcomer), ["first", "in flight"]);
    assert.equal(newcomer.seq, 2, "stored once");
  });
});
