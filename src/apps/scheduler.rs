//! Placement of app task replicas on live hosts. Pure: no IO, no clock, no randomness, so every
//! leader computes the same plan from the same inputs.
//!
//! The leader writes the plan as one KV key per host (`appmgr/topology/<host>`), so placement is
//! sticky: a replica that is still valid stays where it is (even on an over-committed host), and
//! a pass with nothing changed produces zero writes. Only missing replicas are placed, least-loaded
//! host first, through ordered sets of hosts (one per distinct host label set, so a constrained
//! task never walks past hosts it cannot use) updated as replicas land, so a pass costs about
//! `O(replicas × log hosts)` rather than `replicas × hosts`. Kept replicas are found through one
//! hash lookup each and a merge walk of the sorted host names. Hosts refused for capacity are
//! still walked past one by one, and each unplaced task is explained by a walk over all hosts.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

pub use crate::wire::schedule::Unplaced;
pub use crate::wire::Topology;

/// One app task as the scheduler needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskReq {
    /// Unique name; the value stored in the topology.
    pub name: String,
    /// How many hosts should run it; 0 stops it everywhere.
    pub replication: u32,
    /// Constraints: every one must equal the host's label of the same key.
    pub labels: BTreeMap<String, String>,
    /// Cores requested per replica (0 = no request), so hosts are not over-committed.
    pub cpu: f64,
    /// Memory requested per replica in MB (0 = no request).
    pub memory_mb: u64,
}

/// One live host as the scheduler needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostInfo {
    /// Node name; the topology key.
    pub name: String,
    /// What task label constraints are matched against.
    pub labels: BTreeMap<String, String>,
    /// Capacity that replicas' `cpu` requests are counted against.
    pub cpu_cores: f64,
    /// Capacity that replicas' `memory_mb` requests are counted against.
    pub memory_mb: u64,
}

/// The result of one scheduling pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The new placement; only hosts with at least one task appear.
    pub topology: Topology,
    /// Tasks short of replicas, sorted by task name.
    pub unplaced: Vec<Unplaced>,
}

/// CPU in micro-cores: integer sums are exact and independent of order, so a second pass sees
/// exactly the free capacity the first one left (idempotence). NaN or negative counts as 0.
fn micro_cores(cores: f64) -> i128 {
    if cores > 0.0 {
        (cores * 1e6).round() as i64 as i128
    } else {
        0
    }
}

fn matches(task: &TaskReq, host: &HostInfo) -> bool {
    task.labels
        .iter()
        .all(|(k, v)| host.labels.get(k) == Some(v))
}

/// A request of 0 always fits, even on a host that kept placements over-commit.
fn fits(request: i128, free: i128) -> bool {
    request == 0 || free >= request
}

/// Sorted by name; of duplicate names the first in input order wins, so the result never
/// depends on which copy a map would have kept.
fn unique_by_name<T>(items: &[T], name: impl Fn(&T) -> &str) -> Vec<&T> {
    let mut v: Vec<&T> = items.iter().collect();
    v.sort_by(|a, b| name(a).cmp(name(b)));
    v.dedup_by(|later, first| name(later) == name(first));
    v
}

/// FNV-1a with a final mix, for the task-name map of the sticky walk (one lookup per kept
/// replica; SipHash was about 7% of the instructions of a pass at 100,000 tasks). Task names come from the
/// cluster's own task keys, not from whoever could flood the map. The mix (murmur3's) spreads
/// the last bytes into the top bits the map's probe tags use: names like `task-00042` differ
/// only there.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// A host's place in a least-loaded-first order: fewest tasks, then most free memory, then name
/// (hosts are sorted, so the index is the name's rank).
type Key = (usize, Reverse<i128>, usize);

/// Hosts with more distinct label sets than this share one ordered set (and are checked one by
/// one against a constrained task's labels); the plan is the same either way.
const MAX_GROUPS: usize = 8;

static EMPTY_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// A plan whose names borrow the tasks and hosts it was made from: the leader compares it with
/// the stored keys (`writes`) without copying the 300,000 names of a large plan, most of which
/// are unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement<'a> {
    /// Each host with at least one task, by name, with its task names sorted.
    pub hosts: Vec<(&'a str, Vec<&'a str>)>,
    /// Tasks short of replicas, sorted by task name.
    pub unplaced: Vec<Unplaced>,
}

impl Placement<'_> {
    /// The plan as a topology map.
    pub fn topology(&self) -> Topology {
        self.hosts
            .iter()
            .map(|(host, names)| {
                let set: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
                (host.to_string(), set)
            })
            .collect()
    }

    /// `changes(old, &self.topology())`, without building the topology: one merge walk of the
    /// two sorted host lists, comparing each host's names in place.
    pub fn writes(&self, old: &Topology) -> Vec<(String, Option<BTreeSet<String>>)> {
        let mut out = Vec::new();
        let mut new = self.hosts.iter().peekable();
        let owned = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        for (host, before) in old {
            while let Some((h, names)) = new.next_if(|(h, _)| *h < host.as_str()) {
                out.push((h.to_string(), Some(owned(names))));
            }
            match new.next_if(|(h, _)| *h == host.as_str()) {
                Some((_, names)) => {
                    let same = before.len() == names.len()
                        && before.iter().zip(names).all(|(a, b)| a == b);
                    if !same {
                        out.push((host.clone(), Some(owned(names))));
                    }
                }
                None if !before.is_empty() => out.push((host.clone(), None)),
                None => {}
            }
        }
        out.extend(new.map(|(h, names)| (h.to_string(), Some(owned(names)))));
        out
    }

    fn into_plan(self) -> Plan {
        Plan {
            topology: self.topology(),
            unplaced: self.unplaced,
        }
    }
}

/// Places the replicas of `tasks` on `hosts` (the live ones), keeping every valid placement of
/// `current`, and reports every task left short of replicas.
pub fn schedule(tasks: &[TaskReq], hosts: &[HostInfo], current: &Topology) -> Plan {
    place(tasks, hosts, current).into_plan()
}

