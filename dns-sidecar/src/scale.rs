//! The idle stop's calls (`--idle-stop`): reads bastion-sshd's activity
//! report over the task's loopback, and scales the service with
//! `ecs:DescribeServices` and `ecs:UpdateService`, which the task role may
//! call on this one service. The decisions are `idle`'s.
//!
//! Scaling to 0 is all the sidecar does: ECS then stops the task (SIGTERM to
//! both containers), bastion-sshd drains, and this sidecar deletes its record
//! as at any stop.

use std::net::SocketAddr;
use std::time::Duration;

use bastion_common::ecs::{AwsError, Ecs};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::idle::{Activity, Decision, IdleStop};

/// How long reading the report may take.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What the idle stop watches and scales.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--idle-stop`: no login for this long stops the service.
    pub after: Duration,
    /// How often bastion-sshd's report is read.
    pub poll: Duration,
    /// bastion-sshd's `--activity-listen`.
    pub activity: SocketAddr,
    pub cluster: String,
    pub service: String,
}

/// The running idle stop; [`IdleHandle::finish`] ends it at SIGTERM.
pub struct IdleHandle {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl IdleHandle {
    /// Ends the loop; a stop of ours that someone logged in during is undone first.
    pub async fn finish(self, timeout: Duration) {
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            warn!(event = "idle.error", "the idle stop did not finish within {timeout:?}");
        }
    }
}

pub fn spawn(settings: Settings, ecs: Ecs) -> IdleHandle {
    info!(
        event = "idle.watching",
        cluster = %settings.cluster,
        service = %settings.service,
        idle_stop_seconds = settings.after.as_secs(),
        activity = %settings.activity,
        "idle stop on: service {} scales to 0 after {} with nobody logged in (bastion-sshd's report at {})",
        settings.service,
        humantime::format_duration(settings.after),
        settings.activity
    );
    let (shutdown, rx) = watch::channel(false);
    let task = tokio::spawn(run(settings, ecs, rx));
    IdleHandle { shutdown, task }
}

async fn run(settings: Settings, ecs: Ecs, mut shutdown: watch::Receiver<bool>) {
    let mut stop = IdleStop::new(settings.after);
    let mut last: Option<Activity> = None;
    let mut unreadable: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.poll) => {}
            _ = shutdown.changed() => break,
        }
        let activity = match read_activity(settings.activity).await {
            Ok(activity) => {
                if unreadable.take().is_some() {
                    info!(
                        event = "idle.activity_readable",
                        "bastion-sshd's activity report at {} is readable again", settings.activity
                    );
                }
                activity
            }
            Err(e) => {
                // Without the report nobody is known to be idle: no stop. Said once per outage.
                if unreadable.as_deref() != Some(e.as_str()) {
                    warn!(event = "idle.activity_unreadable", "{e}; no idle stop until it answers");
                    unreadable = Some(e);
                }
                continue;
            }
        };
        last = Some(activity.clone());
        let now = Instant::now();
        if stop.stopping() {
            // Our stop is in flight: did someone (bastion proxy) raise the count again?
            if let Ok(Some(service)) = ecs.describe_service(&settings.cluster, &settings.service).await
                && service.desired_count >= 1
            {
                info!(event = "idle.woken", service = %settings.service, desired_count = service.desired_count,
                    "the desired count of {} is {} again while our stop was in flight: stop cancelled, idle clock restarted",
                    settings.service, service.desired_count);
                stop.woken(now);
                continue;
            }
        }
        match stop.observe(now, &activity) {
            Decision::Wait => {}
            Decision::Stop { idle } => {
                if scale_to_zero(&settings, &ecs, idle).await {
                    stop.stopped(activity.logins);
                }
            }
            Decision::Restore => {
                if restore(&settings, &ecs, "a login arrived while the stop was in flight").await {
                    stop.woken(now);
                }
            }
        }
    }
    // SIGTERM. bastion-sshd got it too and may be gone: the last report stands in for a fresh one.
    let latest = read_activity(settings.activity).await.ok().or(last);
    if stop.restore_at_exit(latest.as_ref()) {
        restore(&settings, &ecs, "a login arrived while the stop was in flight, and the task is stopping").await;
    }
}

/// Scales the service to 0 if it is a one-task service at rest; true when done.
async fn scale_to_zero(settings: &Settings, ecs: &Ecs, idle: Duration) -> bool {
    let Settings { cluster, service, .. } = settings;
    let current = match ecs.describe_service(cluster, service).await {
        Ok(Some(current)) => current,
        Ok(None) => {
            error!(
                event = "idle.error",
                "service {service} is not in cluster {cluster} (--ecs-service, --ecs-cluster)"
            );
            return false;
        }
        Err(e) => {
            error!(event = "idle.error", "{}", explain(&e, settings));
            return false;
        }
    };
    if !crate::idle::may_stop(current.desired_count, current.running_count) {
        info!(
            event = "idle.skipped",
            desired_count = current.desired_count,
            running_count = current.running_count,
            "idle for {}, but service {service} has desired count {} and {} running: the idle stop only stops a one-task service at rest",
            humantime::format_duration(round(idle)),
            current.desired_count,
            current.running_count
        );
        return false;
    }
    match ecs.set_desired_count(cluster, service, 0).await {
        Ok(_) => {
            info!(event = "idle.stopping", service = %service, idle_seconds = idle.as_secs(),
                "nobody logged in for {}: service {service} scaled to 0; ECS stops this task next",
                humantime::format_duration(round(idle)));
            true
        }
        Err(e) => {
            error!(event = "idle.error", "{}", explain(&e, settings));
            false
        }
    }
}

/// Scales the service back to 1; true when done.
async fn restore(settings: &Settings, ecs: &Ecs, why: &str) -> bool {
    match ecs.set_desired_count(&settings.cluster, &settings.service, 1).await {
        Ok(_) => {
            info!(event = "idle.restored", service = %settings.service, "{why}: service {} scaled back to 1", settings.service);
            true
        }
        Err(e) => {
            error!(event = "idle.error", "{}", explain(&e, settings));
            false
        }
    }
}

fn explain(e: &AwsError, settings: &Settings) -> String {
    if e.access_denied() {
        format!(
            "{e} (the task role needs {} on service {} of cluster {}: deploy/cloudformation/bastion.yaml, Mode on-demand)",
            e.action, settings.service, settings.cluster
        )
    } else {
        e.to_string()
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// One report from bastion-sshd's `--activity-listen`.
pub async fn read_activity(addr: SocketAddr) -> Result<Activity, String> {
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut line = Vec::new();
        (&mut stream).take(4096).read_to_end(&mut line).await.map_err(|e| e.to_string())?;
        serde_json::from_slice::<Activity>(&line).map_err(|e| format!("unexpected answer: {e}"))
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(result) => result.map_err(|e| format!("bastion-sshd's activity report at {addr}: {e}")),
        Err(_) => Err(format!("bastion-sshd's activity report at {addr}: no answer within {READ_TIMEOUT:?}")),
    }
}
