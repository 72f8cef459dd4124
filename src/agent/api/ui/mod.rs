//! The dashboard at `/ui/`: one HTML shell, a style sheet and a script, embedded in the binary
//! (no build step). Every page is the same shell; its script picks the view from the path and
//! opens the page's one event stream (`/v1/stream`).

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// The pages the script knows; anything else under `/ui/` is a 404.
const PAGES: [&str; 7] = [
    "overview",
    "jobs",
    "job",
    "apps",
    "services",
    "triggers",
    "containers",
];

/// Scripts and styles from this origin only, no framing (a write button cannot be clicked
/// through another site's frame), no referrer leaking job keys.
fn headers(content_type: &'static str) -> [(header::HeaderName, HeaderValue); 5] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
            ),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ]
}

/// `/` and `/ui`: to the overview.
pub async fn to_ui() -> Redirect {
    Redirect::to("/ui/")
}

/// `/ui/`: the overview.
pub async fn page() -> Response {
    (headers("text/html; charset=utf-8"), INDEX).into_response()
}

/// `/ui/<page>` and the two assets.
pub async fn asset(Path(path): Path<String>) -> Response {
    match path.as_str() {
        "app.js" => (headers("text/javascript; charset=utf-8"), SCRIPT).into_response(),
        "app.css" => (headers("text/css; charset=utf-8"), STYLE).into_response(),
        p if PAGES.contains(&p) => page().await,
        _ => (
            StatusCode::NOT_FOUND,
            headers("text/plain; charset=utf-8"),
            format!("no dashboard page {path:?}: see /ui/"),
        )
            .into_response(),
    }
}
