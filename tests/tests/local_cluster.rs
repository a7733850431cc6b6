//! `deploy/local-cluster.sh` — Redis + 3 roomhosts + 2 gateways started with
//! the Helm chart's flags — comes up, chats across both gateways, reports
//! metrics, and goes down leaving no process behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use rooms_proto::server::ServerFrame;
use rooms_tests::client::{get, metric};
use rooms_tests::process::binary;
use rooms_tests::redis::free_port;
use rooms_tests::{Client, eventually};

struct LocalCluster {
    dir: PathBuf,
    env: Vec<(String, String)>,
    gateways: Vec<u16>,
    metrics: Vec<u16>,
}

fn ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

fn joined(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(" ")
}

impl LocalCluster {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rooms-local-{}-{}",
            std::process::id(),
            free_port()
        ));
        let bin_dir = binary("gateway").parent().map(Path::to_path_buf).expect("bin dir");
        let (gateways, admin, roomhosts, metrics) = (ports(2), ports(2), ports(3), ports(3));
        let env = vec![
            ("ROOMS_LOCAL_DIR".into(), dir.display().to_string()),
            ("ROOMS_BIN_DIR".into(), bin_dir.display().to_string()),
            ("REDIS_PORT".into(), free_port().to_string()),
            ("ROOMHOST_PORTS".into(), joined(&roomhosts)),
            ("METRICS_PORTS".into(), joined(&metrics)),
            ("GATEWAY_PORTS".into(), joined(&gateways)),
            ("ADMIN_PORTS".into(), joined(&admin)),
        ];
        Self { dir, env, gateways, metrics }
    }

    /// A cluster that is up. The ports were free when picked, but another
    /// test's client may take one as its source port before the script binds
    /// it; only that failure is retried, on fresh ports.
    fn up() -> Self {
        for _ in 0..4 {
            let cluster = Self::new();
            let up = cluster.script("up");
            let stderr = String::from_utf8_lossy(&up.stderr);
            if up.status.success() {
                return cluster;
            }
            assert!(
                stderr.contains("Address already in use"),
                "local-cluster.sh up failed:\n{}{stderr}",
                String::from_utf8_lossy(&up.stdout)
            );
        }
        panic!("local-cluster.sh up found a port taken four times running");
    }

    fn script(&self, verb: &str) -> std::process::Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-cluster.sh");
        Command::new("bash")
            .arg(script)
            .arg(verb)
            .envs(self.env.iter().cloned())
            .output()
            .expect("running deploy/local-cluster.sh")
    }

    fn pids(&self) -> Vec<u32> {
        let out = self.script("pids");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.script("down");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_script_starts_a_cluster_that_chats() {
    let cluster = LocalCluster::up();
    let pids = cluster.pids();
    assert_eq!(pids.len(), 6, "2 gateways + 3 roomhosts + redis: {pids:?}");
    assert!(pids.iter().all(|p| alive(*p)));

    let url = |g: usize, user: &str| {
        format!("ws://127.0.0.1:{}/rooms/local/ws?user={user}", cluster.gateways[g])
    };
    let (mut ann, _, _) = Client::join(&url(0, "ann")).await;
    let (mut bob, _, _) = Client::join(&url(1, "bob")).await;
    ann.chat("across gateways", "a1").await;
    let seen = bob.until(|f| matches!(f, ServerFrame::Chat { .. })).await;
    assert!(
        matches!(&seen, ServerFrame::Chat { text, user_id, seq: Some(1), .. } if text == "across gateways" && user_id == "ann"),
        "{seen:?}"
    );
    bob.chat("back", "b1").await;
    let seen = ann.until(|f| matches!(f, ServerFrame::Chat { text, .. } if text == "back")).await;
    assert!(matches!(seen, ServerFrame::Chat { seq: Some(2), .. }), "{seen:?}");

    // The room's owner stored both messages; every roomhost serves metrics.
    let stored = {
        let mut total = 0.0;
        for port in &cluster.metrics {
            let addr = format!("127.0.0.1:{port}");
            assert_eq!(get(&addr, "/readyz").await.0, 200);
            total += metric(&addr, "rooms_roomhost_events_persisted_total").await;
        }
        total
    };
    assert_eq!(stored, 2.0);

    ann.close().await;
    bob.close().await;
    let down = cluster.script("down");
    assert!(down.status.success());
    eventually("every process of the local cluster to exit", || async {
        pids.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
}
