//! Command line: every flag also reads an environment variable, so that an
//! ECS task definition can configure the server without a shell.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::privileges::RunAs;

/// Environment variable holding authorized_keys *text* (how ECS injects a secret).
pub const ENV_AUTHORIZED_KEYS_TEXT: &str = "BASTION_AUTHORIZED_KEYS";
/// Environment variable holding trusted user CA public keys *text*.
pub const ENV_TRUSTED_CA_TEXT: &str = "BASTION_TRUSTED_USER_CA_KEYS_TEXT";
/// Environment variable holding an OpenSSH private host key *text*.
pub const ENV_HOST_KEY_TEXT: &str = "BASTION_HOST_KEY";
/// Environment variable holding the user CA's OpenSSH private key *text*.
pub const ENV_USER_CA_KEY_TEXT: &str = "BASTION_USER_CA_KEY";
/// Environment variable holding AWS identity rules *text*.
pub const ENV_AWS_IDENTITY_RULES_TEXT: &str = "BASTION_AWS_IDENTITY_RULES";

const AFTER_HELP: &str = "\
Secrets as environment text (for ECS `secrets`):
  BASTION_AUTHORIZED_KEYS  authorized_keys text, in addition to --authorized-keys files
  BASTION_HOST_KEY         an OpenSSH private host key, in addition to --host-key files
  BASTION_TRUSTED_USER_CA_KEYS_TEXT  trusted user CA public keys, in addition to --trusted-user-ca-keys
  BASTION_USER_CA_KEY      the CA private key that signs `bastion login` certificates (instead of --user-ca-key)
  BASTION_AWS_IDENTITY_RULES  AWS identity rules, in addition to --aws-identity-rules files
They are read from the environment only, never from the command line, where
other processes could read them.

Only public-key authentication (keys and certificates; `bastion login` gets a
certificate for an AWS identity) and direct-tcpip channels (ssh -L, -D, -J) are
served. Shells, commands, sftp/scp, agent, X11 and remote forwarding are refused.";

