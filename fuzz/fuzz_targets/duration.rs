//! Go durations: `servant::util::duration::parse_duration`, and `go_format` of what it accepts.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use servant::util::duration::{go_format, parse_duration};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_duration(text) {
        // Written back as Go text and read again, a duration keeps its whole milliseconds
        // (within float rounding for the very large ones).
        if d.as_secs() < 1_000_000_000 {
            let again = parse_duration(&go_format(d)).expect("go_format's text parses");
            let want = Duration::from_millis(d.as_millis() as u64);
            let diff = if again > want {
                again - want
            } else {
                want - again
            };
            assert!(
                diff < Duration::from_millis(1),
                "{text:?}: {d:?} -> {again:?}"
            );
        }
    }
});
