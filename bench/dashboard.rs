//! Dashboard benchmark: `cargo bench --bench dashboard`.
//!
//! Against a real `consul agent -dev` and one `servant agent`, a "page" being an open event
//! stream `/v1/stream?view=jobs&limit=50` read continuously by its own thread (a raw HTTP/1.1
//! connection, no timeout), as the dashboard's jobs page holds it:
//! 1. Consul requests the agent makes per minute, from its own `servant_consul_requests_total`
//!    (all series summed, sampled just before and just after a window), with 0, 1 and 20 pages
//!    open, on an idle cluster and on a busy one (the bench PUTs `BENCH_RATE` trivial jobs
//!    `jobs/<id>` = `{"Command":"true"}` a second during the window). Pages are opened and
//!    have received their first event before the window starts, so the hub's start-up reads are
//!    outside it. The 0-page cases run first: the dashboard's watches (agent/api/hub.rs) have
//!    never started then, which the agent's log confirms. Events each page received in the
//!    window, Consul response bytes and the agent's CPU time are shown beside. Nothing is
//!    subtracted.
//! 2. From a job result's write to the change in an open page: the bench PUTs a valid result
//!    document to `jdone_jid/jobs/<id>` (t0 just before the PUT) and t1 is when a page's stream
//!    delivers an event holding that key; `BENCH_TRIALS` times with 1 page and with 20 pages
//!    (per trial: the slowest page and the median page), p50 and p99 (nearest rank).
//! 3. The agent's RSS (VmRSS) with 20 pages open and 1,000 job results in KV (written by
//!    `/v1/txn`, 64 operations each), against the same agent before any page was opened. The
//!    agent is restarted for this part (SIGTERM, a fresh data dir), so its "no page" figure is
//!    one whose dashboard watches never ran.
//!
//! Knobs: `BENCH_WINDOW_SECS` (default 60), `BENCH_TRIALS` (default 50), `BENCH_RATE` (jobs a
//! second in the busy windows, default 5). Medians and counts are reported, never asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::*;
use serde_json::{json, Value};
use servant::wire::{JobResult, JobStatus};

