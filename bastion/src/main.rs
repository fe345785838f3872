//! `bastion`: the laptop side of the Fargate bastion.
//!
//! - `bastion login HOST`: proves the caller's AWS identity to the bastion
//!   and gets a short-lived OpenSSH certificate for a key made here.
//! - `bastion config HOST`: the `~/.ssh/config` stanza that uses it.
//! - `bastion proxy --cluster C --service S HOST PORT`: an ssh ProxyCommand
//!   that starts the bastion's ECS service when it has no task, and connects.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod files;
mod known_hosts;
mod login;
mod proof;
mod proxy;
mod ssm;
mod wake;

#[derive(Debug, Parser)]
#[command(name = "bastion", version, about = "Log in to a Fargate bastion with your AWS identity; then use plain ssh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prove your AWS identity to the bastion and get an SSH certificate for a fresh key.
    /// AWS credentials come from the standard chain (environment, AWS_PROFILE, SSO, credential_process).
    Login(LoginCli),
    /// Print the ~/.ssh/config stanza that makes ssh (and GUI tools) use the certificate
    /// (and, with --cluster and --service, `bastion proxy`).
    Config(ConfigCli),
    /// An ssh ProxyCommand: starts the bastion's ECS service if it has no running task
    /// (desired count 0 -> 1), waits for a healthy task, and connects ssh to it.
    /// Progress goes to stderr. In ~/.ssh/config:
    /// `ProxyCommand bastion proxy --cluster C --service S %h %p`
    Proxy(ProxyCli),
}

#[derive(Debug, Args)]
struct ConfigCli {
    #[command(flatten)]
    target: Target,

    /// The bastion's ECS cluster, for a ProxyCommand line (the on-demand mode).
    #[arg(long, requires = "service")]
    cluster: Option<String>,

    /// The bastion's ECS service, for a ProxyCommand line.
    #[arg(long, requires = "cluster")]
    service: Option<String>,
}

#[derive(Debug, Args)]
struct ProxyCli {
    /// The ECS cluster of the bastion's service.
    #[arg(long)]
    cluster: String,

    /// The bastion's ECS service.
    #[arg(long)]
    service: String,

    /// AWS region. Default: AWS_REGION, or your profile's region.
    #[arg(long)]
    region: Option<String>,

    /// How long to wait for a healthy task (Fargate starts one in 30-60 s).
    #[arg(long, value_name = "DURATION", default_value = "3m", value_parser = parse_duration)]
    wait_timeout: std::time::Duration,

    /// Connect to the task's public IP, or its private IP (from a VPN into the VPC).
    #[arg(long, value_enum, default_value = "public")]
    address: proxy::AddressKind,

    /// The name of the bastion's container in the task definition, whose health is awaited.
    #[arg(long, default_value = "bastion-sshd")]
    container: String,

    /// The bastion's name (ssh's %h), for messages.
    host: String,

    /// The port to connect to on the task (ssh's %p).
    port: u16,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90s, 3m)"))
}

#[derive(Debug, Args)]
struct Target {
    /// The bastion's DNS name, as you connect to it (and as its --name says).
    host: String,

    /// SSH port of the bastion.
    #[arg(short = 'p', long, default_value_t = 22)]
    port: u16,

    /// Where the key goes; the certificate goes to PATH-cert.pub. Default: ~/.ssh/bastion-HOST.
    #[arg(long, value_name = "PATH")]
    identity_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct LoginCli {
    #[command(flatten)]
    target: Target,

    /// known_hosts file that must list the bastion's host key.
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,

    /// Add key and certificate to ssh-agent, for the certificate's lifetime, instead of writing files.
    #[arg(long)]
    agent: bool,

    /// Read the bastion's public host key from this SSM parameter (which the stack writes
    /// and IAM guards) and record it in known_hosts before logging in.
    #[arg(long, value_name = "PARAMETER")]
    trust_from_ssm: Option<String>,

    /// An STS host, besides AWS's own, that the bastion may ask proofs to be signed for
    /// (a VPC endpoint name, a test stand-in). Repeatable.
    #[arg(long = "sts-host", value_name = "HOST", env = "BASTION_STS_HOST", value_delimiter = ',')]
    sts_hosts: Vec<String>,
}

fn home() -> Result<PathBuf, String> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).ok_or_else(|| "HOME is not set".to_string())
}

