//! The sidecar's health, for ECS's container health check.
//!
//! The task becomes HEALTHY only once its sidecar has published the name,
//! and, when it took the name over from an older task, once one TTL has
//! passed since: resolvers have then dropped the old task's address. With
//! minimum healthy 100 % ECS stops the old task only after that, so during
//! a rolling deploy the name always resolves, and to a task that accepts
//! connections.
//!
//! The sidecar serves its state on a loopback port, one JSON line per
//! connection; `dns-sidecar healthcheck` (the container's health check
//! command; the image has no shell) reads it. The port is in the task's
//! network namespace, so bastion-sshd could reach it: it serves nothing but
//! this line and reads nothing.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::info;

/// Where the sidecar is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Reading the metadata, the address, the zone; publishing.
    Starting,
    /// The name is ours and live. `healthy_at`: when resolvers have dropped
    /// the address of the task we took it over from (now, if we took nothing over).
    Published { healthy_at: Instant, detail: String },
    /// A newer task of our deployment holds the name (a rolling deploy).
    StandingBy { detail: String },
    /// SIGTERM: deleting what we wrote.
    Stopping,
}

/// What a health check reads.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    pub healthy: bool,
    pub state: String,
    pub record: String,
    pub detail: String,
}

impl State {
    pub fn report(&self, record: &str, now: Instant) -> Report {
        let (healthy, state, detail) = match self {
            State::Starting => (false, "starting", "publishing the name".to_string()),
            State::Published { healthy_at, detail } if now >= *healthy_at => (true, "published", detail.clone()),
            State::Published { healthy_at, detail } => (
                false,
                "settling",
                format!(
                    "{detail}; healthy in {} s, once resolvers have dropped the old address (one TTL)",
                    (*healthy_at - now).as_secs_f64().ceil()
                ),
            ),
            State::StandingBy { detail } => (true, "standing_by", detail.clone()),
            State::Stopping => (false, "stopping", "deleting what we wrote".to_string()),
        };
        Report { healthy, state: state.into(), record: record.into(), detail }
    }
}

/// Listens on `addr` and answers each connection with the current report.
/// Returns the address bound (a port 0 becomes the real one).
pub async fn serve(addr: SocketAddr, record: String, state: watch::Receiver<State>) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for the health check (--status-listen): {e}"))?;
    let bound = listener.local_addr().map_err(|e| format!("--status-listen {addr}: {e}"))?;
    info!(event = "status.listening", address = %bound, "health status on {bound}");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let report = state.borrow().report(&record, Instant::now());
            let mut line = serde_json::to_string(&report).unwrap_or_default();
            line.push('\n');
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(line.as_bytes())).await;
            });
        }
    });
    Ok(bound)
}

/// `dns-sidecar healthcheck`: 0 when the sidecar at `addr` reports healthy.
pub fn check(addr: SocketAddr, timeout: Duration) -> Result<Report, String> {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("dns-sidecar is not answering on {addr} ({e}): not started, or exited"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut text = String::new();
    // A sidecar that is exiting may accept and then drop the connection: that
    // is the same answer as a refused connection, and is worded as one.
    let gone = |e: String| format!("dns-sidecar is not answering on {addr} ({e}): exiting, or exited");
    match stream.take(4096).read_to_string(&mut text) {
        Ok(_) if text.trim().is_empty() => return Err(gone("closed before reporting".into())),
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => {
            return Err(gone(e.to_string()));
        }
        Err(e) => return Err(format!("reading {addr}: {e}")),
    }
    serde_json::from_str(text.trim()).map_err(|e| {
        let shown: String = text.chars().take(80).collect();
        format!("{addr} did not answer with a dns-sidecar status ({e}): {shown:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sidecar_that_closes_before_reporting_is_not_answering() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let closer = std::thread::spawn(move || drop(listener.accept()));
        let error = check(addr, Duration::from_secs(5)).unwrap_err();
        closer.join().unwrap();
        assert!(error.contains(&format!("dns-sidecar is not answering on {addr}")), "{error}");
        assert!(error.contains("exiting, or exited"), "{error}");
    }

    #[test]
    fn health_follows_the_state() {
        let now = Instant::now();
        assert!(!State::Starting.report("b.", now).healthy);
        let settling = State::Published { healthy_at: now + Duration::from_secs(60), detail: "took over".into() };
        let report = settling.report("b.", now);
        assert!(!report.healthy);
        assert_eq!(report.state, "settling");
        assert!(report.detail.contains("healthy in 60 s"), "{}", report.detail);
        assert!(settling.report("b.", now + Duration::from_secs(60)).healthy);
        assert!(State::StandingBy { detail: "newer".into() }.report("b.", now).healthy);
        assert!(!State::Stopping.report("b.", now).healthy);
    }
}