/// `schedule`, with the plan borrowing the names of `tasks` and `hosts`.
pub fn place<'a>(tasks: &'a [TaskReq], hosts: &'a [HostInfo], current: &Topology) -> Placement<'a> {
    let tasks = unique_by_name(tasks, |t| &t.name);
    let hosts = unique_by_name(hosts, |h| &h.name);
    // Name -> (index, replication > 0, has label constraints): what the sticky walk needs
    // without touching the task itself.
    let task_ix: HashMap<&str, (usize, bool, bool), BuildHasherDefault<Fnv>> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                t.name.as_str(),
                (i, t.replication > 0, !t.labels.is_empty()),
            )
        })
        .collect();
    let cpu: Vec<i128> = tasks.iter().map(|t| micro_cores(t.cpu)).collect();
    let mem: Vec<i128> = tasks.iter().map(|t| i128::from(t.memory_mb)).collect();

    // Sticky: keep what is on a live host, of a live task, and still matches its labels. Both
    // `current` and `hosts` are sorted by name, so one merge walk finds each host.
    let mut load = vec![0usize; hosts.len()];
    let mut held: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    let mut next = 0;
    for (host, names) in current {
        while next < hosts.len() && hosts[next].name.as_str() < host.as_str() {
            next += 1;
        }
        if next == hosts.len() {
            break;
        }
        if hosts[next].name != *host {
            continue;
        }
        let hi = next;
        for name in names {
            let Some(&(ti, live, constrained)) = task_ix.get(name.as_str()) else {
                continue;
            };
            if live && (!constrained || matches(tasks[ti], hosts[hi])) {
                held[ti].push(hi);
                load[hi] += 1;
            }
        }
    }
    // Replication lowered: drop extras from the most-loaded hosts (ties: first host by name).
    for (ti, task) in tasks.iter().enumerate() {
        let on = &mut held[ti];
        while on.len() > task.replication as usize {
            let Some(pos) = (0..on.len()).max_by_key(|&p| (load[on[p]], Reverse(on[p]))) else {
                break;
            };
            load[on[pos]] -= 1;
            on.swap_remove(pos);
        }
        on.sort_unstable();
    }
    // Kept placements use capacity, even past what the host has (never evicted for resources).
    let mut free_cpu: Vec<i128> = hosts.iter().map(|h| micro_cores(h.cpu_cores)).collect();
    let mut free_mem: Vec<i128> = hosts.iter().map(|h| i128::from(h.memory_mb)).collect();
    for (ti, on) in held.iter().enumerate() {
        for &hi in on {
            free_cpu[hi] -= cpu[ti];
            free_mem[hi] -= mem[ti];
        }
    }

    // Least-loaded first: fewest tasks, then most free memory, then name (hosts are sorted).
    // One ordered set per group of hosts with the same labels (up to MAX_GROUPS of them, else
    // one group), so a constrained task walks only the groups that match it, and a placement
    // moves its host in one set. A task's walk merges its groups' sets: the same order as one
    // set of all the hosts that match, so the same choice.
    let key = |hi: usize, load: &[usize], free_mem: &[i128]| (load[hi], Reverse(free_mem[hi]), hi);
    let mut group_ix: BTreeMap<&BTreeMap<String, String>, usize> = BTreeMap::new();
    for host in &hosts {
        let n = group_ix.len();
        group_ix.entry(&host.labels).or_insert(n);
    }
    let grouped = group_ix.len() <= MAX_GROUPS;
    let mut group_labels: Vec<&BTreeMap<String, String>> = vec![&EMPTY_LABELS; group_ix.len()];
    for (&labels, &g) in &group_ix {
        group_labels[g] = labels;
    }
    let group_of: Vec<usize> = if grouped {
        hosts.iter().map(|h| group_ix[&h.labels]).collect()
    } else {
        vec![0; hosts.len()]
    };
    let mut sets: Vec<BTreeSet<Key>> =
        vec![BTreeSet::new(); if grouped { group_ix.len() } else { 1 }];
    for hi in 0..hosts.len() {
        sets[group_of[hi]].insert(key(hi, &load, &free_mem));
    }
    // `holds[hi] == ti` while task `ti` is being placed and host `hi` has it: O(1) membership.
    let mut holds = vec![usize::MAX; hosts.len()];
    let mut short = Vec::new();
    let mut chosen = Vec::new();
    for (ti, task) in tasks.iter().enumerate() {
        let wanted = task.replication as usize;
        if held[ti].len() >= wanted {
            continue;
        }
        for &hi in &held[ti] {
            holds[hi] = ti;
        }
        let need = wanted - held[ti].len();
        chosen.clear();
        let constrained = !task.labels.is_empty();
        // Grouped, a matching group's hosts all match; ungrouped, each host is checked.
        let mut walks: Vec<_> = (0..sets.len())
            .filter(|&g| {
                !grouped
                    || !constrained
                    || task
                        .labels
                        .iter()
                        .all(|(k, v)| group_labels[g].get(k) == Some(v))
            })
            .map(|g| sets[g].iter().peekable())
            .collect();
        let check_labels = constrained && !grouped;
        loop {
            let mut best: Option<(usize, Key)> = None;
            for (w, walk) in walks.iter_mut().enumerate() {
                if let Some(&&k) = walk.peek() {
                    if best.is_none_or(|(_, b)| k < b) {
                        best = Some((w, k));
                    }
                }
            }
            let Some((w, (_, _, hi))) = best else {
                break;
            };
            walks[w].next();
            if holds[hi] != ti
                && fits(cpu[ti], free_cpu[hi])
                && fits(mem[ti], free_mem[hi])
                && (!check_labels || matches(task, hosts[hi]))
            {
                chosen.push(hi);
                if chosen.len() == need {
                    break;
                }
            }
        }
        drop(walks);
        for &hi in &chosen {
            let old = key(hi, &load, &free_mem);
            load[hi] += 1;
            free_cpu[hi] -= cpu[ti];
            free_mem[hi] -= mem[ti];
            holds[hi] = ti;
            let set = &mut sets[group_of[hi]];
            set.remove(&old);
            set.insert(key(hi, &load, &free_mem));
        }
        held[ti].extend_from_slice(&chosen);
        if held[ti].len() < wanted {
            short.push(ti);
        }
    }
    // Explained against the final state: free capacity only shrank since the task's turn, so
    // every refusal still holds, and a second pass over the same plan says the same words.
    let mut unplaced = Vec::with_capacity(short.len());
    for ti in short {
        let task = tasks[ti];
        for &hi in &held[ti] {
            holds[hi] = ti;
        }
        let why = explain(
            task, ti, &hosts, &holds, &free_cpu, &free_mem, cpu[ti], mem[ti],
        );
        unplaced.push(Unplaced {
            task: task.name.clone(),
            wanted: task.replication,
            placed: held[ti].len() as u32,
            reason: format!(
                "{} of {} replicas placed: {why}",
                held[ti].len(),
                task.replication
            ),
        });
    }

    // Tasks are visited in name order, so each host's list is already sorted (and hosts are).
    let mut per_host: Vec<Vec<&str>> = vec![Vec::new(); hosts.len()];
    for (ti, on) in held.iter().enumerate() {
        for &hi in on {
            per_host[hi].push(&tasks[ti].name);
        }
    }
    let hosts = per_host
        .into_iter()
        .enumerate()
        .filter(|(_, names)| !names.is_empty())
        .map(|(hi, names)| (hosts[hi].name.as_str(), names))
        .collect();
    Placement { hosts, unplaced }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Why task `ti` is short: every host that matches its labels and lacks it was refused for