const T: Duration = Duration::from_secs(60);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Nearest-rank percentile of a sorted slice.
fn pct(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A page watches for events holding `needle`; hits are sent as (trial, page, when).
struct Watch {
    needle: Mutex<(u64, String)>,
    hits: Mutex<Sender<(u64, usize, Instant)>>,
}

/// One open event stream, read by its own thread.
struct Page {
    sock: TcpStream,
    events: Arc<AtomicU64>,
    /// The data of the last event received.
    last: Arc<Mutex<String>>,
    thread: Option<JoinHandle<()>>,
}

/// The body of a chunked HTTP/1.1 answer.
struct Chunked<R> {
    inner: R,
    left: usize,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            let mut line = String::new();
            // The CRLF that ends the previous chunk, then the size line.
            while line.trim().is_empty() {
                line.clear();
                if self.inner.read_line(&mut line)? == 0 {
                    return Ok(0);
                }
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if self.left == 0 {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let got = self.inner.read(&mut buf[..n])?;
        self.left -= got;
        Ok(got)
    }
}

impl Page {
    fn open(api: &str, path: &str, idx: usize, watch: Arc<Watch>) -> Page {
        let mut sock = TcpStream::connect(api).expect("connect to the agent API");
        write!(
            sock,
            "GET {path} HTTP/1.1\r\nHost: {api}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .expect("send the stream request");
        let events = Arc::new(AtomicU64::new(0));
        let last = Arc::new(Mutex::new(String::new()));
        let (ev, la, rd) = (
            events.clone(),
            last.clone(),
            sock.try_clone().expect("clone"),
        );
        let thread = std::thread::spawn(move || read_page(rd, idx, ev, la, watch));
        Page {
            sock,
            events,
            last,
            thread: Some(thread),
        }
    }

    fn events(&self) -> u64 {
        self.events.load(Ordering::SeqCst)
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_page(
    sock: TcpStream,
    idx: usize,
    events: Arc<AtomicU64>,
    last: Arc<Mutex<String>>,
    watch: Arc<Watch>,
) {
    let mut r = BufReader::new(sock);
    let mut chunked = false;
    let mut line = String::new();
    let mut status = true;
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if status {
            assert!(line.contains(" 200 "), "stream refused: {line}");
            status = false;
        }
        let l = line.trim().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
    let body: Box<dyn Read> = if chunked {
        Box::new(Chunked { inner: r, left: 0 })
    } else {
        Box::new(r)
    };
    let mut body = BufReader::new(body);
    let mut data = String::new();
    loop {
        line.clear();
        match body.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(d) = l.strip_prefix("data:") {
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        } else if l.is_empty() && !data.is_empty() {
            let at = Instant::now();
            events.fetch_add(1, Ordering::SeqCst);
            let trial = {
                let n = watch.needle.lock().unwrap();
                (!n.1.is_empty() && data.contains(&n.1)).then_some(n.0)
            };
            if let Some(trial) = trial {
                let _ = watch.hits.lock().unwrap().send((trial, idx, at));
            }
            *last.lock().unwrap() = std::mem::take(&mut data);
        }
    }
}

/// Opens `n` pages on `path` and waits for each one's first event.
fn open_pages(api: &str, path: &str, n: usize, watch: &Arc<Watch>) -> Vec<Page> {
    let pages: Vec<Page> = (0..n)
        .map(|i| Page::open(api, path, i, watch.clone()))
        .collect();
    wait_for("every page's first event", T, || {
        pages.iter().all(|p| p.events() > 0).then_some(())
    });
    pages
}

/// The agent's Consul requests and response bytes so far, all series summed.
fn consul_counts(agent: &Http) -> (f64, f64) {
    let (code, text) = agent.get("/metrics");
    assert_eq!(code, 200, "/metrics: {text}");
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (
        sum("servant_consul_requests_total"),
        sum("servant_consul_response_bytes_total"),
    )
}

/// Submits `rate` jobs a second until `stop`; returns how many.
fn submitter(consul: String, tag: String, rate: u64, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let h = Http::new(&consul);
        let every = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let start = Instant::now();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let (code, body) = h.put(&format!("/v1/kv/jobs/{tag}-{n}"), r#"{"Command":"true"}"#);
            assert_eq!(code, 200, "job PUT: {body}");
            n += 1;
            let next = start + every * n as u32;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
        }
        n
    })
}

/// Waits until no job is queued or running (`jobs/` holds at most its folder key).
fn drain(h: &Http) {
    wait_for("the job queue to drain", Duration::from_secs(180), || {
        let (code, body) = h.get("/v1/kv/jobs/?keys");
        (code == 404 || body.trim() == "[]" || body.trim() == r#"["jobs/"]"#).then_some(())
    });
}

struct Case {
    busy: bool,
    pages: usize,
    minutes: f64,
    requests: f64,
    bytes: f64,
    cpu_s: f64,
    events: Vec<u64>,
    jobs: u64,
    hub_started: bool,
    /// Requests in the window from Consul's own log, by method and path (a KV key cut after
    /// its first segment), per minute, most first.
    by_path: Vec<(String, f64)>,
}

/// Consul's log (`-dev` logs every HTTP request at DEBUG) from byte `from`: requests by method
/// and path, a KV key cut after its first segment, other paths after three segments.
fn requests_by_path(log: &std::path::Path, from: usize, to: usize) -> BTreeMap<String, f64> {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[from.min(text.len())..to.min(text.len())]);
    let mut out = BTreeMap::new();
    for l in text.lines().filter(|l| l.contains("Request finished")) {
        let method = l.split("method=").nth(1).and_then(|m| m.split(' ').next());
        let url = l.split("url=").nth(1).and_then(|u| u.split(' ').next());
        let (Some(method), Some(url)) = (method, url) else {
            continue;
        };
        let path = url.split('?').next().unwrap_or(url);
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let group = if segs.get(1) == Some(&"kv") {
            format!("/v1/kv/{}/", segs.get(2).unwrap_or(&""))
        } else {
            format!(
                "/{}",
                segs.iter().take(3).copied().collect::<Vec<_>>().join("/")
            )
        };
        *out.entry(format!("{method} {group}")).or_insert(0.0) += 1.0;
    }
    out
}

fn log_len(p: &std::path::Path) -> usize {
    std::fs::metadata(p).map(|m| m.len() as usize).unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
fn window(
    c: &ConsulDev,
    s: &Servant,
    agent: &Http,
    api: &str,
    watch: &Arc<Watch>,
    busy: bool,
    pages: usize,
    secs: u64,
    rate: u64,
) -> Case {
    let h = c.http();
    let open = open_pages(api, "/v1/stream?view=jobs&limit=50", pages, watch);
    std::thread::sleep(Duration::from_secs(2));
    let ev0: Vec<u64> = open.iter().map(Page::events).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let pid = std::process::id();
    let tag = format!("busy{pages}-{pid}");
    let log = c.dir.path().join("consul.log");
    let l0 = log_len(&log);
    let (r0, b0) = consul_counts(agent);
    let cpu0 = cpu_ticks(s.proc.pid());
    let t0 = Instant::now();
    let sub = busy.then(|| submitter(c.addr(), tag, rate, stop.clone()));
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::SeqCst);
    let jobs = sub.map(|t| t.join().expect("submitter")).unwrap_or(0);
    let (r1, b1) = consul_counts(agent);
    let cpu1 = cpu_ticks(s.proc.pid());
    let spent = t0.elapsed();
    // Consul writes its log line when a request ends; let the last ones land.
    std::thread::sleep(Duration::from_millis(300));
    let l1 = log_len(&log);
    let events: Vec<u64> = open
        .iter()
        .zip(&ev0)
        .map(|(p, e0)| p.events() - e0)
        .collect();
    drop(open);
    let hub_started = s.proc.log_text().contains("dashboard jobs");
    if busy {
        drain(&h);
    }
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let minutes = spent.as_secs_f64() / 60.0;
    let mut by_path: Vec<(String, f64)> = requests_by_path(&log, l0, l1)
        .into_iter()
        .map(|(k, v)| (k, v / minutes))
        .collect();
    by_path.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then_with(|| a.0.cmp(&b.0)));
    let case = Case {
        busy,
        pages,
        minutes,
        requests: r1 - r0,
        bytes: b1 - b0,
        cpu_s: (cpu1 - cpu0) as f64 / tick,
        events,
        jobs,
        hub_started,
        by_path,
    };
    eprintln!(
        "  {} / {} pages: {:.0} requests in {:.1} s ({:.1}/min), {} jobs, events per page {:?}",
        if busy { "busy" } else { "idle" },
        pages,
        case.requests,
        spent.as_secs_f64(),
        case.requests / minutes,
        jobs,
        case.events
    );
    case
}

fn result_doc(id: &str, node: &str) -> String {
    let end = now_ns();
    let r = JobResult {
        id: id.to_string(),
        command: "true".into(),
        job_type: "shell".into(),
        start_time: end - 1_000_000,
        end_time: end,
        start_time_str: servant::util::time::rfc3339_ns(end - 1_000_000),
        end_time_str: servant::util::time::rfc3339_ns(end),
        execution_node: node.to_string(),
        exit_code: 0,
        status: Some(JobStatus::Succeeded),
        attempt: 1,
        ..Default::default()
    };
    serde_json::to_string(&r).expect("encode a result")
}

/// Per trial: every page's latency in ms, from the PUT of a result to an event holding it.
fn latency_trials(
    h: &Http,
    node: &str,
    watch: &Arc<Watch>,
    rx: &Receiver<(u64, usize, Instant)>,
    pages: usize,
    trials: u64,
    first_trial: u64,
) -> Vec<Vec<f64>> {
    let pid = std::process::id();
    let mut out = Vec::new();
    for t in 0..trials {
        let trial = first_trial + t;
        let id = format!("lat{pages}-{t}-{pid}");
        *watch.needle.lock().unwrap() = (trial, format!("\"Key\":\"jobs/{id}\""));
        let doc = result_doc(&id, node);
        let t0 = Instant::now();
        let (code, body) = h.put(&format!("/v1/kv/jdone_jid/jobs/{id}"), doc);
        assert_eq!(code, 200, "result PUT: {body}");
        let mut got: Vec<Option<f64>> = vec![None; pages];
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "trial {t}: not every page saw {id}");
            if let Ok((tr, idx, at)) = rx.recv_timeout(left) {
                if tr == trial && got[idx].is_none() {
                    got[idx] = Some(at.duration_since(t0).as_secs_f64() * 1000.0);
                }
            }
        }
        out.push(got.into_iter().flatten().collect());
        std::thread::sleep(Duration::from_millis(200));
    }
    *watch.needle.lock().unwrap() = (u64::MAX, String::new());
    out
}

