//! The job document: `servant::jobs::spec::parse_job(id, body)` and `salvage(body)`.
//!
//! Input: the job ID (the key's last segment) up to the first newline, then the body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use servant::jobs::spec::{parse_job, salvage, validate_id, JobType};

fuzz_target!(|data: &[u8]| {
    let (id, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"job"[..], data),
    };
    let id = String::from_utf8_lossy(id);
    let _ = salvage(body);
    if let Ok(job) = parse_job(&id, body) {
        // What the worker relies on once a job is accepted.
        assert!(validate_id(&job.id).is_ok());
        assert_eq!(job.id, id);
        assert!(!job.name.is_empty());
        assert!(!job.timeout.is_zero());
        match job.job_type {
            JobType::Shell => assert!(!job.command.trim().is_empty()),
            JobType::Exec => assert!(!job.argv.is_empty()),
            JobType::Docker => panic!("a docker job was accepted"),
        }
        for s in &job.services {
            assert!(!s.name().is_empty());
        }
    }
});
