//! Prometheus in the tests: fetching `/metrics`, reading a sample, `promtool check metrics`,
//! and a real Prometheus server (Debian's `prometheus`) scraping an agent.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use super::{spawn_logged, Proc};

/// The value of the sample of `name` whose labels contain `label`, in Prometheus text.
pub fn gauge(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The sum of the samples of `name` whose labels contain `label` (every outcome of an
/// endpoint, say); 0 when there is none.
pub fn sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of the unlabelled sample `name`.
pub fn plain(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The agent API (`ip:port`) of the servant on Consul node `node`, from the catalog.
pub fn servant_api_of(h: &super::Http, node: &str) -> String {
    super::wait_for(
        "the node's servant service",
        std::time::Duration::from_secs(60),
        || {
            let v = h.get_json("/v1/catalog/service/servant")?;
            let s = v.as_array()?.iter().find(|s| s["Node"] == node)?.clone();
            Some(format!(
                "{}:{}",
                s["ServiceAddress"].as_str()?,
                s["ServicePort"].as_u64()?
            ))
        },
    )
}

/// Waits until the servant of each of `nodes` sees `n` servants live
/// (`servant_live_servants`). Each ranks jobs among the servants it sees, a set it reads paced
/// and only once their service passes, so a test that counts on a job's preferred node claiming
/// it waits for this first: a session in Consul is not yet a servant every node ranks.
pub fn wait_every_node_sees(h: &super::Http, nodes: &[String], n: usize) {
    for node in nodes {
        let url = format!("http://{}/metrics", servant_api_of(h, node));
        super::wait_for(
            "each node sees every servant live",
            std::time::Duration::from_secs(60),
            || {
                let (_, text) = get_metrics(&url, None);
                (plain(&text, "servant_live_servants")? == n as f64).then_some(())
            },
        );
    }
}

/// GET `url` with an optional `Accept`: (content type, body).
pub fn get_metrics(url: &str, accept: Option<&str>) -> (String, String) {
    let mut r = reqwest::blocking::Client::new().get(url);
    if let Some(a) = accept {
        r = r.header("Accept", a);
    }
    let r = r.send().expect("GET");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (ct, r.text().expect("body"))
}

/// A free TCP port on `ip`.
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A real Prometheus (Debian's `prometheus`) scraping `target` every second; killed on drop.
pub fn prometheus(ip: &str, target: &str, dir: &Path) -> (Proc, String) {
    let bin = Path::new("/usr/bin/prometheus");
    assert!(
        bin.is_file(),
        "this test needs Debian's prometheus (apt-get install prometheus; scripts/test does)"
    );
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: servant\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let listen = format!("{ip}:{}", free_port(ip));
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"));
    let p = spawn_logged("prometheus", &mut cmd, &dir.join("prometheus.log"));
    (p, listen)
}

/// `promtool check metrics` (Prometheus' own linter) accepts `text`, with nothing to say.
pub fn promtool_check(text: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, text).expect("write metrics");
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).expect("open metrics"))
        .output()
        .expect("promtool (Debian's prometheus package; scripts/test installs it)");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
