//! The `servant` command line: one flag table (clap) and one file per command.
//!
//! Like Consul's CLI (Go flags), long options may be written with one dash (`-join`, `-all`):
//! `normalize_args` rewrites them before clap sees them.
//!
//! Command output goes through `out!`/`outln!` (never `print!`, which panics on a closed stdout):
//! see `util::output`.

/// `print!` for command output; `?` carries a closed stdout up to `main`, which ends quietly.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::util::output::write(format!($($t)*).as_bytes())?
    };
}

/// `println!` for command output, as `out!`.
macro_rules! outln {
    () => {
        $crate::util::output::write(b"\n")?
    };
    ($($t:tt)*) => {{
        let mut line = format!($($t)*);
        line.push('\n');
        $crate::util::output::write(line.as_bytes())?
    }};
}

pub mod agent;
pub mod apps;
pub mod check;
pub mod doctor;
pub mod jobs;
pub mod kv;
pub mod logs;
pub mod node;
pub mod show;
pub mod start;
pub mod table;
pub mod template;

use clap::{CommandFactory, Parser, Subcommand};

use crate::consul::{Client, ClientConfig};
use crate::wire::Namespace;

/// The heading of the flags every command takes, shown after the command's own.
pub const GLOBAL_HEADING: &str = "Global options";

/// consul-servant: run commands and apps across a Consul cluster.
#[derive(Debug, Parser)]
#[command(
    name = "servant",
    version,
    about,
    propagate_version = true,
    disable_version_flag = true
)]
pub struct Cli {
    /// Print the version (also `-v` before a command, `-version` and `servant version`, as in
    /// Consul).
    #[arg(
        long,
        global = true,
        action = clap::ArgAction::Version,
        help_heading = GLOBAL_HEADING
    )]
    pub version: Option<bool>,
    /// `-v` and `-V` print the version before a command only: after `start`, `-v` is a
    /// container's volume, as in `docker run`.
    #[arg(short = 'v', short_alias = 'V', action = clap::ArgAction::Version, hide = true)]
    pub version_short: Option<bool>,
    /// Consul's HTTP address.
    #[arg(long, global = true, env = "CONSUL_HTTP_ADDR", value_name = "ADDR", help_heading = GLOBAL_HEADING)]
    pub http_addr: Option<String>,
    /// Consul ACL token.
    #[arg(
        long,
        global = true,
        env = "CONSUL_HTTP_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        help_heading = GLOBAL_HEADING
    )]
    pub token: Option<String>,
    /// CA bundle to verify Consul's HTTPS certificate.
    #[arg(long, global = true, env = "CONSUL_CACERT", value_name = "FILE", help_heading = GLOBAL_HEADING)]
    pub ca_file: Option<String>,
    /// Client certificate for Consul's HTTPS (verify_incoming).
    #[arg(long, global = true, env = "CONSUL_CLIENT_CERT", value_name = "FILE", help_heading = GLOBAL_HEADING)]
    pub client_cert: Option<String>,
    /// Key of the client certificate.
    #[arg(long, global = true, env = "CONSUL_CLIENT_KEY", value_name = "FILE", help_heading = GLOBAL_HEADING)]
    pub client_key: Option<String>,
    /// Namespace of every KV path (must match the agents').
    #[arg(
        long,
        global = true,
        env = "SERVANT_KV_PREFIX",
        value_name = "PREFIX",
        default_value = "",
        help_heading = GLOBAL_HEADING
    )]
    pub kv_prefix: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent on this node.
    Agent(Box<agent::AgentArgs>),
    /// Start a job in the cluster.
    #[command(visible_alias = "s")]
    Start(Box<start::StartArgs>),
    /// Show a job: queued, running (where, since when) or done.
    #[command(visible_alias = "w")]
    Show(show::ShowArgs),
    /// List queued, running and recent jobs.
    Jobs(jobs::JobsArgs),
    /// Print a job's full output, from the node that ran it.
    Logs(logs::LogsArgs),
    /// Read and write Consul's KV store.
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// Nodes of the cluster.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Replicated app tasks (`appmgr/task/`).
    #[command(subcommand)]
    Task(apps::TaskCommand),
    /// The apps running on the nodes.
    #[command(subcommand)]
    App(apps::AppCommand),
    /// Hosts × apps as placed by the leader, with unplaced replicas and invalid tasks.
    Topology(apps::JsonArg),
    /// Health checks (python-powerconsul's): one JSON line, exit 0/1/2.
    #[command(subcommand)]
    Check(check::CheckCommand),
    /// Run the trigger action of a check's state by hand.
    Trigger(check::TriggerArgs),
    /// A `consul watch -type=checks` handler: runs the triggers of this node's checks in a state.
    Watch(check::WatchArgs),
    /// Render templates from Consul's catalog and KV, and keep them current (consul-template).
    Template(template::TemplateArgs),
    /// Get an item from the KV store (consul_visa).
    #[command(name = "kv-get")]
    KvGet(kv::KeyArg),
    /// List keys in the KV store (consul_visa).
    #[command(name = "kv-keys")]
    KvKeys(kv::KeysArgs),
    /// List items in the KV store (consul_visa).
    #[command(name = "kv-list")]
    KvList(kv::PrefixArg),
    /// Delete a tree in the KV store (consul_visa).
    #[command(name = "kv-deltree")]
    KvDeltree(kv::PrefixArg),
    /// List nodes (consul_visa).
    #[command(name = "node-list")]
    NodeList(node::ListArgs),
    /// Eject a failed node (consul_visa).
    #[command(name = "node-eject")]
    NodeEject(node::EjectArgs),
    /// What is open to whom: prefixes anyone may write, and the agent token's rights on each.
    Doctor(doctor::DoctorArgs),
    /// Print the version.
    Version,
}

