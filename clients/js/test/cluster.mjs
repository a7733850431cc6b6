// A real rooms cluster for the client's tests: redis-server, roomhosts and
// gateways as processes on loopback (the workspace's binaries, built by
// `cargo build --workspace --bins`), each on a port of its own, all stopped
// by `stop()`. Readiness is polled with a deadline, never slept for.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN_DIR = process.env.ROOMS_BIN_DIR ?? path.resolve(HERE, "../../../target/debug");
export const DEADLINE_MS = 20_000;

/** Polls `check` until it returns something truthy, or throws after `ms`. */
export async function eventually(what, check, ms = DEADLINE_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

// Children die with the test process, also when it is interrupted.
const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => process.exit(130));
}

/** A child process whose output lines are kept (and shown if a test fails). */
export class Proc {
  constructor(name, command, args) {
    this.name = name;
    this.lines = [];
    this.child = spawn(command, args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, NO_COLOR: "1", RUST_LOG: process.env.ROOMS_TEST_LOG ?? "info" },
    });
    this.exited = new Promise((resolve) => this.child.on("exit", (code, signal) => resolve({ code, signal })));
    this.running = true;
    children.add(this.child);
    this.exited.then(() => {
      this.running = false;
      children.delete(this.child);
    });
    for (const stream of [this.child.stdout, this.child.stderr]) {
      let rest = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        const parts = (rest + chunk).split("\n");
        rest = parts.pop();
        this.lines.push(...parts);
      });
    }
  }

  /** The value of `key=` on the first log line containing `needle`. */
  async field(needle, key) {
    return eventually(`${this.name}: "${needle}"`, () => {
      if (!this.running) throw new Error(`${this.name} exited:\n${this.lines.slice(-20).join("\n")}`);
      const line = this.lines.find((l) => l.includes(needle));
      const token = line?.split(/\s+/).find((t) => t.startsWith(`${key}=`));
      return token?.slice(key.length + 1);
    });
  }

  kill(signal = "SIGKILL") {
    if (this.running) this.child.kill(signal);
    return this.exited;
  }
}

export function binary(name) {
  const file = path.join(BIN_DIR, name);
  if (!existsSync(file)) throw new Error(`${file} is missing: run cargo build --workspace --bins first`);
  return file;
}

async function redisPing(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.setTimeout(1000);
    socket.on("connect", () => socket.write("PING\r\n"));
    socket.on("data", (d) => {
      socket.destroy();
      resolve(d.toString().startsWith("+PONG"));
    });
    socket.on("error", () => resolve(false));
    socket.on("timeout", () => {
      socket.destroy();
      resolve(false);
    });
  });
}

export async function httpGet(addr, urlPath) {
  const res = await fetch(`http://${addr}${urlPath}`);
  return { status: res.status, body: await res.text() };
}

/**
 * Redis + `roomhosts` roomhosts + `gateways` gateways. Options:
 * `roomhostArgs`, `gatewayArgs` (extra flags).
 */
export class Cluster {
  static async start({ roomhosts = 2, gateways = 2, roomhostArgs = [], gatewayArgs = [] } = {}) {
    const cluster = new Cluster();
    cluster.roomhostArgs = ["--lease-ttl=2s", ...roomhostArgs];
    cluster.gatewayArgs = gatewayArgs;
    try {
      const redisPort = await freePort();
      cluster.redis = new Proc("redis", "redis-server", [
        "--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
      ]);
      cluster.redisUrl = `redis://127.0.0.1:${redisPort}`;
      await eventually("redis", () => redisPing(redisPort));
      for (let i = 0; i < roomhosts; i++) cluster.roomhosts.push(await cluster.spawnRoomhost());
      for (let i = 0; i < gateways; i++) cluster.gateways.push(await cluster.spawnGateway());
    } catch (e) {
      await cluster.stop();
      throw e;
    }
    return cluster;
  }

  constructor() {
    this.roomhosts = [];
    this.gateways = [];
  }

  async spawnRoomhost() {
    const proc = new Proc("roomhost", binary("roomhost"), [
      "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--redis", this.redisUrl,
      ...this.roomhostArgs,
    ]);
    return { proc, addr: await proc.field("roomhost serving", "advertise") };
  }

  membership() {
    return `static:${this.roomhosts.map((r) => r.addr).join(",")}`;
  }

  /** A gateway; `port` reuses a known HTTP port (a restart). */
  async spawnGateway(port = 0, extraArgs = []) {
    const proc = new Proc("gateway", binary("gateway"), [
      "--listen", `127.0.0.1:${port}`, "--admin-listen", "127.0.0.1:0", "--roomhosts", this.membership(),
      ...this.gatewayArgs, ...extraArgs,
    ]);
    const http = await proc.field("gateway serving", "listen");
    await eventually("gateway ready", async () => (await httpGet(http, "/readyz")).status === 200);
    return { proc, http, url: `http://${http}` };
  }

  /** Stops gateway `i` (SIGTERM: sockets close with 1012) and starts it again on the same port. */
  async restartGateway(i, beforeStart = async () => {}) {
    const old = this.gateways[i];
    await old.proc.kill("SIGTERM");
    await beforeStart();
    const port = Number(old.http.split(":").pop());
    this.gateways[i] = await this.spawnGateway(port);
    return this.gateways[i];
  }

  /** `GET /rooms/{room}` on the first gateway, retried while the room's
   * owner is unreachable (a killed roomhost is still a member). */
  async roomInfo(room) {
    return eventually(`info of ${room}`, async () => {
      const { status, body } = await httpGet(this.gateways[0].http, `/rooms/${room}`);
      return status === 200 && JSON.parse(body);
    });
  }

  /** The index of the roomhost that owns `room` now. */
  async ownerOf(room) {
    const { owner } = await this.roomInfo(room);
    const i = this.roomhosts.findIndex((r) => r.addr === owner);
    if (i < 0) throw new Error(`owner ${owner} unknown`);
    return i;
  }

  /** Every process's last log lines, for a failure report. */
  logs() {
    return [this.redis, ...this.roomhosts.map((r) => r.proc), ...this.gateways.map((g) => g.proc)]
      .filter(Boolean)
      .map((p) => `--- ${p.name}\n${p.lines.slice(-15).join("\n")}`)
      .join("\n");
  }

  async stop() {
    const procs = [...this.gateways.map((g) => g.proc), ...this.roomhosts.map((r) => r.proc), this.redis];
    await Promise.all(procs.filter(Boolean).map((p) => p.kill("SIGKILL")));
  }
}
