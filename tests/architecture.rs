//! The dependency direction of ARCHITECTURE.md, checked on the source: `cli → agent → features
//! (jobs, apps, checks, templates, registrator) → {process, consul} → wire → util`, and `devserver` on
//! nothing but `util` and `wire`. A `crate::` path that points up or sideways fails this test,
//! naming the file and line.

use std::collections::BTreeMap;
use std::path::Path;

/// What each top-level module may use besides itself.
fn allowed() -> BTreeMap<&'static str, Vec<&'static str>> {
    let base = vec!["util", "wire"];
    let lower = vec!["util", "wire", "consul", "process"];
    let features = ["jobs", "apps", "checks", "templates", "registrator"];
    let mut m = BTreeMap::new();
    m.insert("util", vec![]);
    m.insert("wire", vec!["util"]);
    m.insert("consul", base.clone());
    m.insert("process", base.clone());
    m.insert("devserver", base.clone());
    for f in features {
        m.insert(f, lower.clone());
    }
    let mut agent = lower.clone();
    agent.extend(features);
    agent.push("devserver");
    m.insert("agent", agent.clone());
    let mut cli = agent;
    cli.push("agent");
    m.insert("cli", cli);
    m
}

/// Every `crate::name` a piece of source refers to, grouped imports (`crate::{a::x, b::{y, z}}`)
/// included, also when rustfmt spreads the group over several lines.
fn crate_refs(text: &str) -> Vec<String> {
    fn ident(s: &str) -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    }
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // The group's top-level items, split at commas outside nested braces.
            let mut depth = 0usize;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.push(ident(&group[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(&group[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(after));
        }
        rest = after;
    }
    out.retain(|n| !n.is_empty());
    out
}

/// The statement that starts at `lines[n]`: that line, and the lines after it while a
/// `crate::{` group it opens is not closed. Returns the text and how many lines it spans.
fn statement(lines: &[&str], n: usize) -> (String, usize) {
    let mut text = lines[n].to_string();
    let mut used = 1;
    if let Some(i) = text.find("crate::{") {
        // Whether the group's own `{` is still open at the end of `t`.
        let open = |t: &str| {
            let mut depth = 0usize;
            for c in t[i + "crate::".len()..].chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return false;
                        }
                    }
                    _ => {}
                }
            }
            true
        };
        while open(&text) && n + used < lines.len() {
            text.push(' ');
            text.push_str(lines[n + used].split("//").next().unwrap_or(""));
            used += 1;
        }
    }
    (text, used)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn dependencies_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed = allowed();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or("")
            .trim_end_matches(".rs")
            .to_string();
        // The crate root and the binary wire everything together.
        if top == "lib" || top == "main" {
            continue;
        }
        let may = allowed
            .get(top.as_str())
            .unwrap_or_else(|| panic!("{} is a new top-level module: give it a layer here", top));
        let text = std::fs::read_to_string(f).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        let mut n = 0;
        while n < lines.len() {
            if lines[n].trim_start().starts_with("//") {
                n += 1;
                continue;
            }
            let (stmt, span) = statement(&lines, n);
            for used in crate_refs(&stmt) {
                if used != top && !may.contains(&used.as_str()) {
                    wrong.push(format!(
                        "{}:{}: {top} uses crate::{used}: {}",
                        rel.display(),
                        n + 1,
                        lines[n].trim()
                    ));
                }
            }
            n += span;
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies that point the wrong way (see ARCHITECTURE.md):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scanner_sees_grouped_and_inline_paths() {
    assert_eq!(
        crate_refs("use crate::{consul::Client, wire::Namespace};"),
        vec!["consul", "wire"]
    );
    assert_eq!(
        crate_refs("    let x = crate::jobs::claim::f(crate::util::g());"),
        vec!["jobs", "util"]
    );
    assert_eq!(
        crate_refs("use crate::{consul::{Client, QueryOptions}, wire::{self, Namespace}, util};"),
        vec!["consul", "wire", "util"]
    );
}

/// A group rustfmt spreads over several lines was not seen at all: only the line with
/// `crate::{` was read, and it names no module.
#[test]
fn the_scanner_sees_a_group_over_several_lines() {
    let src = "use crate::{\n    consul::{Client, QueryOptions},\n    // jobs::Not,\n    jobs::worker::Worker,\n};\nfn f() {}";
    let lines: Vec<&str> = src.lines().collect();
    let (stmt, span) = statement(&lines, 0);
    assert_eq!(span, 5);
    assert_eq!(crate_refs(&stmt), vec!["consul", "jobs"]);
    let (stmt, span) = statement(&lines, 5);
    assert_eq!((stmt.as_str(), span), ("fn f() {}", 1));
}
