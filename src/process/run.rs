//! Running a launched task to its end: `supervise` (exit, timeout or a kill request) and
//! `run_with_timeout` for short commands whose output is wanted.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;

use super::spec::LaunchSpec;
use super::{Captured, Driver, SpawnError, TaskHandle};

/// Why a running task is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// The node's session was invalidated: the job is no longer ours.
    Fenced,
    /// The agent is stopping and the grace period is over.
    Shutdown,
    /// An app's task was removed from this node or changed, or a running job's key was
    /// deleted (stopped by an operator): SIGTERM, then SIGKILL after the grace period.
    Removed,
    /// The agent is stopping: a task that can outlive it (an app's container) is left running
    /// for the next run to adopt (`TaskHandle::detach`); any other is stopped as `Removed`.
    Detach,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exited by itself with this code (128+n if the command died of signal n). `leftovers`
    /// processes it left in its group (started in the background) were then stopped: the
    /// group ends with its command, as a Nomad task's processes do.
    Exited { code: i32, leftovers: usize },
    /// Ran past its timeout; the group was killed.
    TimedOut,
    /// Stopped from outside.
    Killed(KillReason),
}

/// How the wait for a task ended, before anything is stopped.
enum Ended {
    Exited(i32),
    TimedOut,
    Killed(KillReason),
}