/// VmRSS and VmHWM of a process, in KiB.
fn rss_hwm(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Writes `n` results `jdone_jid/jobs/<tag>-<i>` by `/v1/txn`, 64 operations each.
fn write_results(h: &Http, node: &str, tag: &str, n: usize) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    for batch in ids.chunks(64) {
        let ops: Vec<Value> = batch
            .iter()
            .map(|id| {
                json!({"KV": {
                    "Verb": "set",
                    "Key": format!("jdone_jid/jobs/{id}"),
                    "Value": b64.encode(result_doc(id, node)),
                }})
            })
            .collect();
        let (code, body) = h.put("/v1/txn", Value::Array(ops).to_string());
        assert_eq!(code, 200, "txn: {body}");
    }
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn main() {
    let secs = env_u64("BENCH_WINDOW_SECS", 60);
    let trials = env_u64("BENCH_TRIALS", 50);
    let rate = env_u64("BENCH_RATE", 5);
    let c = ConsulDev::start();
    let h = c.http();
    let s = c.servant(&[]).ready();
    let api = servant_api(&h);
    let agent = Http::new(&api);
    let (tx, rx) = channel();
    let watch = Arc::new(Watch {
        needle: Mutex::new((u64::MAX, String::new())),
        hits: Mutex::new(tx),
    });
    // Let the agent's start-up reads and writes pass.
    std::thread::sleep(Duration::from_secs(5));

    // 1. Consul requests per minute. The 0-page cases first: the hub has never run.
    eprintln!("part 1: Consul requests per minute, {secs} s windows");
    let mut cases = Vec::new();
    for (busy, pages) in [
        (false, 0),
        (true, 0),
        (false, 1),
        (false, 20),
        (true, 1),
        (true, 20),
    ] {
        cases.push(window(
            &c, &s, &agent, &api, &watch, busy, pages, secs, rate,
        ));
    }

    // 2. Result write → page.
    eprintln!("part 2: result write -> page, {trials} trials");
    let one = {
        let _p = open_pages(&api, "/v1/stream?view=jobs&limit=50", 1, &watch);
        std::thread::sleep(Duration::from_secs(1));
        latency_trials(&h, &c.node, &watch, &rx, 1, trials, 0)
    };
    let twenty = {
        let _p = open_pages(&api, "/v1/stream?view=jobs&limit=50", 20, &watch);
        std::thread::sleep(Duration::from_secs(1));
        latency_trials(&h, &c.node, &watch, &rx, 20, trials, trials)
    };

    // 3. RSS: a fresh agent, 1,000 results, no page, then 20 pages.
    eprintln!("part 3: RSS with 1,000 results");
    s.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let mut s = s;
    let exited = s.proc.wait_exit(Duration::from_secs(30));
    drop(s);
    let (code, body) = h.delete("/v1/kv/jdone_jid/?recurse");
    assert_eq!(code, 200, "delete results: {body}");
    write_results(&h, &c.node, "rss", 1000);
    let s = c.servant(&[]).ready();
    let api2 = wait_for("the new agent's API", T, || {
        let a = servant_api(&h);
        (a != api
            && Http::new(&a)
                .try_get("/metrics")
                .is_some_and(|(c, _)| c == 200))
        .then_some(a)
    });
    std::thread::sleep(Duration::from_secs(5));
    let pid = s.proc.pid();
    let (rss0, _) = rss_hwm(pid);
    let hub_before = s.proc.log_text().contains("dashboard jobs");
    let (rss20, rss_all, totals) = {
        let p = open_pages(&api2, "/v1/stream?view=jobs&limit=50", 20, &watch);
        std::thread::sleep(Duration::from_secs(5));
        let (rss20, _) = rss_hwm(pid);
        let totals: Vec<u64> = p
            .iter()
            .map(|p| {
                serde_json::from_str::<Value>(&p.last.lock().unwrap())
                    .ok()
                    .and_then(|v| v["Total"].as_u64())
                    .unwrap_or(0)
            })
            .collect();
        drop(p);
        let p = open_pages(&api2, "/v1/stream?view=jobs&limit=1000", 20, &watch);
        std::thread::sleep(Duration::from_secs(5));
        let (rss_all, _) = rss_hwm(pid);
        drop(p);
        (rss20, rss_all, totals)
    };
    std::thread::sleep(Duration::from_secs(5));
    let (rss_after, hwm) = rss_hwm(pid);

    // The table.
    println!();
    println!(
        "## Consul requests by the agent ({secs} s windows, busy = {rate} jobs `true` a second)"
    );
    println!("| cluster | pages | hub running | requests/min | response KiB/min | agent CPU s/min | events per page in window (min/median/max) | jobs submitted |");
    println!("|---|---|---|---|---|---|---|---|");
    for k in &cases {
        let ev = if k.events.is_empty() {
            "-".to_string()
        } else {
            let e = sorted(k.events.iter().map(|&e| e as f64).collect());
            format!(
                "{:.0} / {:.0} / {:.0}",
                e[0],
                e[e.len() / 2],
                e[e.len() - 1]
            )
        };
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.2} | {} | {} |",
            if k.busy { "busy" } else { "idle" },
            k.pages,
            if k.pages > 0 {
                "yes"
            } else if k.hub_started {
                "yes (!)"
            } else {
                "no"
            },
            k.requests / k.minutes,
            k.bytes / 1024.0 / k.minutes,
            k.cpu_s / k.minutes,
            ev,
            if k.busy {
                k.jobs.to_string()
            } else {
                "-".into()
            }
        );
    }
    let per_min = |busy: bool, pages: usize| {
        cases
            .iter()
            .find(|k| k.busy == busy && k.pages == pages)
            .map(|k| k.requests / k.minutes)
            .unwrap_or(f64::NAN)
    };
    println!(
        "| ratio 20 pages / 1 page | | | idle {:.2}, busy {:.2} | | | | |",
        per_min(false, 20) / per_min(false, 1),
        per_min(true, 20) / per_min(true, 1)
    );
    println!();
    println!("## The same windows by path, from Consul's own request log (per minute; the busy windows' `PUT /v1/kv/jobs/` include the bench's submissions)");
    for k in &cases {
        let top: Vec<String> = k
            .by_path
            .iter()
            .take(12)
            .map(|(p, n)| format!("{p} {n:.0}"))
            .collect();
        println!(
            "- {} / {} pages: {}",
            if k.busy { "busy" } else { "idle" },
            k.pages,
            top.join(", ")
        );
    }
    println!();
    println!("## Result write -> event in an open jobs page ({trials} trials, ms)");
    println!("| pages | figure | p50 | p99 |");
    println!("|---|---|---|---|");
    let one_v = sorted(one.iter().flatten().copied().collect());
    println!(
        "| 1 | the page | {:.1} | {:.1} |",
        pct(&one_v, 50.0),
        pct(&one_v, 99.0)
    );
    let slowest = sorted(
        twenty
            .iter()
            .map(|t| t.iter().copied().fold(0.0, f64::max))
            .collect(),
    );
    let median_page = sorted(
        twenty
            .iter()
            .map(|t| {
                let s = sorted(t.clone());
                s[s.len() / 2]
            })
            .collect(),
    );
    println!(
        "| 20 | slowest page of the trial | {:.1} | {:.1} |",
        pct(&slowest, 50.0),
        pct(&slowest, 99.0)
    );
    println!(
        "| 20 | median page of the trial | {:.1} | {:.1} |",
        pct(&median_page, 50.0),
        pct(&median_page, 99.0)
    );
    println!();
    println!("## Agent RSS, 1,000 job results in KV (restarted agent)");
    println!("| state | VmRSS MiB |");
    println!("|---|---|");
    println!(
        "| no page opened yet (hub started: {}) | {:.1} |",
        if hub_before { "yes (!)" } else { "no" },
        mib(rss0)
    );
    println!(
        "| 20 pages, jobs view limit=50 (Total seen: {}..{}) | {:.1} |",
        totals.iter().min().unwrap_or(&0),
        totals.iter().max().unwrap_or(&0),
        mib(rss20)
    );
    println!("| 20 pages, jobs view limit=1000 | {:.1} |", mib(rss_all));
    println!(
        "| 5 s after every page closed (VmHWM {:.1}) | {:.1} |",
        mib(hwm),
        mib(rss_after)
    );
    println!(
        "| difference, 20 pages limit=50 - no page | {:+.1} |",
        mib(rss20) - mib(rss0)
    );
    if exited.is_none() {
        println!("(the first agent did not exit within 30 s of SIGTERM and was killed)");
    }
    drop(s);
}
