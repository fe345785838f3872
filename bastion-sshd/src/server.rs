//! Listening sockets, the accept loop, one task per connection, and
//! graceful shutdown. Our own loop around `russh::server::run_stream` (not
//! russh's `run_on_socket`) so that per-connection deadlines and limits live
//! here, before russh sees a byte.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use russh::keys::{Algorithm, HashAlg};
use russh::server::Config;
use russh::{Disconnect, MethodKind, MethodSet, Preferred, SshId, cipher, kex, mac};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::auth;
use crate::aws_login::AwsLogin;
use crate::cli::{ActivityListen, ServerArgs};
use crate::config::{Listen, Loaded};
use crate::handler::{Connection, ConnectionHandler, Drain, Shared, Signals, TunnelStats};
use crate::hostkey::HostKey;
use crate::keys::{KeyStore, LiveKeys};
use crate::limits::{Admission, Refusal, Ticket};
use crate::liveness;
use crate::privileges::{self, Outcome};
use crate::reload;
use crate::session;

mod accept;
use accept::{AcceptLoop, bind_all};

/// The identification string. It names the product, not the SSH library or
/// its version, so that scanners learn nothing to match against advisories.
const SERVER_ID: &str = "SSH-2.0-bastion";

/// After the drain deadline, how long closing the remaining connections may
/// take; also how long a peer gets to take our disconnect message before its
/// socket is closed under it (one that does not read never takes it).
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Key exchange: the post-quantum hybrid first, then curve25519 for OpenSSH
/// clients older than 9.9. No finite-field DH (slow, DHEat) and no NIST ECDH.
const KEX: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// `--post-quantum-only`: clients without ML-KEM (OpenSSH < 9.9) cannot connect.
const KEX_POST_QUANTUM_ONLY: &[kex::Name] =
    &[kex::MLKEM768X25519_SHA256, kex::EXTENSION_SUPPORT_AS_SERVER, kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER];

/// AEAD ciphers only: no CTR mode, so no MAC choice to get wrong.
const CIPHERS: &[cipher::Name] = &[cipher::CHACHA20_POLY1305, cipher::AES_256_GCM, cipher::AES_128_GCM];

/// Encrypt-then-MAC only.
const MACS: &[mac::Name] = &[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM];

/// Host and user key algorithms, also sent as `server-sig-algs`: no `ssh-rsa` (SHA-1).
const KEY_ALGORITHMS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa { curve: russh::keys::EcdsaCurve::NistP256 },
    Algorithm::Ecdsa { curve: russh::keys::EcdsaCurve::NistP384 },
    Algorithm::Ecdsa { curve: russh::keys::EcdsaCurve::NistP521 },
    Algorithm::Rsa { hash: Some(russh::keys::HashAlg::Sha512) },
    Algorithm::Rsa { hash: Some(russh::keys::HashAlg::Sha256) },
];

/// The channel window granted to clients (OpenSSH's is 2 MiB too).
const WINDOW_SIZE: u32 = 2 << 20;

/// The largest data packet a client may send on a channel (OpenSSH's is 32 KiB too).
const MAXIMUM_PACKET_SIZE: u32 = 32 << 10;

/// Packets a channel's queue holds (russh's default). With the window re-opened
/// as the tunnel consumes (russh patch 0004), a client that respects the window
/// never has more than one window (64 full packets) queued.
const CHANNEL_QUEUE: usize = 100;

/// Read buffer on each client socket. russh reads every packet with two
/// read() calls (its first block, then the rest); through this buffer one call
/// takes in two full packets, or every smaller one that has arrived. Measured
/// on upload: 11-16 % more throughput and less CPU per GB; 256 KiB gained
/// nothing more. Safe only with the window re-opened as tunnels consume (russh
/// patch 0004): reading faster made the two-way stall certain before it.
const SOCKET_READ_BUFFER: usize = 64 << 10;

/// Why a connection that held an unauthenticated slot without progress was closed.
fn evicted() -> String {
    format!(
        "no attempt to authenticate for {} while the unauthenticated slots were full (--max-startups): \
         its slot went to a new connection",
        humantime::format_duration(crate::limits::STALLED_AFTER)
    )
}

