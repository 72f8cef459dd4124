//! Small pure helpers shared by several features.

pub mod duration;
pub mod error;
pub mod json;
pub mod time;
