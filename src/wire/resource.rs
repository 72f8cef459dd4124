//! The node's `resource` report (`appmgr/status/<host>/resource`): laoshanxi's App Manager
//! report (its field names) plus our own fields (memory, swap, load, labels, host). Written by
//! each node (`apps::report`), read by the apps leader (what the scheduler needs: processors,
//! memory, labels) and by operators' tools.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{decode, encode, read_listing, DocError, KvEntry, Namespace};

/// One node's resources. Every field is required: a report without one is an error, never a
/// host of 1 CPU and 0 MB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceReport {
    /// The machine's host name.
    pub host: String,
    /// The agent's pid.
    pub pid: u32,
    /// When the agent started, in App Manager's time format (`apps::report::app_time`).
    pub appmgr_start_time: String,
    /// When this report was sampled, in the same format.
    pub systime: String,
    pub cpu_cores: u64,
    /// Logical CPUs: the capacity tasks' `cpu` requests are counted against.
    pub cpu_processors: u64,
    pub cpu_sockets: u32,
    /// The capacity tasks' `memory_mb` requests are counted against.
    pub mem_total_bytes: u64,
    pub mem_free_bytes: u64,
    pub mem_used_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_free_bytes: u64,
    pub load_average: LoadAverage,
    pub fs: Vec<FileSystem>,
    pub net: Vec<NetInterface>,
    /// This node's configured labels, matched by tasks' `labels`.
    pub labels: BTreeMap<String, String>,
    /// The running containers labelled with this node (its jobs' and apps'), with their CPU
    /// and memory use. Absent when the agent cannot reach a Docker Engine (and in reports of
    /// agents older than this field), so old readers and writers keep working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<Vec<ContainerUsage>>,
}

/// One running container's use of the machine, from the Engine's stats API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerUsage {
    /// The full container ID.
    pub id: String,
    /// The container's name, without Docker's leading `/`.
    pub name: String,
    pub image: String,
    /// The job key it runs (`servant.job`), for a job's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The app (task) name it runs (`servant.app`), for an app's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// CPU used between the last two samples, as `docker stats` shows it: 100 is one whole
    /// CPU, so a container may use up to 100 × the node's CPUs.
    pub cpu_percent: f64,
    /// Memory in use, without the page cache the kernel can drop (as `docker stats`).
    pub memory_bytes: u64,
    /// Its memory limit: the container's own, else the machine's memory.
    pub memory_limit_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadAverage {
    #[serde(rename = "1min")]
    pub one: f64,
    #[serde(rename = "5min")]
    pub five: f64,
    #[serde(rename = "15min")]
    pub fifteen: f64,
}

/// A mounted file system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSystem {
    pub device: String,
    pub mount_point: String,
    pub fs_type: String,
    pub size_bytes: u64,
    pub available_bytes: u64,
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetInterface {
    pub name: String,
    pub mac: String,
    pub ipv4: Vec<String>,
    pub ipv6: Vec<String>,
}

const WHAT: &str = "resource report";

impl ResourceReport {
    pub fn parse(value: &[u8]) -> Result<ResourceReport, DocError> {
        decode(WHAT, value)
    }

    /// The value written to KV.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Total memory in MiB.
    pub fn memory_mb(&self) -> u64 {
        self.mem_total_bytes / (1024 * 1024)
    }

    /// The containers of app `name` on this node.
    pub fn app_containers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ContainerUsage> {
        self.containers
            .iter()
            .flatten()
            .filter(move |c| c.app.as_deref() == Some(name))
    }

    /// The container of job `key` on this node, if it runs one.
    pub fn job_container(&self, key: &str) -> Option<&ContainerUsage> {
        self.containers
            .iter()
            .flatten()
            .find(|c| c.job.as_deref() == Some(key))
    }
}

