//! The task document: `servant::wire::task::parse_task(name, body)`, and `parse_tasks` over a
//! listing holding it.
//!
//! Input: the KV prefix, a newline, the task name, a newline, then the body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use servant::wire::{parse_task, parse_tasks, Namespace};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let (prefix, name, body) = match (parts.next(), parts.next(), parts.next()) {
        (Some(p), Some(n), Some(b)) => (String::from_utf8_lossy(p), String::from_utf8_lossy(n), b),
        _ => ("".into(), "t".into(), data),
    };
    let one = parse_task(&name, body);
    if let Ok(t) = &one {
        assert_eq!(t.name, name);
        assert_eq!(t.app.name, t.name);
        assert!(!t.app.command.trim().is_empty());
        assert!(t.cpu.is_finite() && t.cpu >= 0.0);
        assert!((1..=86_400).contains(&t.app.health_check_interval_seconds));
    }
    let ns = Namespace::new(&prefix);
    let key = ns.task(&name);
    let nested = format!("{key}/nested");
    let (ok, bad) = parse_tasks(&ns, [(key.as_str(), body), (nested.as_str(), body)]);
    // A listing reads the key's value exactly as parse_task does, under the key's last segment.
    match ns.name_under(&ns.tasks(), &key) {
        Some(n) => {
            assert_eq!(ok.len() + bad.len(), 1);
            match &one {
                Ok(t) => assert_eq!(ok.get(n), Some(t)),
                Err(e) => assert_eq!(bad.get(n), Some(e)),
            }
        }
        None => assert!(ok.is_empty() && bad.is_empty()),
    }
});