/// Per-connection deadlines that are not part of russh's config.
struct Deadlines {
    /// Unauthenticated connections are dropped after this (LoginGraceTime).
    login_grace_time: Duration,
    /// A connection with no byte either way for this long is dropped: its
    /// peer stopped reading and answering keepalives (`liveness`).
    silence_limit: Option<Duration>,
}

/// Builds the russh configuration: public key only, hardened algorithms.
fn russh_config(args: &ServerArgs, host_keys: &[HostKey]) -> Config {
    Config {
        server_id: SshId::Standard(Cow::Borrowed(SERVER_ID)),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_secs(1),
        // OpenSSH clients start with a "none" probe to learn the methods; answer it at once.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: host_keys.iter().map(|k| k.key.clone()).collect(),
        max_auth_attempts: args.max_auth_tries,
        // Idle tunnels must live: liveness is checked with keepalives instead,
        // and the login grace timer covers unauthenticated connections.
        inactivity_timeout: None,
        keepalive_interval: Some(args.keepalive_interval),
        keepalive_max: args.keepalive_max,
        nodelay: true,
        // What one channel may hold in the server when its target reads slower
        // than the client sends: one window, re-opened only as the tunnel
        // consumes (vendor/patches/0004); the window and packet size are enforced
        // (0002, 0004), so a client that ignores them is disconnected. The queue
        // keeps russh's 100 packets, room for a window of full packets.
        window_size: WINDOW_SIZE,
        maximum_packet_size: MAXIMUM_PACKET_SIZE,
        channel_buffer_size: CHANNEL_QUEUE,
        // What all connections together may hold of tunnel data (russh patch 0007).
        window_budget: (args.window_budget > 0).then(|| russh::WindowBudget::new(args.window_budget << 20)),
        preferred: Preferred {
            kex: Cow::Borrowed(if args.post_quantum_only { KEX_POST_QUANTUM_ONLY } else { KEX }),
            key: Cow::Borrowed(KEY_ALGORITHMS),
            cipher: Cow::Borrowed(CIPHERS),
            mac: Cow::Borrowed(MACS),
            ..Preferred::DEFAULT
        },
        ..Config::default()
    }
}

/// Logs each key in force.
fn log_keys(store: &KeyStore) {
    for key in store.authorized.keys() {
        let role = if key.options.cert_authority { "certificate authority" } else { "authorized key" };
        info!(event = "authorized_key.loaded", fingerprint = %key.fingerprint, key_type = %key.key_type(),
            comment = %key.comment, source = %key.source, line = key.line, role, "{role} {} {}", key.fingerprint, key.comment);
    }
    if !store.revoked.is_empty() {
        info!(event = "revoked_keys.loaded", count = store.revoked.len(), "{} revoked key(s)", store.revoked.len());
    }
}

/// The server before its runtime starts: configuration checked, sockets bound, root given up.
pub struct Prepared {
    args: ServerArgs,
    loaded: Loaded,
    host_keys: Vec<HostKey>,
    /// Bound while still root (port 22); served after the switch to `--run-as`.
    listeners: Vec<std::net::TcpListener>,
    /// `--activity-listen`, bound before anything is served (an address given that cannot be
    /// bound fails the start; the default, taken, only warns).
    activity: Option<std::net::TcpListener>,
}

