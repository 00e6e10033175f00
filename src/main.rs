//! The `weft` daemon binary.
#![forbid(unsafe_code)]

mod backend;
mod cli;
mod docker_opts;
mod health;
mod iface;
mod masq;
mod netlink;
mod nft;
mod run;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // `docker-opts` takes mk-docker-opts.sh's getopts-style flags, so it bypasses clap.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("docker-opts") {
        return ExitCode::from(docker_opts::main(&argv[2..]));
    }
    let cli = cli::Cli::parse_from(cli::normalize_args(std::env::args()));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
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
