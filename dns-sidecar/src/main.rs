//! dns-sidecar: a stable DNS name for an ECS task. Finds the task's address,
//! publishes it in Route 53 under a record it owns (a TXT marker beside it),
//! keeps it correct, and on SIGTERM deletes exactly what it wrote.

mod address;
mod cli;
mod endpoint;
mod idle;
mod metadata;
mod metrics;
mod ownership;
use bastion_common::ec2::Ec2;
use bastion_common::ecs::Ecs;
use bastion_common::region;
use bastion_common::signed::SignedClient;
mod route53;
mod scale;
mod status;

use std::io::IsTerminal;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use cli::{AddressSource, Cli, Healthcheck, LogFormat, Mode};
use metadata::Task;
use ownership::{Claim, Desired, Plan, RecordType, check_id, in_zone, normalize};
use route53::{DnsError, Zone};
use status::State;

/// While a newer task holds the name, how often to look whether it still
/// does: when it stops (its deployment failed, or it was scaled in), it
/// deletes the record, and we publish again.
const STANDBY_POLL: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "healthcheck") {
        return healthcheck(Healthcheck::parse_from(std::env::args_os().skip(1)));
    }
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(event = "sidecar.error", "cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(event = "sidecar.error", "{e}");
            ExitCode::FAILURE
        }
    }
}