/// Loads and checks the configuration, binds the listen addresses and gives up
/// root. Runs before the async runtime exists, so that no thread is started
/// with privileges (see `privileges`).
pub fn prepare(args: ServerArgs) -> anyhow::Result<Prepared> {
    let mut loaded = Loaded::load(&args);
    loaded.key_problems.log_skipped();
    let fatal = loaded.fatal_errors();
    if !fatal.is_empty() {
        for e in &fatal {
            error!(event = "config.error", "{e}");
        }
        anyhow::bail!("configuration has {} error(s); run `bastion-sshd check-config` for details", fatal.len());
    }
    let (host_keys, ephemeral) = loaded.host_keys_or_ephemeral();
    if ephemeral {
        warn!(
            event = "hostkey.ephemeral",
            "NO HOST KEY CONFIGURED: using a new ephemeral key. Clients will see a different host key at every \
             start and warn about it. Create one with `bastion-sshd keygen --out FILE` and pass --host-key FILE \
             (or its text in BASTION_HOST_KEY)"
        );
    }
    for key in &host_keys {
        info!(
            event = "hostkey.loaded",
            source = %key.source,
            fingerprint = %key.describe(),
            known_hosts = %format!("{} {}", args.name, key.public_openssh()),
            "host key {} from {}", key.describe(), key.source
        );
    }
    log_keys(&loaded.keys);

    let listeners = bind_all(&loaded.listen)?;
    let activity = match args.activity_listen {
        Some(ActivityListen(Some(addr))) => Some(bind_activity(addr)?),
        Some(ActivityListen(None)) => None,
        None => {
            let addr = crate::cli::DEFAULT_ACTIVITY_LISTEN.parse()?;
            bind_activity(addr)
                .map_err(|e| {
                    warn!(
                        event = "activity.unavailable",
                        "{e}: no activity report, so no idle stop (dns-sidecar --idle-stop)"
                    )
                })
                .ok()
        }
    };
    match privileges::drop_root(args.run_as).map_err(|e| anyhow::anyhow!("giving up root: {e}"))? {
        Outcome::Dropped(run_as) => info!(
            event = "server.privileges_dropped",
            uid = run_as.uid,
            gid = run_as.gid,
            "listening sockets bound as root; now running as {run_as} without capabilities"
        ),
        Outcome::NotRoot { uid, gid } => info!(event = "server.unprivileged", uid, gid, "running as {uid}:{gid}"),
    }
    Ok(Prepared { args, loaded, host_keys, listeners, activity })
}

/// The activity report's socket (`usage`).
fn bind_activity(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        anyhow::anyhow!(
            "--activity-listen {addr}: cannot listen: {e} (BASTION_ACTIVITY_LISTEN: another loopback port, or off)"
        )
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(prepared: Prepared) -> anyhow::Result<()> {
    // Signal handlers first: a signal that arrives before them would kill the process.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let hup = signal(SignalKind::hangup())
        .map_err(|e| error!(event = "keys.reload_failed", "no SIGHUP handler ({e}); keys reload on file change only"))
        .ok();

    let Prepared { args, mut loaded, host_keys, listeners, activity } = prepared;
    let config = Arc::new(russh_config(&args, &host_keys));
    let live_keys = Arc::new(LiveKeys::new(std::mem::take(&mut loaded.keys)));
    let (generation_tx, generation_rx) = watch::channel(0u64);
    tokio::spawn(reload::run(
        loaded.key_sources.clone(),
        live_keys.clone(),
        args.reload_poll_interval,
        hup,
        generation_tx,
    ));
    let aws_login = aws_login(&args, &mut loaded, &host_keys, live_keys.get().rules.len());
    // Some(deadline) once the server is stopping: tunnels may finish until then.
    let (drain_tx, drain_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        keys: live_keys.clone(),
        keys_generation: generation_rx,
        policy: loaded.policy.clone(),
        connect_timeout: args.connect_timeout,
        name: args.name.clone(),
        max_channels: args.max_channels,
        tunnel_idle_timeout: Some(args.tunnel_idle_timeout).filter(|t| !t.is_zero()),
        drain: drain_rx.clone(),
        tunnels: TunnelStats::default(),
        lookups: crate::resolve::TotalLookups::default(),
        key_lookups: crate::resolve::LookupsByKey::default(),
        aws_login,
        usage: Arc::new(crate::usage::Usage::new()),
    });
    if let Some(listener) = activity {
        let listener = TcpListener::from_std(listener)?;
        let (usage, stats) = (shared.usage.clone(), shared.clone());
        let tunnels = move || stats.tunnels.open.load(Ordering::Relaxed);
        tokio::spawn(crate::usage::serve(listener, usage, tunnels, drain_rx.clone()));
    }
    if !args.metrics_interval.is_zero() {
        let (stats, budget) = (shared.clone(), config.window_budget.clone());
        let gauges = move || crate::metrics::Gauges {
            connections: stats.usage.open_connections(),
            tunnels: stats.tunnels.open.load(Ordering::Relaxed),
            budget: budget.as_ref().map(|b| (b.total().saturating_sub(b.available()), b.total())),
        };
        tokio::spawn(crate::metrics::run(args.name.clone(), args.metrics_interval, gauges));
    }
    let deadlines = Arc::new(Deadlines {
        login_grace_time: args.login_grace_time,
        silence_limit: liveness::silence_limit(args.keepalive_interval, args.keepalive_max),
    });
    let admission = Admission::new(loaded.limits.clone());
    let waiting = Arc::new(tokio::sync::Semaphore::new(loaded.limits.max_startups));

    // Every task holds a clone; when all are dropped, `recv` returns None: everything has finished.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let ids = Arc::new(AtomicU64::new(0));
    for listener in listeners {
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        info!(event = "server.listening", addr = %addr, "listening on {addr}");
        let accept = AcceptLoop {
            listener,
            config: config.clone(),
            shared: shared.clone(),
            deadlines: deadlines.clone(),
            admission: admission.clone(),
            waiting: waiting.clone(),
            ids: ids.clone(),
            drain: drain_rx.clone(),
            done: done_tx.clone(),
        };
        tokio::spawn(accept.run());
    }
    drop(done_tx);

    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    let open = shared.tunnels.open.load(Ordering::Relaxed);
    info!(
        event = "server.stopping",
        signal,
        tunnels_open = open,
        "{signal} received: no new connections or tunnels; {open} open tunnel(s) get {} to finish",
        humantime::format_duration(args.drain_timeout)
    );
    let _ = drain_tx.send(Some(Instant::now() + args.drain_timeout));
    let all_closed = tokio::time::timeout(args.drain_timeout + CLOSE_GRACE, done_rx.recv()).await.is_ok();
    let drained = shared.tunnels.drained.load(Ordering::Relaxed);
    let cut = shared.tunnels.cut.load(Ordering::Relaxed);
    info!(
        event = "server.stopped",
        tunnels_open = open,
        tunnels_drained = drained,
        tunnels_cut = cut,
        all_closed,
        "stopped: {open} tunnel(s) open at {signal}, {drained} finished, {cut} cut at the drain timeout"
    );
    Ok(())
}