/// capacity, so the count of matching hosts and of refused ones say it all.
#[allow(clippy::too_many_arguments)]
fn explain(
    task: &TaskReq,
    ti: usize,
    hosts: &[&HostInfo],
    holds: &[usize],
    free_cpu: &[i128],
    free_mem: &[i128],
    cpu: i128,
    mem: i128,
) -> String {
    if hosts.is_empty() {
        return "no live hosts".into();
    }
    let labels = || {
        let kv: Vec<String> = task
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{{{}}}", kv.join(", "))
    };
    let mut why = Vec::new();
    let matching = hosts.iter().filter(|h| matches(task, h)).count();
    if matching < task.replication as usize {
        why.push(match (task.labels.is_empty(), matching) {
            (true, n) => format!(
                "only {}, and replicas need distinct hosts",
                plural(n, "live host", "live hosts")
            ),
            (false, 0) => format!("no live host matches labels {}", labels()),
            (false, 1) => format!("only 1 live host matches labels {}", labels()),
            (false, n) => format!("only {n} live hosts match labels {}", labels()),
        });
    }
    let (mut refused, mut cpu_short, mut mem_short) = (0, false, false);
    for (hi, host) in hosts.iter().enumerate() {
        if holds[hi] == ti || !matches(task, host) {
            continue;
        }
        let (c, m) = (!fits(cpu, free_cpu[hi]), !fits(mem, free_mem[hi]));
        refused += usize::from(c || m);
        cpu_short |= c;
        mem_short |= m;
    }
    if refused > 0 {
        let cores = format!("{} cores", task.cpu);
        let mb = format!("{} MB", task.memory_mb);
        let (what, needs) = match (cpu_short, mem_short) {
            (true, false) => ("cpu", cores),
            (false, true) => ("memory", mb),
            _ => ("cpu or memory", format!("{cores} and {mb}")),
        };
        why.push(format!(
            "not enough free {what} on {} (needs {needs})",
            plural(refused, "matching host", "matching hosts")
        ));
    }
    if why.is_empty() {
        why.push("no suitable host".into());
    }
    why.join("; ")
}

