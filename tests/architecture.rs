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

/// Every `crate::name` a line refers to, grouped imports (`crate::{a::x, b}`) included.
fn crate_refs(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
        rest = after;
    }
    out
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
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for used in crate_refs(line) {
                if used != top && !may.contains(&used.as_str()) {
                    wrong.push(format!(
                        "{}:{}: {top} uses crate::{used}: {}",
                        rel.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
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
}