fn identity_file(target: &Target) -> Result<PathBuf, String> {
    match &target.identity_file {
        Some(path) => Ok(path.clone()),
        None => Ok(login::default_identity_file(&home()?, &target.host, target.port)),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Login(args) => run_login(args),
        Command::Config(args) => identity_file(&args.target).map_err(anyhow::Error::msg).map(|path| {
            let proxy = args.cluster.as_deref().zip(args.service.as_deref());
            print!("{}", config_stanza(&args.target, &path, proxy));
        }),
        Command::Proxy(args) => proxy::run(&proxy::ProxyArgs {
            cluster: args.cluster,
            service: args.service,
            region: args.region,
            wait_timeout: args.wait_timeout,
            address: args.address,
            container: args.container,
            host: args.host,
            port: args.port,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bastion: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_login(args: LoginCli) -> anyhow::Result<()> {
    let identity_file = identity_file(&args.target).map_err(anyhow::Error::msg)?;
    let known_hosts = match args.known_hosts {
        Some(path) => path,
        None => home().map_err(anyhow::Error::msg)?.join(".ssh").join("known_hosts"),
    };
    let login = login::LoginArgs {
        host: args.target.host,
        port: args.target.port,
        known_hosts,
        identity_file,
        agent: args.agent,
        sts_hosts: args.sts_hosts,
        trust_from_ssm: args.trust_from_ssm,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(login::run(&login))
}

/// The `~/.ssh/config` stanza for HOST; with `proxy` (cluster, service), through `bastion proxy`.
fn config_stanza(target: &Target, identity: &std::path::Path, proxy: Option<(&str, &str)>) -> String {
    let port = if target.port == 22 { String::new() } else { format!("    Port {}\n", target.port) };
    let proxy = proxy
        .map(|(cluster, service)| {
            format!(
                "    # Starts the service when it has no task (bastion proxy waits up to 3 minutes).\n    \
                 ProxyCommand bastion proxy --cluster {cluster} --service {service} %h %p\n    \
                 # A ConnectTimeout also bounds the wait for the banner through a ProxyCommand.\n    \
                 ConnectTimeout 200\n"
            )
        })
        .unwrap_or_default();
    format!(
        "# Written by `bastion config {host}`; refresh the certificate with `bastion login {host}`.\n\
         Host {host}\n\
         {port}    IdentityFile {key}\n\
         \x20   CertificateFile {cert}\n\
         \x20   # Only this key: other keys would use up the bastion's authentication attempts.\n\
         \x20   IdentitiesOnly yes\n\
         \x20   ExitOnForwardFailure yes\n\
         \x20   ServerAliveInterval 30\n\
         {proxy}",
        host = target.host,
        key = identity.display(),
        cert = files::cert_path(identity).display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_config_stanza_names_the_key_and_certificate() {
        let target = Target { host: "bastion.example.com".into(), port: 2222, identity_file: None };
        let stanza =
            config_stanza(&target, std::path::Path::new("/home/a/.ssh/bastion-bastion.example.com-2222"), None);
        assert!(stanza.contains("Host bastion.example.com\n    Port 2222\n"), "{stanza}");
        assert!(stanza.contains("    IdentityFile /home/a/.ssh/bastion-bastion.example.com-2222\n"), "{stanza}");
        assert!(stanza.contains("    CertificateFile /home/a/.ssh/bastion-bastion.example.com-2222-cert.pub\n"));
        assert!(stanza.contains("    IdentitiesOnly yes\n"));
        assert!(!stanza.contains("ProxyCommand"));
        let on_demand = config_stanza(&target, std::path::Path::new("/k"), Some(("prod", "bastion")));
        assert!(
            on_demand.contains("    ProxyCommand bastion proxy --cluster prod --service bastion %h %p\n"),
            "{on_demand}"
        );
    }
}
