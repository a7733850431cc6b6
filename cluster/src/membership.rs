//! Where the roomhost list comes from, and a watch that rebuilds the ring
//! whenever it changes.
//!
//! * `static:A,B,...` never changes.
//! * `file:PATH` holds one member a line (`#` comments allowed); it is re-read
//!   every [`FILE_POLL`], which also catches a Kubernetes ConfigMap update.
//! * `dns:NAME:PORT` resolves the A/AAAA records of a headless Service every
//!   [`DNS_POLL`].
//!
//! A failed re-read keeps the last good member list (logged), so a transient
//! error never empties the ring.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ring::Ring;

pub const FILE_POLL: Duration = Duration::from_secs(1);
pub const DNS_POLL: Duration = Duration::from_secs(5);
/// Most members a source may list; more is a configuration error.
pub const MAX_MEMBERS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipSource {
    Static(Vec<String>),
    File(PathBuf),
    Dns { name: String, port: u16 },
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("membership must be static:A,B,..., file:PATH or dns:NAME:PORT, got `{0}`")]
    Syntax(String),
    #[error("member `{0}` is not HOST:PORT")]
    Member(String),
    #[error("more than {MAX_MEMBERS} members")]
    TooMany,
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("resolving {name}: {source}")]
    Dns { name: String, source: std::io::Error },
}

impl std::str::FromStr for MembershipSource {
    type Err = MembershipError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(list) = s.strip_prefix("static:") {
            let members = parse_members(list.split(','))?;
            if members.is_empty() {
                return Err(MembershipError::Syntax(s.into()));
            }
            Ok(Self::Static(members))
        } else if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(MembershipError::Syntax(s.into()));
            }
            Ok(Self::File(PathBuf::from(path)))
        } else if let Some(rest) = s.strip_prefix("dns:") {
            let (name, port) =
                rest.rsplit_once(':').ok_or_else(|| MembershipError::Syntax(s.into()))?;
            let port = port.parse().map_err(|_| MembershipError::Syntax(s.into()))?;
            if name.is_empty() {
                return Err(MembershipError::Syntax(s.into()));
            }
            Ok(Self::Dns { name: name.into(), port })
        } else {
            Err(MembershipError::Syntax(s.into()))
        }
    }
}

fn parse_members<'a>(items: impl Iterator<Item = &'a str>) -> Result<Vec<String>, MembershipError> {
    let mut members = Vec::new();
    for item in items.map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let valid = item
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(MembershipError::Member(item.into()));
        }
        members.push(item.to_owned());
        if members.len() > MAX_MEMBERS {
            return Err(MembershipError::TooMany);
        }
    }
    Ok(members)
}

impl MembershipSource {
    /// Reads the current member list once.
    pub async fn resolve(&self) -> Result<Vec<String>, MembershipError> {
        match self {
            Self::Static(members) => Ok(members.clone()),
            Self::File(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|source| MembershipError::Io { path: path.clone(), source })?;
                parse_members(text.lines())
            }
            Self::Dns { name, port } => {
                let addrs = tokio::net::lookup_host((name.as_str(), *port))
                    .await
                    .map_err(|source| MembershipError::Dns { name: name.clone(), source })?;
                let mut members: Vec<String> = addrs.map(|a| a.to_string()).collect();
                members.truncate(MAX_MEMBERS);
                Ok(members)
            }
        }
    }

    fn poll_interval(&self) -> Option<Duration> {
        match self {
            Self::Static(_) => None,
            Self::File(_) => Some(FILE_POLL),
            Self::Dns { .. } => Some(DNS_POLL),
        }
    }
}

/// The current ring, kept up to date by a background task that stops when
/// this watch is dropped.
pub struct MembershipWatch {
    rx: watch::Receiver<Arc<Ring>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for MembershipWatch {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl MembershipWatch {
    /// Resolves the source once (an error here is fatal: bad configuration),
    /// then keeps watching it.
    pub async fn start(source: MembershipSource) -> Result<Self, MembershipError> {
        let first = source.resolve().await?;
        let (tx, rx) = watch::channel(Arc::new(Ring::new(first, 1)));
        let task = source.poll_interval().map(|every| tokio::spawn(poll(source, every, tx)));
        Ok(Self { rx, task })
    }

    /// A fixed ring (the embedded roomhost, tests).
    pub fn fixed(members: Vec<String>) -> Self {
        let (_tx, rx) = watch::channel(Arc::new(Ring::new(members, 1)));
        Self { rx, task: None }
    }

    pub fn ring(&self) -> Arc<Ring> {
        self.rx.borrow().clone()
    }

    /// A receiver that sees every new ring.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Ring>> {
        self.rx.clone()
    }
}

async fn poll(source: MembershipSource, every: Duration, tx: watch::Sender<Arc<Ring>>) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match source.resolve().await {
            Ok(mut members) => {
                members.sort();
                members.dedup();
                let current = tx.borrow().clone();
                if current.members() != members.as_slice() {
                    tracing::info!(?members, "roomhost membership changed");
                    tx.send_replace(Arc::new(Ring::new(members, current.version() + 1)));
                }
            }
            Err(error) => {
                tracing::warn!(%error, "membership re-read failed; keeping the last members")
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(
            "static:a:1,b:2".parse::<MembershipSource>().unwrap(),
            MembershipSource::Static(vec!["a:1".into(), "b:2".into()])
        );
        assert_eq!(
            "file:/etc/members".parse::<MembershipSource>().unwrap(),
            MembershipSource::File("/etc/members".into())
        );
        assert_eq!(
            "dns:roomhost.default.svc:50051".parse::<MembershipSource>().unwrap(),
            MembershipSource::Dns { name: "roomhost.default.svc".into(), port: 50051 }
        );
        assert!("static:".parse::<MembershipSource>().is_err());
        assert!("static:nohost".parse::<MembershipSource>().is_err());
        assert!("dns:x".parse::<MembershipSource>().is_err());
        assert!("consul:x".parse::<MembershipSource>().is_err());
    }

    #[tokio::test]
    async fn dns_membership_resolves_every_address() {
        let source: MembershipSource = "dns:localhost:50051".parse().unwrap();
        let members = source.resolve().await.unwrap();
        assert!(members.contains(&"127.0.0.1:50051".to_owned()), "{members:?}");
        let missing: MembershipSource = "dns:no-such-host.invalid:1".parse().unwrap();
        assert!(missing.resolve().await.is_err());
    }

    #[tokio::test]
    async fn file_membership_follows_edits() {
        let dir = std::env::temp_dir().join(format!("rooms-members-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("members");
        std::fs::write(&path, "# roomhosts\n127.0.0.1:1\n").unwrap();
        let watch = MembershipWatch::start(MembershipSource::File(path.clone())).await.unwrap();
        assert_eq!(watch.ring().members(), ["127.0.0.1:1"]);
        let mut rx = watch.subscribe();
        std::fs::write(&path, "127.0.0.1:1\n127.0.0.1:2\n").unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.changed()).await.unwrap().unwrap();
        assert_eq!(watch.ring().members(), ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(watch.ring().version(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