#[derive(Debug, Parser)]
#[command(
    name = "bastion-sshd",
    version,
    about = "Tunnel-only SSH bastion: public-key auth, port forwarding (ssh -L/-D/-J), nothing else",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// `bastion-sshd` with no subcommand is `bastion-sshd run`.
    #[command(flatten)]
    pub run: ServerArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    #[command(after_help = AFTER_HELP)]
    Run {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Write a new Ed25519 host key in OpenSSH format and print its public key and fingerprint.
    Keygen(KeygenArgs),
    /// Load everything the server would, print what was found and every problem; exit 1 on any problem.
    #[command(after_help = AFTER_HELP)]
    CheckConfig {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Connect to the server and read its SSH banner: exit 0 if it answers, 1 otherwise.
    /// Meant for container health checks in an image without a shell.
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// Address to listen on (repeatable, or comma separated in the env var).
    /// Default: [::]:22, dual-stack (IPv6 and IPv4); falls back to 0.0.0.0:22 where IPv6 is off.
    #[arg(long = "listen", value_name = "ADDR", env = "BASTION_LISTEN", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,

    /// OpenSSH private host key file (repeatable, or comma separated in the env var).
    /// Ed25519 or ECDSA. Without any host key an ephemeral Ed25519 key is generated at
    /// every start, and clients see a new host key each time.
    #[arg(long = "host-key", value_name = "PATH", env = "BASTION_HOST_KEY_FILE", value_delimiter = ',')]
    pub host_keys: Vec<PathBuf>,

    /// OpenSSH authorized_keys file (repeatable, or comma separated in the env var).
    /// Any user name is accepted for a listed key; the name is logged, not trusted.
    #[arg(long = "authorized-keys", value_name = "PATH", env = "BASTION_AUTHORIZED_KEYS_FILE", value_delimiter = ',')]
    pub authorized_keys: Vec<PathBuf>,

    /// File of certificate authority public keys whose user certificates may log in (OpenSSH
    /// TrustedUserCAKeys; repeatable, or comma separated in the env var). The login user name
    /// must be one of the certificate's principals. (`cert-authority` lines in authorized_keys
    /// also trust a CA, with options.)
    #[arg(
        long = "trusted-user-ca-keys",
        value_name = "PATH",
        env = "BASTION_TRUSTED_USER_CA_KEYS",
        value_delimiter = ','
    )]
    pub trusted_user_ca_keys: Vec<PathBuf>,

    /// Revoked public keys, one per line (OpenSSH RevokedKeys; repeatable). A listed key
    /// cannot log in, nor can a certificate for it or signed by it. An unreadable or
    /// malformed file stops the server: revocation fails closed.
    #[arg(long = "revoked-keys", value_name = "PATH", env = "BASTION_REVOKED_KEYS", value_delimiter = ',')]
    pub revoked_keys: Vec<PathBuf>,

    /// File of AWS identity rules (repeatable, or comma separated in the env var): who may log
    /// in with `bastion login`. One rule a line: an ARN pattern (`*`, `?`) matched against the
    /// ARN that STS returns, then authorized_keys options (permitopen=, from=, expiry-time=,
    /// restrict, valid-for=). The first matching rule decides. Needs --user-ca-key.
    #[arg(
        long = "aws-identity-rules",
        value_name = "PATH",
        env = "BASTION_AWS_IDENTITY_RULES_FILE",
        value_delimiter = ','
    )]
    pub aws_identity_rules: Vec<PathBuf>,

    /// OpenSSH private key (Ed25519 or ECDSA) of the CA that signs the certificates `bastion
    /// login` hands out; the bastion trusts it for logins. Keep it secret like the host key
    /// (or give its text in BASTION_USER_CA_KEY, an ECS secret).
    #[arg(long = "user-ca-key", value_name = "PATH", env = "BASTION_USER_CA_KEY_FILE")]
    pub user_ca_key: Option<PathBuf>,

    /// Where AWS login proofs are sent: the only AWS API this server calls, with the
    /// client's signature. Default: the regional STS endpoint of AWS_REGION
    /// (https://sts.REGION.amazonaws.com). Never a host the client names.
    #[arg(long, value_name = "URL", env = "BASTION_STS_ENDPOINT")]
    pub sts_endpoint: Option<String>,

    /// The region login proofs are signed for. Default: the region in the --sts-endpoint host
    /// name, else AWS_REGION or AWS_DEFAULT_REGION.
    #[arg(long, value_name = "REGION", env = "BASTION_STS_REGION")]
    pub sts_region: Option<String>,

    /// The longest life of a `bastion login` certificate; a rule's valid-for= is capped by it.
    #[arg(long, value_name = "DURATION", env = "BASTION_MAX_CERTIFICATE_VALIDITY", default_value = "8h", value_parser = parse_duration)]
    pub max_certificate_validity: Duration,

    /// How often key files (--authorized-keys, --trusted-user-ca-keys, --revoked-keys,
    /// --aws-identity-rules) are checked for changes; a change reloads them, as SIGHUP does. Live tunnels stay up.
    #[arg(long, value_name = "DURATION", env = "BASTION_RELOAD_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub reload_poll_interval: Duration,

    /// Destinations tunnels may reach (repeatable, or comma separated): host:port, host:*,
    /// *:port, CIDR:port, [IPv6]:port. Default: any host and port outside the denied ranges
    /// (loopback, unspecified, link-local including the ECS credentials endpoint 169.254.170.2
    /// and EC2 IMDS, fd00:ec2::/32, multicast, broadcast). A denied address is reachable only
    /// through an entry naming that address, or a range inside its block.
    #[arg(long = "permit-open", value_name = "HOST:PORT", env = "BASTION_PERMIT_OPEN", value_delimiter = ',')]
    pub permit_open: Vec<String>,

    /// How long to wait for a tunnel target to resolve and accept the TCP connection.
    #[arg(long, value_name = "DURATION", env = "BASTION_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// A client that has not authenticated within this time is disconnected (OpenSSH LoginGraceTime).
    #[arg(long, value_name = "DURATION", env = "BASTION_LOGIN_GRACE_TIME", default_value = "30s", value_parser = parse_duration)]
    pub login_grace_time: Duration,

    /// Most connections open at once, authenticated or not. Further ones are closed at once.
    #[arg(long, value_name = "N", env = "BASTION_MAX_CONNECTIONS", default_value_t = 200)]
    pub max_connections: usize,

    /// Most unauthenticated connections at once (OpenSSH MaxStartups).
    #[arg(long, value_name = "N", env = "BASTION_MAX_STARTUPS", default_value_t = 30)]
    pub max_startups: usize,

    /// Most unauthenticated connections at once from one source address (IPv6: one /64)
    /// (OpenSSH PerSourceMaxStartups).
    #[arg(long, value_name = "N", env = "BASTION_PER_SOURCE_MAX_STARTUPS", default_value_t = 5)]
    pub per_source_max_startups: usize,

    /// Authentication attempts per connection (OpenSSH MaxAuthTries).
    #[arg(long, value_name = "N", env = "BASTION_MAX_AUTH_TRIES", default_value_t = 6)]
    pub max_auth_tries: usize,

    /// After a connection fails to log in (or sits out the login grace time), refuse new
    /// connections from its source for this long, doubling with each further failure
    /// (OpenSSH PerSourcePenalties). 0 turns penalties off.
    #[arg(long, value_name = "DURATION", env = "BASTION_PENALTY", default_value = "2s", value_parser = parse_duration)]
    pub penalty: Duration,

    /// The longest penalty.
    #[arg(long, value_name = "DURATION", env = "BASTION_PENALTY_MAX", default_value = "10m", value_parser = parse_duration)]
    pub penalty_max: Duration,

    /// Sources never penalized, as CIDR ranges (repeatable, or comma separated): a NAT
    /// gateway many users share, a load balancer's health checks.
    #[arg(long, value_name = "CIDR", env = "BASTION_PENALTY_EXEMPT", value_delimiter = ',')]
    pub penalty_exempt: Vec<String>,

    /// Sources of the task's own health check (CIDR ranges, or `none`): served like any
    /// connection until --max-startups, --per-source-max-startups or --max-connections would
    /// refuse them, then from a reserve of 4 outside those limits, and never penalized, so
    /// that a flood cannot make the health check fail. Only ranges no remote
    /// client can come from: in an ECS task, loopback is the task itself.
    #[arg(
        long,
        value_name = "CIDR",
        env = "BASTION_HEALTH_CHECK_SOURCES",
        value_delimiter = ',',
        default_value = "127.0.0.0/8,::1/128"
    )]
    pub health_check_sources: Vec<String>,

    /// Most open channels (tunnels and sessions) per connection.
    #[arg(long, value_name = "N", env = "BASTION_MAX_CHANNELS", default_value_t = 64)]
    pub max_channels: usize,

    /// Close a tunnel after this long without a byte either way (OpenSSH ChannelTimeout). 0: never.
    #[arg(long, value_name = "DURATION", env = "BASTION_TUNNEL_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub tunnel_idle_timeout: Duration,

    /// On SIGTERM, how long open tunnels may finish before they are cut. Below ECS's
    /// default stopTimeout of 30 s.
    #[arg(long, value_name = "DURATION", env = "BASTION_DRAIN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Send an SSH keepalive after this much silence from the client (OpenSSH ClientAliveInterval).
    /// Keeps idle tunnels alive through NAT and load balancers (the NLB idle timeout is 350 s).
    #[arg(long, value_name = "DURATION", env = "BASTION_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,

    /// Disconnect a client after this many unanswered keepalives (OpenSSH ClientAliveCountMax).
    #[arg(long, value_name = "N", env = "BASTION_KEEPALIVE_MAX", default_value_t = 3)]
    pub keepalive_max: usize,

    /// Tunnel data the server may hold for all clients at once, in MiB: the sum of the
    /// windows it has open on their channels (data that arrived and waits for a slow target,
    /// and what clients may still send). Channels start with an eighth of the 2 MiB window and
    /// grow on use; once the budget is spent, the newest are slowed until window comes back.
    /// 0: no budget (every channel gets its 2 MiB).
    #[arg(long, value_name = "MIB", env = "BASTION_WINDOW_BUDGET", default_value_t = 256)]
    pub window_budget: usize,

    /// Threads that carry connections and tunnels. 0: one per CPU this process may use
    /// (a cgroup CPU quota counts). A 0.25-vCPU task gains nothing from a second thread, and
    /// one thread spends less CPU per byte (docs/benchmarks.md).
    #[arg(long, value_name = "N", env = "BASTION_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Offer only the post-quantum key exchange (mlkem768x25519-sha256). Clients older than
    /// OpenSSH 9.9 cannot connect; ssh-audit reports no warning at all.
    #[arg(long, env = "BASTION_POST_QUANTUM_ONLY")]
    pub post_quantum_only: bool,

    /// Name shown to users in the session banner and used in the logged known_hosts line,
    /// normally the DNS name users connect to.
    #[arg(long, value_name = "NAME", env = "BASTION_NAME", default_value = "bastion")]
    pub name: String,

    /// How often to write a CloudWatch Embedded Metric Format record to the log (stderr):
    /// open connections and tunnels, tunnels opened, refused and failed, bytes, logins, limit
    /// refusals, the window budget in use. CloudWatch Logs makes metrics of it, with no agent
    /// and no credentials. 0: off.
    #[arg(long, value_name = "DURATION", env = "BASTION_METRICS_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub metrics_interval: Duration,

    /// Where the sidecar reads whether anyone is logged in (one JSON line per connection:
    /// open logins, tunnels, idle seconds; nothing is read), for its idle stop
    /// (`dns-sidecar --idle-stop`). Loopback only. `off`: not served. Default 127.0.0.1:8022;
    /// when that port is taken, a warning and no report (an address given here must bind).
    #[arg(long, value_name = "ADDR|off", env = "BASTION_ACTIVITY_LISTEN", value_parser = parse_activity_listen)]
    pub activity_listen: Option<ActivityListen>,

    /// Started as root (to bind port 22 in a container), become this numeric UID:GID
    /// after binding and before accepting anything; never root. Ignored when not started as root.
    #[arg(long, value_name = "UID:GID", env = "BASTION_RUN_AS", default_value = "65534:65534")]
    pub run_as: RunAs,
}

