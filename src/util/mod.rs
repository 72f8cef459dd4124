//! Small helpers shared by several features: pure ones, and the one place that writes a
//! command's output (`output`).

pub mod backoff;
pub mod duration;
pub mod error;
pub mod json;
pub mod output;
pub mod time;
