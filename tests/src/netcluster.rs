//! [`NetCluster`]: Redis, roomhosts, gateways and the test's clients, each
//! in its own network namespace ([`crate::netns`]), with the faults a
//! nemesis injects: kills, graceful stops, freezes, additions, partitions
//! between any two of them, Redis restarts, a slow and lossy Redis, and
//! membership that gateways and roomhosts see at different times.
//!
//! Roomhosts reach Redis through a proxy the test runs inside Redis's
//! namespace, which can delay every chunk each way and hold some back
//! longer (what a lost packet costs in a retransmission): this kernel has no
//! `netem`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rooms_cluster::Ring;
use rooms_proto::RoomId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::eventually;
use crate::netns::{Net, connect_in, listen_in};
use crate::process::{Process, binary};

/// Host indexes in the network.
pub const REDIS: usize = 0;
/// Roomhost slots: the first three run from the start, the fourth is for
/// additions.
pub const ROOMHOSTS: [usize; 4] = [1, 2, 3, 4];
pub const GATEWAYS: [usize; 2] = [5, 6];
pub const CLIENTS: usize = 7;
const HOSTS: usize = 8;
const REDIS_PORT: u16 = 6379;
/// Where roomhosts reach Redis: the impairing proxy.
const PROXY_PORT: u16 = 6380;
const MEMBERSHIP_CHANGED: &str = "roomhost membership changed";

/// What the Redis proxy does to traffic, both ways.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impairment {
    /// Added to every chunk.
    pub delay: Duration,
    /// One chunk in this many (0: none) waits a further `delay`.
    pub hold_one_in: u32,
}

pub struct NetCluster {
    pub net: Net,
    pub lease_ttl: Duration,
    redis: Option<Process>,
    redis_dir: PathBuf,
    /// One per roomhost slot; None while that slot runs nothing.
    roomhosts: Vec<Option<Process>>,
    gateways: Vec<Process>,
    roomhost_members: PathBuf,
    gateway_members: PathBuf,
    impairment: Arc<Mutex<Impairment>>,
    proxy: JoinHandle<()>,
}