#[derive(Debug, Args, Clone)]
pub struct LogArgs {
    /// Log format. Default: text on a terminal, json otherwise (containers).
    #[arg(long, value_enum, env = "BASTION_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Write the private key here (mode 0600) and the public key to PATH.pub.
    /// Without it, the private key goes to stdout (to pipe into a secret store)
    /// and the public key and fingerprint to stderr.
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Address of the server to check.
    #[arg(long, value_name = "ADDR", env = "BASTION_HEALTHCHECK_ADDR", default_value = "127.0.0.1:22")]
    pub addr: SocketAddr,

    /// Give up after this long.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Where the activity report is served when `--activity-listen` is not given.
pub const DEFAULT_ACTIVITY_LISTEN: &str = "127.0.0.1:8022";

/// `--activity-listen`: a loopback address, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivityListen(pub Option<SocketAddr>);

fn parse_activity_listen(s: &str) -> Result<ActivityListen, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(ActivityListen(None));
    }
    let addr: SocketAddr = s.trim().parse().map_err(|e| format!("{e} (examples: 127.0.0.1:8022, off)"))?;
    crate::usage::check_address(addr).map(|a| ActivityListen(Some(a)))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 10s, 500ms, 2m)"))
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
    fn no_subcommand_means_run() {
        let cli = Cli::try_parse_from(["bastion-sshd", "--listen", "127.0.0.1:2222"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.listen, vec!["127.0.0.1:2222".parse().unwrap()]);
        assert_eq!(cli.run.connect_timeout, Duration::from_secs(10));
    }

    #[test]
    fn durations_accept_units() {
        let cli = Cli::try_parse_from(["bastion-sshd", "run", "--connect-timeout", "500ms"]).unwrap();
        match cli.command {
            Some(Command::Run { server, .. }) => {
                assert_eq!(server.connect_timeout, Duration::from_millis(500))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(Cli::try_parse_from(["bastion-sshd", "--connect-timeout", "ten"]).is_err());
    }
}
