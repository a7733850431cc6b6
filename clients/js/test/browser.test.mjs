// The demo page (served by the gateway, built on rooms-client.js) in a real
// headless Chromium, against a real cluster: what a person would see.
//
// Needs Debian's chromium (CHROMIUM overrides /usr/bin/chromium) and
// playwright-core (npm ci); scripts/test.sh installs both. With
// UPDATE_SCREENSHOT=1 the conversation's screenshot replaces docs/demo.png.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

import { RoomsClient } from "../rooms-client.js";
import { Cluster, eventually } from "./cluster.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const BROWSER_DEADLINE = 20_000;

let browser;
let cluster;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync",
    ],
  });
  // Unthrottled: one test writes a long history quickly.
  cluster = await Cluster.start({ roomhosts: 2, gateways: 2, gatewayArgs: ["--rate-limit=1000", "--rate-burst=1000"] });
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
});

/** A new browser page on `gateway`, joined to `room`; waits until connected. */
async function open(gateway, room, user, name) {
  const context = await browser.newContext({ viewport: { width: 960, height: 560 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${user}] page error: ${e.message}`));
  const query = new URLSearchParams({ room, user, name });
  await page.goto(`${gateway.url}/?${query}`);
  await status(page, /^connected/);
  return page;
}

function status(page, pattern) {
  return eventually(`status ${pattern}`, async () => pattern.test(await page.textContent("#status")), BROWSER_DEADLINE);
}

/** Types and sends a message; unless `inFlight`, waits for its delivery tick. */
async function say(page, text, { inFlight = false } = {}) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
  if (!inFlight) await delivered(page, text);
}

/** Waits until the page shows its own `text` with a delivery tick. */
function delivered(page, text) {
  return eventually(`"${text}" delivered`, () =>
    page.$$eval("#log li.delivered .text", (els, t) => els.some((e) => e.textContent === t), text),
  BROWSER_DEADLINE);
}

/** The delivered messages a page shows, in order. */
function shown(page) {
  return page.$$eval("#log li.msg:not(.pending):not(.failed) .text", (els) => els.map((e) => e.textContent));
}

async function showsExactly(page, expected) {
  await eventually(
    `${expected.length} messages shown`,
    async () => (await shown(page)).length >= expected.length,
    BROWSER_DEADLINE,
  );
  assert.deepEqual(await shown(page), expected);
}

describe("the demo page in Chromium", () => {
  test("two pages on different gateways chat and see each other's presence", async () => {
    const ann = await open(cluster.gateways[0], "demo", "ann", "Ann");
    // Bob uses the room and name picker.
    const bob = await (await browser.newContext({ viewport: { width: 960, height: 560 } })).newPage();
    await bob.goto(`${cluster.gateways[1].url}/?user=bob`);
    await status(bob, /^connected to lobby/);
    await bob.fill("#room", "demo");
    await bob.fill("#name", "Bob");
    await bob.click("#join");
    await status(bob, /^connected to demo/);
    await eventually("presence on both pages", async () => {
      const a = await ann.$$eval("#users li", (els) => els.map((e) => e.textContent));
      const b = await bob.$$eval("#users li", (els) => els.map((e) => e.textContent));
      return a.includes("Bob") && b.includes("Ann") && a.includes("Ann (you)");
    }, BROWSER_DEADLINE);

    await say(ann, "Hi Bob! <b>not bold</b>");
    await bob.type("#text", "Hey");
    await eventually("typing indicator", async () => /Bob is typing/.test(await ann.textContent("#typing")), BROWSER_DEADLINE);
    await bob.press("#text", "Enter");
    await delivered(bob, "Hey");
    await say(ann, "How is the release going?");
    await say(bob, "Shipping today, tests are green");
    const expected = ["Hi Bob! <b>not bold</b>", "Hey", "How is the release going?", "Shipping today, tests are green"];
    await showsExactly(ann, expected);
    await showsExactly(bob, expected);
    // User text stays text.
    assert.equal(await bob.$$eval("#log b", (els) => els.length), 0);
    // Own messages carry a delivery tick.
    const ticks = await ann.$$eval("#log li.delivered .tick", (els) => els.map((e) => e.textContent));
    assert.deepEqual(ticks, ["✓", "✓"]);

    await eventually("typing shown again", async () => {
      await bob.type("#text", "."); // keystrokes signal at most once per 2 s
      return /Bob is typing/.test(await ann.textContent("#typing"));
    }, BROWSER_DEADLINE);
    const shot = process.env.UPDATE_SCREENSHOT === "1"
      ? path.join(ROOT, "docs/demo.png")
      : path.join(ROOT, "target/browser/demo.png");
    mkdirSync(path.dirname(shot), { recursive: true });
    await ann.screenshot({ path: shot });
    await ann.context().close();
    await bob.context().close();
  });

  test("the owner roomhost is killed mid-conversation: no message lost, none shown twice", async () => {
    const room = "demo-failover";
    const ann = await open(cluster.gateways[0], room, "ann", "Ann");
    const bob = await open(cluster.gateways[1], room, "bob", "Bob");
    const expected = [];
    for (let i = 0; i < 5; i++) {
      await say(ann, `ann ${i}`);
      await say(bob, `bob ${i}`);
      expected.push(`ann ${i}`, `bob ${i}`);
    }
    await showsExactly(ann, expected);
    const owner = await cluster.ownerOf(room);
    await cluster.roomhosts[owner].proc.kill("SIGKILL");
    // Sent while the room has no owner: in flight until a new one takes it.
    for (let i = 5; i < 10; i++) {
      await say(ann, `ann ${i}`, { inFlight: true });
      await say(bob, `bob ${i}`, { inFlight: true });
    }
    // Each page's own messages keep their order; the room's total order is
    // whatever the new owner stored, and both pages show the same one.
    await eventually("all 20 on both pages", async () => (await shown(ann)).length >= 20 && (await shown(bob)).length >= 20, BROWSER_DEADLINE);
    const a = await shown(ann);
    const b = await shown(bob);
    assert.deepEqual(a, b, "both pages show the same history");
    assert.equal(new Set(a).size, 20, `no duplicates: ${a}`);
    for (let i = 0; i < 10; i++) assert.ok(a.includes(`ann ${i}`) && a.includes(`bob ${i}`), `ann ${i} / bob ${i}`);
    assert.equal(await ann.$$eval("#log li.failed", (els) => els.length), 0, "no send failed");
    const seqs = await ann.$$eval("#log li.msg", (els) => els.map((e) => Number(e.dataset.seq)));
    assert.deepEqual(seqs, seqs.slice().sort((x, y) => x - y), "in seq order");
    await ann.context().close();
    await bob.context().close();
  });

  test("history pages back with the Load older button", async () => {
    const room = "demo-paging";
    const writer = new RoomsClient({ url: cluster.gateways[1].url, room, user: "wes" });
    try {
      for (let i = 1; i <= 150; i++) await writer.send(`line ${i}`);
    } finally {
      writer.close();
    }
    const page = await open(cluster.gateways[0], room, "pam", "Pam");
    const all = Array.from({ length: 150 }, (_, i) => `line ${i + 1}`);
    await showsExactly(page, all.slice(50));
    assert.equal(await page.isVisible("#older"), true, "older messages are offered");
    await page.click("#older");
    await eventually("the older page", async () => (await shown(page)).length === 150, BROWSER_DEADLINE);
    assert.deepEqual(await shown(page), all);
    await eventually("nothing older left", async () => !(await page.isVisible("#older")), BROWSER_DEADLINE);
    await page.context().close();
  });

  test("one page's gateway restarts: it shows reconnecting, then exactly what it missed", async () => {
    const room = "demo-restart";
    const ann = await open(cluster.gateways[0], room, "ann", "Ann");
    const bob = await open(cluster.gateways[1], room, "bob", "Bob");
    await say(ann, "before the restart");
    await showsExactly(bob, ["before the restart"]);

    await cluster.restartGateway(0, async () => {
      await status(ann, /^reconnecting/);
      for (let i = 1; i <= 3; i++) await say(bob, `missed ${i}`);
      await showsExactly(bob, ["before the restart", "missed 1", "missed 2", "missed 3"]);
    });
    await status(ann, /^connected/);
    await showsExactly(ann, ["before the restart", "missed 1", "missed 2", "missed 3"]);
    await say(ann, "back");
    await showsExactly(bob, ["before the restart", "missed 1", "missed 2", "missed 3", "back"]);
    await ann.context().close();
    await bob.context().close();
  });
});
