//! One tunnel, from the decision to the end of its relay: what runs in the
//! task `channel_open_direct_tcpip` spawns, and its audit events.

use super::*;

/// Counts a tunnel as open for as long as it lives.
struct OpenTunnel<'a> {
    shared: &'a Shared,
    signals: &'a Signals,
}

impl<'a> OpenTunnel<'a> {
    fn new(shared: &'a Shared, signals: &'a Signals) -> Self {
        shared.tunnels.open.fetch_add(1, Ordering::Relaxed);
        signals.open_tunnels.send_modify(|n| *n += 1);
        Self { shared, signals }
    }
}

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        self.shared.tunnels.open.fetch_sub(1, Ordering::Relaxed);
        self.signals.open_tunnels.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Who and what a tunnel's audit events are about.
pub(super) struct TunnelLog {
    pub(super) conn: Connection,
    /// `c12.3`: the third tunnel of connection c12.
    pub(super) tunnel: String,
    pub(super) identity: Identity,
    /// The client-side address `ssh` reports for the forwarded connection.
    pub(super) originator: String,
}

impl TunnelLog {
    pub(super) fn refused(&self, destination: &str, reason: &str) {
        self.refused_because(destination, reason, reason);
    }

    /// A refusal whose full `detail` is for the audit log only; the client was told `reason`.
    fn refused_because(&self, destination: &str, reason: &str, detail: &str) {
        info!(
            target: "audit",
            event = "tunnel.refused",
            conn = %self.conn.id,
            tunnel = %self.tunnel,
            peer = %self.conn.peer,
            user = %self.identity.user,
            fingerprint = %self.identity.fingerprint,
            arn = self.identity.arn.as_deref(),
            originator = %self.originator,
            destination,
            reason = detail,
            told_client = reason,
            "tunnel {} to {destination} refused: {detail}", self.tunnel
        );
    }

    fn failed(&self, destination: &Target, reason: &str) {
        info!(
            target: "audit",
            event = "tunnel.failed",
            conn = %self.conn.id,
            tunnel = %self.tunnel,
            peer = %self.conn.peer,
            user = %self.identity.user,
            fingerprint = %self.identity.fingerprint,
            arn = self.identity.arn.as_deref(),
            originator = %self.originator,
            destination = %destination,
            reason,
            "tunnel {} to {destination} failed: {reason}", self.tunnel
        );
    }

    fn opened(&self, destination: &Target, resolved: SocketAddr) {
        info!(
            target: "audit",
            event = "tunnel.opened",
            conn = %self.conn.id,
            tunnel = %self.tunnel,
            peer = %self.conn.peer,
            user = %self.identity.user,
            fingerprint = %self.identity.fingerprint,
            arn = self.identity.arn.as_deref(),
            originator = %self.originator,
            destination = %destination,
            resolved = %resolved,
            "tunnel {} opened to {destination} ({resolved})", self.tunnel
        );
    }

    fn closed(
        &self,
        destination: &Target,
        resolved: SocketAddr,
        transfer: &tunnel::Transfer,
        started: Instant,
        ended_by: &str,
        error: Option<String>,
    ) {
        info!(
            target: "audit",
            event = "tunnel.closed",
            conn = %self.conn.id,
            tunnel = %self.tunnel,
            peer = %self.conn.peer,
            user = %self.identity.user,
            fingerprint = %self.identity.fingerprint,
            arn = self.identity.arn.as_deref(),
            originator = %self.originator,
            destination = %destination,
            resolved = %resolved,
            bytes_up = transfer.up(),
            bytes_down = transfer.down(),
            duration_ms = started.elapsed().as_millis() as u64,
            ended_by,
            error,
            "tunnel {} to {destination} closed: {} bytes up, {} bytes down", self.tunnel, transfer.up(), transfer.down()
        );
    }
}

/// How a tunnel cut at the drain deadline is reported.
const CUT: &str = "cut at shutdown (--drain-timeout)";