/// Waits for the task to end, its timeout (None = no timeout), or a kill request. On timeout
/// or kill the whole task gets SIGTERM, then SIGKILL after `grace` (none when fenced); after a
/// normal exit, what it left running is stopped the same way.
pub async fn supervise<H: TaskHandle>(
    task: &mut H,
    timeout: Option<Duration>,
    mut kill: watch::Receiver<Option<KillReason>>,
    grace: Duration,
    mut fence: Option<watch::Receiver<Option<u64>>>,
) -> Outcome {
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let killed = async {
        loop {
            if let Some(r) = *kill.borrow_and_update() {
                return r;
            }
            if kill.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::pin!(deadline, killed);
    // The deadlines the task may be acting on: the last one sent, and the one before it (the
    // task reads the newest from its lease pipe a moment after it is sent).
    let at_start = fence.as_ref().and_then(|f| *f.borrow());
    let mut known = [at_start, at_start];
    let ended = loop {
        // Every move of the holder's deadline goes on to the task's watchdog.
        let moved = async {
            match fence.as_mut() {
                Some(f) => match f.changed().await {
                    Ok(()) => *f.borrow_and_update(),
                    Err(_) => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            code = task.wait() => break Ended::Exited(code),
            _ = &mut deadline => break Ended::TimedOut,
            r = &mut killed => break Ended::Killed(r),
            until = moved => {
                known = [known[1], until];
                task.fence(until).await
            }
        }
    };
    // Past the holder's deadline the task's end is not the holder's to report: its shim killed
    // it (or it ended when it was no longer surely ours). It counts as fenced.
    let now = crate::util::time::boot_ms();
    let fenced_out = fence
        .as_ref()
        .and_then(|f| *f.borrow())
        .is_some_and(|until| now >= until);
    let ended = match ended {
        Ended::Exited(code) if fenced_out || killed_at_fence(code, known, now) => {
            Ended::Killed(KillReason::Fenced)
        }
        other => other,
    };
    // `Killed(Detach)` means it was left running; a task that cannot be is stopped as removed.
    let ended = match ended {
        Ended::Killed(KillReason::Detach) if task.detach().await => {
            return Outcome::Killed(KillReason::Detach);
        }
        Ended::Killed(KillReason::Detach) => Ended::Killed(KillReason::Removed),
        other => other,
    };
    let outcome = match ended {
        Ended::Exited(code) => {
            let leftovers = task.stop_leftovers(grace).await;
            return Outcome::Exited { code, leftovers };
        }
        Ended::TimedOut => Outcome::TimedOut,
        Ended::Killed(r) => Outcome::Killed(r),
    };
    // A fenced job is no longer ours: another node may start it after the lock-delay, so it
    // gets no grace period.
    let grace = if outcome == Outcome::Killed(KillReason::Fenced) {
        Duration::ZERO
    } else {
        grace
    };
    task.stop(Signal::SIGTERM, grace).await;
    outcome
}

/// Whether a task that exited with `code` was killed by its own watchdog at a fence deadline
/// it held: SIGKILL, with a deadline it may have been acting on already passed. The holder's
/// deadline may have moved on since (Consul confirmed the session late), so the current one
/// cannot tell.
fn killed_at_fence(code: i32, known: [Option<u64>; 2], now_ms: u64) -> bool {
    code == 128 + Signal::SIGKILL as i32 && known.iter().flatten().any(|until| now_ms >= *until)
}

/// Grace between SIGTERM and SIGKILL for a short command past its timeout.
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(5);

/// Limits of a `run_with_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL after the timeout.
    pub grace: Duration,
    /// Bytes of each captured stream kept.
    pub cap: usize,
}

impl Limits {
    /// `timeout`, the usual grace, and `cap` bytes of output.
    pub fn new(timeout: Duration, cap: usize) -> Self {
        Limits {
            timeout,
            grace: TIMEOUT_GRACE,
            cap,
        }
    }
}

/// A short command's end and output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub outcome: Outcome,
    /// What `Output::Capture` caught, capped.
    pub output: Captured,
}

/// Starts `spec`, waits up to the timeout, then SIGTERM the whole task, the grace period,
/// SIGKILL; returns how it ended and its captured output.
pub async fn run_with_timeout<D: Driver>(
    driver: &D,
    spec: &LaunchSpec,
    limits: Limits,
) -> Result<Finished, SpawnError> {
    let mut task = driver.launch(spec).await?;
    let (_none, never) = watch::channel(None);
    let outcome = supervise(&mut task, Some(limits.timeout), never, limits.grace, None).await;
    let output = task.captured(limits.cap).await;
    Ok(Finished { outcome, output })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{Output, ProcessDriver};
    use std::time::Instant;

    /// A process cannot outlive the agent: asked to detach, it is stopped as removed.
    #[tokio::test]
    async fn a_process_asked_to_detach_is_stopped() {
        let spec = LaunchSpec::shell("sleep 30", &Default::default());
        let mut task = ProcessDriver::current().launch(&spec).await.unwrap();
        let pid = task.pid() as i32;
        let (tx, rx) = watch::channel(Some(KillReason::Detach));
        let outcome = supervise(&mut task, None, rx, Duration::from_secs(1), None).await;
        drop(tx);
        assert_eq!(outcome, Outcome::Killed(KillReason::Removed));
        assert!(
            crate::process::testing::gone(pid).await,
            "the group is stopped"
        );
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_gets_sigterm_then_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("term");
        // Traps SIGTERM (and carries on): only the SIGKILL after the grace ends it.
        let cmd = format!(
            "trap 'echo term > {}' TERM; echo started; while :; do sleep 0.05; done",
            marker.display()
        );
        let spec = LaunchSpec::shell(&cmd, &Default::default()).output(Output::Capture {
            dir: None,
            combined: true,
        });
        let t = Instant::now();
        let limits = Limits {
            // Long enough for the shell to set its trap, even on a busy machine.
            timeout: Duration::from_secs(1),
            grace: Duration::from_millis(700),
            cap: 100,
        };
        let f = run_with_timeout(&ProcessDriver::current(), &spec, limits)
            .await
            .unwrap();
        assert_eq!(f.outcome, Outcome::TimedOut);
        // The shell may add "Terminated" for the sleep the SIGTERM ended.
        assert!(f.output.stdout.starts_with("started\n"), "{:?}", f.output);
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "term\n");
        assert!(
            t.elapsed() >= Duration::from_millis(1700),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    /// Regression (CI at a89e07f): a shim killed its job at a deadline that Consul confirmed
    /// late; the holder's deadline had moved on by the time the exit was seen, and the job was
    /// reported as a plain failure (exit 137) instead of fenced.
    #[test]
    fn a_sigkill_past_a_deadline_the_task_held_counts_as_fenced() {
        let kill = 128 + Signal::SIGKILL as i32;
        // The old deadline (1,000) passed; the new one (5,000) was sent after it.
        assert!(killed_at_fence(kill, [Some(1_000), Some(5_000)], 2_000));
        assert!(killed_at_fence(kill, [Some(1_000), Some(1_000)], 1_000));
        // Neither passed, no deadline at all, or another way to end.
        assert!(!killed_at_fence(kill, [Some(3_000), Some(5_000)], 2_000));
        assert!(!killed_at_fence(kill, [None, None], 2_000));
        assert!(!killed_at_fence(0, [Some(1_000), Some(5_000)], 2_000));
        assert!(!killed_at_fence(143, [Some(1_000), Some(5_000)], 2_000));
    }

    #[tokio::test]
    async fn a_kill_request_stops_the_task_and_fenced_gets_no_grace() {
        let d = ProcessDriver::current();
        let dir = tempfile::tempdir().unwrap();
        for (why, least) in [
            (KillReason::Removed, Duration::from_millis(500)),
            (KillReason::Fenced, Duration::ZERO),
        ] {
            let ready = dir.path().join(format!("{why:?}"));
            let cmd = format!("trap '' TERM; touch {}; sleep 30", ready.display());
            let spec = LaunchSpec::shell(&cmd, &Default::default());
            let mut task = d.launch(&spec).await.unwrap();
            // SIGTERM is ignored from here on.
            while !ready.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let (tx, rx) = watch::channel(None);
            tx.send(Some(why)).unwrap();
            let t = Instant::now();
            let outcome = supervise(&mut task, None, rx, Duration::from_millis(500), None).await;
            assert_eq!(outcome, Outcome::Killed(why));
            assert!(t.elapsed() >= least, "{why:?} {:?}", t.elapsed());
            assert!(t.elapsed() < Duration::from_secs(5));
        }
    }
}