/// The KV writes that turn `old` into `new`: (host, Some(tasks)) to write, (host, None) to
/// delete, sorted by host. A host missing from a map is the same as an empty set; an empty set
/// deletes the key, and only if `old` had it non-empty, so an unchanged plan costs no write.
pub fn changes(old: &Topology, new: &Topology) -> Vec<(String, Option<BTreeSet<String>>)> {
    let empty = BTreeSet::new();
    let hosts: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut out = Vec::new();
    for host in hosts {
        let before = old.get(host).unwrap_or(&empty);
        let after = new.get(host).unwrap_or(&empty);
        if before == after {
            continue;
        }
        if after.is_empty() {
            out.push((host.clone(), None));
        } else {
            out.push((host.clone(), Some(after.clone())));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The scheduler as it was before the sticky walk and output were made cheaper (issue 15), kept verbatim as
    /// the reference the fast one must agree with exactly.
    mod reference {
        use super::super::*;
        use std::cmp::Reverse;
        use std::collections::{BTreeSet, HashMap};

        /// Places the replicas of `tasks` on `hosts` (the live ones), keeping every valid placement of
        /// `current`, and reports every task left short of replicas.
        pub fn schedule(tasks: &[TaskReq], hosts: &[HostInfo], current: &Topology) -> Plan {
            let tasks = unique_by_name(tasks, |t| &t.name);
            let hosts = unique_by_name(hosts, |h| &h.name);
            let task_ix: HashMap<&str, usize> = tasks
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.as_str(), i))
                .collect();
            let host_ix: HashMap<&str, usize> = hosts
                .iter()
                .enumerate()
                .map(|(i, h)| (h.name.as_str(), i))
                .collect();
            let cpu: Vec<i128> = tasks.iter().map(|t| micro_cores(t.cpu)).collect();
            let mem: Vec<i128> = tasks.iter().map(|t| i128::from(t.memory_mb)).collect();

            // Sticky: keep what is on a live host, of a live task, and still matches its labels.
            let mut load = vec![0usize; hosts.len()];
            let mut held: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
            for (host, names) in current {
                let Some(&hi) = host_ix.get(host.as_str()) else {
                    continue;
                };
                for name in names {
                    let Some(&ti) = task_ix.get(name.as_str()) else {
                        continue;
                    };
                    if tasks[ti].replication > 0 && matches(tasks[ti], hosts[hi]) {
                        held[ti].push(hi);
                        load[hi] += 1;
                    }
                }
            }
            // Replication lowered: drop extras from the most-loaded hosts (ties: first host by name).
            for (ti, task) in tasks.iter().enumerate() {
                let on = &mut held[ti];
                while on.len() > task.replication as usize {
                    let Some(pos) = (0..on.len()).max_by_key(|&p| (load[on[p]], Reverse(on[p])))
                    else {
                        break;
                    };
                    load[on[pos]] -= 1;
                    on.swap_remove(pos);
                }
                on.sort_unstable();
            }
            // Kept placements use capacity, even past what the host has (never evicted for resources).
            let mut free_cpu: Vec<i128> = hosts.iter().map(|h| micro_cores(h.cpu_cores)).collect();
            let mut free_mem: Vec<i128> = hosts.iter().map(|h| i128::from(h.memory_mb)).collect();
            for (ti, on) in held.iter().enumerate() {
                for &hi in on {
                    free_cpu[hi] -= cpu[ti];
                    free_mem[hi] -= mem[ti];
                }
            }

            // Least-loaded first: fewest tasks, then most free memory, then name (hosts are sorted).
            let key = |hi: usize, load: &[usize], free_mem: &[i128]| {
                (load[hi], Reverse(free_mem[hi]), hi)
            };
            let mut order: BTreeSet<(usize, Reverse<i128>, usize)> = (0..hosts.len())
                .map(|hi| key(hi, &load, &free_mem))
                .collect();
            // `holds[hi] == ti` while task `ti` is being placed and host `hi` has it: O(1) membership.
            let mut holds = vec![usize::MAX; hosts.len()];
            let mut short = Vec::new();
            let mut chosen = Vec::new();
            for (ti, task) in tasks.iter().enumerate() {
                let wanted = task.replication as usize;
                if held[ti].len() >= wanted {
                    continue;
                }
                for &hi in &held[ti] {
                    holds[hi] = ti;
                }
                let need = wanted - held[ti].len();
                chosen.clear();
                for &(_, _, hi) in &order {
                    if holds[hi] != ti
                        && fits(cpu[ti], free_cpu[hi])
                        && fits(mem[ti], free_mem[hi])
                        && matches(task, hosts[hi])
                    {
                        chosen.push(hi);
                        if chosen.len() == need {
                            break;
                        }
                    }
                }
                for &hi in &chosen {
                    order.remove(&key(hi, &load, &free_mem));
                    load[hi] += 1;
                    free_cpu[hi] -= cpu[ti];
                    free_mem[hi] -= mem[ti];
                    holds[hi] = ti;
                    order.insert(key(hi, &load, &free_mem));
                }
                held[ti].extend_from_slice(&chosen);
                if held[ti].len() < wanted {
                    short.push(ti);
                }
            }
            // Explained against the final state: free capacity only shrank since the task's turn, so
            // every refusal still holds, and a second pass over the same plan says the same words.
            let mut unplaced = Vec::with_capacity(short.len());
            for ti in short {
                let task = tasks[ti];
                for &hi in &held[ti] {
                    holds[hi] = ti;
                }
                let why = explain(
                    task, ti, &hosts, &holds, &free_cpu, &free_mem, cpu[ti], mem[ti],
                );
                unplaced.push(Unplaced {
                    task: task.name.clone(),
                    wanted: task.replication,
                    placed: held[ti].len() as u32,
                    reason: format!(
                        "{} of {} replicas placed: {why}",
                        held[ti].len(),
                        task.replication
                    ),
                });
            }

            // Tasks are visited in name order, so each host's list is already sorted.
            let mut per_host: Vec<Vec<String>> = vec![Vec::new(); hosts.len()];
            for (ti, on) in held.iter().enumerate() {
                for &hi in on {
                    per_host[hi].push(tasks[ti].name.clone());
                }
            }
            let topology = per_host
                .into_iter()
                .enumerate()
                .filter(|(_, names)| !names.is_empty())
                .map(|(hi, names)| (hosts[hi].name.clone(), names.into_iter().collect()))
                .collect();
            Plan { topology, unplaced }
        }

        fn plural(n: usize, one: &str, many: &str) -> String {
            format!("{n} {}", if n == 1 { one } else { many })
        }

        /// Why task `ti` is short: every host that matches its labels and lacks it was refused for
        /// capacity, so the count of matching hosts and of refused ones say it all.
        #[allow(clippy::too_many_arguments)]
        fn explain(
            task: &TaskReq,
            ti: usize,
            hosts: &[&HostInfo],
            holds: &[usize],
            free_cpu: &[i128],
            free_mem: &[i128],
            cpu: i128,
            mem: i128,
        ) -> String {
            if hosts.is_empty() {
                return "no live hosts".into();
            }
            let labels = || {
                let kv: Vec<String> = task
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!("{{{}}}", kv.join(", "))
            };
            let mut why = Vec::new();
            let matching = hosts.iter().filter(|h| matches(task, h)).count();
            if matching < task.replication as usize {
                why.push(match (task.labels.is_empty(), matching) {
                    (true, n) => format!(
                        "only {}, and replicas need distinct hosts",
                        plural(n, "live host", "live hosts")
                    ),
                    (false, 0) => format!("no live host matches labels {}", labels()),
                    (false, 1) => format!("only 1 live host matches labels {}", labels()),
                    (false, n) => format!("only {n} live hosts match labels {}", labels()),
                });
            }
            let (mut refused, mut cpu_short, mut mem_short) = (0, false, false);
            for (hi, host) in hosts.iter().enumerate() {
                if holds[hi] == ti || !matches(task, host) {
                    continue;
                }
                let (c, m) = (!fits(cpu, free_cpu[hi]), !fits(mem, free_mem[hi]));
                refused += usize::from(c || m);
                cpu_short |= c;
                mem_short |= m;
            }
            if refused > 0 {
                let cores = format!("{} cores", task.cpu);
                let mb = format!("{} MB", task.memory_mb);
                let (what, needs) = match (cpu_short, mem_short) {
                    (true, false) => ("cpu", cores),
                    (false, true) => ("memory", mb),
                    _ => ("cpu or memory", format!("{cores} and {mb}")),
                };
                why.push(format!(
                    "not enough free {what} on {} (needs {needs})",
                    plural(refused, "matching host", "matching hosts")
                ));
            }
            if why.is_empty() {
                why.push("no suitable host".into());
            }
            why.join("; ")
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn task(name: &str, replication: u32) -> TaskReq {
        TaskReq {
            name: name.into(),
            replication,
            labels: BTreeMap::new(),
            cpu: 0.0,
            memory_mb: 0,
        }
    }

    fn host(name: &str) -> HostInfo {
        HostInfo {
            name: name.into(),
            labels: BTreeMap::new(),
            cpu_cores: 8.0,
            memory_mb: 8192,
        }
    }

    fn topo(pairs: &[(&str, &[&str])]) -> Topology {
        pairs
            .iter()
            .map(|(h, ts)| (h.to_string(), ts.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    fn hosts_of(plan: &Plan, task: &str) -> Vec<String> {
        plan.topology
            .iter()
            .filter(|(_, ts)| ts.contains(task))
            .map(|(h, _)| h.clone())
            .collect()
    }

    #[test]
    fn existing_placements_are_kept_when_hosts_are_live() {
        let hosts = [host("a"), host("b"), host("c"), host("d")];
        // "d" is empty and would win a fresh placement; the current one stays anyway.
        let current = topo(&[("a", &["web"]), ("b", &["web", "db"]), ("c", &["db"])]);
        let plan = schedule(&[task("web", 2), task("db", 2)], &hosts, &current);
        assert_eq!(plan.topology, current);
        assert!(plan.unplaced.is_empty());
        assert!(changes(&current, &plan.topology).is_empty());
    }

    #[test]
    fn existing_placements_are_kept_even_when_resources_are_overcommitted() {
        let mut small = host("a");
        small.cpu_cores = 1.0;
        small.memory_mb = 100;
        let mut big = task("big", 1);
        big.cpu = 4.0;
        big.memory_mb = 1000;
        let current = topo(&[("a", &["big"])]);
        let plan = schedule(&[big], &[small, host("b")], &current);
        assert_eq!(plan.topology, current);
    }

    #[test]
    fn placements_on_dead_hosts_are_dropped_and_replaced() {
        let current = topo(&[("gone", &["web"]), ("a", &["web"])]);
        let plan = schedule(&[task("web", 2)], &[host("a"), host("b")], &current);
        assert_eq!(plan.topology, topo(&[("a", &["web"]), ("b", &["web"])]));
    }

    #[test]
    fn placements_of_removed_tasks_are_dropped() {
        let current = topo(&[("a", &["old", "web"]), ("b", &["old"])]);
        let plan = schedule(&[task("web", 1)], &[host("a"), host("b")], &current);
        assert_eq!(plan.topology, topo(&[("a", &["web"])]));
        let writes = changes(&current, &plan.topology);
        assert_eq!(
            writes,
            vec![
                ("a".into(), Some(["web".to_string()].into())),
                ("b".into(), None)
            ]
        );
    }

    #[test]
    fn placements_on_hosts_that_no_longer_match_labels_are_dropped() {
        let mut a = host("a");
        a.labels = labels(&[("zone", "x")]);
        let mut b = host("b");
        b.labels = labels(&[("zone", "y")]);
        let mut web = task("web", 1);
        web.labels = labels(&[("zone", "y")]);
        let plan = schedule(&[web], &[a, b], &topo(&[("a", &["web"])]));
        assert_eq!(plan.topology, topo(&[("b", &["web"])]));
    }

    #[test]
    fn lowered_replication_drops_extras_from_the_most_loaded_hosts() {
        let hosts = [host("a"), host("b"), host("c")];
        let current = topo(&[
            ("a", &["web", "x"]),
            ("b", &["web", "x", "y"]),
            ("c", &["web"]),
        ]);
        let tasks = [task("web", 1), task("x", 2), task("y", 1)];
        let plan = schedule(&tasks, &hosts, &current);
        assert_eq!(hosts_of(&plan, "web"), ["c"]);
        // Equal load: the first host by name gives up its replica.
        let current = topo(&[("a", &["web"]), ("b", &["web"])]);
        let plan = schedule(&[task("web", 1)], &hosts, &current);
        assert_eq!(hosts_of(&plan, "web"), ["b"]);
    }

    #[test]
    fn replicas_never_share_a_host_and_never_exceed_replication() {
        let plan = schedule(&[task("web", 3)], &[host("a"), host("b")], &Topology::new());
        assert_eq!(hosts_of(&plan, "web"), ["a", "b"]);
        assert_eq!(plan.unplaced.len(), 1);
        assert_eq!(
            plan.unplaced[0].reason,
            "2 of 3 replicas placed: only 2 live hosts, and replicas need distinct hosts"
        );
        let plan = schedule(
            &[task("web", 2)],
            &[host("a"), host("b"), host("c")],
            &Topology::new(),
        );
        assert_eq!(hosts_of(&plan, "web").len(), 2);
    }

    #[test]
    fn replication_zero_places_nothing_and_is_not_unplaced() {
        let current = topo(&[("a", &["web"])]);
        let plan = schedule(&[task("web", 0)], &[host("a")], &current);
        assert_eq!(
            plan,
            Plan {
                topology: Topology::new(),
                unplaced: vec![]
            }
        );
        assert_eq!(changes(&current, &plan.topology), vec![("a".into(), None)]);
    }

    #[test]
    fn new_replicas_go_to_the_least_loaded_host_then_most_free_memory_then_name() {
        let mut roomy = host("d");
        roomy.memory_mb = 16384;
        let hosts = [host("a"), host("b"), host("c"), roomy];
        let current = topo(&[("a", &["x"]), ("b", &["x"])]);
        let tasks = [task("x", 2), task("y", 1), task("z", 1)];
        let plan = schedule(&tasks, &hosts, &current);
        assert_eq!(
            hosts_of(&plan, "y"),
            ["d"],
            "fewest tasks, then most memory"
        );
        assert_eq!(hosts_of(&plan, "z"), ["c"], "then the empty host");
        let plan = schedule(&[task("y", 1)], &[host("b"), host("a")], &Topology::new());
        assert_eq!(hosts_of(&plan, "y"), ["a"], "all equal: by name");
    }

    #[test]
    fn replicas_only_go_where_labels_and_free_resources_fit() {
        let mut a = host("a");
        a.labels = labels(&[("zone", "x"), ("disk", "ssd")]);
        a.memory_mb = 1024;
        let mut b = host("b");
        b.labels = labels(&[("zone", "x"), ("disk", "ssd")]);
        let mut c = host("c");
        c.labels = labels(&[("zone", "y"), ("disk", "ssd")]);
        let mut db = task("db", 1);
        db.labels = labels(&[("zone", "x"), ("disk", "ssd")]);
        db.memory_mb = 2048;
        // "a" is first by name and just as loaded, but lacks the memory; "c" lacks the zone.
        let plan = schedule(&[db], &[a, b, c], &Topology::new());
        assert_eq!(hosts_of(&plan, "db"), ["b"]);
    }

    #[test]
    fn free_resources_count_the_replicas_placed_in_the_same_pass() {
        let mut a = host("a");
        a.cpu_cores = 1.0;
        let tasks: Vec<TaskReq> = (0..4)
            .map(|i| TaskReq {
                cpu: 0.3,
                ..task(&format!("t{i}"), 1)
            })
            .collect();
        let plan = schedule(&tasks, &[a], &Topology::new());
        assert_eq!(plan.topology["a"].len(), 3);
        assert_eq!(plan.unplaced.len(), 1);
        assert_eq!(plan.unplaced[0].task, "t3");
    }

    #[test]
    fn a_replica_that_fits_nowhere_is_reported_with_the_reason() {
        let mut a = host("a");
        a.memory_mb = 256;
        let mut web = task("web", 2);
        web.memory_mb = 512;
        let plan = schedule(&[web.clone()], &[a, host("b")], &Topology::new());
        assert_eq!(hosts_of(&plan, "web"), ["b"], "partial placement is kept");
        assert_eq!(
            plan.unplaced,
            vec![Unplaced {
                task: "web".into(),
                wanted: 2,
                placed: 1,
                reason: "1 of 2 replicas placed: not enough free memory on 1 matching host \
                         (needs 512 MB)"
                    .into(),
            }]
        );
        web.cpu = 16.0;
        let plan = schedule(&[web], &[host("a")], &Topology::new());
        assert_eq!(
            plan.unplaced[0].reason,
            "0 of 2 replicas placed: only 1 live host, and replicas need distinct hosts; \
             not enough free cpu on 1 matching host (needs 16 cores)"
        );
    }

    #[test]
    fn too_few_hosts_matching_labels_are_reported_with_the_labels() {
        let mut a = host("a");
        a.labels = labels(&[("zone", "a")]);
        let mut b = host("b");
        b.labels = labels(&[("zone", "a")]);
        let mut web = task("web", 3);
        web.labels = labels(&[("zone", "a")]);
        let plan = schedule(&[web.clone()], &[a, b, host("c")], &Topology::new());
        assert_eq!(
            plan.unplaced[0].reason,
            "2 of 3 replicas placed: only 2 live hosts match labels {zone=a}"
        );
        let plan = schedule(&[web.clone()], &[host("c")], &Topology::new());
        assert_eq!(
            plan.unplaced[0].reason,
            "0 of 3 replicas placed: no live host matches labels {zone=a}"
        );
        let plan = schedule(&[web], &[], &topo(&[("a", &["web"])]));
        assert_eq!(
            plan.unplaced[0].reason,
            "0 of 3 replicas placed: no live hosts"
        );
        assert!(plan.topology.is_empty());
    }

    #[test]
    fn tasks_are_processed_in_name_order_whatever_the_input_order() {
        let mut a = host("a");
        a.cpu_cores = 1.0;
        let tasks = [
            TaskReq {
                cpu: 1.0,
                ..task("b", 1)
            },
            TaskReq {
                cpu: 1.0,
                ..task("a", 1)
            },
        ];
        let plan = schedule(&tasks, &[a.clone()], &Topology::new());
        assert_eq!(plan.topology, topo(&[("a", &["a"])]));
        assert_eq!(plan.unplaced[0].task, "b");
        let reversed = [tasks[1].clone(), tasks[0].clone()];
        assert_eq!(schedule(&reversed, &[a], &Topology::new()), plan);
    }

    #[test]
    fn changes_write_new_and_changed_hosts_and_delete_emptied_ones() {
        let old = topo(&[("a", &["x"]), ("b", &["x", "y"]), ("c", &["z"]), ("e", &[])]);
        let new = topo(&[("a", &["x"]), ("b", &["y"]), ("c", &[]), ("d", &["x"])]);
        let set = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            changes(&old, &new),
            vec![
                ("b".into(), set(&["y"])),
                ("c".into(), None),
                ("d".into(), set(&["x"]))
            ]
        );
        assert!(changes(&topo(&[("a", &[])]), &Topology::new()).is_empty());
        assert!(changes(&new, &new).is_empty());
    }

    /// Mid-size clusters the proptests' eight hosts never reach: tight capacity (many refusals
    /// and unplaced tasks), many label classes, sticky and lost hosts.
    #[test]
    fn mid_size_clusters_get_the_reference_plan() {
        let mut state = 7u64;
        let mut below = |n: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        for round in 0..6 {
            let hosts: Vec<HostInfo> = (0..60)
                .map(|i| HostInfo {
                    name: format!("h{i:02}"),
                    labels: labels(&[
                        ("zone", ["a", "b", "c"][below(3) as usize]),
                        ("rack", &format!("r{}", below(12))),
                    ]),
                    cpu_cores: below(9) as f64,
                    memory_mb: below(9) * 1024,
                })
                .collect();
            let tasks: Vec<TaskReq> = (0..400)
                .map(|i| TaskReq {
                    name: format!("t{i:03}"),
                    replication: below(5) as u32,
                    labels: match below(4) {
                        0 => labels(&[("zone", ["a", "b", "c"][below(3) as usize])]),
                        1 => labels(&[("rack", &format!("r{}", below(40)))]),
                        _ => BTreeMap::new(),
                    },
                    cpu: below(4) as f64 * 0.25,
                    memory_mb: below(4) * 256,
                })
                .collect();
            let first = schedule(&tasks, &hosts, &Topology::new());
            assert_eq!(first, reference::schedule(&tasks, &hosts, &Topology::new()));
            assert!(!first.unplaced.is_empty(), "round {round} should be tight");
            let fewer: Vec<HostInfo> = hosts.iter().filter(|_| below(5) != 0).cloned().collect();
            let mut changed = tasks.clone();
            for t in changed.iter_mut() {
                if below(3) == 0 {
                    t.replication = below(5) as u32;
                }
            }
            assert_eq!(
                schedule(&changed, &fewer, &first.topology),
                reference::schedule(&changed, &fewer, &first.topology),
                "round {round}"
            );
        }
    }

    // ---- properties ----

    const ZONES: [&str; 2] = ["a", "b"];

    fn arb_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
        (0..3usize, any::<bool>()).prop_map(|(zone, ssd)| {
            let mut l = BTreeMap::new();
            if let Some(z) = ZONES.get(zone) {
                l.insert("zone".to_string(), z.to_string());
            }
            if ssd {
                l.insert("disk".to_string(), "ssd".to_string());
            }
            l
        })
    }

    /// Up to 8 of the names h0..h7, so topologies may name hosts that are not live.
    fn arb_hosts() -> impl Strategy<Value = Vec<HostInfo>> {
        prop::collection::vec((any::<bool>(), arb_labels(), 0..9u32, 0..9u64), 8).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .filter(|(_, (live, ..))| *live)
                .map(|(i, (_, labels, cpu, mem))| HostInfo {
                    name: format!("h{i}"),
                    labels,
                    cpu_cores: f64::from(cpu) * 0.5,
                    memory_mb: mem * 512,
                })
                .collect()
        })
    }

    fn arb_tasks() -> impl Strategy<Value = Vec<TaskReq>> {
        let one = (
            any::<bool>(),
            0..5u32,
            arb_labels(),
            any::<bool>(),
            0..5u32,
            0..5u64,
        );
        prop::collection::vec(one, 8).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .filter(|(_, (live, ..))| *live)
                .map(
                    |(i, (_, replication, labels, constrained, cpu, mem))| TaskReq {
                        name: format!("t{i}"),
                        replication,
                        labels: if constrained { labels } else { BTreeMap::new() },
                        cpu: f64::from(cpu) * 0.5,
                        memory_mb: mem * 512,
                    },
                )
                .collect()
        })
    }

    fn arb_topology() -> impl Strategy<Value = Topology> {
        prop::collection::btree_map(
            (0..10u32).prop_map(|i| format!("h{i}")),
            prop::collection::btree_set((0..10u32).prop_map(|i| format!("t{i}")), 0..5),
            0..10,
        )
    }

    fn pairs(t: &Topology) -> BTreeSet<(String, String)> {
        t.iter()
            .flat_map(|(h, ts)| ts.iter().map(move |t| (h.clone(), t.clone())))
            .collect()
    }

    fn apply(old: &Topology, writes: &[(String, Option<BTreeSet<String>>)]) -> Topology {
        let mut t = old.clone();
        for (h, v) in writes {
            match v {
                Some(s) => t.insert(h.clone(), s.clone()),
                None => t.remove(h),
            };
        }
        t.retain(|_, s| !s.is_empty());
        t
    }

    fn check_invariants(
        tasks: &[TaskReq],
        hosts: &[HostInfo],
        plan: &Plan,
    ) -> Result<(), TestCaseError> {
        let mut count: BTreeMap<&str, u32> = BTreeMap::new();
        for (h, names) in &plan.topology {
            prop_assert!(!names.is_empty());
            let host = hosts.iter().find(|x| &x.name == h);
            prop_assert!(host.is_some(), "placement on a dead host {}", h);
            for n in names {
                let t = tasks.iter().find(|t| &t.name == n);
                prop_assert!(t.is_some(), "unknown task {}", n);
                if let (Some(t), Some(host)) = (t, host) {
                    prop_assert!(matches(t, host), "{} on {} breaks its labels", n, h);
                }
                *count.entry(n.as_str()).or_default() += 1;
            }
        }
        let mut short = Vec::new();
        for t in tasks {
            let placed = count.get(t.name.as_str()).copied().unwrap_or(0);
            prop_assert!(placed <= t.replication);
            if placed < t.replication {
                short.push((t.name.clone(), t.replication, placed));
            }
        }
        let reported: Vec<_> = plan
            .unplaced
            .iter()
            .map(|u| (u.task.clone(), u.wanted, u.placed))
            .collect();
        prop_assert_eq!(reported, short);
        for u in &plan.unplaced {
            let head = format!("{} of {} replicas placed: ", u.placed, u.wanted);
            prop_assert!(u.reason.starts_with(&head), "{}", u.reason);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn plans_keep_the_rules(
            tasks in arb_tasks(), hosts in arb_hosts(), current in arb_topology()
        ) {
            let plan = schedule(&tasks, &hosts, &current);
            check_invariants(&tasks, &hosts, &plan)?;
            // Valid current placements are all kept unless the task has more than it wants.
            for t in &tasks {
                let live_match = |h: &String| hosts.iter().any(|x| &x.name == h && matches(t, x));
                let valid: Vec<&String> = current
                    .iter()
                    .filter(|(h, ts)| ts.contains(&t.name) && live_match(h))
                    .map(|(h, _)| h)
                    .collect();
                if valid.len() <= t.replication as usize {
                    for h in valid {
                        prop_assert!(plan.topology.get(h).is_some_and(|s| s.contains(&t.name)));
                    }
                }
            }
            // From scratch, no host is over-committed.
            let fresh = schedule(&tasks, &hosts, &Topology::new());
            check_invariants(&tasks, &hosts, &fresh)?;
            for h in &hosts {
                let on: Vec<&TaskReq> = tasks
                    .iter()
                    .filter(|t| fresh.topology.get(&h.name).is_some_and(|s| s.contains(&t.name)))
                    .collect();
                let cpu: i128 = on.iter().map(|t| micro_cores(t.cpu)).sum();
                prop_assert!(cpu <= micro_cores(h.cpu_cores));
                prop_assert!(on.iter().map(|t| t.memory_mb).sum::<u64>() <= h.memory_mb);
            }
        }

        #[test]
        fn the_plan_is_the_reference_schedulers(
            tasks in arb_tasks(), hosts in arb_hosts(), current in arb_topology(),
            gone in any::<prop::sample::Index>()
        ) {
            let want = reference::schedule(&tasks, &hosts, &current);
            prop_assert_eq!(&schedule(&tasks, &hosts, &current), &want);
            let mut fewer = hosts.clone();
            if !fewer.is_empty() {
                fewer.remove(gone.index(hosts.len()));
            }
            let again = reference::schedule(&tasks, &fewer, &want.topology);
            prop_assert_eq!(&schedule(&tasks, &fewer, &want.topology), &again);
        }

        #[test]
        fn a_second_pass_changes_nothing(
            tasks in arb_tasks(), hosts in arb_hosts(), current in arb_topology()
        ) {
            let plan = schedule(&tasks, &hosts, &current);
            let again = schedule(&tasks, &hosts, &plan.topology);
            prop_assert_eq!(&again, &plan);
            prop_assert!(changes(&plan.topology, &again.topology).is_empty());
        }

        #[test]
        fn a_joining_host_moves_nothing(
            tasks in arb_tasks(), hosts in arb_hosts(), current in arb_topology(),
            labels in arb_labels(), cpu in 0..9u32, mem in 0..9u64
        ) {
            let plan = schedule(&tasks, &hosts, &current);
            let mut more = hosts.clone();
            let cpu_cores = f64::from(cpu);
            let name = "joined".to_string();
            more.push(HostInfo { name, labels, cpu_cores, memory_mb: mem * 512 });
            let after = schedule(&tasks, &more, &plan.topology);
            check_invariants(&tasks, &more, &after)?;
            let (old, new) = (pairs(&plan.topology), pairs(&after.topology));
            prop_assert!(old.is_subset(&new));
            // Only replicas that were unplaced, and only on the new host (the old ones are as
            // full as they were when those replicas were refused).
            for (h, t) in new.difference(&old) {
                prop_assert_eq!(h, "joined");
                prop_assert!(plan.unplaced.iter().any(|u| &u.task == t));
            }
        }

        #[test]
        fn a_leaving_host_moves_only_its_replicas(
            tasks in arb_tasks(), hosts in arb_hosts(), current in arb_topology(),
            gone in any::<prop::sample::Index>()
        ) {
            prop_assume!(!hosts.is_empty());
            let plan = schedule(&tasks, &hosts, &current);
            let mut fewer = hosts.clone();
            let left = fewer.remove(gone.index(hosts.len())).name;
            let after = schedule(&tasks, &fewer, &plan.topology);
            check_invariants(&tasks, &fewer, &after)?;
            let (old, new) = (pairs(&plan.topology), pairs(&after.topology));
            for pair in &old {
                prop_assert!(pair.0 == left || new.contains(pair), "{:?} moved", pair);
            }
            for t in tasks.iter().map(|t| &t.name) {
                let added = new.difference(&old).filter(|(_, x)| x == t).count();
                let lost = old.iter().filter(|(h, x)| *h == left && x == t).count();
                prop_assert!(added <= lost, "{} gained {} replicas, lost {}", t, added, lost);
            }
        }

        #[test]
        fn changes_round_trip(old in arb_topology(), new in arb_topology()) {
            let writes = changes(&old, &new);
            let mut want = new.clone();
            want.retain(|_, s| !s.is_empty());
            prop_assert_eq!(apply(&old, &writes), want);
            for (h, v) in &writes {
                let had = old.get(h).is_some_and(|s| !s.is_empty());
                prop_assert!(v.is_some() || had, "needless delete of {}", h);
            }
            prop_assert!(changes(&new, &new).is_empty());
        }

        /// The leader's writes from the borrowed plan are exactly `changes` against the plan as a
        /// map, whatever the stored keys hold (empty sets, hosts the plan dropped or adds).
        #[test]
        fn placement_writes_are_the_changes_to_its_topology(
            tasks in arb_tasks(), hosts in arb_hosts(), current in arb_topology(),
            stored in arb_topology()
        ) {
            let placed = place(&tasks, &hosts, &current);
            let topology = placed.topology();
            prop_assert_eq!(placed.writes(&stored), changes(&stored, &topology));
            prop_assert_eq!(placed.writes(&current), changes(&current, &topology));
            prop_assert!(placed.writes(&topology).is_empty());
        }
    }
}
