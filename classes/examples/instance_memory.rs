//! Where a class room's memory goes: starts N instances of a class (default
//! the workerd peer's `ChatRoom`), each with two sockets and ten messages,
//! and prints the process's resident memory and the JavaScript heap per
//! instance.
//!
//! `cargo run --release -p rooms-classes --example instance_memory -- [N] [FILE#Class]`

use std::path::PathBuf;

use rooms_classes::{Bundle, ClassSpec, HttpRequest, Instance, Limits, Payload, Stored};

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().map_or(Ok(200), |n| n.parse())?;
    let class = args.next().unwrap_or_else(|| {
        let file =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/workerd-chat/worker.js");
        format!("{}#ChatRoom", file.display())
    });
    let spec: ClassSpec = format!("*={class}").parse()?;
    let bundle = Bundle::load(&spec)?;
    // One instance first, so what every process pays once is not counted.
    let (warm, _) =
        Instance::start(&bundle, "warm", "{}", &Stored::default(), &[], Limits::default())?;
    drop(warm);

    let before = resident_bytes();
    let mut instances = Vec::with_capacity(count);
    for i in 0..count {
        let room = format!("room-{i}");
        let (instance, _) =
            Instance::start(&bundle, &room, "{}", &Stored::default(), &[], Limits::default())?;
        for (socket, user) in [(1, "alice"), (2, "bob")] {
            let request = HttpRequest {
                url: format!("http://gw/rooms/{room}/ws?user={user}"),
                method: "GET".into(),
                headers: vec![("upgrade".into(), "websocket".into())],
                body: None,
            };
            instance.fetch(socket, &request)?;
        }
        for n in 0..10 {
            let text = format!(r#"{{"type":"chat","text":"message {n}"}}"#);
            instance.message(1 + n % 2, &Payload::Text(text))?;
        }
        instances.push(instance);
    }
    let after = resident_bytes();
    let heap: u64 = instances.iter().map(|i| i.memory_used() as u64).sum();
    let per = |bytes: u64| bytes as f64 / count as f64 / 1024.0;
    println!("instances: {count}");
    println!("resident per instance: {:.1} KiB", per(after.saturating_sub(before)));
    println!("JavaScript heap per instance: {:.1} KiB", per(heap));
    Ok(())
}
