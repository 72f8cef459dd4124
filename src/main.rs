//! The `servant` binary: a thin edge over the library.
#![forbid(unsafe_code)]

use clap::Parser;
use servant::cli::{self, Cli, Command};

fn main() {
    let args = cli::normalize_args(std::env::args().collect());
    // The job shims' spawner: single-threaded (it forks), so it starts before any runtime or
    // logging.
    if args.get(1).map(String::as_str) == Some("__spawner") {
        std::process::exit(servant::process::spawner::run());
    }
    // A container's lease holder: its own small runtime, no logging setup.
    if args.get(1).map(String::as_str) == Some("__container-watchdog") {
        std::process::exit(servant::process::watchdog::run(&args[2..]));
    }
    let error_code = cli::error_exit_code(&args);
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout and exit 0; usage errors exit as other errors do
            // (1, as in Consul's CLI). A closed stdout is not worth a word.
            if e.kind() == clap::error::ErrorKind::DisplayVersion {
                // `servant 0.1.0` after a subcommand too, not `servant-start 0.1.0`.
                let _ = servant::util::output::write(cli::version_text().as_bytes());
                std::process::exit(0);
            }
            let _ = e.print();
            std::process::exit(if e.use_stderr() { error_code } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SERVANT_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if matches!(cli.command, Command::Agent(_)) {
                    "info"
                } else {
                    "warn"
                })
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("servant: error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(dispatch(cli)).unwrap_or_else(|e| {
        if servant::util::output::is_closed(e.as_ref()) {
            // The reader of our output went away (`| head`): end quietly, as `cat` does.
            return 0;
        }
        eprintln!(
            "servant: error: {}",
            servant::util::error::chain(e.as_ref())
        );
        error_code
    });
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    if let Command::Agent(a) = cli.command {
        let tls = cli::agent::Tls {
            ca_file: cli.ca_file,
            client_cert: cli.client_cert,
            client_key: cli.client_key,
        };
        cli::agent::run(*a, cli.http_addr, cli.token, tls, &cli.kv_prefix).await?;
        return Ok(0);
    }
    if let Command::Version = cli.command {
        servant::util::output::write(cli::version_text().as_bytes())?;
        return Ok(0);
    }
    let ctx = cli.ctx()?;
    match cli.command {
        Command::Agent(_) | Command::Version => {
            unreachable!("handled above")
        }
        Command::Start(a) => cli::start::run(&ctx, *a).await,
        Command::Show(a) => cli::show::run(&ctx, a).await,
        Command::Jobs(a) => cli::jobs::run(&ctx, a).await,
        Command::Logs(a) => cli::logs::run(&ctx, a).await,
        Command::Doctor(a) => cli::doctor::run(&ctx, a).await,
        Command::Kv(c) => cli::kv::run(&ctx, c).await,
        Command::Node(c) => cli::node::run(&ctx, c).await,
        Command::Task(c) => cli::apps::task(&ctx, c).await,
        Command::App(c) => cli::apps::app(&ctx, c).await,
        Command::Topology(a) => cli::apps::topology(&ctx, a).await,
        Command::Check(c) => cli::check::check(&ctx, c).await,
        Command::Trigger(a) => cli::check::trigger(&ctx, a).await,
        Command::Watch(a) => cli::check::watch(&ctx, a).await,
        Command::Template(a) => cli::template::run_cmd(&ctx, a).await,
        Command::KvGet(a) => cli::kv::run(&ctx, cli::kv::KvCommand::Get(a)).await,
        Command::KvKeys(a) => cli::kv::run(&ctx, cli::kv::KvCommand::Keys(a)).await,
        Command::KvList(a) => cli::kv::run(&ctx, cli::kv::KvCommand::List(a)).await,
        Command::KvDeltree(a) => cli::kv::run(&ctx, cli::kv::KvCommand::Deltree(a)).await,
        Command::NodeList(a) => cli::node::run(&ctx, cli::node::NodeCommand::List(a)).await,
        Command::NodeEject(a) => cli::node::run(&ctx, cli::node::NodeCommand::Eject(a)).await,
    }
}
