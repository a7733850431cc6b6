// Cloudflare's docs example "Build a WebSocket server" (Durable Objects), as
// published: a Worker that forwards to one Durable Object, and the class.
// rooms runs the class (the Worker above it is not needed) with:
//   --room-class 'foo=examples/cloudflare-docs/websocket-server.js#WebSocketServer'
// and its endpoints are under the room: ws://GATEWAY/rooms/foo/websocket,
// http://GATEWAY/rooms/foo/getCurrentConnections.
// Worker
export default {
  async fetch(request, env) {
    // This example will always refer to the same Durable Object instance,
    // since it hardcodes the name "foo".
    let id = env.WEBSOCKET_SERVER.idFromName("foo");
    let stub = env.WEBSOCKET_SERVER.get(id);
    // Forward the request to the Durable Object.
    return await stub.fetch(request);
  }
};
// Durable Object
export class WebSocketServer {
  constructor(state, env) {
    this.state = state;
    // This is reset whenever the constructor runs because
    // regular WebSockets do not survive Durable Object resets.
    // WebSockets accepted via the Hibernation API can survive
    // a certain type of eviction, but this example will not cover that here.
    this.currentlyConnectedWebSockets = 0;
  }
  // Handle HTTP requests from clients.
  async fetch(request) {
    if (request.url.endsWith("/websocket")) {
      // Expect to receive a WebSocket Upgrade request.
      // If there is one, accept the request and return a WebSocket Response.
      const upgradeHeader = request.headers.get('Upgrade');
      if (!upgradeHeader || upgradeHeader !== 'websocket') {
        return new Response('Durable Object expected Upgrade: websocket', { status: 426 });
      }
      // Creates two ends of a WebSocket connection.
      const webSocketPair = new WebSocketPair();
      const [client, server] = Object.values(webSocketPair);
      // Calling `accept()` informs the runtime that this WebSocket is to begin terminating
      // request within the Durable Object. It has the effect of "accepting" the connection,
      // and allowing the WebSocket to send and receive messages.
      server.accept();
      this.currentlyConnectedWebSockets += 1;
      // Upon receiving a message from the client, the server replies with the same message,
      // but will prefix the message with "[Durable Object]: ".
      server.addEventListener('message', event => {
        server.send(`[Durable Object]: ${event.data}`);
      });
      // If the client closes the connection, the runtime will also close the connection.
      server.addEventListener('close', cls => {
        this.currentlyConnectedWebSockets -= 1;
        server.close(cls.code, "Durable Object is closing WebSocket");
      });
      return new Response(null, {
        status: 101,
        webSocket: client,
      });
    } else if (request.url.endsWith("/getCurrentConnections")) {
      if (this.currentlyConnectedWebSockets == 1) {
        return new Response(`There is ${this.currentlyConnectedWebSockets} WebSocket client connected to this Durable Object instance.`);
      }
      return new Response(`There are ${this.currentlyConnectedWebSockets} WebSocket clients connected to this Durable Object instance.`);
    }
    // Unknown path, reply with usage info.
    return new Response(`
This Durable Object supports the following endpoints:
/websocket
- Creates a WebSocket connection. Any messages sent to it are echoed with a prefix.
/getCurrentConnections
- A regular HTTP GET endpoint that returns the number of currently connected WebSocket clients.
`)
  }
}
