//! A child process whose stdout/stderr lines are kept for assertions and
//! failure reports. Killed (SIGKILL) on drop unless already stopped; with
//! `ROOMS_TEST_LOGDIR` set, its lines are also written there on drop, pass
//! or fail (one file per process, named after it and its pid).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of a workspace binary, next to the test executable's target dir.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("ROOMS_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-exe>
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

pub struct Process {
    pub name: String,
    child: Mutex<Option<Child>>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub fn spawn(name: &str, mut command: Command) -> Self {
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        command
            .env("NO_COLOR", "1")
            .env("RUST_LOG", std::env::var("ROOMS_TEST_LOG").unwrap_or_else(|_| "info".into()));
        let mut child = command.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let logs = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = Arc::clone(&logs);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        Self { name: name.to_owned(), child: Mutex::new(Some(child)), logs }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().as_ref().map_or(0, Child::id)
    }

    /// Waits for a log line containing `needle` and returns the value of the
    /// `key=` field on it.
    pub async fn wait_for_field(&self, needle: &str, key: &str) -> String {
        let deadline = Instant::now() + crate::DEADLINE;
        loop {
            let found = self.logs().iter().find(|l| l.contains(needle)).and_then(|line| {
                line.split_whitespace()
                    .find_map(|t| t.strip_prefix(&format!("{key}=")))
                    .map(str::to_owned)
            });
            if let Some(value) = found {
                return value;
            }
            if let Some(status) = self.try_status() {
                panic!(
                    "{} exited ({status}) before `{needle}`:\n{}",
                    self.name,
                    self.logs().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} never logged `{needle}`:\n{}",
                self.name,
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap().as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGSTOP: the process stays, its sockets stay open, nothing answers
    /// (a hung or overloaded process, as its peers see it).
    pub fn freeze(&self) {
        if let Some(child) = self.child.lock().unwrap().as_ref() {
            let _ = Command::new("kill").arg("-STOP").arg(child.id().to_string()).status();
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to `grace` for a clean exit; returns whether it
    /// exited successfully by itself.
    pub async fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return false;
        };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- logs of {} ----\n{}", self.name, self.logs().join("\n"));
        }
        let pid = self.pid();
        self.kill();
        if let Some(dir) = std::env::var_os("ROOMS_TEST_LOGDIR") {
            let path = PathBuf::from(dir).join(format!("{}-{pid}.log", self.name));
            let mut text = self.logs().join("\n");
            text.push('\n');
            if let Err(error) = std::fs::write(&path, text) {
                eprintln!("writing {}: {error}", path.display());
            }
        }
    }
}

/// Runs `roomctl --admin ADMIN ARGS…`, which must succeed; its output.
pub fn roomctl_ok(admin: &str, args: &[&str]) -> String {
    let out = Command::new(binary("roomctl"))
        .args(["--admin", admin])
        .args(args)
        .output()
        .expect("roomctl runs");
    assert!(out.status.success(), "roomctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
