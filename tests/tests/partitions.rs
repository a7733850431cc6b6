//! Network partitions, for real: Redis, three roomhosts, two gateways and
//! the clients each in their own network namespace, packets between two of
//! them silently dropped for 8 s, then let through again. The history
//! checker asks for nothing lost or duplicated and for every client served
//! again within a lease TTL and a second of the cut, and after the heal.

use std::net::SocketAddr;
use std::time::Duration;

use rooms_cluster::Ring;
use rooms_proto::RoomId;
use rooms_tests::checker::{Fault, check};
use rooms_tests::client::Client;
use rooms_tests::load::Load;
use rooms_tests::netns::{Net, connect_in};
use rooms_tests::process::{Process, binary};
use tokio::time::Instant;

const LEASE_TTL: Duration = Duration::from_secs(2);
const CUT: Duration = Duration::from_secs(8);
const REDIS: usize = 0;
const ROOMHOSTS: [usize; 3] = [1, 2, 3];
const GATEWAYS: [usize; 2] = [4, 5];
const CLIENTS: usize = 6;

struct NetCluster {
    net: Net,
    _processes: Vec<Process>,
    members: Vec<String>,
}

impl NetCluster {
    async fn start() -> Option<Self> {
        let net = Net::create(7)?;
        let mut processes = Vec::new();
        let mut redis = net.command(REDIS, std::path::Path::new("redis-server"));
        redis.args(["--bind", "0.0.0.0", "--port", "6379", "--protected-mode", "no"]);
        redis.args(["--save", "", "--appendonly", "no"]);
        let redis = Process::spawn("redis-server", redis);
        let ns = net.hosts[REDIS].ns.clone();
        rooms_tests::eventually("redis in its namespace", || {
            let ns = ns.clone();
            async move {
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", &ns, "redis-cli", "ping"])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout).contains("PONG").then_some(())
            }
        })
        .await;
        processes.push(redis);
        let members: Vec<String> =
            ROOMHOSTS.iter().map(|&i| format!("{}:50051", net.hosts[i].ip)).collect();
        let dir = std::env::temp_dir().join(format!("rooms-netns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("members");
        std::fs::write(&file, members.join("\n") + "\n").expect("members");
        let membership = format!("file:{}", file.display());
        let redis_url = format!("redis://{}:6379", net.hosts[REDIS].ip);
        for (&i, member) in ROOMHOSTS.iter().zip(&members) {
            let mut cmd = net.command(i, &binary("roomhost"));
            cmd.args(["--listen", member, "--metrics-listen", "127.0.0.1:0"]);
            cmd.args(["--redis", &redis_url, "--roomhosts", &membership]);
            cmd.arg(format!("--lease-ttl={}s", LEASE_TTL.as_secs()));
            cmd.arg("--history-limit=100000");
            let process = Process::spawn(&format!("roomhost-{i}"), cmd);
            process.wait_for_field("roomhost serving", "advertise").await;
            processes.push(process);
        }
        for &i in &GATEWAYS {
            let mut cmd = net.command(i, &binary("gateway"));
            cmd.args(["--listen", &format!("{}:8080", net.hosts[i].ip)]);
            cmd.args(["--admin-listen", "127.0.0.1:0", "--roomhosts", &membership]);
            cmd.args(["--rate-limit=1000", "--rate-burst=1000"]);
            let process = Process::spawn(&format!("gateway-{i}"), cmd);
            process.wait_for_field("gateway serving", "listen").await;
            processes.push(process);
        }
        Some(Self { net, _processes: processes, members })
    }

    fn gateway_addr(&self, g: usize) -> SocketAddr {
        format!("{}:8080", self.net.hosts[g].ip).parse().expect("address")
    }

    /// Joins `room` as `user` through gateway host `g`, from the clients'
    /// namespace, retrying until the gateway is ready.
    async fn join(&self, g: usize, room: &str, user: &str) -> Client {
        let url = format!("ws://{}/rooms/{room}/ws?user={user}", self.gateway_addr(g));
        rooms_tests::eventually("a client to join through the namespace", || async {
            let stream = connect_in(&self.net.hosts[CLIENTS].ns, self.gateway_addr(g)).ok()?;
            let client = Client::connect_over(&url, stream).await.ok()?;
            Some(client)
        })
        .await
        .welcomed()
        .await
        .0
    }

    /// The host of the roomhost the ring gives `room`.
    fn ring_owner(&self, room: &str) -> usize {
        let ring = Ring::new(self.members.clone(), 0);
        let owner = ring.owner(&RoomId::parse(room).expect("room")).expect("owner").to_owned();
        ROOMHOSTS[self.members.iter().position(|m| *m == owner).expect("member")]
    }

    /// Two receivers and one sender (8 a second) on each gateway.
    async fn load(&self, room: &str) -> Load {
        let mut clients = Vec::new();
        for &g in &GATEWAYS {
            for c in 0..3 {
                let user = format!("{room}-g{g}c{c}");
                let every = (c == 0).then_some(Duration::from_millis(125));
                clients.push((user.clone(), self.join(g, room, &user).await, every));
            }
        }
        Load::start_mixed(clients)
    }

    /// Runs load in `room`, cuts `pairs` for [`CUT`], heals, and checks.
    async fn partition(&self, room: &str, kind: &str, pairs: &[(usize, usize)]) {
        let load = self.load(room).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = Instant::now();
        for &(a, b) in pairs {
            self.net.cut(a, b);
        }
        tokio::time::sleep(CUT).await;
        for &(a, b) in pairs {
            self.net.heal(a, b);
        }
        let healed = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let outcomes = load.stop().await;
        let faults = [Fault::crash(kind, start, LEASE_TTL).until(healed)];
        let report = check(&outcomes, &faults, true);
        eprintln!("{kind}:\n{}", report.table());
        report.assert_live();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_heal_within_a_lease_and_lose_nothing() {
    let Some(cluster) = NetCluster::start().await else {
        return; // said why: SKIPPED
    };
    let room = "cut-redis";
    let owner = cluster.ring_owner(room);
    cluster.partition(room, "owner cut off from Redis", &[(owner, REDIS)]).await;

    let room = "cut-gateways";
    let owner = cluster.ring_owner(room);
    let pairs: Vec<(usize, usize)> = GATEWAYS.iter().map(|&g| (owner, g)).collect();
    cluster.partition(room, "owner cut off from the gateways", &pairs).await;

    let room = "cut-one-gateway";
    let owner = cluster.ring_owner(room);
    cluster.partition(room, "one gateway cut off from the owner", &[(owner, GATEWAYS[0])]).await;
}
