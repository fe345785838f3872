//! `bastion proxy`: an ssh ProxyCommand that wakes the bastion's ECS service
//! when it has no task, waits for a healthy one, finds its address through
//! ECS and EC2 (no DNS cache can hold it up), and relays ssh's stdin and
//! stdout to it. Progress goes to stderr; stdout carries SSH only.
//!
//! Every failure is one line that says what to fix.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_config::BehaviorVersion;
use bastion_common::ec2::{Ec2, Lookup};
use bastion_common::ecs::{AwsError, Ecs, Task};
use bastion_common::signed::SignedClient;

use crate::wake::{self, Step};

/// How often ECS is asked while waiting (3 calls each time; ECS's API allows
/// far more): the wait after a task turns healthy is at most this.
const POLL: Duration = Duration::from_secs(1);
/// A count still at 0 this long after we raised it was set back (an idle stop
/// deciding at the same moment): raise it again. Before, it may be ECS's
/// answer lagging behind our update.
const RAISE_AGAIN: Duration = Duration::from_secs(10);
/// A waiting line is repeated at most this often when nothing changes.
const REPEAT: Duration = Duration::from_secs(5);
/// The relay's buffer.
const BUFFER: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AddressKind {
    /// The public IP of the task's network interface.
    Public,
    /// The task's private IP, for a VPN or a peered network.
    Private,
}

#[derive(Debug, Clone)]
pub struct ProxyArgs {
    pub cluster: String,
    pub service: String,
    pub region: Option<String>,
    pub wait_timeout: Duration,
    pub address: AddressKind,
    pub container: String,
    pub host: String,
    pub port: u16,
}

/// Finds or wakes a task, connects, and relays until the bastion closes.
pub fn run(args: &ProxyArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stream = runtime.block_on(connect(args))?;
    drop(runtime);
    relay(stream)
}

async fn connect(args: &ProxyArgs) -> anyhow::Result<TcpStream> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &args.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let config = loader.load().await;
    let region = config
        .region()
        .map(|r| r.to_string())
        .context("no AWS region: give --region, or set AWS_REGION or a region in your AWS profile")?;
    let credentials = config
        .credentials_provider()
        .context("no AWS credentials: log in (aws sso login) or set AWS_PROFILE or AWS_ACCESS_KEY_ID")?;
    let http = reqwest::Client::builder().build().context("building the HTTPS client")?;
    let signed = SignedClient::new(http, &region, credentials);
    let ecs = Ecs::new(signed.clone());
    let started = Instant::now();
    let deadline = started + args.wait_timeout;
    let task = wait_for_task(args, &ecs, &region, started, deadline).await?;
    let ip = address(args, &Ec2::new(signed, "your AWS identity"), &task).await?;
    let addr = SocketAddr::new(ip, args.port);
    let id = wake::short(task.id());
    say(&format!("task {id} RUNNING, healthy after {} s; connecting to {addr}", started.elapsed().as_secs()));
    // The task is healthy, so bastion-sshd listens; a refused connection now is a network problem.
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1))),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        match attempt {
            Ok(Ok(stream)) => {
                let stream = stream.into_std()?;
                stream.set_nonblocking(false)?;
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) if Instant::now() + POLL < deadline => {
                say(&format!("{addr}: {e}; trying again"));
                tokio::time::sleep(POLL).await;
            }
            Ok(Err(e)) => bail!(
                "cannot connect to {} (task {id} at {addr}): {e} (does its security group allow port {} from here?)",
                args.host,
                args.port
            ),
            Err(_) => bail!(
                "no answer from {} (task {id} at {addr}) within 10 s (does its security group allow port {} from here{}?)",
                args.host,
                args.port,
                if args.address == AddressKind::Private { ", and does your VPN reach the VPC" } else { "" }
            ),
        }
    }
}

