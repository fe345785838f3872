//! Command line; every flag also reads a `DNS_SIDECAR_*` environment variable.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "dns-sidecar",
    version,
    about = "Publishes the ECS task's address in Route 53 under a record it owns (TXT marker), keeps it \
             correct, and deletes exactly what it wrote on SIGTERM"
)]
pub struct Cli {
    /// The name to publish, e.g. bastion.eu-west-1.example.com.
    #[arg(long, env = "DNS_SIDECAR_RECORD_NAME")]
    pub record_name: String,

    /// The Route 53 hosted zone that holds the name (Z0123…).
    #[arg(long, env = "DNS_SIDECAR_HOSTED_ZONE_ID")]
    pub hosted_zone_id: String,

    /// Record TTL in seconds.
    #[arg(long, env = "DNS_SIDECAR_TTL", default_value_t = 60, value_parser = clap::value_parser!(i64).range(1..=86400))]
    pub ttl: i64,

    /// Where the address comes from: eni (the public IP of the task's network interface, via
    /// EC2), checkip (an IP echo URL; behind a NAT that is the NAT's address), private (the
    /// task's private IPv4, for VPN or peered networks).
    #[arg(long, value_enum, env = "DNS_SIDECAR_ADDRESS_SOURCE", default_value = "eni")]
    pub address_source: AddressSource,

    /// Publish this address instead (testing, odd setups).
    #[arg(long, env = "DNS_SIDECAR_ADDRESS")]
    pub address: Option<IpAddr>,

    /// The IP echo URL for --address-source checkip.
    #[arg(long, env = "DNS_SIDECAR_CHECKIP_URL", default_value = "https://checkip.amazonaws.com")]
    pub checkip_url: String,

    /// Also publish the task's IPv6 address as AAAA (dual-stack subnets).
    #[arg(long, env = "DNS_SIDECAR_AAAA")]
    pub aaaa: bool,

    /// Who owns the record, written in its TXT marker. Default: <cluster>/<family> from the task metadata.
    #[arg(long, env = "DNS_SIDECAR_OWNER_ID")]
    pub owner_id: Option<String>,

    /// This task's id in the marker: of two tasks of one owner, the newer holds the name.
    /// Default: the task id from the task metadata (a random one without it).
    #[arg(long, env = "DNS_SIDECAR_TASK_ID")]
    pub task_id: Option<String>,

    /// After taking the name over from an older task, report healthy only after this long, so
    /// that resolvers have dropped the old address before ECS stops the old task. Default: the TTL.
    #[arg(long, env = "DNS_SIDECAR_HANDOVER_WAIT", value_parser = parse_duration)]
    pub handover_wait: Option<Duration>,

    /// Where the health status is served for `dns-sidecar healthcheck` (loopback; port 0 picks one).
    #[arg(long, env = "DNS_SIDECAR_STATUS_LISTEN", default_value = "127.0.0.1:8053")]
    pub status_listen: SocketAddr,

    /// simple: one record for the name. multivalue: each task writes its own record
    /// (SetIdentifier = task id, MultiValueAnswer), for a service with several tasks.
    #[arg(long, value_enum, env = "DNS_SIDECAR_MODE", default_value = "simple")]
    pub mode: Mode,

    /// Take over a name that is not ours (deletes the current record). Use with care.
    #[arg(long, env = "DNS_SIDECAR_FORCE")]
    pub force: bool,

    /// Print the change batch that would be sent, and send nothing.
    #[arg(long, env = "DNS_SIDECAR_DRY_RUN")]
    pub dry_run: bool,

    /// Publish, wait until live, and exit (no reconcile loop, no cleanup).
    #[arg(long, env = "DNS_SIDECAR_ONCE")]
    pub once: bool,

    /// How often to check that the record is still right, and repair it.
    #[arg(long, env = "DNS_SIDECAR_RECONCILE_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub reconcile_interval: Duration,

    /// On SIGTERM, the deletion must finish within this (below ECS's 30 s stopTimeout).
    #[arg(long, env = "DNS_SIDECAR_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// How long to wait for a change to become INSYNC.
    #[arg(long, env = "DNS_SIDECAR_INSYNC_TIMEOUT", default_value = "3m", value_parser = parse_duration)]
    pub insync_timeout: Duration,

    /// How often to poll GetChange while waiting for INSYNC.
    #[arg(long, env = "DNS_SIDECAR_INSYNC_POLL", default_value = "3s", value_parser = parse_duration)]
    pub insync_poll: Duration,

    /// How long to keep retrying the task metadata endpoint and the ENI's public IP at start.
    #[arg(long, env = "DNS_SIDECAR_STARTUP_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub startup_timeout: Duration,

    /// Scale the ECS service to 0 after this long with nobody logged in to bastion-sshd (its
    /// activity report), so that the task runs only while used; `bastion proxy` wakes it.
    /// off, or a duration (30m). Needs --ecs-service.
    #[arg(long, value_name = "DURATION|off", env = "DNS_SIDECAR_IDLE_STOP", default_value = "off", value_parser = parse_off_or_duration)]
    pub idle_stop: Duration,

    /// The ECS service the idle stop scales (the task metadata does not name it on Fargate).
    #[arg(long, env = "DNS_SIDECAR_ECS_SERVICE")]
    pub ecs_service: Option<String>,

    /// The service's cluster. Default: the task's, from the task metadata.
    #[arg(long, env = "DNS_SIDECAR_ECS_CLUSTER")]
    pub ecs_cluster: Option<String>,

    /// bastion-sshd's activity report (its --activity-listen), for the idle stop.
    #[arg(long, env = "DNS_SIDECAR_ACTIVITY_ADDRESS", default_value = "127.0.0.1:8022")]
    pub activity_address: SocketAddr,

    /// How often the idle stop reads the activity report.
    #[arg(long, env = "DNS_SIDECAR_IDLE_POLL", default_value = "15s", value_parser = parse_duration)]
    pub idle_poll: Duration,

    /// How often to write a CloudWatch Embedded Metric Format record to the log: records
    /// published, drift repaired, errors. 0: off.
    #[arg(long, env = "DNS_SIDECAR_METRICS_INTERVAL", default_value = "60s", value_parser = parse_off_or_duration)]
    pub metrics_interval: Duration,

    /// The task metadata endpoint (ECS sets ECS_CONTAINER_METADATA_URI_V4).
    #[arg(long, env = "ECS_CONTAINER_METADATA_URI_V4")]
    pub metadata_uri: Option<String>,

    /// Log format. Default: text on a terminal, json otherwise.
    #[arg(long, value_enum, env = "DNS_SIDECAR_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// `dns-sidecar healthcheck`: the container's health check command.
#[derive(Debug, Parser)]
#[command(
    name = "dns-sidecar healthcheck",
    about = "Exits 0 when the dns-sidecar of this task reports healthy: \
    the name is published (and, after a takeover, one TTL has passed), or a newer task holds it"
)]
pub struct Healthcheck {
    /// The sidecar's --status-listen address.
    #[arg(long, env = "DNS_SIDECAR_STATUS_LISTEN", default_value = "127.0.0.1:8053")]
    pub status_address: SocketAddr,

    /// How long to wait for the answer.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AddressSource {
    Eni,
    Checkip,
    Private,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Simple,
    Multivalue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// A duration, or `off` (also `0`): zero.
fn parse_off_or_duration(s: &str) -> Result<Duration, String> {
    if s.trim().eq_ignore_ascii_case("off") { Ok(Duration::ZERO) } else { parse_duration(s) }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 10s, 500ms, 5m)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
        Healthcheck::command().debug_assert();
    }
}
