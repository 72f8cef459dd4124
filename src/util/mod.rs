//! Small pure helpers shared by several features.

pub mod duration;
pub mod time;
