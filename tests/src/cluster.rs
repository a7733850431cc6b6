//! [`TestCluster`]: a builder for Redis + roomhosts + gateways as real
//! processes on loopback.

use std::process::Command;
use std::time::Duration;

use crate::client::{self, Client};
use crate::eventually;

fn count(process: &Process, needle: &str) -> usize {
    process.logs().iter().filter(|l| l.contains(needle)).count()
}
use crate::process::{Process, binary};
use crate::redis::{Redis, RedisCluster};

pub struct Roomhost {
    pub process: Process,
    /// The advertise (= listen) address, `127.0.0.1:PORT`.
    pub addr: String,
    /// Its `/metrics` and health address.
    pub metrics: String,
}

pub struct Gateway {
    pub process: Process,
    pub http: String,
    pub admin: String,
}

impl Gateway {
    pub fn ws_url(&self, room: &str, query: &str) -> String {
        if query.is_empty() {
            format!("ws://{}/rooms/{room}/ws", self.http)
        } else {
            format!("ws://{}/rooms/{room}/ws?{query}", self.http)
        }
    }

    /// Connects `user` to `room` and reads `welcome` + `history`.
    pub async fn join(&self, room: &str, user: &str) -> Client {
        Client::join(&self.ws_url(room, &format!("user={user}"))).await.0
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }
}

#[derive(Default, Clone)]
pub struct TestCluster {
    roomhosts: usize,
    gateways: usize,
    no_redis: bool,
    /// A 3-master Redis Cluster instead of one Redis.
    redis_cluster: bool,
    /// Membership through a file every process watches (`file:`), which
    /// tests rewrite to add and remove roomhosts.
    file_membership: bool,
    roomhost_args: Vec<String>,
    gateway_args: Vec<String>,
    /// Environment of every roomhost and gateway.
    envs: Vec<(String, String)>,
}

impl TestCluster {
    /// One Redis, `roomhosts` roomhosts and `gateways` gateways.
    pub fn new(roomhosts: usize, gateways: usize) -> Self {
        Self { roomhosts, gateways, ..Self::default() }
    }

    pub fn roomhost_arg(mut self, arg: &str) -> Self {
        self.roomhost_args.push(arg.to_owned());
        self
    }

    pub fn gateway_arg(mut self, arg: &str) -> Self {
        self.gateway_args.push(arg.to_owned());
        self
    }

    /// Sets an environment variable for every roomhost and gateway.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Lifts the per-connection rate limit, for tests whose clients send
    /// faster than a person would.
    pub fn unthrottled(self) -> Self {
        self.gateway_arg("--rate-limit=1000").gateway_arg("--rate-burst=1000")
    }

    /// Membership through a watched file, which [`Cluster::set_members`] rewrites.
    pub fn file_membership(mut self) -> Self {
        self.file_membership = true;
        self
    }

    /// Roomhosts store into a local 3-master Redis Cluster.
    pub fn redis_cluster(mut self) -> Self {
        self.redis_cluster = true;
        self
    }

    /// Only gateways with an embedded roomhost (no Redis).
    pub fn embedded(gateways: usize) -> Self {
        Self { gateways, no_redis: true, ..Self::default() }
    }

    pub async fn start(self) -> Cluster {
        let redis_cluster =
            if self.redis_cluster { Some(RedisCluster::start(3).await) } else { None };
        let redis =
            if self.no_redis || self.redis_cluster { None } else { Some(Redis::start().await) };
        let members_file = self.file_membership.then(|| {
            let dir = std::env::temp_dir().join(format!(
                "rooms-members-{}-{}",
                std::process::id(),
                crate::redis::free_port()
            ));
            std::fs::create_dir_all(&dir).expect("members dir");
            let path = dir.join("members");
            std::fs::write(&path, "").expect("members file");
            path
        });
        let mut cluster = Cluster {
            redis,
            redis_cluster,
            roomhosts: Vec::new(),
            gateways: Vec::new(),
            spec: self.clone(),
            members_file,
        };
        for _ in 0..self.roomhosts {
            let roomhost = cluster.spawn_roomhost().await;
            cluster.roomhosts.push(roomhost);
        }
        if cluster.members_file.is_some() {
            let members: Vec<String> = cluster.roomhosts.iter().map(|r| r.addr.clone()).collect();
            cluster.set_members(&members).await;
        }
        for _ in 0..self.gateways {
            let gateway = cluster.spawn_gateway().await;
            cluster.gateways.push(gateway);
        }
        cluster
    }
}

