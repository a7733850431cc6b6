// The Nuxflare "durable-websockets" tutorial's Durable Object class, as the
// tutorial writes it, with its TypeScript type annotations removed (rooms
// runs JavaScript bundles: `wrangler build` / esbuild output is the same).
// rooms runs it with: --room-class '*=examples/nuxflare/websockets.js#WebSockets'
import { DurableObject } from "cloudflare:workers";

// NOTE: in a real-world scenario, the token should instead be JWT or similar
// from which we could extract and validate room/user/topic and such
// or, the info can even be stored inside a KV
function extractRoomAndUser(request) {
  const protocolHeader = request.headers.get("sec-websocket-protocol");
  if (!protocolHeader) {
    throw new Error("Missing sec-websocket-protocol header");
  }
  const [encoded] = protocolHeader.split(",").map((x) => x.trim());
  if (!encoded) {
    throw new Error("Invalid sec-websocket-protocol format");
  }
  const decoded = Buffer.from(encoded, "base64").toString("utf-8");
  const [room, userId] = decoded.split(":");
  if (!room || !userId) {
    throw new Error("Room and User ID must be separated by a colon");
  }
  return { room, userId };
}

export class WebSockets extends DurableObject {
  async fetch(request) {
    if (request.headers.get("upgrade") === "websocket") {
      try {
        const { room, userId } = extractRoomAndUser(request);
        const protocols =
          request.headers
            .get("sec-websocket-protocol")
            ?.split(",")
            .map((x) => x.trim()) || [];
        protocols.shift(); // remove the room:userId from protocols
        const webSocketPair = new WebSocketPair();
        const [client, server] = Object.values(webSocketPair);
        if (server) {
          server.serializeAttachment({
            room,
            userId,
          });
          this.ctx.acceptWebSocket(server, [room, userId]);
        }
        const res = new Response(null, { status: 101, webSocket: client });
        if (protocols.length > 0) {
          res.headers.set("sec-websocket-protocol", protocols[0]);
        }
        return res;
      } catch (err) {
        console.error("Error in websocket fetch:", err);
        return new Response(null, { status: 400 });
      }
    }
    return new Response(null);
  }

  async webSocketMessage(ws, message) {
    const { room, userId } = ws.deserializeAttachment();
    // Validate message type and size
    // [...]
    try {
      const parsed = JSON.parse(message);
      if (parsed.type === "chat") {
        if (
          typeof parsed.text !== "string" ||
          parsed.text.trim().length === 0
        ) {
          throw new Error("Invalid chat message");
        }
        const userName =
          (await this.ctx.storage.get(`name:${userId}`)) || userId;
        this.publish(room, {
          type: "chat",
          userId,
          userName,
          text: parsed.text,
          time: new Date().toISOString(),
        });
      } else if (parsed.type === "name") {
        if (
          typeof parsed.name !== "string" ||
          parsed.name.trim().length === 0
        ) {
          throw new Error("Invalid name");
        }
        await this.ctx.storage.put(`name:${userId}`, parsed.name.trim());
        this.publish(room, {
          type: "name",
          userId,
          name: parsed.name.trim(),
          time: new Date().toISOString(),
        });
      } else {
        throw new Error("Unknown message type");
      }
    } catch (err) {
      console.error("Message processing error:", err);
      ws.close(1003, "Invalid message format");
    }
  }

  async webSocketClose(ws, code, reason, _wasClean) {
    const { userId } = ws.deserializeAttachment();
    await this.ctx.storage.delete(`name:${userId}`);
    ws.close(code, reason);
  }

  async publish(room, data) {
    try {
      const websockets = this.ctx.getWebSockets();
      if (websockets.length < 1) {
        return;
      }
      for (const ws of websockets) {
        const state = ws.deserializeAttachment() || {};
        if (state.room === room) {
          ws.send(JSON.stringify(data));
        }
      }
      return null;
    } catch (err) {
      console.error("publish err", err);
    }
  }
}
