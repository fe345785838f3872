//! Whether anyone is using the bastion, shared with the task's sidecar for
//! the idle stop (`dns-sidecar --idle-stop`).
//!
//! bastion-sshd holds no AWS credentials, so it cannot scale its service to
//! zero itself; the sidecar holds the task role and makes that call. What
//! the sidecar needs to decide is served here on a loopback port, in the
//! task's shared network namespace: one JSON line per connection, and
//! nothing is read from the reader. It carries counts and an idle time, no
//! user, key or destination. Tunnel users cannot reach it: the tunnel
//! policy refuses loopback targets.
//!
//! "In use" means a logged-in connection. A connection that never logs in
//! (a port scanner, a health check) keeps nobody's work alive; counting it
//! would let the internet keep the task running.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::handler::Drain;

/// How long one reader may take to take its line.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Server-wide counts of use, updated by the connection tasks.
#[derive(Debug)]
pub struct Usage {
    /// When the server started: the idle clock's start before the first login.
    started: Instant,
    /// Connections open now, logged in or not.
    connections: AtomicUsize,
    /// Logged-in connections open now.
    sessions: AtomicUsize,
    /// Logins since start: a reader that sees it grow knows that someone
    /// logged in since it last looked, even one who has left again.
    logins: AtomicU64,
    /// Milliseconds after `started` when the last logged-in connection closed.
    last_session_end: AtomicU64,
}

/// What a reader gets, one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Logged-in connections open now.
    pub sessions: usize,
    /// Open connections, logged in or not.
    pub connections: usize,
    /// Open tunnels.
    pub tunnels: usize,
    /// Logins since the server started.
    pub logins: u64,
    /// Seconds since the last logged-in connection closed (since the start
    /// if none has); null while one is open.
    pub idle_seconds: Option<f64>,
    /// The server has received SIGTERM and is draining.
    pub draining: bool,
}

impl Default for Usage {
    fn default() -> Self {
        Self::new()
    }
}

impl Usage {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            connections: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            logins: AtomicU64::new(0),
            last_session_end: AtomicU64::new(0),
        }
    }

    /// A connection was accepted; it counts until the guard is dropped.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    /// A connection logged in; it counts as a session until the guard is dropped.
    pub fn session(self: &Arc<Self>) -> SessionGuard {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.logins.fetch_add(1, Ordering::Relaxed);
        SessionGuard(self.clone())
    }

    /// A connection that logged in and left before its session was counted
    /// (a client that disconnects right after the login): it was use too.
    pub fn login_seen(&self) {
        self.logins.fetch_add(1, Ordering::Relaxed);
        self.mark_session_end();
    }

    fn mark_session_end(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_session_end.fetch_max(now, Ordering::Relaxed);
    }

    /// Connections open now, logged in or not.
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn report(&self, tunnels: usize, draining: bool) -> Report {
        let sessions = self.sessions.load(Ordering::Relaxed);
        let last_end = Duration::from_millis(self.last_session_end.load(Ordering::Relaxed));
        let idle = self.started.elapsed().saturating_sub(last_end);
        Report {
            sessions,
            connections: self.connections.load(Ordering::Relaxed),
            tunnels,
            logins: self.logins.load(Ordering::Relaxed),
            idle_seconds: (sessions == 0).then(|| idle.as_millis() as f64 / 1000.0),
            draining,
        }
    }
}

/// Counts one open connection.
pub struct ConnectionGuard(Arc<Usage>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one logged-in connection; its end starts the idle clock.
pub struct SessionGuard(Arc<Usage>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        // The end first: a reader that sees no session sees the fresh idle clock.
        self.0.mark_session_end();
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Checks `--activity-listen`: loopback only, since only the task's own
/// containers may read it.
pub fn check_address(addr: SocketAddr) -> Result<SocketAddr, String> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(format!(
            "{addr} is not a loopback address: the activity report is for the task's sidecar only \
             (127.0.0.1:PORT, or off)"
        ))
    }
}

/// Serves the report until the server stops. Each connection gets one line
/// and is closed; nothing it sends is read.
pub async fn serve(listener: TcpListener, usage: Arc<Usage>, tunnels: impl Fn() -> usize, drain: Drain) {
    if let Ok(addr) = listener.local_addr() {
        info!(event = "activity.listening", addr = %addr, "activity report (for dns-sidecar --idle-stop) on {addr}");
    }
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(event = "activity.error", "activity report: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let report = usage.report(tunnels(), drain.borrow().is_some());
        let mut line = serde_json::to_string(&report).unwrap_or_default();
        line.push('\n');
        // One at a time, each bounded: a reader that does not read costs two seconds, not a task.
        let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
            stream.write_all(line.as_bytes()).await?;
            stream.shutdown().await
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_idle_clock_runs_from_the_start_and_from_the_last_session_end() {
        let usage = Arc::new(Usage::new());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(usage.report(0, false).idle_seconds, Some(10.0));

        let connection = usage.connection();
        assert_eq!(usage.report(0, false).connections, 1);
        // Connected but not logged in: still idle.
        assert_eq!(usage.report(0, false).idle_seconds, Some(10.0));
        let session = usage.session();
        tokio::time::advance(Duration::from_secs(60)).await;
        let busy = usage.report(2, false);
        assert_eq!((busy.sessions, busy.tunnels, busy.logins, busy.idle_seconds), (1, 2, 1, None));

        drop(session);
        drop(connection);
        tokio::time::advance(Duration::from_secs(5)).await;
        let after = usage.report(0, true);
        assert_eq!((after.sessions, after.connections, after.idle_seconds, after.draining), (0, 0, Some(5.0), true));

        // A login that ended before its session was counted resets the clock too.
        tokio::time::advance(Duration::from_secs(30)).await;
        usage.login_seen();
        let seen = usage.report(0, false);
        assert_eq!((seen.logins, seen.idle_seconds), (2, Some(0.0)));
    }

    #[test]
    fn only_loopback_addresses_are_accepted() {
        assert!(check_address("127.0.0.1:8022".parse().unwrap()).is_ok());
        assert!(check_address("[::1]:8022".parse().unwrap()).is_ok());
        let e = check_address("0.0.0.0:8022".parse().unwrap()).unwrap_err();
        assert!(e.contains("not a loopback address"), "{e}");
    }
}
