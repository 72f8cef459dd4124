//! The embedded server's HTTP API (`servant::devserver::http::router`), called without sockets:
//! each input is a short script of requests, run in order against a fresh server (a new data
//! file on tmpfs) through the router with tower's `oneshot`, on a current-thread runtime whose
//! clock is paused (a blocking read's wait passes at once, so none holds the run up).
//!
//! The script is text. A request is a line `METHOD PATH?QUERY`, then its body, up to a line
//! `~~~` or the end. `$S` anywhere in a request stands for the ID of the last session the
//! script created, so locks, renewals and session ends are reached.

#![no_main]

use axum::body::{to_bytes, Body};
use axum::http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use servant::devserver::{http::router, server::Core};
use tower::ServiceExt;

/// Requests run per input at most: enough for create-lock-release sequences.
const MAX_REQUESTS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let requests: Vec<(&str, &str, &str)> = text
        .split("\n~~~\n")
        .take(MAX_REQUESTS)
        .filter_map(|req| {
            let (line, body) = req.split_once('\n').unwrap_or((req, ""));
            let (method, target) = line.split_once(' ')?;
            Some((method, target, body))
        })
        .collect();
    if requests.is_empty() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("servant-fuzz")
        .tempdir_in(shm())
        .expect("temporary directory");
    let core = Core::open(&dir.path().join("dev.redb"), "fuzz", "127.0.0.1").expect("open");
    let app = router(core);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut session = String::from("00000000-0000-0000-0000-000000000000");
        for (method, target, body) in requests {
            let Ok(method) = Method::from_bytes(method.as_bytes()) else {
                continue;
            };
            let target = target.replace("$S", &session);
            let body = body.replace("$S", &session);
            // A request line hyper would refuse never reaches the router.
            let Ok(req) = Request::builder()
                .method(method)
                .uri(target.as_str())
                .body(Body::from(body))
            else {
                continue;
            };
            let resp = app.clone().oneshot(req).await.expect("infallible");
            let status = resp.status();
            let bytes = to_bytes(resp.into_body(), usize::MAX).await.expect("body");
            if status.is_success() && target.starts_with("/v1/session/create") {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    if let Some(id) = v.get("ID").and_then(|i| i.as_str()) {
                        session = id.to_string();
                    }
                }
            }
        }
    });
});

/// tmpfs when there is one: every input opens a new data file, and its syncs cost nothing there.
fn shm() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}
