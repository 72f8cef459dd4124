//! Headless Chromium (Debian's `chromium`) driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: commands on its fd 3, answers on its fd 4, each JSON message
//! ended by a NUL). `--dump-dom` is no use here: it never returns while a page holds an event
//! stream open. The browser runs in a process group of its own, killed with it when the guard
//! drops; its profile is a temporary directory. Screenshots go to `target/tmp/screenshots/`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// Where the tests keep their screenshots (test artefacts).
pub fn screenshot_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&d).expect("screenshot dir");
    d
}

pub struct Browser {
    child: Child,
    input: ChildStdin,
    answers: mpsc::Receiver<Value>,
    next: u64,
    _profile: tempfile::TempDir,
}

/// One tab, attached with a flat session.
pub struct Page {
    session: String,
}

impl Browser {
    pub fn start() -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|b| std::path::Path::new(b).exists())
            .expect("chromium is not installed (scripts/test installs Debian's chromium)");
        // The shell moves our pipes to the descriptors the protocol uses: its stdin (ours to
        // write) becomes fd 3, its stdout (ours to read) fd 4.
        let script = format!(
            "exec {bin} --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
             --no-first-run --no-default-browser-check --disable-extensions \
             --disable-background-networking --disable-sync --metrics-recording-only \
             --remote-debugging-pipe --user-data-dir={} --window-size=1280,900 about:blank \
             3<&0 4>&1 0</dev/null 1>&2",
            profile.path().display()
        );
        let log = std::fs::File::create(profile.path().join("chromium.log")).expect("log");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start chromium");
        let input = child.stdin.take().expect("stdin");
        let out = child.stdout.take().expect("stdout");
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            loop {
                let mut buf = Vec::new();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            input,
            answers,
            next: 0,
            _profile: profile,
        };
        b.call(None, "Browser.getVersion", json!({}));
        b
    }

    /// Sends a command and waits for its answer (events in between are dropped).
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("encode");
        bytes.push(0);
        self.input.write_all(&bytes).expect("write to chromium");
        self.input.flush().expect("flush");
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let v = self
                .answers
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("chromium refused {method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Opens `url` in a new tab of `width` × `height` CSS pixels.
    pub fn open(&mut self, url: &str, width: u32, height: u32) -> Page {
        let t = self.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target = t["targetId"].as_str().expect("targetId").to_string();
        let a = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        let page = Page {
            session: a["sessionId"].as_str().expect("sessionId").to_string(),
        };
        self.call(
            Some(&page.session),
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
        self.navigate(&page, url);
        page
    }

    pub fn navigate(&mut self, page: &Page, url: &str) {
        self.call(Some(&page.session), "Page.navigate", json!({ "url": url }));
    }

    /// Evaluates `js` in the page (promises awaited) and returns its value; a thrown exception
    /// panics with its text.
    pub fn eval(&mut self, page: &Page, js: &str) -> Value {
        let r = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("page script failed: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `js` every 100 ms until it returns something truthy; panics after `limit`.
    pub fn wait_js(&mut self, page: &Page, what: &str, limit: Duration, js: &str) -> Value {
        let end = Instant::now() + limit;
        loop {
            // A page that is navigating has no context for a moment; that is not a failure.
            let r = self.call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
            );
            let v = r["result"]["value"].clone();
            let truthy = !(v.is_null()
                || v == json!(false)
                || v == json!(0)
                || v == json!("")
                || r.get("exceptionDetails").is_some());
            if truthy {
                return v;
            }
            if Instant::now() > end {
                panic!("timed out after {limit:?} waiting for {what}; last answer {r}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the page's viewport as `<screenshot_dir>/<name>.png` and returns its path.
    pub fn screenshot(&mut self, page: &Page, name: &str) -> PathBuf {
        let r = self.call(
            Some(&page.session),
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("png data"))
            .expect("base64 png");
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: the browser and its renderer, GPU and zygote processes.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}