pub struct Cluster {
    pub redis: Option<Redis>,
    pub redis_cluster: Option<RedisCluster>,
    pub roomhosts: Vec<Roomhost>,
    pub gateways: Vec<Gateway>,
    spec: TestCluster,
    members_file: Option<std::path::PathBuf>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(dir) = self.members_file.as_ref().and_then(|path| path.parent()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

const MEMBERSHIP_CHANGED: &str = "roomhost membership changed";

impl Cluster {
    pub fn redis_url(&self) -> Option<String> {
        self.redis
            .as_ref()
            .map(Redis::url)
            .or_else(|| self.redis_cluster.as_ref().map(RedisCluster::url))
    }

    pub fn membership(&self) -> String {
        if let Some(path) = &self.members_file {
            return format!("file:{}", path.display());
        }
        let addrs: Vec<&str> = self.roomhosts.iter().map(|r| r.addr.as_str()).collect();
        format!("static:{}", addrs.join(","))
    }

    /// Rewrites the membership file and waits until every running roomhost
    /// and gateway has applied it.
    pub async fn set_members(&self, members: &[String]) {
        let path = self.members_file.as_ref().expect("file membership");
        let processes: Vec<&Process> = self
            .roomhosts
            .iter()
            .map(|r| &r.process)
            .chain(self.gateways.iter().map(|g| &g.process))
            .collect();
        let before: Vec<usize> = processes.iter().map(|p| count(p, MEMBERSHIP_CHANGED)).collect();
        // Replace the file atomically, as Kubernetes does with a ConfigMap, so
        // a watcher never reads it half written.
        let next = path.with_extension("next");
        std::fs::write(&next, members.join("\n") + "\n").expect("write members");
        std::fs::rename(&next, path).expect("replace members");
        for (process, before) in processes.into_iter().zip(before) {
            eventually("membership to be applied", || async move {
                (count(process, MEMBERSHIP_CHANGED) > before || process.try_status().is_some())
                    .then_some(())
            })
            .await;
        }
    }

    /// `GET /rooms/{room}` on the first gateway (null if it did not answer).
    pub async fn room_info(&self, room: &str) -> serde_json::Value {
        let (_, body) = client::get(&self.gateways[0].http, &format!("/rooms/{room}")).await;
        serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap_or("{}")).unwrap_or_default()
    }

    /// Waits until the room's owner counts `connections` in it.
    pub async fn await_connections(&self, room: &str, connections: usize) {
        eventually(&format!("{room} to count {connections} connections"), || async {
            (self.room_info(room).await["connections"] == serde_json::json!(connections))
                .then_some(())
        })
        .await;
    }

    /// The roomhost that owns `room` now, per `GET /rooms/{room}`.
    pub async fn owner_of(&self, room: &str) -> usize {
        let json = self.room_info(room).await;
        let owner = json["owner"].as_str().unwrap_or_default().to_owned();
        self.roomhosts
            .iter()
            .position(|r| r.addr == owner)
            .unwrap_or_else(|| panic!("owner `{owner}` unknown"))
    }

    pub async fn spawn_roomhost(&self) -> Roomhost {
        self.spawn_roomhost_at("127.0.0.1:0").await
    }

    /// A roomhost listening on `listen` (e.g. the address of one that died,
    /// as a restarted pod keeps its name).
    pub async fn spawn_roomhost_at(&self, listen: &str) -> Roomhost {
        let mut cmd = Command::new(binary("roomhost"));
        cmd.args(["--listen", listen, "--metrics-listen", "127.0.0.1:0"]);
        if let Some(url) = self.redis_url() {
            cmd.args(["--redis", &url]);
        }
        if self.members_file.is_some() {
            cmd.args(["--roomhosts", &self.membership()]);
        }
        cmd.args(&self.spec.roomhost_args).envs(self.spec.envs.iter().cloned());
        let process = Process::spawn("roomhost", cmd);
        let addr = process.wait_for_field("roomhost serving", "advertise").await;
        let metrics = process.wait_for_field("roomhost serving", "metrics").await;
        Roomhost { process, addr, metrics }
    }

    pub async fn spawn_gateway(&self) -> Gateway {
        let mut cmd = Command::new(binary("gateway"));
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
        if !self.roomhosts.is_empty() {
            cmd.args(["--roomhosts", &self.membership()]);
        }
        cmd.args(&self.spec.gateway_args).envs(self.spec.envs.iter().cloned());
        let process = Process::spawn("gateway", cmd);
        let http = process.wait_for_field("gateway serving", "listen").await;
        let admin = process.wait_for_field("gateway serving", "admin").await;
        let gateway = Gateway { process, http, admin };
        eventually("gateway ready", || async {
            (client::get(&gateway.http, "/readyz").await.0 == 200).then_some(())
        })
        .await;
        gateway
    }

    /// Stops every roomhost and gateway (SIGTERM), keeping Redis, and starts
    /// them again.
    pub async fn restart_all_but_redis(&mut self) {
        for mut gateway in self.gateways.drain(..) {
            assert!(
                gateway.process.terminate(Duration::from_secs(15)).await,
                "gateway did not stop cleanly"
            );
        }
        let roomhosts = self.roomhosts.len();
        for mut roomhost in self.roomhosts.drain(..) {
            assert!(
                roomhost.process.terminate(Duration::from_secs(15)).await,
                "roomhost did not stop cleanly"
            );
        }
        let gateways = self.spec.gateways;
        for _ in 0..roomhosts {
            let roomhost = self.spawn_roomhost().await;
            self.roomhosts.push(roomhost);
        }
        if self.members_file.is_some() {
            let members: Vec<String> = self.roomhosts.iter().map(|r| r.addr.clone()).collect();
            self.set_members(&members).await;
        }
        for _ in 0..gateways {
            let gateway = self.spawn_gateway().await;
            self.gateways.push(gateway);
        }
    }
}