/// Decides, connects and relays one tunnel; runs in its own task.
pub(super) async fn open_tunnel(
    shared: Arc<Shared>,
    signals: Arc<Signals>,
    log: TunnelLog,
    target: Target,
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    mut closed: oneshot::Receiver<()>,
) {
    let started = Instant::now();
    let timeout = shared.connect_timeout;
    let key_lookups = shared.key_lookups.of(&log.identity.fingerprint);
    let resolver = crate::resolve::SystemResolver::new(timeout, &key_lookups, &shared.lookups);
    // Read for every decision: always current, fails closed (see interfaces.rs).
    let own = crate::interfaces::LocalAddresses::read();
    let addrs = match shared.policy.decide(&log.identity.rights, &target, &resolver, &own).await {
        Decision::Allow(addrs) => addrs,
        Decision::Deny(reason) => {
            log.refused(&target.to_string(), &reason);
            reply.reject(ChannelOpenFailure::Other { code: OPEN_PROHIBITED, reason }).await;
            return;
        }
        Decision::Withheld { reason, detail } => {
            // The client learns only that it is refused; the audit log, why.
            log.refused_because(&target.to_string(), &reason, &detail);
            reply.reject(ChannelOpenFailure::Other { code: OPEN_PROHIBITED, reason }).await;
            return;
        }
        Decision::Unresolved(reason) => {
            log.failed(&target, &reason);
            reply.reject(ChannelOpenFailure::Other { code: OPEN_CONNECT_FAILED, reason }).await;
            return;
        }
    };
    let deadline = tokio::time::Instant::from_std(started) + timeout;
    let (stream, resolved) = match tunnel::connect(&target, &addrs, deadline, timeout).await {
        Ok(connected) => connected,
        Err(reason) => {
            log.failed(&target, &reason);
            reply.reject(ChannelOpenFailure::Other { code: OPEN_CONNECT_FAILED, reason }).await;
            return;
        }
    };
    reply.accept().await;
    let open = OpenTunnel::new(&shared, &signals);
    log.opened(&target, resolved);
    let transfer = tunnel::Transfer::default();
    let (ended_by, error) = tokio::select! {
        error = tunnel::relay(channel.into_stream(), stream, &transfer) => match error {
            None => ("both sides finished", None),
            Some(e) => ("error", Some(e.to_string())),
        },
        _ = &mut closed => (cut_or(&shared, "client closed the channel or the connection"), None),
        _ = idle(&transfer, shared.tunnel_idle_timeout) => ("idle timeout (--tunnel-idle-timeout)", None),
        _ = cut_at_drain_deadline(shared.drain.clone()) => (CUT, None),
        _ = connection_closed(&signals) => (cut_or(&shared, "the connection closed"), None),
    };
    // Free the tunnel's place (channel count, drain count) before reporting
    // it closed: whoever reads the report may open the next one at once.
    drop(closed);
    drop(open);
    if shared.drain.borrow().is_some() {
        let count = if ended_by == CUT { &shared.tunnels.cut } else { &shared.tunnels.drained };
        count.fetch_add(1, Ordering::Relaxed);
    }
    log.closed(&target, resolved, &transfer, started, ended_by, error);
}

/// Resolves once no byte has moved through `transfer` for `timeout`; never without a timeout.
async fn idle(transfer: &tunnel::Transfer, timeout: Option<Duration>) {
    let Some(timeout) = timeout else { return std::future::pending().await };
    let tick = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
    let mut seen = (transfer.up(), transfer.down());
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = (transfer.up(), transfer.down());
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= timeout {
            return;
        }
    }
}

/// How a tunnel ended from outside is reported: at the drain deadline the
/// server closes connections and cuts tunnels at once, and whichever is seen
/// first, it is a cut.
fn cut_or(shared: &Shared, ended_by: &'static str) -> &'static str {
    let past_deadline = shared.drain.borrow().is_some_and(|d| tokio::time::Instant::now() >= d);
    if past_deadline { CUT } else { ended_by }
}

/// Resolves once the connection task is done with the connection.
async fn connection_closed(signals: &Signals) {
    let mut closed = signals.connection_closed.subscribe();
    let _ = closed.wait_for(|closed| *closed).await;
}

/// Resolves at the drain deadline, once the server is stopping.
async fn cut_at_drain_deadline(mut drain: Drain) {
    let deadline = match drain.wait_for(Option::is_some).await {
        Ok(deadline) => *deadline,
        Err(_) => None,
    };
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
