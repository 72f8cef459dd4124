//! The template engine: `servant::templates::parse(name, text, data_funcs)`, then a render with
//! empty data (`.` is null, every Consul lookup answers the runner's neutral value), as the
//! runner's first render before any dependency has been fetched.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use servant::templates::parse;
use servant::templates::source::{CachedSource, DATA_FUNCS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse("fuzz", text, DATA_FUNCS) {
        Ok(t) => {
            let _ = t.literal_calls();
            let _ = t.execute(&Value::Null, &mut CachedSource::default());
        }
        Err(e) => {
            // A parse error points at a line of the text.
            let lines = text.matches('\n').count() + 1;
            assert!(e.line() >= 1 && e.line() <= lines, "{e} for {text:?}");
        }
    }
});