/// AWS logins, when `--user-ca-key` is set (`config` has checked the rest).
fn aws_login(args: &ServerArgs, loaded: &mut Loaded, host_keys: &[HostKey], rules: usize) -> Option<Arc<AwsLogin>> {
    let (ca, sts) = (loaded.user_ca.take()?, loaded.sts.take()?);
    let fingerprints = host_keys.iter().map(|k| k.key.public_key().fingerprint(HashAlg::Sha256).to_string()).collect();
    info!(
        event = "aws_login.enabled",
        ca_fingerprint = %ca.fingerprint,
        ca_source = %ca.source,
        sts_endpoint = %sts.url(),
        sts_region = %sts.region(),
        rules,
        max_certificate_validity = %humantime::format_duration(args.max_certificate_validity),
        "AWS logins on: proofs go to {} only; certificates signed by {} ({rules} identity rule(s))",
        sts.url(), ca.fingerprint
    );
    Some(Arc::new(AwsLogin::new(sts, ca, &args.name, fingerprints, args.max_certificate_validity)))
}

/// Serves one SSH connection from accept to close.
struct ConnectionTask {
    config: Arc<Config>,
    shared: Arc<Shared>,
    deadlines: Arc<Deadlines>,
    /// Some(deadline) once the server is stopping.
    drain: Drain,
    /// Held until the connection is closed; shutdown waits for all of them.
    _done: mpsc::Sender<()>,
}

/// How a connection ended.
struct Ended {
    reason: String,
    /// It tried to log in and failed, or sat out the login grace time: its source is penalized.
    failed_login: bool,
    /// It logged in (seen, at the latest, as the session ended).
    authenticated: bool,
}

impl ConnectionTask {
    /// `ticket` is this connection's place in the limits, released when it ends.
    async fn run(mut self, mut ticket: Ticket, stream: TcpStream, peer: SocketAddr, id: String) {
        let started = Instant::now();
        let local = stream.local_addr().unwrap_or(peer);
        let _ = stream.set_nodelay(true);
        info!(target: "audit", event = "connection.accepted", conn = %id, peer = %peer, local = %local, "connection {id} from {peer}");
        let _open = self.shared.usage.connection();
        let mut in_use = None;
        let ended = self.serve(&mut ticket, stream, Connection { id: id.clone(), peer, local }, &mut in_use).await;
        if ended.authenticated && in_use.is_none() {
            self.shared.usage.login_seen(); // logged in and left before the loop saw it
        }
        drop(in_use);
        info!(
            target: "audit",
            event = "connection.closed",
            conn = %id,
            peer = %peer,
            duration_ms = started.elapsed().as_millis() as u64,
            reason = %ended.reason,
            "connection {id} from {peer} closed: {}", ended.reason
        );
        if ended.authenticated {
            ticket.authenticated(); // a client that left right after logging in
        }
        // Penalized when evicted, or now for a failed login or a slot held without progress.
        let penalty = match ticket.evicted() {
            Some(penalty) => penalty,
            None => ticket.failed_login(ended.failed_login, std::time::Instant::now()),
        };
        if let Some(penalty) = penalty {
            info!(target: "audit", event = "source.penalized", conn = %id, peer = %peer, seconds = penalty.as_secs(),
                "new connections from {} refused for {}", peer.ip(), humantime::format_duration(penalty));
        }
    }