/// `dns-sidecar healthcheck`: prints the sidecar's report, exits 0 if healthy.
fn healthcheck(args: Healthcheck) -> ExitCode {
    match status::check(args.status_address, args.timeout) {
        Ok(report) => {
            println!("{}: {} ({})", report.record, report.state, report.detail);
            if report.healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("dns-sidecar healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: Option<LogFormat>) {
    let format = format.unwrap_or(if std::io::stderr().is_terminal() { LogFormat::Text } else { LogFormat::Json });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .finish()
            .with(metrics::ErrorLayer)
            .init(),
        LogFormat::Text => builder.with_target(false).finish().with(metrics::ErrorLayer).init(),
    }
}

/// Everything the sidecar needs to talk to AWS.
struct Aws {
    http: reqwest::Client,
    config: aws_config::SdkConfig,
    zone: Zone,
}

impl Aws {
    /// Signed calls with the task role, in the task's region (EC2, ECS: `bastion_common`).
    fn signed(&self) -> Result<SignedClient, String> {
        let region = self
            .config
            .region()
            .map(|r| r.to_string())
            .ok_or("no AWS region: set AWS_REGION (ECS sets it in tasks) to find the EC2 and ECS endpoints")?;
        let credentials =
            self.config.credentials_provider().ok_or("no AWS credentials provider (the task role is missing?)")?;
        Ok(SignedClient::new(self.http.clone(), &region, credentials))
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    // Handlers first: ECS may stop the task at any moment.
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    let started = SystemTime::now();
    let record = normalize(&cli.record_name);

    // From the start, so that the first publication is in the first record.
    if !cli.metrics_interval.is_zero() && !cli.once && !cli.dry_run {
        // The name without its trailing dot, as bastion-sshd's --name has it: one dimension value for both.
        tokio::spawn(metrics::run(record.trim_end_matches('.').to_string(), cli.metrics_interval));
    }
    // The health status answers "starting" until the name is published.
    let (state, state_rx) = watch::channel(State::Starting);
    if !cli.once && !cli.dry_run {
        status::serve(cli.status_listen, record.clone(), state_rx).await?;
    }

    let http = reqwest::Client::builder().build().map_err(|e| format!("HTTP client: {e}"))?;
    // Throttling and PriorRequestNotComplete are retried by the SDK's standard
    // mode (jittered exponential back-off); more attempts than the default 3,
    // because many tasks may start at once.
    let config = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(8))
        .load()
        .await;
    let partition = config.region().map(|r| region::partition(r.as_ref())).unwrap_or("aws");
    let mut zone = Zone::new(aws_sdk_route53::Client::new(&config), cli.hosted_zone_id.clone(), partition);
    let zone_name = zone.load_name().await.map_err(|e| e.to_string())?;
    if !in_zone(&record, &zone_name) {
        return Err(format!(
            "--record-name {record} lies outside the hosted zone {zone_name} ({}); give a name in that zone, or \
             the zone of that name",
            cli.hosted_zone_id
        ));
    }
    let aws = Aws { http, config, zone };

    let task = task_metadata(&cli, &aws).await?;
    let idle_settings = idle_settings(&cli, task.as_ref())?;
    let claim = claim(&cli, task.as_ref(), started)?;
    let mut desired = desired_records(&cli, &aws, task.as_ref(), &claim).await?;

    if cli.dry_run {
        for d in &desired {
            let plan = plan_for(&aws.zone, d, cli.force).await.map_err(|e| e.to_string())?;
            print_plan(d, &plan);
        }
        return Ok(());
    }

    let mut outcomes = Vec::new();
    for (i, d) in desired.iter().enumerate() {
        match reconcile(&cli, &aws.zone, d).await {
            Ok(outcome) => {
                if matches!(outcome, Outcome::Live { .. }) {
                    metrics::published();
                }
                outcomes.push(outcome)
            }
            Err(e) => {
                // Do not leave half a publication behind (A written, AAAA refused).
                if i > 0 {
                    let _ = cleanup(&cli, &aws.zone, &desired[..i]).await;
                }
                return Err(e.to_string());
            }
        }
    }
    let handover = cli.handover_wait.unwrap_or(Duration::from_secs(cli.ttl.unsigned_abs()));
    state.send_modify(|s| *s = next_state(s, &outcomes, &record, handover));
    if cli.once {
        info!(event = "sidecar.done", "published; --once: exiting without cleanup");
        return Ok(());
    }
    let idle = match idle_settings {
        Some(settings) => Some(scale::spawn(settings, Ecs::new(aws.signed()?))),
        None => None,
    };

    let signal = loop {
        let standing_by = matches!(*state.borrow(), State::StandingBy { .. });
        let wait = if standing_by { cli.reconcile_interval.min(STANDBY_POLL) } else { cli.reconcile_interval };
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = tokio::time::sleep(wait) => {
                // The address itself may have changed (an interface re-associated).
                match desired_records(&cli, &aws, task.as_ref(), &claim).await {
                    Ok(fresh) => desired = fresh,
                    Err(e) => warn!(event = "address.failed", "cannot read the address again ({e}); keeping {}",
                        desired[0].address),
                }
                let mut outcomes = Vec::new();
                for d in &desired {
                    // Drift is repaired under the same ownership rules; a name that
                    // is not ours any more is reported, never taken back.
                    match reconcile(&cli, &aws.zone, d).await {
                        Ok(outcome) => {
                            if matches!(outcome, Outcome::Live { .. }) {
                                metrics::published();
                                metrics::repaired();
                            }
                            outcomes.push(outcome)
                        }
                        Err(e) => error!(event = "record.reconcile_failed", record = %d.address.name, "{e}"),
                    }
                }
                if outcomes.len() == desired.len() {
                    state.send_modify(|s| *s = next_state(s, &outcomes, &record, handover));
                }
            }
        }
    };
    info!(event = "sidecar.stopping", signal, "{signal}: deleting what we wrote");
    state.send_replace(State::Stopping);
    let idle_done = async {
        if let Some(idle) = idle {
            idle.finish(cli.shutdown_timeout).await;
        }
    };
    let cleanup = tokio::time::timeout(cli.shutdown_timeout, cleanup(&cli, &aws.zone, &desired));
    match tokio::join!(cleanup, idle_done).0 {
        Ok(result) => result,
        Err(_) => Err(format!("cleanup did not finish within --shutdown-timeout {:?}", cli.shutdown_timeout)),
    }
}

/// The idle stop's settings, when `--idle-stop` is on.
fn idle_settings(cli: &Cli, task: Option<&Task>) -> Result<Option<scale::Settings>, String> {
    if cli.idle_stop.is_zero() {
        return Ok(None);
    }
    if cli.once {
        return Err("--idle-stop watches the task while it runs; --once exits after publishing".into());
    }
    let service = cli.ecs_service.clone().filter(|s| !s.trim().is_empty()).ok_or(
        "--idle-stop needs --ecs-service (DNS_SIDECAR_ECS_SERVICE): the service to scale to 0 \
         (the task metadata does not name it on Fargate)",
    )?;
    let cluster = match (&cli.ecs_cluster, task.and_then(Task::cluster_name)) {
        (Some(cluster), _) => cluster.clone(),
        (None, Some(cluster)) => cluster.to_string(),
        (None, None) => return Err("--idle-stop needs --ecs-cluster: there is no task metadata to read it from".into()),
    };
    Ok(Some(scale::Settings {
        after: cli.idle_stop,
        poll: cli.idle_poll,
        activity: cli.activity_address,
        cluster,
        service,
    }))
}

/// What a reconcile of one record came to.
#[derive(Debug)]
enum Outcome {
    UpToDate,
    /// We wrote it; `took_over` names the older task whose record we replaced.
    Live {
        took_over: Option<Claim>,
    },
    /// A newer task of our deployment holds it.
    StandBy {
        why: String,
    },
}

/// The health state after a round of reconciles (one outcome per record).
fn next_state(previous: &State, outcomes: &[Outcome], record: &str, handover: Duration) -> State {
    let now = tokio::time::Instant::now();
    if let Some(why) = outcomes.iter().find_map(|o| match o {
        Outcome::StandBy { why } => Some(why),
        _ => None,
    }) {
        if !matches!(previous, State::StandingBy { .. }) {
            info!(event = "sidecar.standing_by", record, "{why}");
        }
        return State::StandingBy { detail: why.clone() };
    }
    if let Some(older) = outcomes.iter().find_map(|o| match o {
        Outcome::Live { took_over: Some(older) } => Some(older),
        _ => None,
    }) {
        let detail = format!("took {record} over from {older}");
        info!(
            event = "sidecar.handover",
            record,
            seconds = handover.as_secs_f64(),
            "{detail}; healthy in {handover:?}, once resolvers have dropped its address"
        );
        return State::Published { healthy_at: now + handover, detail };
    }
    match previous {
        State::Published { .. } => previous.clone(),
        _ => State::Published { healthy_at: now, detail: format!("{record} is published") },
    }
}

/// Who we are, in the ownership marker.
fn claim(cli: &Cli, task: Option<&Task>, started: SystemTime) -> Result<Claim, String> {
    let owner = match (&cli.owner_id, task.and_then(Task::default_owner)) {
        (Some(owner), _) => owner.clone(),
        (None, Some(owner)) => owner,
        (None, None) => return Err("no owner id: give --owner-id (the task metadata has no cluster/family)".into()),
    };
    check_id("owner id", &owner).map_err(|e| format!("--owner-id: {e}"))?;
    let task_id = match (&cli.task_id, task.and_then(Task::task_id)) {
        (Some(id), _) => id.clone(),
        (None, Some(id)) => id.to_string(),
        (None, None) => format!("local-{:08x}", rand::random::<u32>()),
    };
    check_id("task id", &task_id).map_err(|e| format!("--task-id: {e}"))?;
    Ok(Claim::new(&owner, &task_id, started))
}

/// Reads the task metadata: in a task always (it names the task), outside
/// one only if something needs it.
async fn task_metadata(cli: &Cli, aws: &Aws) -> Result<Option<Task>, String> {
    let needed = cli.address.is_none() || cli.aaaa || cli.owner_id.is_none() || cli.mode == Mode::Multivalue;
    let Some(uri) = cli.metadata_uri.as_deref() else {
        if needed {
            return Err("ECS_CONTAINER_METADATA_URI_V4 is not set (not in an ECS task?); give --address and \
                        --owner-id to run without it"
                .into());
        }
        return Ok(None);
    };
    endpoint::fetch(&aws.http, uri, cli.startup_timeout).await.map(Some)
}

/// The records to publish: A (or AAAA for an IPv6 --address), and AAAA with --aaaa.
async fn desired_records(cli: &Cli, aws: &Aws, task: Option<&Task>, claim: &Claim) -> Result<Vec<Desired>, String> {
    let set_identifier = match cli.mode {
        Mode::Simple => None,
        Mode::Multivalue => Some(
            task.and_then(Task::task_id)
                .ok_or("--mode multivalue needs the task id from the task metadata")?
                .to_string(),
        ),
    };
    let address = match cli.address {
        Some(address) => address,
        None => {
            let task = task.ok_or("no task metadata")?;
            let private = task.private_ipv4().ok_or("the task metadata has no IPv4 address")?;
            match cli.address_source {
                AddressSource::Private => IpAddr::V4(private),
                AddressSource::Checkip => address::from_checkip(&aws.http, &cli.checkip_url).await?,
                AddressSource::Eni => {
                    let ec2 = Ec2::new(aws.signed()?, "the task role");
                    let mac = task.mac_address();
                    address::from_eni(&ec2, private, mac.as_deref(), cli.startup_timeout).await?
                }
            }
        }
    };
    info!(event = "address.chosen", address = %address, source = if cli.address.is_some() { "--address" } else { address::describe(cli.address_source) },
        owner = %claim.owner, task = claim.task.as_deref().unwrap_or("?"), "publishing {address} as {}", cli.record_name);
    let rtype = if address.is_ipv4() { RecordType::A } else { RecordType::Aaaa };
    let mut records = vec![Desired::new(
        &cli.record_name,
        rtype,
        vec![address.to_string()],
        cli.ttl,
        claim.clone(),
        set_identifier.clone(),
    )];
    if cli.aaaa {
        let v6 = task.and_then(Task::ipv6).ok_or("--aaaa: the task metadata has no IPv6 address")?;
        records.push(Desired::new(
            &cli.record_name,
            RecordType::Aaaa,
            vec![v6.to_string()],
            cli.ttl,
            claim.clone(),
            set_identifier,
        ));
    }
    Ok(records)
}

/// Reads every set at the record name and the marker names (all set
/// identifiers: ownership is decided for the name, not per task) and plans.
/// The legacy marker name is read only where it can exist (inside the
/// zone), and only dns-sidecar markers there count: since 0.2 the name is
/// not ours, and any other TXT record at it says nothing about the record.
async fn plan_for(zone: &Zone, d: &Desired, force: bool) -> Result<Plan, DnsError> {
    let addresses = zone.sets(&d.address.name, d.address.rtype).await?;
    let mut markers = zone.sets(&d.marker.name, d.marker.rtype).await?;
    let legacy = d.legacy_marker_name();
    if zone.contains(&legacy) {
        let sets = zone.sets(&legacy, RecordType::Txt).await?;
        markers.extend(sets.into_iter().filter(|s| ownership::claim_of(s).is_some()));
    }
    Ok(ownership::plan(d, &addresses, &markers, force))
}

fn print_plan(d: &Desired, plan: &Plan) {
    match plan {
        Plan::UpToDate => println!("{}: up to date, nothing to send", d.address.name),
        Plan::Refuse(reason) => println!("{}: would refuse: {reason}", d.address.name),
        Plan::StandBy { why, .. } => println!("{}: would stand by: {why}", d.address.name),
        Plan::Apply { changes, why, .. } => {
            println!("{}: {why}; would send one change batch:", d.address.name);
            for change in changes {
                println!("  {change}");
            }
        }
    }
}

/// Brings one record to the desired state under the ownership rules. A
/// batch that loses a race (Route 53 answers InvalidChangeBatch) is planned
/// again from a fresh read, once.
async fn reconcile(cli: &Cli, zone: &Zone, d: &Desired) -> Result<Outcome, DnsError> {
    for attempt in 1..=2 {
        match plan_for(zone, d, cli.force).await? {
            Plan::UpToDate => {
                info!(event = "record.up_to_date", record = %d.address, "{} is up to date", d.address.name);
                return Ok(Outcome::UpToDate);
            }
            Plan::Refuse(reason) => {
                return Err(DnsError::Fatal(format!("refusing to touch {}: {reason}", d.address.name)));
            }
            Plan::StandBy { holder, why } => {
                debug!(event = "record.standing_by", record = %d.address.name, holder = %holder, "{why}");
                return Ok(Outcome::StandBy { why });
            }
            Plan::Apply { changes, why, takeover } => {
                let shown: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
                info!(event = "record.changing", record = %d.address.name, changes = ?shown, "{why}");
                match zone.apply(&changes, "dns-sidecar").await {
                    Ok(change) => {
                        let took = zone.wait_insync(&change, cli.insync_poll, cli.insync_timeout).await?;
                        info!(event = "record.live", record = %d.address, change = %change, seconds = took.as_secs_f64(),
                            "{} is live (INSYNC after {took:?})", d.address);
                        return Ok(Outcome::Live { took_over: takeover });
                    }
                    Err(DnsError::Conflict(e)) if attempt == 1 => {
                        warn!(event = "record.conflict", record = %d.address.name, "the zone changed under us ({e}); reading it again");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Err(DnsError::Other(format!("{} kept changing under us", d.address.name)))
}

/// Deletes exactly what we wrote. Route 53 refusing the DELETE (the values
/// changed: a newer task took over; or the record is gone) is success.
async fn cleanup(cli: &Cli, zone: &Zone, desired: &[Desired]) -> Result<(), String> {
    for d in desired {
        match zone.apply(&d.cleanup(), "dns-sidecar: task stopping").await {
            Ok(change) => {
                info!(event = "record.deleted", record = %d.address, change = %change, "deleted {}", d.address);
                if let Err(e) = zone.wait_insync(&change, cli.insync_poll, cli.shutdown_timeout).await {
                    warn!(event = "record.delete_pending", "{e}");
                }
            }
            Err(DnsError::Conflict(e)) => {
                info!(event = "record.not_ours", record = %d.address.name, reason = %e,
                    "{} no longer holds what we wrote (replaced by a newer task, or gone): leaving it", d.address.name);
            }
            Err(e) => return Err(format!("could not delete {}: {e}", d.address)),
        }
    }
    info!(event = "sidecar.stopped", "cleanup done");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn shutdown_timeout_default_is_below_ecs_stop_timeout() {
        let cli = <super::Cli as clap::Parser>::try_parse_from([
            "dns-sidecar",
            "--record-name",
            "b.example.com",
            "--hosted-zone-id",
            "Z1",
        ])
        .unwrap();
        assert!(cli.shutdown_timeout < std::time::Duration::from_secs(30));
        assert_eq!(cli.ttl, 60);
    }
}
