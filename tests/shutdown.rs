//! Issue 11: shutdown that cannot hang. The stop signal was an edge-triggered broadcast that the
//! job worker subscribed to only after an HTTP call; a SIGTERM in that window was missed, the
//! watchers ended, and the worker spun at 100% CPU forever. Now one level-triggered token is
//! created before anything else. SIGTERM at many points of the start-up must end the agent
//! within its grace period, every time.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// After SIGTERM the agent has `shutdown_grace` (set to 2 s here) for jobs, none of which run;
/// the rest of the stop (session destroy, deregistration, a launched Consul's leave) is quick.
const LIMIT: Duration = Duration::from_secs(12);

/// Delays after the spawn at which SIGTERM is sent: before the signal handler exists, while
/// Consul is asked who this node is, while sessions are made, and as the parts start.
const DELAYS_MS: [u64; 9] = [0, 10, 30, 60, 100, 150, 250, 400, 700];

fn term_during_start(mut spawn: impl FnMut() -> Proc, what: &str) {
    for delay in DELAYS_MS {
        let mut p = spawn();
        std::thread::sleep(Duration::from_millis(delay));
        p.signal(Signal::SIGTERM);
        let t = Instant::now();
        let st = p.wait_exit(LIMIT);
        assert!(
            st.is_some(),
            "{what}: SIGTERM {delay} ms after the start: still running after {:?}\n{}",
            t.elapsed(),
            p.log_text()
        );
    }
    // And once it is ready: a clean exit, code 0.
    let mut p = spawn();
    wait_for("ready", Duration::from_secs(60), || {
        p.log_text().contains("servant agent ready").then_some(())
    });
    p.signal(Signal::SIGTERM);
    let st = p.wait_exit(LIMIT).expect("exits after SIGTERM once ready");
    assert_eq!(st.code(), Some(0), "{}", p.log_text());
    assert!(p.log_text().contains("servant agent stopped"));
}

#[test]
fn sigterm_during_start_up_ends_the_agent_on_dev() {
    let ip = format!("{}.2", subnet());
    let data = tempfile::tempdir().unwrap();
    term_during_start(
        || {
            let mut cmd = dev_command(&ip, data.path());
            cmd.args(["--shutdown-grace", "2s", "--dns-port", "-1"]);
            spawn_logged("servant-dev", &mut cmd, &data.path().join("agent.log"))
        },
        "-dev",
    );
}

#[test]
fn sigterm_during_start_up_ends_the_agent_on_consul() {
    let c = ConsulDev::start();
    let data = tempfile::tempdir().unwrap();
    term_during_start(
        || {
            let mut cmd = std::process::Command::new(servant_bin());
            cmd.args(["agent", "--http-addr", &c.addr(), "--data-dir"])
                .arg(data.path())
                .args(["--api-addr", &format!("{}:0", c.ip)])
                .args(["--shutdown-grace", "2s"])
                .env("SERVANT_LOG", "info,servant=debug")
                .env_remove("CONSUL_HTTP_TOKEN");
            spawn_logged("servant", &mut cmd, &data.path().join("agent.log"))
        },
        "real Consul",
    );
}

/// With a launched Consul the start waits for its leader: a SIGTERM then ends both.
#[test]
fn sigterm_while_a_launched_consul_starts_ends_both() {
    let ip = format!("{}.2", subnet());
    let data = tempfile::tempdir().unwrap();
    let bin = consul_bin();
    for delay in [200u64, 1000] {
        let mut cmd = std::process::Command::new(servant_bin());
        cmd.args(["agent", "--consul-dev", "--bind", &ip, "--client", &ip])
            .args(["--node", "launched", "--consul-bin"])
            .arg(&bin)
            .arg("--data-dir")
            .arg(data.path())
            .args(["--api-addr", &format!("{ip}:0"), "--shutdown-grace", "2s"])
            .env("SERVANT_LOG", "info,servant=debug")
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_ADDR");
        let mut p = spawn_logged("servant", &mut cmd, &data.path().join("agent.log"));
        std::thread::sleep(Duration::from_millis(delay));
        p.signal(Signal::SIGTERM);
        assert!(p.wait_exit(LIMIT).is_some(), "{}", p.log_text());
        wait_for("the launched consul gone", LIMIT, || {
            procs_matching(&format!("-bind={ip}"))
                .is_empty()
                .then_some(())
        });
    }
}