    /// Serves the connection; says why and how it ended. `in_use` counts it as
    /// in use (`usage`) from the login on.
    async fn serve(
        &mut self,
        ticket: &mut Ticket,
        stream: TcpStream,
        conn: Connection,
        in_use: &mut Option<crate::usage::SessionGuard>,
    ) -> Ended {
        let conn_id = conn.id.clone();
        let peer = conn.peer;
        let deadline = Instant::now() + self.deadlines.login_grace_time;
        let mut generation = reload_watch(&self.shared.keys_generation);
        // The tunnel tasks hold `signals`, and with it a `done` sender: shutdown
        // waits for them to log how they ended, not just for the connection.
        let progress = ticket.progress();
        let signals = Arc::new(Signals::holding(self._done.clone(), progress.clone()));
        // However serve ends, the connection's tunnels end with it.
        let _closing = CloseTunnels(signals.clone());
        let mut authenticated = signals.authenticated.subscribe();
        let handler = ConnectionHandler::new(self.shared.clone(), conn, signals.clone());
        let ended = |reason: &str, grace: bool| Ended {
            reason: reason.to_string(),
            failed_login: grace || signals.tried_auth.load(Ordering::Relaxed),
            authenticated: false,
        };

        // russh runs the session in a task of its own, which owns the socket:
        // a second descriptor lets us shut the socket down under it.
        let (stream, closer) = match duplicate(stream) {
            Ok(pair) => pair,
            Err(e) => return ended(&format!("cannot duplicate the socket: {e}"), false),
        };
        let (stream, activity) = liveness::watch(stream);
        let stream = tokio::io::BufReader::with_capacity(SOCKET_READ_BUFFER, stream);
        // The identification exchange happens inside run_stream; bound it by the grace time.
        let started = tokio::select! {
            r = tokio::time::timeout_at(deadline, russh::server::run_stream(self.config.clone(), stream, handler)) => r,
            _ = stopping(&mut self.drain) => return ended("server shutting down", false),
            _ = progress.evicted() => return ended(&evicted(), false),
        };
        let session = match started {
            Err(_) => return ended("no SSH identification within the login grace time", true),
            Ok(Err(e)) => return ended(&format!("before the SSH handshake: {}", describe_session_error(&e)), false),
            Ok(Ok(session)) => session,
        };
        let handle = session.handle();
        tokio::pin!(session);
        let mut grace_over = false;
        let mut drain_deadline: Option<Instant> = None;
        let mut closing = false;
        let mut is_authenticated = false;
        let mut expiry: Option<(Instant, &'static str)> = None;
        let mut reason = None;
        // Set when we have asked russh to disconnect: past it, the session is dropped.
        let mut close_by: Option<Instant> = None;
        loop {
            if closing && close_by.is_none() {
                close_by = Some(Instant::now() + CLOSE_GRACE);
            }
            let silent_until = self.deadlines.silence_limit.map(|limit| activity.last() + limit);
            tokio::select! {
                result = &mut session => {
                    let reason = reason.unwrap_or_else(|| match result {
                        Ok(()) => "client disconnected".into(),
                        Err(e) => describe_session_error(&e),
                    });
                    // The session can end (a client that leaves right after logging in) before this
                    // loop has seen the `authenticated` signal: read it now, or a good login would be
                    // counted as a failed one and its source penalized.
                    let is_authenticated = is_authenticated || *authenticated.borrow();
                    let grace_exceeded = grace_over && !is_authenticated;
                    return if is_authenticated { Ended { reason, failed_login: false, authenticated: true } } else { ended(&reason, grace_exceeded) };
                }
                changed = authenticated.changed(), if !is_authenticated => {
                    if changed.is_ok() && *authenticated.borrow_and_update() {
                        is_authenticated = true;
                        ticket.authenticated();
                        *in_use = Some(self.shared.usage.session());
                        expiry = signals.expires.lock().ok().and_then(|e| *e).map(|e| (instant_at(e.at), e.what));
                        // No mark_unchanged() here: a reload that landed while the client was
                        // logging in (after its key was checked) must still judge this session.
                    }
                }
                changed = generation.changed(), if is_authenticated && !closing => {
                    if changed.is_err() {
                        continue;
                    }
                    let credential = signals.credential.lock().ok().and_then(|c| c.clone());
                    let Some(credential) = credential else { continue };
                    let store = self.shared.keys.get();
                    match auth::recheck(&store, &credential, peer.ip(), std::time::SystemTime::now()) {
                        Ok(identity) => {
                            // The reloaded line may carry another expiry-time.
                            expiry = identity.expires.map(|e| (instant_at(e.at), e.what));
                            if let Ok(mut rights) = signals.rights.lock() {
                                *rights = Some(identity.rights);
                            }
                        }
                        Err(refusal) => {
                            closing = true;
                            reason = Some(format!("keys reloaded: {}", refusal.reason));
                            info!(target: "audit", event = "session.revoked", conn = %conn_id, fingerprint = %refusal.fingerprint,
                                reason = %refusal.reason, "closing the session after a key reload: {}", refusal.reason);
                            disconnect(&handle, "your key is no longer authorized").await;
                        }
                    }
                }
                _ = tokio::time::sleep_until(expiry.map_or_else(Instant::now, |e| e.0)), if expiry.is_some() && !closing => {
                    let what = expiry.map_or("the login", |e| e.1);
                    closing = true;
                    reason = Some(format!("{what} expired"));
                    info!(target: "audit", event = "session.expired", conn = %conn_id, expired = what, "{what} expired: closing the session");
                    disconnect(&handle, &format!("{what} has expired")).await;
                }
                _ = progress.evicted(), if !is_authenticated && !closing => {
                    closing = true;
                    reason = Some(evicted());
                    disconnect(&handle, "too many unauthenticated connections; this one made no progress").await;
                }
                _ = tokio::time::sleep_until(deadline), if !grace_over => {
                    grace_over = true;
                    if !is_authenticated {
                        closing = true;
                        reason = Some("not authenticated within the login grace time".to_string());
                        disconnect(&handle, "login grace time exceeded").await;
                    }
                }
                deadline = stopping(&mut self.drain), if drain_deadline.is_none() => {
                    drain_deadline = Some(deadline);
                    if !is_authenticated {
                        closing = true;
                        reason = Some("server shutting down".to_string());
                        disconnect(&handle, "bastion shutting down").await;
                    } else {
                        // Tell the user, on each session channel (ssh without -N).
                        let left = deadline.saturating_duration_since(Instant::now());
                        let notice = session::shutdown_notice(left);
                        for channel in signals.session_channels() {
                            let _ = handle.data(channel, notice.clone().into_bytes()).await;
                        }
                    }
                }
                _ = no_tunnels(&signals), if drain_deadline.is_some() && is_authenticated && !closing => {
                    closing = true;
                    reason = Some("server shutting down (tunnels finished)".to_string());
                    disconnect(&handle, "bastion shutting down").await;
                }
                _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() && !closing => {
                    closing = true;
                    reason = Some("server shutting down (tunnels cut at --drain-timeout)".to_string());
                    disconnect(&handle, "bastion shutting down").await;
                }
                _ = tokio::time::sleep_until(close_by.unwrap_or_else(Instant::now)), if close_by.is_some() => {
                    // The peer did not take our disconnect: the session is stuck writing to it.
                    let _ = closer.shutdown(std::net::Shutdown::Both);
                    let reason = reason.take().unwrap_or_default();
                    let reason = format!("{reason} (the client did not read the disconnect message; socket closed)");
                    return if is_authenticated || *authenticated.borrow() { Ended { reason, failed_login: false, authenticated: true } } else { ended(&reason, true) };
                }
                _ = tokio::time::sleep_until(silent_until.unwrap_or_else(Instant::now)), if silent_until.is_some() && close_by.is_none() => {
                    if activity.last().elapsed() >= self.deadlines.silence_limit.unwrap_or_default() {
                        let _ = closer.shutdown(std::net::Shutdown::Both);
                        let reason = format!(
                            "no byte moved either way for {} (the client stopped reading and answering keepalives); socket closed",
                            humantime::format_duration(self.deadlines.silence_limit.unwrap_or_default())
                        );
                        return if is_authenticated || *authenticated.borrow() { Ended { reason, failed_login: false, authenticated: true } } else { ended(&reason, true) };
                    }
                }
            }
        }
    }
}

/// A connection's view of key reloads, taken before its client can log in:
/// reloads before this moment are already in the keys its login is checked
/// against; any reload after it, including one that lands between the key
/// check and the moment the session counts as authenticated, makes the
/// session's credential judged again.
fn reload_watch(generations: &watch::Receiver<u64>) -> watch::Receiver<u64> {
    let mut watch = generations.clone();
    watch.mark_unchanged();
    watch
}

/// Ends a connection's tunnels when dropped (`Signals::connection_closed`).
struct CloseTunnels(Arc<Signals>);

impl Drop for CloseTunnels {
    fn drop(&mut self) {
        self.0.connection_closed.send_replace(true);
    }
}

/// Resolves with the drain deadline once the server is stopping.
async fn stopping(drain: &mut Drain) -> Instant {
    let deadline = match drain.wait_for(Option::is_some).await {
        Ok(deadline) => *deadline,
        // The sender is gone: the server is going away.
        Err(_) => None,
    };
    deadline.unwrap_or_else(Instant::now)
}

/// The connection's socket, and a second descriptor for it (see `serve`).
fn duplicate(stream: TcpStream) -> io::Result<(TcpStream, std::net::TcpStream)> {
    let std = stream.into_std()?;
    let closer = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, closer))
}

