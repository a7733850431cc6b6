// Compiled (not run) by `npm run typecheck`: the declarations describe the
// library as an application uses it.
import { RoomsClient, RoomsError, type ChatEvent, type RoomEvent } from "../../rooms-client.js";

const client = new RoomsClient({ url: "https://rooms.example.com", room: "lobby", token: async () => "jwt", since: 41, epoch: "e" });
const off = client.on("chat", (m: ChatEvent) => console.log(m.seq, m.userName, m.text));
off();
client.on("state", ({ state, nextRetryAt }) => {
  if (state === "reconnecting" && nextRetryAt !== null) console.log(nextRetryAt - Date.now());
});
client.on("closed", ({ code, reason }) => console.log(code, reason));
client.on("presence", (users) => users.map((u) => u.name));
const sending = client.send("hi", { id: "c-1" });
const id: string = sending.id;
sending.then((m) => m.seq).catch((e: RoomsError) => e.code === "rate_limited");
client.loadMore(50).then((page: RoomEvent[]) => page.length);
const seq: number = client.seq;
console.log(id, seq, client.hasMore, client.messages.length);
client.close();