impl NetCluster {
    /// Redis and three roomhosts as members, two gateways; None (said why)
    /// where network namespaces cannot be made.
    pub async fn start(lease_ttl: Duration) -> Option<Self> {
        let net = Net::create(HOSTS)?;
        let dir = std::env::temp_dir().join(format!(
            "rooms-net-{}-{}",
            std::process::id(),
            crate::redis::free_port()
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let impairment = Arc::new(Mutex::new(Impairment::default()));
        let proxy = start_proxy(&net, Arc::clone(&impairment));
        let mut cluster = Self {
            lease_ttl,
            redis: None,
            redis_dir: dir.join("redis"),
            roomhosts: ROOMHOSTS.iter().map(|_| None).collect(),
            gateways: Vec::new(),
            roomhost_members: dir.join("members-roomhosts"),
            gateway_members: dir.join("members-gateways"),
            impairment,
            proxy,
            net,
        };
        std::fs::create_dir_all(&cluster.redis_dir).expect("redis dir");
        cluster.start_redis().await;
        let first: Vec<usize> = ROOMHOSTS[..3].to_vec();
        let members: Vec<String> = first.iter().map(|&h| cluster.member(h)).collect();
        write_atomically(&cluster.roomhost_members, &members);
        write_atomically(&cluster.gateway_members, &members);
        for host in first {
            cluster.spawn_roomhost(host).await;
        }
        for &host in &GATEWAYS {
            let mut cmd = cluster.net.command(host, &binary("gateway"));
            cmd.args(["--listen", &format!("{}:8080", cluster.net.hosts[host].ip)]);
            cmd.args(["--admin-listen", "127.0.0.1:0"]);
            cmd.arg(format!("--roomhosts=file:{}", cluster.gateway_members.display()));
            cmd.args(["--rate-limit=1000", "--rate-burst=1000"]);
            let process = Process::spawn(&format!("gateway-{host}"), cmd);
            process.wait_for_field("gateway serving", "listen").await;
            cluster.gateways.push(process);
        }
        Some(cluster)
    }

    /// A roomhost slot's member address.
    pub fn member(&self, host: usize) -> String {
        format!("{}:50051", self.net.hosts[host].ip)
    }

    /// The roomhost slots running now.
    pub fn running(&self) -> Vec<usize> {
        ROOMHOSTS
            .iter()
            .zip(&self.roomhosts)
            .filter(|(_, p)| p.as_ref().is_some_and(|p| p.try_status().is_none()))
            .map(|(h, _)| *h)
            .collect()
    }

    fn slot(host: usize) -> usize {
        ROOMHOSTS.iter().position(|h| *h == host).expect("a roomhost slot")
    }

    async fn start_redis(&mut self) {
        let mut cmd = self.net.command(REDIS, Path::new("redis-server"));
        cmd.args(["--bind", "0.0.0.0", "--port", &REDIS_PORT.to_string()]);
        cmd.args(["--protected-mode", "no", "--save", ""]);
        // Every write on disk before Redis answers it: a restart keeps all
        // that was acknowledged.
        cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        cmd.arg("--dir").arg(&self.redis_dir);
        self.redis = Some(Process::spawn("redis-server", cmd));
        let ns = self.net.hosts[REDIS].ns.clone();
        eventually("redis in its namespace", || {
            let ns = ns.clone();
            async move {
                let out = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &ns,
                        "redis-cli",
                        "-p",
                        &REDIS_PORT.to_string(),
                        "ping",
                    ])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout).contains("PONG").then_some(())
            }
        })
        .await;
    }

    /// Stops Redis (SIGTERM: it writes what it has), leaves it down for
    /// `down`, and starts it again with its data.
    pub async fn restart_redis(&mut self, down: Duration) {
        if let Some(mut redis) = self.redis.take() {
            assert!(redis.terminate(Duration::from_secs(10)).await, "redis stopped cleanly");
        }
        tokio::time::sleep(down).await;
        self.start_redis().await;
    }

    /// Sets what the Redis proxy does from now on.
    pub fn impair_redis(&self, impairment: Impairment) {
        *self.impairment.lock().unwrap() = impairment;
    }

    /// Starts a roomhost in `host`'s slot (it reads the roomhosts' list).
    pub async fn spawn_roomhost(&mut self, host: usize) {
        let mut cmd = self.net.command(host, &binary("roomhost"));
        cmd.args(["--listen", &self.member(host), "--metrics-listen", "127.0.0.1:0"]);
        let redis = format!("redis://{}:{PROXY_PORT}", self.net.hosts[REDIS].ip);
        cmd.args(["--redis", &redis]);
        cmd.arg(format!("--roomhosts=file:{}", self.roomhost_members.display()));
        cmd.arg(format!("--lease-ttl={}ms", self.lease_ttl.as_millis()));
        cmd.args(["--history-limit=100000", "--shutdown-grace=10s"]);
        let process = Process::spawn(&format!("roomhost-{host}"), cmd);
        process.wait_for_field("roomhost serving", "advertise").await;
        self.roomhosts[Self::slot(host)] = Some(process);
    }

    /// SIGKILL.
    pub fn kill(&mut self, host: usize) {
        if let Some(mut process) = self.roomhosts[Self::slot(host)].take() {
            process.kill();
        }
    }

    /// SIGTERM, waiting for a clean exit (its rooms are handed over).
    pub async fn terminate(&mut self, host: usize) {
        if let Some(mut process) = self.roomhosts[Self::slot(host)].take() {
            assert!(process.terminate(Duration::from_secs(15)).await, "roomhost-{host} stopped");
        }
    }

    /// SIGSTOP or SIGCONT to a roomhost.
    pub fn signal(&self, host: usize, signal: &str) {
        let process = self.roomhosts[Self::slot(host)].as_ref().expect("running");
        let pid = process.pid().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().expect("kill").success());
    }

    /// The member list: the roomhosts see it at once, the gateways `skew`
    /// later (as with DNS polled at different times).
    pub async fn set_members(&self, hosts: &[usize], skew: Duration) {
        let members: Vec<String> = hosts.iter().map(|&h| self.member(h)).collect();
        let roomhosts: Vec<&Process> = self.roomhosts.iter().flatten().collect();
        apply(&self.roomhost_members, &members, &roomhosts).await;
        tokio::time::sleep(skew).await;
        let gateways: Vec<&Process> = self.gateways.iter().collect();
        apply(&self.gateway_members, &members, &gateways).await;
    }

    /// The members the gateways see.
    pub fn members(&self) -> Vec<String> {
        std::fs::read_to_string(&self.gateway_members)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The host the ring gives `room` now.
    pub fn ring_owner(&self, room: &str) -> usize {
        let members = self.members();
        let ring = Ring::new(members.clone(), 0);
        let owner = ring.owner(&RoomId::parse(room).expect("room")).expect("owner").to_owned();
        *ROOMHOSTS.iter().find(|&&h| self.member(h) == owner).expect("a member")
    }

    pub fn gateway_addr(&self, host: usize) -> SocketAddr {
        format!("{}:8080", self.net.hosts[host].ip).parse().expect("address")
    }

    /// Joins `room` as `user` through gateway host `host`, from the
    /// clients' namespace.
    pub async fn join(&self, host: usize, room: &str, user: &str) -> Client {
        let url = format!("ws://{}/rooms/{room}/ws?user={user}", self.gateway_addr(host));
        eventually("a client to join through the namespace", || async {
            let stream = connect_in(&self.net.hosts[CLIENTS].ns, self.gateway_addr(host)).ok()?;
            Client::connect_over(&url, stream).await.ok()
        })
        .await
        .welcomed()
        .await
        .0
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        self.proxy.abort();
        // Stop Redis before removing the directory it writes to.
        drop(self.redis.take());
        if let Some(dir) = self.redis_dir.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn write_atomically(path: &Path, members: &[String]) {
    let next = path.with_extension("next");
    std::fs::write(&next, members.join("\n") + "\n").expect("write members");
    std::fs::rename(&next, path).expect("replace members");
}

/// Rewrites a membership file and waits until each process applied it.
async fn apply(path: &Path, members: &[String], processes: &[&Process]) {
    let count = |p: &Process| p.logs().iter().filter(|l| l.contains(MEMBERSHIP_CHANGED)).count();
    let before: Vec<usize> = processes.iter().map(|p| count(p)).collect();
    let same = std::fs::read_to_string(path).is_ok_and(|old| old == members.join("\n") + "\n");
    write_atomically(path, members);
    if same {
        return; // nothing changes, nothing to wait for
    }
    for (process, before) in processes.iter().zip(before) {
        eventually("membership to be applied", || async move {
            (count(process) > before || process.try_status().is_some()).then_some(())
        })
        .await;
    }
}

/// The Redis proxy: listens in Redis's namespace on [`PROXY_PORT`] and
/// forwards to Redis there, impaired as told.
fn start_proxy(net: &Net, impairment: Arc<Mutex<Impairment>>) -> JoinHandle<()> {
    let ns = net.hosts[REDIS].ns.clone();
    let ip = net.hosts[REDIS].ip.clone();
    let listener = listen_in(&ns, format!("{ip}:{PROXY_PORT}").parse().expect("address"))
        .expect("proxy listener");
    let target: SocketAddr = format!("{ip}:{REDIS_PORT}").parse().expect("address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let ns = ns.clone();
            let impairment = Arc::clone(&impairment);
            tokio::spawn(async move {
                let connect = tokio::task::spawn_blocking(move || connect_in(&ns, target));
                let Ok(Ok(server)) = connect.await else { return };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let up = tokio::spawn(pipe(cr, sw, Arc::clone(&impairment)));
                pipe(sr, cw, impairment).await;
                up.abort();
            });
        }
    })
}

/// Copies `from` to `to`, each chunk delivered `delay` after it was read
/// (twice that for one in `hold_one_in`), in order: a held chunk holds back
/// those behind it, as a retransmission does in TCP.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    impairment: Arc<Mutex<Impairment>>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(1024);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut chunks: u64 = 0;
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            chunks += 1;
            let Impairment { delay, hold_one_in } = *impairment.lock().unwrap();
            let held = hold_one_in != 0 && chunks.is_multiple_of(u64::from(hold_one_in));
            let due = tokio::time::Instant::now() + if held { delay * 2 } else { delay };
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    });
    while let Some((due, chunk)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if to.write_all(&chunk).await.is_err() {
            break;
        }
    }
    reader.abort();
}