/// The resource reports under the status prefix, by host (the key's `<host>`), and the hosts
/// whose report is unreadable. Other keys (the applications reports) are ignored.
pub fn read_reports<'a>(
    ns: &Namespace,
    entries: impl IntoIterator<Item = KvEntry<'a>>,
) -> (BTreeMap<String, ResourceReport>, BTreeMap<String, DocError>) {
    let prefix = ns.status_prefix();
    let host = |key: &'a str| {
        key.strip_prefix(prefix.as_str())
            .and_then(|rest| rest.strip_suffix("/resource"))
            .filter(|h| !h.is_empty() && !h.contains('/'))
    };
    read_listing(entries, host, |_, value| ResourceReport::parse(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A report as `apps::report` wrote it with `json!` before this type existed.
    fn old_writer() -> serde_json::Value {
        json!({
            "host": "h1",
            "pid": 42,
            "appmgr_start_time": "2020-02-04 15:37:21",
            "systime": "2020-02-04 16:01:58",
            "cpu_cores": 4,
            "cpu_processors": 8,
            "cpu_sockets": 1,
            "mem_total_bytes": 8_589_934_592u64,
            "mem_free_bytes": 1024,
            "mem_used_bytes": 2048,
            "swap_total_bytes": 0,
            "swap_free_bytes": 0,
            "load_average": {"1min": 0.5, "5min": 0.25, "15min": 0.0},
            "fs": [{"device": "/dev/sda1", "mount_point": "/", "fs_type": "ext4",
                    "size_bytes": 100, "available_bytes": 50}],
            "net": [{"name": "lo", "mac": "00:00:00:00:00:00", "ipv4": ["127.0.0.1"],
                     "ipv6": ["::1"]}],
            "labels": {"zone": "a"},
        })
    }

    #[test]
    fn the_bytes_in_kv_are_those_of_the_untyped_writer() {
        let old = serde_json::to_vec(&old_writer()).unwrap();
        let r = ResourceReport::parse(&old).unwrap();
        assert_eq!((r.cpu_processors, r.memory_mb()), (8, 8192));
        assert_eq!(r.labels["zone"], "a");
        assert_eq!(
            r.encode(),
            old,
            "same names, numbers as numbers, same order"
        );
    }

    #[test]
    fn a_missing_or_renamed_field_is_an_error_that_names_it() {
        for (field, renamed) in [
            ("cpu_processors", Some("cpu_processor")),
            ("mem_total_bytes", None),
            ("labels", None),
        ] {
            let mut v = old_writer();
            let x = v.as_object_mut().unwrap().remove(field).unwrap();
            if let Some(r) = renamed {
                v[r] = x;
            }
            let e = ResourceReport::parse(v.to_string().as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains("resource report") && e.contains(field), "{e}");
        }
        let mut v = old_writer();
        v["fs"][0]["size_bytes"] = json!("100");
        let e = ResourceReport::parse(v.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("fs[0].size_bytes"), "{e}");
    }

    #[test]
    fn containers_are_optional_and_read_back() {
        let old = serde_json::to_vec(&old_writer()).unwrap();
        let mut r = ResourceReport::parse(&old).unwrap();
        assert_eq!(
            r.containers, None,
            "a report without the field is still read"
        );
        r.containers = Some(vec![ContainerUsage {
            id: "c1".into(),
            name: "n1".into(),
            image: "img".into(),
            job: Some("jobs/a".into()),
            app: None,
            cpu_percent: 12.5,
            memory_bytes: 30 << 20,
            memory_limit_bytes: 1 << 30,
        }]);
        let bytes = r.encode();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["containers"][0]["job"], "jobs/a");
        assert!(v["containers"][0].get("app").is_none());
        assert_eq!(ResourceReport::parse(&bytes).unwrap(), r);
        assert_eq!(r.job_container("jobs/a").map(|c| c.id.as_str()), Some("c1"));
        assert_eq!(r.app_containers("web").count(), 0);
        // A reader that predates the field (its type without it) still reads the new report.
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct OldReader {
            host: String,
            cpu_processors: u64,
        }
        let o: OldReader = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(o.cpu_processors, 8);
    }

    #[test]
    fn reports_are_read_by_host_and_bad_ones_are_named() {
        let ns = Namespace::new("");
        let good = serde_json::to_vec(&old_writer()).unwrap();
        let (ok, bad) = read_reports(
            &ns,
            [
                ("appmgr/status/h1/resource", good.as_slice()),
                ("appmgr/status/h1/applications", b"{}"),
                ("appmgr/status/h2/resource", br#"{"cpu_processors": 4}"#),
                ("appmgr/status/h3/resource", b"not json"),
            ],
        );
        assert_eq!(ok.keys().collect::<Vec<_>>(), ["h1"]);
        assert_eq!(bad.keys().collect::<Vec<_>>(), ["h2", "h3"]);
    }
}
