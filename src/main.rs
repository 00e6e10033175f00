//! The `weft` daemon binary.
#![forbid(unsafe_code)]

mod backend;
mod blackhole;
mod cli;
mod docker_opts;
mod health;
mod iface;
mod masq;
mod metrics;
mod netlink;
mod nft;
mod periodic;
mod run;

use std::process::ExitCode;

fn main() -> ExitCode {
    // `docker-opts` takes mk-docker-opts.sh's getopts-style flags, so it bypasses clap.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("docker-opts") {
        return ExitCode::from(docker_opts::main(&argv[2..]));
    }
    let argv = cli::implied_run(cli::normalize_args(argv));
    if cli::wants_version(&argv) {
        // flanneld's shape: the version alone, on stderr.
        eprintln!("{}", cli::version_line());
        return ExitCode::SUCCESS;
    }
    if let Some(line) = cli::refused_flag(&argv, |k| std::env::var(k).ok()) {
        eprintln!("error: {line}");
        return ExitCode::from(2);
    }
    let cli = cli::parse(argv);
    let level = match &cli.command {
        cli::Command::Run(a) => match a.verbosity.unwrap_or(0) {
            0..=1 => "info",
            2..=4 => "debug",
            _ => "trace",
        },
        cli::Command::DockerOpts { .. } => "info",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
    let result = match cli.command {
        cli::Command::Run(args) => run::run(*args),
        cli::Command::DockerOpts { args } => return ExitCode::from(docker_opts::main(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<run::UsageError>() => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
