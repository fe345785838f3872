//! dns-sidecar: a stable DNS name for an ECS task. Finds the task's address,
//! publishes it in Route 53 under a record it owns (a TXT marker beside it),
//! keeps it correct, and on SIGTERM deletes exactly what it wrote.

mod address;
mod cli;
mod ec2;
mod endpoint;
mod metadata;
mod ownership;
mod route53;

use std::io::IsTerminal;
use std::net::IpAddr;
use std::process::ExitCode;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use cli::{AddressSource, Cli, LogFormat, Mode};
use metadata::Task;
use ownership::{Desired, Plan, RecordType};
use route53::{DnsError, Zone};

fn main() -> ExitCode {
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

fn init_logging(format: Option<LogFormat>) {
    let format = format.unwrap_or(if std::io::stderr().is_terminal() { LogFormat::Text } else { LogFormat::Json });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}

/// Everything the sidecar needs to talk to AWS.
struct Aws {
    http: reqwest::Client,
    config: aws_config::SdkConfig,
    zone: Zone,
}

async fn run(cli: Cli) -> Result<(), String> {
    // Handlers first: ECS may stop the task at any moment.
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;

    let http = reqwest::Client::builder().build().map_err(|e| format!("HTTP client: {e}"))?;
    // Throttling and PriorRequestNotComplete are retried by the SDK's standard
    // mode (jittered exponential back-off); more attempts than the default 3,
    // because many tasks may start at once.
    let config = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(8))
        .load()
        .await;
    let zone = Zone::new(aws_sdk_route53::Client::new(&config), cli.hosted_zone_id.clone());
    let aws = Aws { http, config, zone };

    let task = task_metadata(&cli, &aws).await?;
    let mut desired = desired_records(&cli, &aws, task.as_ref()).await?;

    if cli.dry_run {
        for d in &desired {
            let plan = plan_for(&aws.zone, d, cli.force).await.map_err(|e| e.to_string())?;
            print_plan(d, &plan);
        }
        return Ok(());
    }

    for (i, d) in desired.iter().enumerate() {
        if let Err(e) = reconcile(&cli, &aws.zone, d).await {
            // Do not leave half a publication behind (A written, AAAA refused).
            if i > 0 {
                let _ = cleanup(&cli, &aws.zone, &desired[..i]).await;
            }
            return Err(e.to_string());
        }
    }
    if cli.once {
        info!(event = "sidecar.done", "published; --once: exiting without cleanup");
        return Ok(());
    }

    let mut interval = tokio::time::interval(cli.reconcile_interval);
    interval.tick().await; // the first tick is now, and we just reconciled
    let signal = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = interval.tick() => {
                // The address itself may have changed (an interface re-associated).
                match desired_records(&cli, &aws, task.as_ref()).await {
                    Ok(fresh) => desired = fresh,
                    Err(e) => warn!(event = "address.failed", "cannot read the address again ({e}); keeping {}",
                        desired[0].address),
                }
                for d in &desired {
                    // Drift is repaired under the same ownership rules; a name that
                    // is not ours any more is reported, never taken back.
                    if let Err(e) = reconcile(&cli, &aws.zone, d).await {
                        error!(event = "record.reconcile_failed", record = %d.address.name, "{e}");
                    }
                }
            }
        }
    };
    info!(event = "sidecar.stopping", signal, "{signal}: deleting what we wrote");
    match tokio::time::timeout(cli.shutdown_timeout, cleanup(&cli, &aws.zone, &desired)).await {
        Ok(result) => result,
        Err(_) => Err(format!("cleanup did not finish within --shutdown-timeout {:?}", cli.shutdown_timeout)),
    }
}

/// Reads the task metadata when something needs it.
async fn task_metadata(cli: &Cli, aws: &Aws) -> Result<Option<Task>, String> {
    let needed = cli.address.is_none() || cli.aaaa || cli.owner_id.is_none() || cli.mode == Mode::Multivalue;
    if !needed {
        return Ok(None);
    }
    let uri = cli.metadata_uri.as_deref().ok_or(
        "ECS_CONTAINER_METADATA_URI_V4 is not set (not in an ECS task?); give --address and --owner-id to run \
         without it",
    )?;
    endpoint::fetch(&aws.http, uri, cli.startup_timeout).await.map(Some)
}

/// The records to publish: A (or AAAA for an IPv6 --address), and AAAA with --aaaa.
async fn desired_records(cli: &Cli, aws: &Aws, task: Option<&Task>) -> Result<Vec<Desired>, String> {
    let owner = match (&cli.owner_id, task.and_then(Task::default_owner)) {
        (Some(owner), _) => owner.clone(),
        (None, Some(owner)) => owner,
        (None, None) => return Err("no owner id: give --owner-id (the task metadata has no cluster/family)".into()),
    };
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
                    let ec2 = ec2::Ec2::new(aws.http.clone(), &aws.config)?;
                    address::from_eni(&ec2, private, cli.startup_timeout).await?
                }
            }
        }
    };
    info!(event = "address.chosen", address = %address, source = if cli.address.is_some() { "--address" } else { address::describe(cli.address_source) },
        owner = %owner, "publishing {address} as {}", cli.record_name);
    let rtype = if address.is_ipv4() { RecordType::A } else { RecordType::Aaaa };
    let mut records =
        vec![Desired::new(&cli.record_name, rtype, vec![address.to_string()], cli.ttl, &owner, set_identifier.clone())];
    if cli.aaaa {
        let v6 = task.and_then(Task::ipv6).ok_or("--aaaa: the task metadata has no IPv6 address")?;
        records.push(Desired::new(
            &cli.record_name,
            RecordType::Aaaa,
            vec![v6.to_string()],
            cli.ttl,
            &owner,
            set_identifier,
        ));
    }
    Ok(records)
}

/// Reads every set at the record name and the marker name (all set
/// identifiers: ownership is decided for the name, not per task) and plans.
async fn plan_for(zone: &Zone, d: &Desired, force: bool) -> Result<Plan, DnsError> {
    let addresses = zone.sets(&d.address.name, d.address.rtype).await?;
    let markers = zone.sets(&d.marker.name, d.marker.rtype).await?;
    Ok(ownership::plan(d, &addresses, &markers, force))
}

fn print_plan(d: &Desired, plan: &Plan) {
    match plan {
        Plan::UpToDate => println!("{}: up to date, nothing to send", d.address.name),
        Plan::Refuse(reason) => println!("{}: would refuse: {reason}", d.address.name),
        Plan::Apply { changes, why } => {
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
async fn reconcile(cli: &Cli, zone: &Zone, d: &Desired) -> Result<(), DnsError> {
    for attempt in 1..=2 {
        match plan_for(zone, d, cli.force).await? {
            Plan::UpToDate => {
                info!(event = "record.up_to_date", record = %d.address, "{} is up to date", d.address.name);
                return Ok(());
            }
            Plan::Refuse(reason) => {
                return Err(DnsError::Fatal(format!("refusing to touch {}: {reason}", d.address.name)));
            }
            Plan::Apply { changes, why } => {
                let shown: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
                info!(event = "record.changing", record = %d.address.name, changes = ?shown, "{why}");
                match zone.apply(&changes, "dns-sidecar").await {
                    Ok(change) => {
                        let took = zone.wait_insync(&change, cli.insync_poll, cli.insync_timeout).await?;
                        info!(event = "record.live", record = %d.address, change = %change, seconds = took.as_secs_f64(),
                            "{} is live (INSYNC after {took:?})", d.address);
                        return Ok(());
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
