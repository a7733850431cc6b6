//! Real Durable Object classes — the workerd peer's `ChatRoom`, the Nuxflare
//! tutorial's `WebSockets`, Cloudflare's docs `WebSocketServer` — run
//! unmodified from `examples/`, event by event, and what they do is checked
//! as the room's owner would see it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rooms_classes::{
    Bundle, ClassError, ClassSpec, Effect, HttpRequest, Instance, Limits, Outcome, Payload, Pool,
    Restored, Stored,
};

fn example(file: &str, class: &str) -> Bundle {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples").join(file);
    let spec: ClassSpec = format!("*={}#{class}", path.display()).parse().unwrap();
    Bundle::load(&spec).unwrap_or_else(|e| panic!("{e}"))
}

fn inline(source: &str, class: &str) -> Bundle {
    let spec: ClassSpec = format!("*=inline.js#{class}").parse().unwrap();
    Bundle::from_source(spec, source.into())
}

fn start(bundle: &Bundle, storage: &[(String, String)], restored: &[Restored]) -> Instance {
    let stored = Stored { entries: storage.to_vec(), alarms: Vec::new() };
    start_with(bundle, &stored, restored)
}

fn start_with(bundle: &Bundle, stored: &Stored, restored: &[Restored]) -> Instance {
    Instance::start(bundle, "lobby", "{}", stored, restored, Limits::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

fn upgrade(url: &str, headers: &[(&str, &str)]) -> HttpRequest {
    let mut all = vec![("upgrade".to_owned(), "websocket".to_owned())];
    all.extend(headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    HttpRequest { url: url.into(), method: "GET".into(), headers: all, body: None }
}

/// An event that answered, with its effects.
fn answered<T: std::fmt::Debug>(outcome: Result<Outcome<T>, ClassError>) -> (T, Vec<Effect>) {
    let outcome = outcome.unwrap_or_else(|e| panic!("{e}"));
    (outcome.result.unwrap_or_else(|e| panic!("the class threw: {e}")), outcome.effects)
}

fn done(outcome: Result<Outcome<()>, ClassError>) -> Vec<Effect> {
    answered(outcome).1
}

fn text(s: &str) -> Payload {
    Payload::Text(s.into())
}

/// The texts sent, per socket, in order.
fn sent(effects: &[Effect]) -> Vec<(u64, serde_json::Value)> {
    let mut out = Vec::new();
    for effect in effects {
        if let Effect::Send { sockets, payload: Payload::Text(t) } = effect {
            let value = serde_json::from_str(t).unwrap_or(serde_json::Value::String(t.clone()));
            out.extend(sockets.iter().map(|socket| (*socket, value.clone())));
        }
    }
    out
}

/// The broadcast loop's sends are one effect per payload.
fn sends(effects: &[Effect]) -> usize {
    effects.iter().filter(|e| matches!(e, Effect::Send { .. })).count()
}

/// The storage a room would hold after these effects.
fn stored(effects: &[Effect]) -> Vec<(String, String)> {
    let mut map = std::collections::BTreeMap::new();
    for e in effects {
        match e {
            Effect::Put { key, value } => {
                map.insert(key.clone(), value.clone());
            }
            Effect::Delete { key } => {
                map.remove(key);
            }
            Effect::DeleteAll => map.clear(),
            _ => {}
        }
    }
    map.into_iter().collect()
}

#[test]
fn the_workerd_chat_room_names_users_and_broadcasts_through_storage() {
    let bundle = example("workerd-chat/worker.js", "ChatRoom");
    let room = start(&bundle, &[], &[]);
    for (socket, user) in [(1, "alice"), (2, "bob")] {
        let url = format!("http://gw/rooms/lobby/ws?user={user}");
        let (response, effects) = answered(room.fetch(socket, &upgrade(&url, &[])));
        assert_eq!(response.status, 101);
        assert!(effects.contains(&Effect::Accept { socket, tags: vec![], hibernatable: true }));
    }
    let effects = done(room.message(1, &text(r#"{"type":"name","name":"Ann"}"#)));
    assert!(effects.contains(&Effect::Put { key: "name:alice".into(), value: r#"j"Ann""#.into() }));
    let effects = done(room.message(2, &text(r#"{"type":"chat","text":"hi"}"#)));
    let to: Vec<u64> = sent(&effects).iter().map(|(s, _)| *s).collect();
    assert_eq!(to, [1, 2], "to every socket, the sender too");
    assert_eq!(sends(&effects), 1, "one payload, sent once for both");
    assert_eq!(sent(&effects)[0].1["userName"], "bob");
    let effects = done(room.message(1, &text(r#"{"type":"chat","text":"yo"}"#)));
    assert_eq!(sent(&effects)[1].1["userName"], "Ann");
}

#[test]
fn the_nuxflare_class_runs_unmodified_its_subprotocol_names_storage_and_publish() {
    let bundle = example("nuxflare/websockets.js", "WebSockets");
    let room = start(&bundle, &[], &[]);
    let credential =
        |who: &str| base64::engine::general_purpose::STANDARD_NO_PAD.encode(format!("lobby:{who}"));
    let alice = credential("alice");
    let protocols = format!("{alice}, chat");
    let (response, effects) =
        answered(room.fetch(1, &upgrade("http://gw/", &[("sec-websocket-protocol", &protocols)])));
    assert_eq!(response.status, 101);
    assert!(response.headers.contains(&("sec-websocket-protocol".into(), "chat".into())));
    assert!(effects.contains(&Effect::Accept {
        socket: 1,
        tags: vec!["lobby".into(), "alice".into()],
        hibernatable: true
    }));
    // Without the credential: the class's own 400, and no socket.
    let (response, effects) = answered(room.fetch(2, &upgrade("http://gw/", &[])));
    assert_eq!(
        (response.status, effects.iter().any(|e| matches!(e, Effect::Accept { .. }))),
        (400, false)
    );
    let bob = credential("bob");
    answered(room.fetch(3, &upgrade("http://gw/", &[("sec-websocket-protocol", &bob)])));

    let effects = done(room.message(1, &text(r#"{"type":"name","name":" Ann "}"#)));
    assert_eq!(stored(&effects), [("name:alice".to_owned(), r#"j"Ann""#.to_owned())]);
    assert_eq!(sent(&effects).len(), 2, "the rename goes to both");
    let storage = stored(&effects);
    let effects = done(room.message(3, &text(r#"{"type":"chat","text":"hello"}"#)));
    assert_eq!(sent(&effects)[0].1["userName"], "bob");
    // An operator publishes into the room.
    let (result, effects) =
        answered(room.invoke("publish", r#"["lobby", {"type":"system","text":"maintenance"}]"#));
    assert_eq!(result, "null");
    assert_eq!(sent(&effects).iter().filter(|(_, v)| v["text"] == "maintenance").count(), 2);
    // Not a public method: refused, not run.
    let refused = room.invoke("webSocketMessage", "[]").unwrap();
    assert!(refused.result.unwrap_err().contains("not a public method"));
    assert!(refused.effects.is_empty());
    // A bad frame: the class closes that socket (1003) itself.
    let effects = done(room.message(3, &text("not json")));
    assert!(effects.contains(&Effect::Close {
        socket: 3,
        code: 1003,
        reason: "Invalid message format".into()
    }));

    // The instance goes (hibernation, a move, a crash) and comes back with
    // the stored names and the sockets the gateways kept.
    let attachment = |user: &str| Some(format!(r#"{{"room":"lobby","userId":"{user}"}}"#));
    let restored = [
        Restored {
            socket: 1,
            tags: vec!["lobby".into(), "alice".into()],
            attachment: attachment("alice"),
        },
        Restored {
            socket: 3,
            tags: vec!["lobby".into(), "bob".into()],
            attachment: attachment("bob"),
        },
    ];
    drop(room);
    let again = start(&bundle, &storage, &restored);
    let effects = done(again.message(1, &text(r#"{"type":"chat","text":"back"}"#)));
    assert_eq!(sent(&effects).len(), 2);
    assert_eq!(sent(&effects)[0].1["userName"], "Ann", "the name survived the new instance");
    // Alice leaves: her name is deleted.
    let effects = done(again.close(1, 1000, "bye", true));
    assert!(effects.contains(&Effect::Delete { key: "name:alice".into() }));
}

#[test]
fn cloudflares_docs_example_runs_with_accept_and_event_listeners() {
    let bundle = example("cloudflare-docs/websocket-server.js", "WebSocketServer");
    let room = start(&bundle, &[], &[]);
    let (response, effects) = answered(room.fetch(1, &upgrade("http://gw/websocket", &[])));
    assert_eq!(response.status, 101);
    assert!(effects.contains(&Effect::Accept { socket: 1, tags: vec![], hibernatable: false }));
    let effects = done(room.message(1, &text("hi")));
    assert_eq!(effects, [Effect::Send { sockets: vec![1], payload: text("[Durable Object]: hi") }]);
    let plain = HttpRequest {
        url: "http://gw/getCurrentConnections".into(),
        method: "GET".into(),
        headers: vec![],
        body: None,
    };
    let (response, _) = answered(room.fetch(2, &plain));
    assert_eq!(response.status, 200);
    assert_eq!(
        response.body.as_deref(),
        Some("There is 1 WebSocket client connected to this Durable Object instance.")
    );
    let effects = done(room.close(1, 1001, "away", true));
    assert!(effects.is_empty(), "the socket is already closed: {effects:?}");
    let (response, _) =
        answered(room.fetch(3, &upgrade("http://gw/websocket", &[("upgrade", "nope")])));
    assert_eq!(response.status, 426, "a repeated Upgrade header reads 'websocket, nope'");
}

#[test]
fn storage_lists_ranges_and_refuses_what_is_too_large() {
    let source = r#"
        export class Store {
          constructor(ctx) { this.ctx = ctx; }
          async run() {
            const s = this.ctx.storage;
            await s.put({ "a:1": 1, "a:2": { x: [2] }, "b:1": "b", "a:3": new Uint8Array([1, 2, 3]) });
            const listed = await s.list({ prefix: "a:", reverse: true, limit: 2 });
            const got = await s.get(["a:1", "nope"]);
            const bytes = new Uint8Array(await s.get("a:3"));
            const deleted = await s.delete(["a:1", "nope"]);
            let tooBig = null;
            try { await s.put("big", "x".repeat(200 * 1024)); } catch (e) { tooBig = e.constructor.name; }
            const copy = await s.get("a:2"); copy.x.push(9);
            return { listed: [...listed.keys()], got: [...got.entries()], bytes: [...bytes], deleted,
                     tooBig, still: (await s.get("a:2")).x, after: [...(await s.list()).keys()] };
          }
        }"#;
    let room = start(&inline(source, "Store"), &[], &[]);
    let (result, effects) = answered(room.invoke("run", "[]"));
    let result: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["listed"], serde_json::json!(["a:3", "a:2"]));
    assert_eq!(result["got"], serde_json::json!([["a:1", 1]]));
    assert_eq!(result["bytes"], serde_json::json!([1, 2, 3]));
    assert_eq!(result["deleted"], 1);
    assert_eq!(result["tooBig"], "RangeError");
    assert_eq!(result["still"], serde_json::json!([2]), "a get returns a copy");
    assert_eq!(result["after"], serde_json::json!(["a:2", "a:3", "b:1"]));
    assert_eq!(
        effects.iter().filter(|e| e.is_write()).count(),
        5,
        "4 puts and 1 delete: {effects:?}"
    );
}

#[test]
fn a_failing_handler_reports_its_error_and_none_of_its_effects() {
    let source = r#"
        export class Bad {
          constructor(ctx) { this.ctx = ctx; }
          async fetch() {
            const [client, server] = Object.values(new WebSocketPair());
            this.ctx.acceptWebSocket(server);
            return new Response(null, { status: 101, webSocket: client });
          }
          async webSocketMessage(ws, m) {
            ws.send("before");
            await this.ctx.storage.put("k", 1);
            if (m === "throw") throw new Error("boom");
            if (m === "spin") while (true) {}
            if (m === "hang") await new Promise(() => {});
            if (m === "bomb") { const a = []; while (true) a.push("x".repeat(1024)); }
          }
        }"#;
    let limits = Limits { memory: 16 << 20, cpu: Duration::from_millis(100), ..Limits::default() };
    let (room, _) =
        Instance::start(&inline(source, "Bad"), "lobby", "{}", &Stored::default(), &[], limits)
            .unwrap();
    answered(room.fetch(1, &upgrade("http://gw/", &[])));
    // An exception fails the handler; what it did before stands, as on
    // Cloudflare.
    let thrown = room.message(1, &text("throw")).unwrap();
    assert!(thrown.result.unwrap_err().contains("boom"));
    assert_eq!(thrown.effects.len(), 2, "{:?}", thrown.effects);
    // Limits and stalls fail it with nothing of what it did: the instance
    // is to be discarded.
    assert_eq!(
        room.message(1, &text("spin")),
        Err(ClassError::CpuLimit(Duration::from_millis(100)))
    );
    assert_eq!(room.message(1, &text("hang")), Err(ClassError::Stalled));
    assert_eq!(room.message(1, &text("bomb")), Err(ClassError::OutOfMemory));
    // Nothing of the failed events leaked into the next one.
    let effects = done(room.message(1, &text("fine")));
    assert_eq!(effects.len(), 2, "{effects:?}");
}

#[test]
fn a_bad_bundle_is_an_error_naming_the_file_and_line() {
    let dir = std::env::temp_dir().join(format!("rooms-bundle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.js");
    std::fs::write(&path, "export class A {\n  fetch() {\n    return (;\n  }\n}\n").unwrap();
    let spec: ClassSpec = format!("*={}#A", path.display()).parse().unwrap();
    let error = Bundle::load(&spec).unwrap_err().to_string();
    assert!(error.contains("broken.js") && error.contains(":3"), "{error}");
    std::fs::write(&path, "export class A {}\n").unwrap();
    let spec: ClassSpec = format!("*={}#Missing", path.display()).parse().unwrap();
    let error = Bundle::load(&spec).unwrap_err().to_string();
    assert!(error.contains("Missing"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_plain_request_reaches_fetch_with_its_method_headers_and_body() {
    let source = r#"
        export class Api {
          async fetch(request) {
            const { n } = await request.json();
            const who = request.headers.get("x-who");
            return Response.json({ method: request.method, doubled: n * 2, who }, { status: 201 });
          }
        }"#;
    let room = start(&inline(source, "Api"), &[], &[]);
    let request = HttpRequest {
        url: "http://gw/rooms/lobby/api".into(),
        method: "POST".into(),
        headers: vec![("X-Who".into(), "ops".into())],
        body: Some(r#"{"n":21}"#.into()),
    };
    let (response, effects) = answered(room.fetch(1, &request));
    assert_eq!(response.status, 201);
    assert!(effects.is_empty(), "no socket: {effects:?}");
    assert!(response.headers.contains(&("content-type".into(), "application/json".into())));
    let body: serde_json::Value = serde_json::from_str(response.body.as_deref().unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"method": "POST", "doubled": 42, "who": "ops"}));
}

#[test]
fn alarms_and_named_timers_are_set_read_fired_once_and_deleted_as_they_fire() {
    let source = r#"
        export class Clock {
          constructor(ctx) { this.ctx = ctx; }
          async arm(at) {
            await this.ctx.storage.setAlarm(new Date(at));
            await this.ctx.storage.setTimer("tick", at + 5);
            await this.ctx.storage.setTimer("tock", at + 1);
            return [await this.ctx.storage.getAlarm(), [...await this.ctx.storage.listTimers()]];
          }
          async alarm(info) {
            await this.ctx.storage.put("fired", { retry: info.retryCount, next: await this.ctx.storage.getAlarm() });
            if (info.retryCount === 0) await this.ctx.storage.setAlarm(2000); // set again: it stands
          }
          async timer(name) { await this.ctx.storage.put("timer", name); }
          async state() { return [await this.ctx.storage.getAlarm(), await this.ctx.storage.getTimer("tick")]; }
        }"#;
    let bundle = inline(source, "Clock");
    let room = start(&bundle, &[], &[]);
    let (result, effects) = answered(room.invoke("arm", "[1000]"));
    assert_eq!(result, r#"[1000,[["tock",1001],["tick",1005]]]"#);
    let alarm = |name: &str, at| Effect::Alarm { name: name.into(), at };
    assert_eq!(
        effects,
        [alarm("", Some(1000)), alarm("tick", Some(1005)), alarm("tock", Some(1001))]
    );
    // Fired: deleted first, so what the handler sets again stands.
    let effects = done(room.alarm("", 0));
    assert_eq!(effects[0], alarm("", None));
    assert_eq!(stored(&effects), [("fired".to_owned(), r#"j{"retry":0,"next":null}"#.to_owned())]);
    assert_eq!(effects.last(), Some(&alarm("", Some(2000))));
    let effects = done(room.alarm("tick", 0));
    assert_eq!(effects[0], alarm("tick", None));
    assert_eq!(stored(&effects), [("timer".to_owned(), r#"j"tick""#.to_owned())]);
    let (state, _) = answered(room.invoke("state", "[]"));
    assert_eq!(state, "[2000,null]");
    // A new instance starts with the stored alarms; handlers are not methods.
    let stored =
        Stored { entries: Vec::new(), alarms: vec![(String::new(), 7), ("tick".into(), 9)] };
    let again = start_with(&bundle, &stored, &[]);
    assert_eq!(answered(again.invoke("state", "[]")).0, "[7,9]");
    for handler in ["alarm", "timer"] {
        let refused = again.invoke(handler, "[]").unwrap().result.unwrap_err();
        assert!(refused.contains(rooms_classes::NOT_A_METHOD), "{refused}");
    }
}

#[test]
fn the_runtime_gives_the_globals_classes_use() {
    let source = r#"
        export class Globals {
          async run() {
            const u = new URL("wss://Example.com:443/rooms/a%20b/ws?user=al+ice&x=1#top");
            const bytes = new TextEncoder().encode("héllo");
            return {
              host: u.host, path: u.pathname, user: u.searchParams.get("user"), hash: u.hash,
              utf8: bytes.length, back: new TextDecoder().decode(bytes),
              b64: btoa("room:user"), unb64: atob("cm9vbTp1c2Vy"),
              buf: Buffer.from("cm9vbTp1c2Vy", "base64").toString("utf-8"),
              uuid: /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(crypto.randomUUID()),
              random: crypto.getRandomValues(new Uint8Array(8)).length,
              date: typeof new Date().toISOString(), json: JSON.stringify({ a: [1] }),
            };
          }
        }"#;
    let room = start(&inline(source, "Globals"), &[], &[]);
    let (result, _) = answered(room.invoke("run", "[]"));
    let r: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(r["host"], "example.com");
    assert_eq!(r["path"], "/rooms/a%20b/ws");
    assert_eq!(r["user"], "al ice");
    assert_eq!(r["hash"], "#top");
    assert_eq!((r["utf8"].as_u64(), r["back"].as_str()), (Some(6), Some("héllo")));
    assert_eq!((r["b64"].as_str(), r["unb64"].as_str()), (Some("cm9vbTp1c2Vy"), Some("room:user")));
    assert_eq!(r["buf"], "room:user");
    assert_eq!((r["uuid"].as_bool(), r["random"].as_u64()), (Some(true), Some(8)));
    assert_eq!((r["date"].as_str(), r["json"].as_str()), (Some("string"), Some(r#"{"a":[1]}"#)));
}

#[tokio::test]
async fn instances_run_on_the_pools_threads_not_the_callers() {
    let pool = Pool::new(2, Limits::default()).unwrap();
    let bundle = Arc::new(example("workerd-chat/worker.js", "ChatRoom"));
    let (room, _) = pool
        .start(Arc::clone(&bundle), "lobby", "{}".into(), Stored::default(), vec![])
        .await
        .unwrap();
    let outcome = room.fetch(1, upgrade("http://gw/rooms/lobby/ws?user=al", &[])).await.unwrap();
    assert_eq!(outcome.result.unwrap().status, 101);
    let outcome = room.message(1, text(r#"{"type":"chat","text":"hi"}"#)).await.unwrap();
    assert_eq!(sent(&outcome.effects).len(), 1);
    assert!(room.memory().await.unwrap() > 0);
}
