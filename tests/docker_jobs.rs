//! Docker jobs (issue 13) on the machine's real Docker Engine and a real Consul: results,
//! exit codes, the OOM killer, timeouts, missing images, bad input, and an agent SIGKILLed
//! mid-run. No image can be pulled here: each test builds its own `FROM scratch` image with
//! Debian's static busybox, under a tag of its own, and removes it (and every container of its
//! node) when it ends. Without Docker these tests fail and say so.

mod common;

use std::path::Path;
use std::time::Duration;

use common::docker::*;
use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

/// A Consul dev agent, a servant beside it, and the lab (dropped last, after the agent).
fn start(extra: &[&str]) -> (ImageLab, ConsulDev, Servant) {
    let c = ConsulDev::start();
    let lab = ImageLab::new(&c.node);
    let s = c.servant(extra).ready();
    (lab, c, s)
}

/// `jobs/<id>`'s result once it is final.
fn result(h: &Http, id: &str) -> Value {
    h.wait_result(&format!("jdone_jid/jobs/{id}"), T)
}

/// Issue 13's first row: `echo hi` in a container gives `hi`, exit code 0, a `ContainerID`, and
/// no container is left behind. The CLI starts one with `--wait`; `show` and `jobs` name the
/// image and the container.
#[test]
fn a_container_job_gives_its_output_and_leaves_no_container() {
    let (lab, c, _s) = start(&[]);
    let h = c.http();
    h.put(
        "/v1/kv/jobs/d1",
        json!({"Type": "docker", "Image": lab.image, "Command": "echo hi; echo oops >&2"})
            .to_string(),
    );
    let r = result(&h, "d1");
    assert_eq!(r["Status"], "succeeded", "{r}");
    assert_eq!(r["Output"], "hi\n", "{r}");
    assert_eq!(r["OutputErrors"], "oops\n", "stderr apart: {r}");
    assert_eq!(r["ExitCode"], 0);
    assert_eq!(r["Type"], "docker");
    assert_eq!(r["Image"], lab.image.as_str());
    let id = r["ContainerID"]
        .as_str()
        .expect("a ContainerID")
        .to_string();
    assert_eq!(id.len(), 64, "{id}");
    assert!(r.get("OOMKilled").is_none(), "false is left out: {r}");
    wait_for("the container is removed", T, || {
        (!exists(&id)).then_some(())
    });
    assert!(lab.containers().is_empty(), "{:?}", lab.containers());

    // `show` and `jobs` name the image and the container.
    let (code, out, err) = cli(&c.addr(), &["show", "d1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("Image: {}", lab.image)), "{out}");
    assert!(out.contains(&format!("Container: {id}")), "{out}");
    let (code, out, err) = cli(&c.addr(), &["jobs"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("image {}, container {}", lab.image, &id[..12])),
        "{out}"
    );

    // The CLI: Args after `--`, a published port, a volume, --wait with the job's exit code.
    let dir = tempfile::tempdir().unwrap();
    let vol = format!("{}:/m", dir.path().display());
    let (code, out, err) = cli(
        &c.addr(),
        &[
            "start",
            "--type",
            "docker",
            "--image",
            &lab.image,
            "-p",
            "80",
            "-v",
            &vol,
            "--wait",
            "cli1",
            "--",
            "sh",
            "-c",
            "echo via-cli > /m/f; cat /m/f; exit 4",
        ],
    );
    assert_eq!((code, out.as_str()), (4, "cli1\nvia-cli\n"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("f")).unwrap(),
        "via-cli\n"
    );
    let r = result(&h, "cli1");
    assert_eq!(r["Status"], "failed", "{r}");
    assert_eq!(r["ExitCode"], 4, "{r}");
}

/// A container job exiting 3, one over its memory limit, one past its timeout: `failed` with
/// code 3; `OOMKilled: true`; `timed_out` after SIGTERM then SIGKILL, with the container gone.
#[test]
fn exit_codes_the_oom_killer_and_timeouts() {
    let (lab, c, _s) = start(&["--kill-grace", "1s"]);
    let h = c.http();
    h.put(
        "/v1/kv/jobs/e3",
        json!({"Type": "docker", "Image": lab.image, "Command": "echo before; exit 3"}).to_string(),
    );
    // 64 MiB of text held in a shell variable, with 16 MiB allowed. The inner shell is the
    // victim and the container lives a second more: containerd 1.6 drops the OOM event of a
    // cgroup already deleted when it reads the event, so a container whose first process is
    // the victim can end without `OOMKilled` on a loaded machine (CI, twice in four runs).
    h.put(
        "/v1/kv/jobs/oom",
        json!({"Type": "docker", "Image": lab.image, "Docker": {"Memory": "16MiB"},
            "Command": "sh -c 'x=$(head -c 67108864 /dev/zero | tr \"\\0\" a); echo ${#x}'; s=$?; sleep 1; exit $s"})
        .to_string(),
    );
    // Traps SIGTERM and carries on: only the SIGKILL after the grace ends it.
    h.put(
        "/v1/kv/jobs/slow",
        json!({"Type": "docker", "Image": lab.image, "Timeout": "2s",
            "Command": "trap 'echo term' TERM; echo started; while :; do sleep 1; done"})
        .to_string(),
    );
    let r = result(&h, "e3");
    assert_eq!(r["Status"], "failed", "{r}");
    assert_eq!(r["ExitCode"], 3, "{r}");
    assert_eq!(r["ExitErrors"], "exit status 3");
    assert_eq!(r["Output"], "before\n");

    let r = result(&h, "oom");
    assert_eq!(r["Status"], "failed", "{r}");
    assert_eq!(r["OOMKilled"], true, "{r}");
    assert_eq!(r["ExitCode"], 137, "{r}");
    assert!(
        r["ExitErrors"].as_str().unwrap().contains("OOM killer"),
        "{r}"
    );

    let r = result(&h, "slow");
    assert_eq!(r["Status"], "timed_out", "{r}");
    assert_eq!(
        r["ExitErrors"],
        "timed out after 2s; the container was stopped"
    );
    let out = r["Output"].as_str().unwrap();
    assert!(
        out.starts_with("started\n") && out.contains("term"),
        "SIGTERM came first: {r}"
    );
    let id = r["ContainerID"].as_str().unwrap().to_string();
    wait_for("the timed-out container is gone", T, || {
        (!exists(&id)).then_some(())
    });
    wait_for("no container is left", T, || {
        lab.containers().is_empty().then_some(())
    });
}

/// A missing image with pull `never` is rejected naming it; one that cannot be pulled fails
/// naming it, within the pull timeout; bad input (unknown Docker keys, a bad port spec, an image
/// name with spaces) is rejected saying why, and the agent goes on.
#[test]
fn missing_images_and_bad_input_get_results_that_say_why() {
    let (lab, c, _s) = start(&["--pull-timeout", "20s"]);
    let h = c.http();
    let missing = format!("{}-missing", lab.image);
    h.put(
        "/v1/kv/jobs/never",
        json!({"Type": "docker", "Image": missing, "Command": "true", "Docker": {"Pull": "never"}})
            .to_string(),
    );
    let r = result(&h, "never");
    assert_eq!(r["Status"], "rejected", "{r}");
    assert_eq!(
        r["ExitErrors"],
        format!("rejected: image {missing} is not on this node and its Pull policy is never")
    );
    // A registry on a closed loopback port (the test contacts no other host): the pull fails,
    // within the pull timeout, and says which image.
    let unpullable = format!("127.0.0.1:1/{}", lab.image);
    h.put(
        "/v1/kv/jobs/pull",
        json!({"Type": "docker", "Image": unpullable, "Command": "true"}).to_string(),
    );
    let r = result(&h, "pull");
    assert_eq!(r["Status"], "failed", "{r}");
    assert!(
        r["ExitErrors"]
            .as_str()
            .unwrap()
            .starts_with(&format!("cannot pull image {unpullable}: ")),
        "{r}"
    );

    for (id, doc, says) in [
        (
            "badkey",
            json!({"Type": "docker", "Image": lab.image, "Docker": {"Privileged": true}}),
            "rejected: Docker: unknown key \"Privileged\"",
        ),
        (
            "badport",
            json!({"Type": "docker", "Image": lab.image, "Docker": {"Ports": ["80:http"]}}),
            "rejected: Docker.Ports: bad port spec \"80:http\": a port is a number from 1 to 65535",
        ),
        (
            "badimage",
            json!({"Type": "docker", "Image": "busy box", "Command": "true"}),
            "rejected: Image \"busy box\" is not an image name: it contains spaces",
        ),
    ] {
        h.put(&format!("/v1/kv/jobs/{id}"), doc.to_string());
        let r = result(&h, id);
        assert_eq!(r["Status"], "rejected", "{r}");
        let why = r["ExitErrors"].as_str().unwrap();
        assert!(why.starts_with(says), "{id}: {why}");
    }
    // The agent goes on.
    h.put(
        "/v1/kv/jobs/after",
        json!({"Type": "docker", "Image": lab.image, "Args": ["echo", "still here"]}).to_string(),
    );
    let r = result(&h, "after");
    assert_eq!(r["Output"], "still here\n", "{r}");
    wait_for("no container is left", T, || {
        lab.containers().is_empty().then_some(())
    });
}

/// The lines a job's attempts wrote to the mounted file.
fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// SIGKILL of the agent while a container job runs, then a restart: the old container is
/// stopped and removed, and the retry runs once, never beside it. First with the container's
/// watchdog alive (it removes the container when the agent dies), then with the watchdog killed
/// too (the restarted agent finds the container by its labels and removes it before it frees
/// the job).
#[test]
fn an_agent_killed_mid_run_leaves_no_container_beside_the_retry() {
    let c = ConsulDev::start();
    let lab = ImageLab::new(&c.node);
    let mut s = c.servant(&[]).ready();
    let h = c.http();
    let dir = tempfile::tempdir().unwrap();
    for (n, kill_watchdog) in [(1, false), (2, true)] {
        let id = format!("k{n}");
        let key = format!("jobs/{id}");
        let log = dir.path().join(&id);
        h.put(
            &format!("/v1/kv/{key}"),
            json!({"Type": "docker", "Image": lab.image, "Retries": 1,
                "Docker": {"Volumes": [format!("{}:/m", dir.path().display())]},
                // The first attempt would run long enough to be seen if it were left running.
                "Command": format!("echo start $SERVANT_ATTEMPT >> /m/{id}; if [ $SERVANT_ATTEMPT = 1 ]; then sleep 40; fi; echo end $SERVANT_ATTEMPT >> /m/{id}")})
            .to_string(),
        );
        let old = wait_for("the first attempt runs", T, || {
            let c = lab.running(&key)?;
            (lines(&log) == ["start 1"]).then_some(c)
        });
        let watchdogs = procs_matching(&format!("__container-watchdog --container {old}"));
        assert_eq!(watchdogs.len(), 1, "one watchdog per container");
        if kill_watchdog {
            // The watchdog first: once the agent is dead it would remove the container at once.
            for p in watchdogs {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        s.proc.signal(nix::sys::signal::Signal::SIGKILL);
        s.proc.wait_exit(T);
        if kill_watchdog {
            std::thread::sleep(Duration::from_millis(500));
            assert!(
                lab.running(&key).as_deref() == Some(old.as_str()),
                "with its watchdog gone, the container runs on until an agent removes it"
            );
        } else {
            wait_for("the watchdog removes the container", T, || {
                (!exists(&old)).then_some(())
            });
        }
        s = c.servant(&[]).ready();
        let r = result(&h, &id);
        assert_eq!(r["Status"], "succeeded", "{r}");
        assert_eq!(r["Attempt"], 2, "{r}");
        assert!(!exists(&old), "the first attempt's container is gone");
        assert_ne!(r["ContainerID"].as_str(), Some(old.as_str()));
        // The first attempt never finished: it was gone before the second started.
        assert_eq!(lines(&log), ["start 1", "start 2", "end 2"], "{n}");
        wait_for("no container is left", T, || {
            lab.containers().is_empty().then_some(())
        });
    }
    drop(s);
}
