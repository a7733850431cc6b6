//! Real network faults: a small network of Linux network namespaces made
//! by the test itself — one per process, all joined by a bridge in a hub
//! namespace, with addresses that exist only inside them — and partitions
//! that drop packets silently (an HTB class whose queue holds nothing), as a
//! broken switch or a firewall would, so that nothing but the system's own
//! timeouts can notice.
//!
//! Needs root and `ip`/`tc` (iproute2); [`Net::create`] says why and
//! returns None where namespaces cannot be made, and the tests then skip
//! their network cases instead of passing them.

use std::fs::File;
use std::net::SocketAddr;
use std::process::Command;

/// One host of the network: a namespace with one address.
pub struct Host {
    pub ns: String,
    pub ip: String,
    /// Its port on the hub's bridge.
    port: String,
}

pub struct Net {
    hub: String,
    pub hosts: Vec<Host>,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out =
        Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Net {
    /// `hosts` namespaces on one bridge, addresses 10.231.0.1 … (inside
    /// the namespaces only). None, with the reason printed, if this
    /// machine cannot make them (not root, no iproute2, no netns support).
    pub fn create(hosts: usize) -> Option<Self> {
        remove_orphans();
        let tag = format!("{}-{}", std::process::id() % 100_000, crate::redis::free_port());
        let hub = format!("rh{tag}");
        let mut net = Self { hub: hub.clone(), hosts: Vec::new() };
        let made = (|| {
            run(&["ip", "netns", "add", &hub])?;
            run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
            run(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
            for i in 0..hosts {
                let ns = format!("r{i}-{tag}");
                let ip = format!("10.231.0.{}", i + 1);
                let port = format!("v{i}");
                run(&["ip", "netns", "add", &ns])?;
                net.hosts.push(Host { ns: ns.clone(), ip: ip.clone(), port: port.clone() });
                run(&[
                    "ip", "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ])?;
                run(&["ip", "-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
                run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
                run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
                run(&["ip", "-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
                // Port-side egress (hub -> host): class 1:10 passes, 1:20
                // holds nothing (drops); filters pick the cut sources.
                let tc = ["ip", "netns", "exec", &hub, "tc"];
                let with = |rest: &[&str]| -> Result<(), String> { run(&[&tc[..], rest].concat()) };
                with(&[
                    "qdisc", "add", "dev", &port, "root", "handle", "1:", "htb", "default", "10",
                ])?;
                with(&[
                    "class", "add", "dev", &port, "parent", "1:", "classid", "1:10", "htb", "rate",
                    "10gbit",
                ])?;
                with(&[
                    "class", "add", "dev", &port, "parent", "1:", "classid", "1:20", "htb", "rate",
                    "8bit",
                ])?;
                with(&[
                    "qdisc", "add", "dev", &port, "parent", "1:20", "handle", "20:", "pfifo",
                    "limit", "0",
                ])?;
            }
            Ok::<(), String>(())
        })();
        match made {
            Ok(()) => Some(net),
            Err(error) => {
                eprintln!("SKIPPED network faults: cannot create network namespaces here: {error}");
                None
            }
        }
    }

    /// Drops every packet between hosts `a` and `b`, both ways, silently.
    pub fn cut(&self, a: usize, b: usize) {
        for (to, from) in [(a, b), (b, a)] {
            let (port, src) = (&self.hosts[to].port, format!("{}/32", self.hosts[from].ip));
            let prio = (from + 1).to_string();
            run(&[
                "ip", "netns", "exec", &self.hub, "tc", "filter", "add", "dev", port, "parent",
                "1:", "protocol", "ip", "prio", &prio, "u32", "match", "ip", "src", &src, "flowid",
                "1:20",
            ])
            .expect("cut");
        }
    }

    /// Undoes [`Net::cut`].
    pub fn heal(&self, a: usize, b: usize) {
        for (to, from) in [(a, b), (b, a)] {
            let prio = (from + 1).to_string();
            run(&[
                "ip",
                "netns",
                "exec",
                &self.hub,
                "tc",
                "filter",
                "del",
                "dev",
                &self.hosts[to].port,
                "parent",
                "1:",
                "prio",
                &prio,
            ])
            .expect("heal");
        }
    }

    /// `ip netns exec` prefix for a command in host `i`'s namespace.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[i].ns]).arg(program);
        cmd
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = run(&["ip", "netns", "del", &host.ns]);
        }
        let _ = run(&["ip", "netns", "del", &self.hub]);
    }
}

/// Deletes namespaces a killed test run left behind: ours are named after
/// the test process (`rhPID-…`, `rN-PID-…`), so those of a process that is
/// gone are orphans.
fn remove_orphans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        let parts: Vec<&str> = name.split('-').collect();
        let pid = match parts.as_slice() {
            [hub, port] if hub.strip_prefix("rh").is_some_and(digits) && digits(port) => {
                hub.strip_prefix("rh")
            }
            [host, pid, port]
                if host.strip_prefix('r').is_some_and(digits) && digits(pid) && digits(port) =>
            {
                Some(*pid)
            }
            _ => None,
        };
        let Some(pid) = pid else { continue };
        // The tag keeps the pid's last five digits: compare the same way.
        let alive = std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.bytes().all(|b| b.is_ascii_digit())
                && name.parse::<u64>().is_ok_and(|p| (p % 100_000).to_string() == pid)
        });
        if !alive {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// Runs `make` on a thread that entered namespace `ns`: sockets it creates
/// belong to that namespace for good.
fn inside<T: Send>(
    ns: &str,
    make: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(&path)?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                make()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
    })
}

/// A listener inside namespace `ns` (for the test's own proxies).
pub fn listen_in(ns: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = inside(ns, || std::net::TcpListener::bind(addr))?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// A TCP connection made from inside namespace `ns` (a thread enters it to
/// create the socket, which stays there), for the test's own clients.
pub fn connect_in(ns: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let stream = inside(ns, || {
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
    })?;
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    tokio::net::TcpStream::from_std(stream)
}
