//! The tokio runtime of a server process, sized by `--worker-threads`.
//!
//! tokio's default is one worker per CPU the process may use: its cgroup's
//! CPU limit, else every core of the machine. A pod without a CPU limit on
//! a large node would run a worker per core of the node, and processes
//! that share cores (pods on one node, or the local cluster's five
//! processes on one machine) wake each other's idle workers: every message
//! that arrives at a parked process then costs a second thread's wake-up
//! and sleep. Sized to the process's share, a message wakes one thread.

use std::io;

/// The most workers `--worker-threads` accepts.
pub const MAX_WORKER_THREADS: u16 = 1024;

/// The parser of `--worker-threads`: 1 to [`MAX_WORKER_THREADS`].
pub fn worker_threads_parser() -> clap::builder::RangedI64ValueParser<u16> {
    clap::value_parser!(u16).range(1..=i64::from(MAX_WORKER_THREADS))
}

/// A multi-threaded runtime with `worker_threads` workers (tokio's default
/// when `None`), its I/O and timers enabled.
pub fn build(worker_threads: Option<u16>) -> io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = worker_threads {
        builder.worker_threads(usize::from(workers));
    }
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_has_the_workers_it_was_asked_for() {
        let runtime = build(Some(1)).unwrap();
        assert_eq!(runtime.metrics().num_workers(), 1);
        let runtime = build(Some(3)).unwrap();
        assert_eq!(runtime.metrics().num_workers(), 3);
        assert!(build(None).unwrap().metrics().num_workers() >= 1);
    }

    #[test]
    fn zero_workers_and_absurd_counts_are_refused() {
        let command = clap::Command::new("t")
            .arg(clap::Arg::new("w").long("worker-threads").value_parser(worker_threads_parser()));
        let parse = |v: &str| command.clone().try_get_matches_from(["t", "--worker-threads", v]);
        assert!(parse("0").is_err());
        assert!(parse("1025").is_err());
        assert_eq!(parse("2").unwrap().get_one::<u16>("w"), Some(&2));
    }
}