/// What every client command needs.
pub struct Ctx {
    pub client: Client,
    pub layout: Namespace,
}

impl Cli {
    pub fn ctx(&self) -> anyhow::Result<Ctx> {
        let mut cfg = ClientConfig::from_env();
        if self.http_addr.is_some() {
            cfg.address = self.http_addr.clone();
        }
        if self.token.is_some() {
            cfg.token = self.token.clone();
        }
        for (dst, src) in [
            (&mut cfg.ca_cert, &self.ca_file),
            (&mut cfg.client_cert, &self.client_cert),
            (&mut cfg.client_key, &self.client_key),
        ] {
            if src.is_some() {
                *dst = src.clone();
            }
        }
        Ok(Ctx {
            client: Client::new(&cfg)?,
            layout: Namespace::new(&self.kv_prefix),
        })
    }
}

/// The version text of `--version`, `-v` and `servant version`.
pub fn version_text() -> String {
    Cli::command().render_version()
}

/// Rewrites Go-style single-dash long options (`-join x`, `-all`, `-node=vm`) to clap's
/// `--join x`. It follows clap's own walk: the flags known at each point are those of the
/// (sub)command reached so far, and a flag's value (the next argument, unless given with `=`)
/// is never rewritten.
pub fn normalize_args(args: Vec<String>) -> Vec<String> {
    scan(args).0
}

/// The exit code of an error, usage errors included: 1, as in Consul's CLI; but 2 (critical)
/// for `servant check`, whose exit codes are check states.
pub fn error_exit_code(args: &[String]) -> i32 {
    match scan(args.to_vec()).1.first().map(String::as_str) {
        Some("check") => 2,
        _ => 1,
    }
}

/// The normalised arguments, and the names of the subcommands they reach.
fn scan(args: Vec<String>) -> (Vec<String>, Vec<String>) {
    let mut root = Cli::command();
    root.build();
    let mut cmd = &root;
    let mut path = Vec::new();
    let mut out = Vec::with_capacity(args.len());
    // After `--`: every argument as given.
    let mut verbatim = false;
    let mut value_next = false;
    for (i, a) in args.into_iter().enumerate() {
        if i == 0 || verbatim || value_next {
            value_next = false;
            out.push(a);
            continue;
        }
        if a == "--" {
            verbatim = true;
        } else if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = split_value(long);
            value_next = !inline && find_long(cmd, name).is_some_and(takes_value);
        } else if let Some(rest) = a.strip_prefix('-').filter(|r| !r.is_empty()) {
            let (name, inline) = split_value(rest);
            if let Some(arg) = find_long(cmd, name).filter(|_| name.chars().count() > 1) {
                value_next = !inline && takes_value(arg);
                out.push(format!("-{a}"));
                continue;
            }
            // Short flags, maybe several (`-xn vm`): the first that takes a value takes the rest
            // of the argument, or the next one.
            for (j, c) in rest.char_indices() {
                match cmd.get_arguments().find(|x| x.get_short() == Some(c)) {
                    Some(arg) if takes_value(arg) => {
                        value_next = rest[j + c.len_utf8()..].is_empty();
                        break;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        } else if let Some(sub) = cmd.find_subcommand(&a) {
            cmd = sub;
            path.push(sub.get_name().to_string());
        }
        out.push(a);
    }
    (out, path)
}

fn split_value(flag: &str) -> (&str, bool) {
    match flag.split_once('=') {
        Some((name, _)) => (name, true),
        None => (flag, false),
    }
}

fn find_long<'a>(cmd: &'a clap::Command, name: &str) -> Option<&'a clap::Arg> {
    cmd.get_arguments().find(|a| {
        a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|al| al.contains(&name))
    })
}

