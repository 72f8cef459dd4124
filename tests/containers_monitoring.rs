//! Container monitoring (issue 13) on the machine's real Docker Engine and a real Consul: the
//! node's `resource` report lists its running containers with their CPU and memory use,
//! `/metrics` serves the container gauges (checked with `promtool` and scraped by a real
//! Prometheus), and the CLI shows a running docker job's image and container and an app's
//! container use. Images are built `FROM scratch` per test and removed with every container.

mod common;

use std::time::Duration;

use common::docker::*;
use common::metrics::*;
use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(90);
const MIB: u64 = 1 << 20;

/// A Consul dev agent, a servant beside it writing its report every second, and the lab
/// (dropped last, after the agent).
fn start() -> (ImageLab, ConsulDev, Servant, tempfile::NamedTempFile) {
    let c = ConsulDev::start();
    let lab = ImageLab::new(&c.node);
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), "[apps]\nreport_interval = \"1s\"\n").unwrap();
    let s = c
        .servant(&["--config", cfg.path().to_str().unwrap()])
        .ready();
    (lab, c, s, cfg)
}

/// The node's resource report's containers, once it lists some.
fn report_containers(h: &Http, node: &str) -> Option<Vec<Value>> {
    let raw = h.kv_raw(&format!("appmgr/status/{node}/resource"))?;
    let v: Value = serde_json::from_str(&raw).ok()?;
    v["containers"].as_array().cloned()
}

/// The container of job `key` in `list`.
fn of_job<'a>(list: &'a [Value], key: &str) -> Option<&'a Value> {
    list.iter().find(|c| c["job"] == key)
}

