//! Text tables of the commands that list things, and the row of a job in them.

use crate::util::time::rfc3339_ns;
use crate::wire::JobView;

/// A docker job's image and container (its id's first 12 characters, as `docker ps` shows
/// it), for a table; None for a process job.
pub fn container_words(r: &crate::wire::JobResult) -> Option<String> {
    let image = r.image.as_deref()?;
    let mut w = format!("image {image}");
    if let Some(id) = &r.container_id {
        w.push_str(&format!(", container {}", short_id(id)));
    }
    if r.oom_killed {
        w.push_str(", OOM-killed");
    }
    Some(w)
}

/// A container ID as `docker ps` shows it: its first 12 characters.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A job's table row: key, state, node, time, detail.
pub fn job_row(view: &JobView) -> [String; 5] {
    match view {
        JobView::Queued { key, attempts } => [
            key.clone(),
            "queued".into(),
            "-".into(),
            "-".into(),
            format!("attempts so far: {attempts}"),
        ],
        JobView::Running {
            key,
            node,
            since,
            attempt,
            image,
            container_id,
        } => [
            key.clone(),
            "running".into(),
            node.clone(),
            since.clone(),
            match (image, container_id) {
                (Some(i), Some(c)) => {
                    format!("attempt {attempt}; image {i}, container {}", short_id(c))
                }
                (Some(i), None) => format!("attempt {attempt}; image {i}"),
                _ => format!("attempt {attempt}"),
            },
        ],
        JobView::Done { key, result } => {
            let mut detail = if result.exit_errors.is_empty() {
                format!("exit {}", result.exit_code)
            } else {
                result.exit_errors.clone()
            };
            if let Some(c) = container_words(result) {
                detail = format!("{detail}; {c}");
            }
            let when = if result.end_time > 0 {
                rfc3339_ns(result.end_time)
            } else {
                result.start_time_str.clone()
            };
            [
                key.clone(),
                result.status_str().to_string(),
                result.execution_node.clone(),
                when,
                detail,
            ]
        }
    }
}

/// Formats rows as an aligned text table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < width.len() {
                width[i] = width[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_view_reads_claim_time_from_flags() {
        let v = JobView::from_entry("jobs/a", 1, 1_700_000_000_123, Some("node2"));
        assert_eq!(job_row(&v)[2], "node2");
        assert_eq!(job_row(&v)[3], "2023-11-14T22:13:20.123Z");
        assert!(matches!(
            JobView::from_entry("jobs/a", 0, 0, None),
            JobView::Queued { .. }
        ));
    }

    #[test]
    fn a_running_docker_job_shows_its_image_and_container() {
        let mut v = JobView::from_entry("jobs/a", 2, 1_700_000_000_123, Some("node2"));
        if let JobView::Running {
            image,
            container_id,
            ..
        } = &mut v
        {
            *image = Some("img:1".into());
            *container_id = Some("0123456789abcdef".into());
        }
        assert_eq!(
            job_row(&v)[4],
            "attempt 2; image img:1, container 0123456789ab"
        );
        assert_eq!(short_id("abc"), "abc");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "B"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A     B\nlong  x\n");
    }
}
