//! bastion-sshd: a tunnel-only SSH server for a bastion in a public subnet.
//! Public-key authentication and direct-tcpip channels; nothing else.

use std::process::ExitCode;

use clap::Parser;

use bastion_sshd::cli::{self, Cli, Command};
use bastion_sshd::{check_config, healthcheck, keygen, logging, server};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.run, cli.log.log_format),
        Some(Command::Run { server }) => serve(server, cli.log.log_format),
        Some(Command::Keygen(args)) => match keygen::run(args.out.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bastion-sshd keygen: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some(Command::CheckConfig { server }) => {
            if check_config::run(&server) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(Command::Healthcheck(args)) => match healthcheck::check(args.addr, args.timeout) {
            Ok(banner) => {
                println!("ok: {banner}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("unhealthy: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(args: cli::ServerArgs, log_format: Option<cli::LogFormat>) -> ExitCode {
    logging::init(log_format);
    // Configuration, sockets and giving up root come before the runtime starts
    // its threads (see `privileges`).
    let workers = args.worker_threads;
    let prepared = match server::prepare(args) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(event = "server.error", "{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        runtime.worker_threads(workers);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(event = "server.error", "cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(server::run(prepared));
    // Dropping the runtime would wait for every blocking thread, and a name
    // lookup stuck in getaddrinfo cannot be cancelled (resolve.rs): once the
    // server has stopped, give them a moment and exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(event = "server.error", "{e:#}");
            ExitCode::FAILURE
        }
    }
}
