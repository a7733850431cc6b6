//! A private `redis-server` on a free loopback port, with an append-only
//! file so that a restart keeps the data (as a production Redis would); and
//! a local Redis Cluster of such servers.

use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::Process;

pub struct Redis {
    pub port: u16,
    process: Process,
    dir: std::path::PathBuf,
    extra: Vec<String>,
}

/// A port that was free a moment ago (the OS picked it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Sends one inline command and returns the first reply line.
pub async fn command(port: u16, cmd: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(format!("{cmd}\r\n").as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned())
}

fn spawn(port: u16, dir: &std::path::Path, extra: &[String]) -> Process {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .arg("--dir")
        .arg(dir)
        .args(extra);
    Process::spawn("redis-server", cmd)
}

/// Waits until Redis answers PING; false if it exited or never answered.
async fn answers(port: u16, process: &Process) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if command(port, "PING").await.as_deref() == Some("+PONG") {
            return true;
        }
        if process.try_status().is_some() || tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Redis {
    pub async fn start() -> Self {
        Self::start_with(free_port, &[]).await
    }

    /// A server on a port from `port`, with extra `redis-server` arguments.
    async fn start_with(port: fn() -> u16, extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        for _ in 0..5 {
            let port = port();
            let dir =
                std::env::temp_dir().join(format!("rooms-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("redis dir");
            let process = spawn(port, &dir, &extra);
            if answers(port, &process).await {
                return Self { port, process, dir, extra };
            }
            // The port raced with another process: try another.
        }
        panic!("could not start redis-server (is it installed? the test script installs it)");
    }

    /// Stops Redis (SIGTERM: it writes its data out), keeps it down for
    /// `down`, and starts it again on the same port with the same data.
    pub async fn restart(&mut self, down: Duration) {
        assert!(self.process.terminate(Duration::from_secs(10)).await, "redis stopped cleanly");
        tokio::time::sleep(down).await;
        self.process = spawn(self.port, &self.dir, &self.extra);
        assert!(answers(self.port, &self.process).await, "redis came back");
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn command(&self, cmd: &str) -> Option<String> {
        command(self.port, cmd).await
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A local Redis Cluster: one master per server, no replicas, every slot
/// assigned. Stopped on drop.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

/// A free port whose cluster bus port (+10000) is valid and free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    pub async fn start(masters: usize) -> Self {
        let mut nodes = Vec::new();
        for _ in 0..masters {
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ];
            nodes.push(Redis::start_with(free_cluster_port, &args).await);
        }
        let addresses: Vec<String> =
            nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (installed with redis-server)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed:\n{}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = Self { nodes };
        crate::eventually("the Redis Cluster to be ok on every node", || async {
            for node in &cluster.nodes {
                let info = node.command("CLUSTER INFO").await.unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    return None;
                }
            }
            Some(())
        })
        .await;
        cluster
    }

    /// The seed-node URL roomhosts take.
    pub fn url(&self) -> String {
        let hosts: Vec<String> =
            self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis-cluster://{}", hosts.join(","))
    }

    /// How many keys each node holds.
    pub async fn keys_per_node(&self) -> Vec<u64> {
        let mut counts = Vec::new();
        for node in &self.nodes {
            let reply = node.command("DBSIZE").await.unwrap_or_default();
            counts.push(reply.trim_start_matches(':').parse().unwrap_or(0));
        }
        counts
    }
}