fn takes_value(a: &clap::Arg) -> bool {
    a.get_action().takes_values()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn go_style_flags_become_long_flags() {
        assert_eq!(
            normalize_args(v(&["servant", "start", "-all", "-c", "echo hi", "job1"])),
            v(&["servant", "start", "--all", "-c", "echo hi", "job1"])
        );
        assert_eq!(
            normalize_args(v(&["servant", "agent", "-join", "127.0.0.2", "-server"])),
            v(&["servant", "agent", "--join", "127.0.0.2", "--server"])
        );
        assert_eq!(
            normalize_args(v(&["servant", "agent", "-bootstrap-expect=3"])),
            v(&["servant", "agent", "--bootstrap-expect=3"])
        );
    }

    #[test]
    fn values_are_never_rewritten() {
        assert_eq!(
            normalize_args(v(&["servant", "start", "-c", "-all", "j"])),
            v(&["servant", "start", "-c", "-all", "j"])
        );
        assert_eq!(
            normalize_args(v(&["servant", "kv", "put", "k", "-la"])),
            v(&["servant", "kv", "put", "k", "-la"])
        );
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The cases: a boolean flag before a one-dash flag with a value.
    #[test]
    fn a_boolean_flag_does_not_take_the_next_flag_as_its_value() {
        assert_eq!(
            normalize_args(v(&[
                "servant",
                "start",
                "-wait",
                "-node",
                "vm",
                "-c",
                "echo node"
            ])),
            v(&[
                "servant",
                "start",
                "--wait",
                "--node",
                "vm",
                "-c",
                "echo node"
            ])
        );
        assert_eq!(
            normalize_args(v(&[
                "servant", "start", "--wait", "-timeout", "5", "-c", "echo c"
            ])),
            v(&[
                "servant",
                "start",
                "--wait",
                "--timeout",
                "5",
                "-c",
                "echo c"
            ])
        );
        let cli = Cli::try_parse_from(normalize_args(v(&[
            "servant",
            "start",
            "-wait",
            "-node",
            "vm",
            "-c",
            "echo node",
        ])))
        .unwrap();
        let Command::Start(a) = cli.command else {
            panic!("not start")
        };
        assert_eq!((a.wait, a.node.as_deref()), (true, Some("vm")));
        // `--wait` takes a value in `template`, not in `start`; and back.
        assert_eq!(
            normalize_args(v(&["servant", "template", "-wait", "-x", "-once"])),
            v(&["servant", "template", "--wait", "-x", "--once"])
        );
        // Short flags: a value after `-n`, attached, or after `=`.
        assert_eq!(
            normalize_args(v(&["servant", "show", "-n", "-all", "-json", "j"])),
            v(&["servant", "show", "-n", "-all", "--json", "j"])
        );
        assert_eq!(
            normalize_args(v(&["servant", "show", "-nvm", "-json", "j"])),
            v(&["servant", "show", "-nvm", "--json", "j"])
        );
        // A flag of another command is not this one's.
        assert_eq!(
            normalize_args(v(&["servant", "kv", "put", "k", "-server"])),
            v(&["servant", "kv", "put", "k", "-server"])
        );
    }

    #[test]
    fn errors_exit_1_but_checks_exit_critical() {
        assert_eq!(error_exit_code(&v(&["servant", "start", "--bogus"])), 1);
        assert_eq!(error_exit_code(&v(&["servant", "bogus"])), 1);
        assert_eq!(
            error_exit_code(&v(&["servant", "--http-addr", "check", "kv", "get"])),
            1
        );
        assert_eq!(
            error_exit_code(&v(&["servant", "-token", "t", "check", "process", "-x"])),
            2
        );
    }

    #[test]
    fn version_as_in_consul() {
        for form in ["-v", "-version", "--version", "-V"] {
            let e = Cli::try_parse_from(normalize_args(v(&["servant", form]))).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion, "{form}");
        }
        let cli = Cli::try_parse_from(v(&["servant", "version"])).unwrap();
        assert!(matches!(cli.command, Command::Version));
        assert!(version_text().starts_with(&format!("servant {}", env!("CARGO_PKG_VERSION"))));
    }

    /// Every (sub)command that runs, with its path from the root, built.
    fn leaves() -> Vec<(Vec<String>, clap::Command)> {
        fn walk(c: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, clap::Command)>) {
            if c.is_hide_set() {
                return;
            }
            let subs: Vec<&clap::Command> = c
                .get_subcommands()
                .filter(|s| s.get_name() != "help")
                .collect();
            if subs.is_empty() {
                out.push((path, c.clone()));
                return;
            }
            for s in subs {
                let mut p = path.clone();
                p.push(s.get_name().to_string());
                walk(s, p, out);
            }
        }
        let mut root = Cli::command();
        root.build();
        let mut out = Vec::new();
        walk(&root, vec!["servant".into()], &mut out);
        out
    }

    /// A leaf's flags with a value clap accepts for each (None for a boolean), and arguments
    /// for its required positionals.
    struct Leaf {
        path: Vec<String>,
        flags: Vec<(clap::Arg, Option<String>)>,
        positionals: Vec<String>,
        cmd: clap::Command,
    }

    fn leaf_specs() -> Vec<Leaf> {
        leaves()
            .into_iter()
            .map(|(path, cmd)| {
                // Each value is judged alone: nothing else is required meanwhile.
                let relaxed = cmd.clone().mut_args(|a| a.required(false));
                let probe = |a: &clap::Arg| -> String {
                    if let Some(p) = a.get_possible_values().first() {
                        return p.get_name().to_string();
                    }
                    for cand in ["1", "1s", "k=v"] {
                        let mut argv = vec![cmd.get_name().to_string()];
                        match a.get_index() {
                            Some(i) => argv.extend((0..i).map(|_| cand.to_string())),
                            None => {
                                argv.push(format!("--{}={cand}", a.get_long().unwrap_or_default()))
                            }
                        }
                        if relaxed.clone().try_get_matches_from(argv).is_ok() {
                            return cand.to_string();
                        }
                    }
                    panic!("no value for {:?} in {path:?}", a.get_id())
                };
                let flags = cmd
                    .get_arguments()
                    .filter(|a| a.get_long().is_some() && !a.is_positional())
                    .filter(|a| {
                        !matches!(
                            a.get_action(),
                            clap::ArgAction::Help
                                | clap::ArgAction::HelpShort
                                | clap::ArgAction::HelpLong
                                | clap::ArgAction::Version
                        )
                    })
                    .map(|a| {
                        let value = takes_value(a).then(|| probe(a));
                        (a.clone(), value)
                    })
                    .collect();
                let positionals = cmd
                    .get_positionals()
                    .filter(|p| p.is_required_set())
                    .map(probe)
                    .collect();
                Leaf {
                    path,
                    flags,
                    positionals,
                    cmd,
                }
            })
            .collect()
    }

    /// How one flag is written.
    #[derive(Debug, Clone, Copy)]
    struct Style {
        one_dash: bool,
        equals: bool,
        short: bool,
    }

    /// The arguments for `chosen` flags of `leaf`, in that order: as Consul users write them
    /// (`styled`), and as clap reads them unaided (every flag `--long`, values alike).
    fn argv(leaf: &Leaf, chosen: &[(usize, Style)]) -> (Vec<String>, Vec<String>) {
        let (mut styled, mut reference) = (leaf.path.clone(), leaf.path.clone());
        for &(i, st) in chosen {
            let (arg, value) = &leaf.flags[i];
            let long = arg.get_long().unwrap_or_default();
            let name = match (st.short, arg.get_short()) {
                (true, Some(c)) => format!("-{c}"),
                _ if st.one_dash => format!("-{long}"),
                _ => format!("--{long}"),
            };
            match value {
                Some(v) if st.equals => {
                    styled.push(format!("{name}={v}"));
                    reference.push(format!("--{long}={v}"));
                }
                Some(v) => {
                    styled.extend([name, v.clone()]);
                    reference.extend([format!("--{long}"), v.clone()]);
                }
                None => {
                    styled.push(name);
                    reference.push(format!("--{long}"));
                }
            }
        }
        styled.extend(leaf.positionals.iter().cloned());
        reference.extend(leaf.positionals.iter().cloned());
        (styled, reference)
    }

    /// Drops flags that conflict with one chosen before them.
    fn without_conflicts(
        leaf: &Leaf,
        order: impl Iterator<Item = (usize, Style)>,
    ) -> Vec<(usize, Style)> {
        let mut chosen: Vec<(usize, Style)> = Vec::new();
        for (i, st) in order {
            let clash = |a: &clap::Arg, b: &clap::Arg| {
                leaf.cmd
                    .get_arg_conflicts_with(a)
                    .iter()
                    .any(|c| c.get_id() == b.get_id())
            };
            let arg = &leaf.flags[i].0;
            if chosen.iter().all(|(j, _)| {
                let other = &leaf.flags[*j].0;
                !clash(arg, other) && !clash(other, arg)
            }) {
                chosen.push((i, st));
            }
        }
        chosen
    }

    fn same_parse(leaf: &Leaf, chosen: &[(usize, Style)]) {
        let (styled, reference) = argv(leaf, chosen);
        let want = Cli::try_parse_from(&reference)
            .unwrap_or_else(|e| panic!("reference {reference:?} does not parse: {e}"));
        let got = Cli::try_parse_from(normalize_args(styled.clone()))
            .unwrap_or_else(|e| panic!("{styled:?} does not parse: {e}"));
        assert_eq!(format!("{got:?}"), format!("{want:?}"), "{styled:?}");
    }

    /// Every long flag of every command, all at once, in one-dash form: as declared and
    /// reversed (so booleans stand before and after flags with values), with `=` and without.
    #[test]
    fn every_long_flag_works_with_one_dash() {
        let leaves = leaf_specs();
        assert!(leaves.len() > 20, "walked {} commands", leaves.len());
        for leaf in &leaves {
            for equals in [false, true] {
                let st = Style {
                    one_dash: true,
                    equals,
                    short: false,
                };
                let n = leaf.flags.len();
                same_parse(leaf, &without_conflicts(leaf, (0..n).map(|i| (i, st))));
                same_parse(
                    leaf,
                    &without_conflicts(leaf, (0..n).rev().map(|i| (i, st))),
                );
            }
        }
    }

    proptest::proptest! {
        /// Any subset of a command's flags, in any order, each written with one dash or two,
        /// short or long, with `=` or not, parses as the two-dash form does.
        #[test]
        fn mixed_flag_styles_parse_as_two_dash(
            pick in 0usize..1000,
            styles in proptest::collection::vec(
                (proptest::prelude::any::<bool>(), proptest::prelude::any::<bool>(),
                 proptest::prelude::any::<bool>(), proptest::prelude::any::<bool>(),
                 proptest::prelude::any::<u16>()),
                64,
            ),
        ) {
            static LEAVES: std::sync::OnceLock<Vec<Leaf>> = std::sync::OnceLock::new();
            let leaves = LEAVES.get_or_init(leaf_specs);
            let leaf = &leaves[pick % leaves.len()];
            let mut order: Vec<(u16, usize, Style)> = leaf
                .flags
                .iter()
                .enumerate()
                .zip(&styles)
                .filter(|((_, (arg, _)), s)| s.0 || arg.is_required_set())
                .map(|((i, _), &(_, one_dash, equals, short, key))| {
                    (key, i, Style { one_dash, equals, short })
                })
                .collect();
            order.sort_by_key(|(k, i, _)| (*k, *i));
            let chosen = without_conflicts(leaf, order.into_iter().map(|(_, i, s)| (i, s)));
            same_parse(leaf, &chosen);
        }
    }

    /// A command's own flags come first; the global ones after, under their own heading.
    #[test]
    fn help_shows_own_flags_before_global_ones() {
        for (path, mut cmd) in leaves() {
            let help = cmd.render_long_help().to_string();
            let heading = help
                .find(&format!("{GLOBAL_HEADING}:"))
                .unwrap_or_else(|| panic!("{path:?}: no {GLOBAL_HEADING} heading:\n{help}"));
            for a in cmd.get_arguments().filter(|a| !a.is_positional()) {
                let Some(long) = a.get_long() else { continue };
                let at = help
                    .find(&format!("--{long}"))
                    .unwrap_or_else(|| panic!("{path:?}: --{long} missing:\n{help}"));
                let global = a.get_help_heading() == Some(GLOBAL_HEADING);
                assert_eq!(
                    at > heading,
                    global,
                    "{path:?}: --{long} on the wrong side:\n{help}"
                );
            }
        }
    }
}