/// Tells the client why, then closes the connection. The result is ignored:
/// the session may already be gone, which is the goal anyway.
/// Asks russh to send a disconnect; does not wait on a session that is stuck
/// (the caller closes the socket after [`CLOSE_GRACE`] if the session has not ended).
async fn disconnect(handle: &russh::server::Handle, why: &str) {
    let send = handle.disconnect(Disconnect::ByApplication, why.into(), "en".into());
    let _ = tokio::time::timeout(CLOSE_GRACE, send).await;
}

/// The monotonic instant at a wall-clock time (now if it has passed).
fn instant_at(at: std::time::SystemTime) -> Instant {
    let left = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    Instant::now() + left
}

/// Resolves when the connection has no open tunnel.
async fn no_tunnels(signals: &Signals) {
    let mut open = signals.open_tunnels.subscribe();
    let _ = open.wait_for(|n| *n == 0).await;
}

fn describe_session_error(e: &russh::Error) -> String {
    match e {
        // Also what a port probe or `bastion-sshd healthcheck` looks like.
        russh::Error::Disconnect => "client disconnected".into(),
        russh::Error::HUP => "connection closed by peer".into(),
        other => format!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_during_the_login_is_seen_once_the_session_is_authenticated() {
        let (reloads, generations) = watch::channel(0u64);
        reloads.send_modify(|g| *g += 1); // a reload before the connection: already in force
        let watch = reload_watch(&generations);
        assert!(!watch.has_changed().unwrap(), "reloads before the connection need no re-check");
        // The key is checked, then a reload lands before the session counts as authenticated.
        reloads.send_modify(|g| *g += 1);
        assert!(watch.has_changed().unwrap(), "the session must be judged again");
    }

    #[test]
    fn server_id_does_not_reveal_the_library() {
        assert!(!SERVER_ID.to_lowercase().contains("russh"));
        let software = SERVER_ID.strip_prefix("SSH-2.0-").unwrap();
        assert!(!software.chars().any(|c| c.is_ascii_digit()), "{software}");
    }

    #[test]
    fn only_publickey_is_advertised_and_sha1_is_not_offered() {
        let args = <crate::cli::Cli as clap::Parser>::try_parse_from(["bastion-sshd"]).unwrap().run;
        let config = russh_config(&args, &[]);
        assert_eq!(&*config.methods, &[MethodKind::PublicKey]);
        assert!(!config.preferred.key.contains(&Algorithm::Rsa { hash: None }));
        assert!(config.preferred.compression.iter().all(|c| c.as_ref() == "none"));
    }
}