/// Waits for a healthy task, raising the desired count from 0 to 1 if needed.
async fn wait_for_task(
    args: &ProxyArgs,
    ecs: &Ecs,
    region: &str,
    started: Instant,
    deadline: Instant,
) -> anyhow::Result<Task> {
    let (cluster, service_name) = (&args.cluster, &args.service);
    let mut shown: Option<(String, Instant)> = None;
    // When we last raised the count: DescribeServices may show the old count for a moment.
    let mut raised: Option<Instant> = None;
    loop {
        let service =
            ecs.describe_service(cluster, service_name).await.map_err(|e| ecs_error(&e, args, region))?.with_context(
                || {
                    format!(
                        "service {service_name} does not exist in cluster {cluster} ({region}): check --service, \
                     --cluster and --region"
                    )
                },
            )?;
        let tasks = ecs.running_tasks(cluster, service_name).await.map_err(|e| ecs_error(&e, args, region))?;
        match wake::judge(&service, &tasks, &args.container) {
            Step::Ready(task) => return Ok(task),
            Step::Start { .. } if raised.is_some_and(|at| at.elapsed() < RAISE_AGAIN) => {}
            Step::Start { stopping } => {
                ecs.set_desired_count(cluster, service_name, 1).await.map_err(|e| ecs_error(&e, args, region))?;
                raised = Some(Instant::now());
                if stopping {
                    say(&format!(
                        "service {service_name} is stopping (idle); starting it again (desired count 0 -> 1)"
                    ));
                } else {
                    say(&format!("service {service_name} has no running task; starting one (desired count 0 -> 1)"));
                }
                shown = None;
            }
            Step::Wait(line) => {
                let repeat = shown.as_ref().is_none_or(|(last, at)| *last != line || at.elapsed() >= REPEAT);
                if repeat {
                    say(&format!("{line} ({} s)", started.elapsed().as_secs()));
                    shown = Some((line, Instant::now()));
                }
            }
        }
        if Instant::now() + POLL > deadline {
            bail!(
                "no healthy task of service {service_name} within {} (--wait-timeout); {}; last service events: {}",
                humantime::format_duration(args.wait_timeout),
                shown.map(|(line, _)| line).unwrap_or_else(|| "no task".into()),
                wake::last_events(&service, 3)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The address to connect to.
async fn address(args: &ProxyArgs, ec2: &Ec2, task: &Task) -> anyhow::Result<IpAddr> {
    let id = wake::short(task.id());
    let private = task.interface_detail("privateIPv4Address");
    if args.address == AddressKind::Private {
        let private = private.with_context(|| format!("task {id} has no private IPv4 address in its attachment"))?;
        return private.parse().with_context(|| format!("task {id}: ECS gave {private:?} as its private IP"));
    }
    let eni = task
        .interface_detail("networkInterfaceId")
        .with_context(|| format!("task {id} has no network interface attachment (not awsvpc?)"))?;
    match ec2.by_id(eni).await.map_err(anyhow::Error::msg)? {
        Lookup::Public { ip, .. } => Ok(IpAddr::V4(ip)),
        Lookup::NoPublicIp { interface } => bail!(
            "task {id} has no public IP (its interface {interface}; the service must assign one, assignPublicIp \
             ENABLED); from a VPN into the VPC, use --address private{}",
            private.map(|p| format!(" ({p})")).unwrap_or_default()
        ),
        Lookup::NotFound | Lookup::OtherInterfaces(_) => {
            bail!("task {id}: EC2 does not know its network interface {eni}")
        }
    }
}

fn ecs_error(e: &AwsError, args: &ProxyArgs, region: &str) -> anyhow::Error {
    if e.access_denied() {
        return anyhow::anyhow!(
            "access denied: your AWS identity may not call {} on service {} of cluster {} ({}); \
             deploy/iam/proxy-policy.json lists what bastion proxy needs",
            e.action,
            args.service,
            args.cluster,
            e.message
        );
    }
    if e.code == "ClusterNotFoundException" {
        return anyhow::anyhow!("cluster {} does not exist in {region}: check --cluster and --region", args.cluster);
    }
    if e.code == "ServiceNotFoundException" || e.code == "ServiceNotActiveException" {
        return anyhow::anyhow!(
            "service {} does not exist in cluster {} ({region}): check --service",
            args.service,
            args.cluster
        );
    }
    anyhow::anyhow!("{e}")
}

/// One progress line on stderr.
fn say(line: &str) {
    eprintln!("bastion: {line}");
}

/// Copies stdin to the bastion and the bastion to stdout. ssh closing its
/// end (stdin EOF) half-closes the connection; the bastion closing it ends
/// the proxy.
fn relay(stream: TcpStream) -> anyhow::Result<()> {
    let mut upstream = stream.try_clone().context("duplicating the socket")?;
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; BUFFER];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if upstream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = upstream.shutdown(std::net::Shutdown::Write);
    });
    let mut downstream = stream;
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; BUFFER];
    loop {
        match downstream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                stdout.write_all(&buf[..n]).context("writing to ssh")?;
                stdout.flush().context("writing to ssh")?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("connection to the bastion: {e}"),
        }
    }
    // The stdin thread may sit in a read that never ends: the process exits without it.
    Ok(())
}
