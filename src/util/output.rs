//! A command's output on stdout. Rust ignores SIGPIPE, so a reader that went away (`servant show
//! | head`) makes writes fail with EPIPE instead of ending the process as it ends `cat`. Every
//! write to stdout goes through here, where that failure becomes `OutputError::Closed`: the
//! binary ends quietly on it (exit 0, as ripgrep does), and reports any other write error.

use std::io::Write;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The reader of stdout is gone: nothing left to do, nothing to report.
    #[error("stdout is closed")]
    Closed,
    #[error("cannot write to stdout: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for OutputError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            OutputError::Closed
        } else {
            OutputError::Io(e)
        }
    }
}

/// Writes `bytes` to stdout and flushes, so a closed stdout is seen at once.
#[allow(clippy::disallowed_methods)] // The one place that may.
pub fn write(bytes: &[u8]) -> Result<(), OutputError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

/// Writes a command's error stream (a job's stderr) to stderr, as `write` does stdout.
pub fn write_stderr(bytes: &[u8]) -> Result<(), OutputError> {
    let mut err = std::io::stderr().lock();
    err.write_all(bytes)?;
    err.flush()?;
    Ok(())
}

/// Whether an error, or any error in its chain, is a closed stdout.
pub fn is_closed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if matches!(e.downcast_ref::<OutputError>(), Some(OutputError::Closed)) {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("printing the table")]
    struct Outer(#[source] OutputError);

    #[test]
    fn broken_pipe_is_closed_and_other_errors_are_not() {
        let closed = OutputError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_closed(&closed));
        assert!(is_closed(&Outer(closed)));
        let full = OutputError::from(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(!is_closed(&full));
        assert!(full.to_string().starts_with("cannot write to stdout: "));
    }
}