/// A memory user (30 MB of text in a shell variable) and a busy loop as docker jobs: the
/// report in KV shows both containers with their memory and CPU; `/metrics` shows the gauges
/// (promtool accepts it; a real Prometheus scrapes and answers a query on it); `jobs` and
/// `show` name the running job's image and container.
#[test]
fn a_memory_user_and_a_busy_loop_show_in_the_report_metrics_prometheus_and_cli() {
    let (lab, c, _s, _cfg) = start();
    let h = c.http();
    h.put(
        "/v1/kv/jobs/mem",
        json!({"Type": "docker", "Image": lab.image, "Timeout": "5m",
            // The loop keeps the shell (and its variable) alive: a last `sleep` would be exec'd.
            "Command": "x=$(head -c 30000000 /dev/zero | tr '\\0' a); while :; do sleep 1; done"})
        .to_string(),
    );
    h.put(
        "/v1/kv/jobs/busy",
        json!({"Type": "docker", "Image": lab.image, "Timeout": "5m",
            "Command": "while :; do :; done"})
        .to_string(),
    );

    // The report: both containers, the memory user at 25 MB or more, the loop using CPU.
    let list = wait_for("both containers in the resource report", T, || {
        let l = report_containers(&h, &c.node)?;
        let mem = of_job(&l, "jobs/mem")?["memory_bytes"].as_u64()?;
        let cpu = of_job(&l, "jobs/busy")?["cpu_percent"].as_f64()?;
        (mem >= 25_000_000 && cpu > 1.0).then_some(l)
    });
    let busy_id = lab.running("jobs/busy").expect("the busy container runs");
    let mem_id = lab.running("jobs/mem").expect("the memory user runs");
    let busy = of_job(&list, "jobs/busy").unwrap();
    let mem = of_job(&list, "jobs/mem").unwrap();
    assert_eq!(busy["id"], busy_id.as_str(), "{busy}");
    assert_eq!(mem["id"], mem_id.as_str(), "{mem}");
    for x in [busy, mem] {
        assert_eq!(x["image"], lab.image.as_str(), "{x}");
        assert!(!x["name"].as_str().unwrap_or("").is_empty(), "{x}");
        assert!(x.get("app").is_none(), "{x}");
        assert!(
            x["memory_limit_bytes"].as_u64().unwrap_or(0) >= x["memory_bytes"].as_u64().unwrap(),
            "{x}"
        );
    }
    // A busy loop is at most one CPU (a little over for rounding between two samples).
    assert!(busy["cpu_percent"].as_f64().unwrap() <= 110.0, "{busy}");
    let busy_name = busy["name"].as_str().unwrap().to_string();
    let mem_name = mem["name"].as_str().unwrap().to_string();

    // /metrics: the classic text format by default, with the gauges.
    let api = servant_api(&h);
    let (ct, text) = get_metrics(&format!("http://{api}/metrics"), None);
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let label = |name: &str| {
        format!(
            "name=\"{name}\",image=\"{}\",kind=\"job\",app=\"\"",
            lab.image
        )
    };
    let m = gauge(
        &text,
        "servant_container_memory_usage_bytes",
        &label(&mem_name),
    );
    assert!(m.unwrap_or(0.0) >= 25e6, "{m:?} in\n{text}");
    let l = gauge(
        &text,
        "servant_container_memory_limit_bytes",
        &label(&mem_name),
    );
    assert!(l.unwrap_or(0.0) >= m.unwrap(), "{l:?} in\n{text}");
    let cpu = wait_for("the busy loop's CPU gauge", T, || {
        let (_, text) = get_metrics(&format!("http://{api}/metrics"), None);
        gauge(
            &text,
            "servant_container_cpu_usage_ratio",
            &label(&busy_name),
        )
        .filter(|v| *v > 0.1)
    });
    assert!(cpu <= 1.1, "{cpu}");
    assert!(text.contains("servant_build_info{version="), "{text}");
    assert!(
        !text.contains("jobs/mem") && !text.contains("jobs/busy"),
        "no job key in a label:\n{text}"
    );
    // promtool (Prometheus' own linter) accepts it.
    let dir = tempfile::tempdir().unwrap();
    promtool_check(&text);
    // OpenMetrics when asked.
    let (ct, om) = get_metrics(
        &format!("http://{api}/metrics"),
        Some("application/openmetrics-text;version=1.0.0"),
    );
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    assert!(om.contains("servant_container_memory_usage_bytes{"), "{om}");

    // A real Prometheus scrapes the agent and answers a query on the gauge.
    let (_prom, prom_addr) = prometheus(&c.ip, &api, dir.path());
    let ph = Http::new(&prom_addr);
    let q = "/api/v1/query?query=servant_container_memory_usage_bytes%7Bkind%3D%22job%22%7D";
    let series = wait_for("Prometheus has scraped the gauge", T, || {
        // Refused until Prometheus listens.
        let (_, body) = ph.try_get(q)?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let r = v["data"]["result"].as_array()?.clone();
        (r.len() >= 2).then_some(r)
    });
    let scraped = series
        .iter()
        .find(|s| s["metric"]["name"] == mem_name.as_str())
        .unwrap_or_else(|| panic!("no series of {mem_name}: {series:?}"));
    assert_eq!(scraped["metric"]["image"], lab.image.as_str());
    assert_eq!(
        scraped["metric"]["job"], "servant",
        "Prometheus' own job label"
    );
    let v: f64 = scraped["value"][1].as_str().unwrap().parse().unwrap();
    assert!(v >= 25e6, "{scraped}");

    // `jobs` and `show`: the running job's image and container.
    let (code, out, err) = cli(&c.addr(), &["jobs"]);
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("jobs/busy"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("running"), "{out}");
    assert!(
        row.contains(&format!(
            "image {}, container {}",
            lab.image,
            &busy_id[..12]
        )),
        "{out}"
    );
    let (code, out, err) = cli(&c.addr(), &["show", "busy"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("Image: {}", lab.image)), "{out}");
    assert!(out.contains(&format!("Container: {busy_id}")), "{out}");
    let (code, out, err) = cli(&c.addr(), &["show", "--json", "busy"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["ContainerID"], busy_id.as_str(), "{v}");
    // The agent's API says the same.
    let v = Http::new(&api)
        .get_json("/v1/jobs/jobs/busy")
        .expect("/v1/jobs/jobs/busy");
    assert_eq!(v["State"], "running", "{v}");
    assert_eq!(v["Image"], lab.image.as_str(), "{v}");
    assert_eq!(v["ContainerID"], busy_id.as_str(), "{v}");

    // A container that ends leaves the report and the metrics.
    let (ok, _, err) = docker(&["kill", &busy_id]);
    assert!(ok, "{err}");
    wait_for("the ended container leaves the report", T, || {
        let l = report_containers(&h, &c.node)?;
        (of_job(&l, "jobs/busy").is_none() && of_job(&l, "jobs/mem").is_some()).then_some(())
    });
    wait_for("and the metrics", T, || {
        let (_, text) = get_metrics(&format!("http://{api}/metrics"), None);
        (!text.contains(&busy_name) && text.contains(&mem_name)).then_some(())
    });
}

/// `servant app ls` shows the CPU and memory of an app's container (a container labelled with
/// the node and the app, as the apps' containers are) beside the app; a process app shows `-`.
#[test]
fn app_ls_shows_an_apps_container_use() {
    let (lab, c, _s, _cfg) = start();
    let h = c.http();
    for name in ["web", "plain"] {
        let (st, b) = h.put(
            &format!("/v1/kv/appmgr/task/{name}"),
            json!({"replication": 1, "content": {"command": "exec sleep 600"}}).to_string(),
        );
        assert_eq!(st, 200, "{b}");
    }
    let (ok, id, err) = docker(&[
        "run",
        "-d",
        "--label",
        &format!("servant.node={}", c.node),
        "--label",
        "servant.app=web",
        &lab.image,
        "sh",
        "-c",
        "x=$(head -c 20000000 /dev/zero | tr '\\0' a); while :; do :; done",
    ]);
    assert!(ok, "{err}");
    let id = id.trim().to_string();
    let out = wait_for("app ls with the container's use", T, || {
        let (code, out, _) = cli(&c.addr(), &["app", "ls"]);
        let web = out.lines().find(|l| l.contains(" web "))?;
        let plain = out.lines().find(|l| l.contains(" plain "))?;
        (code == 0 && web.contains("running") && plain.contains("running") && {
            let cells: Vec<&str> = web.split_whitespace().collect();
            // ... CPU  MEMORY: "12.34%  19.1MiB / 7.7MiB"
            let cpu = cells.iter().find(|c| c.ends_with('%'))?;
            let mem = cells
                .iter()
                .position(|c| *c == "/")
                .and_then(|i| cells.get(i - 1))?;
            cpu.trim_end_matches('%').parse::<f64>().ok()? > 1.0
                && mem.trim_end_matches("MiB").parse::<f64>().ok()? >= 19.0
        })
        .then_some(out)
    });
    let header = out.lines().next().unwrap();
    assert!(header.contains("CPU") && header.contains("MEMORY"), "{out}");
    let plain = out.lines().find(|l| l.contains(" plain ")).unwrap();
    let cells: Vec<&str> = plain.split_whitespace().collect();
    assert_eq!(cells[cells.len() - 2..], ["-", "-"], "{out}");
    let report = report_containers(&h, &c.node).unwrap();
    let x = report
        .iter()
        .find(|x| x["app"] == "web")
        .expect("in the report");
    assert_eq!(x["id"], id.as_str());
    assert!(x.get("job").is_none(), "{x}");
    assert!(x["memory_bytes"].as_u64().unwrap() >= 19 * MIB, "{x}");
}
