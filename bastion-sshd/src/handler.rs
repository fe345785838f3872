//! The russh glue: one [`ConnectionHandler`] per SSH connection. Each
//! callback asks the domain modules (`auth`, `policy`, `session`, `tunnel`)
//! what to do, answers russh, and writes the audit event. No decision is
//! made here that is not also made (and unit-tested) in those modules.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use russh::keys::Certificate;
use russh::server::{Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, Pty};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info};

use crate::auth::{self, Credential, Expiry, Identity};
use crate::keys::LiveKeys;
use crate::policy::{Decision, KeyRights, Policy, Target};
use crate::resolve::{LookupsByKey, TotalLookups};
use crate::{session, tunnel};

mod aws_login;
mod tunnel_task;
use tunnel_task::{TunnelLog, open_tunnel};

/// SSH_OPEN_ADMINISTRATIVELY_PROHIBITED: the client prints our reason after it.
const OPEN_PROHIBITED: u32 = 1;
/// SSH_OPEN_CONNECT_FAILED: the client prints "connect failed: <our reason>".
const OPEN_CONNECT_FAILED: u32 = 2;
/// SSH_OPEN_RESOURCE_SHORTAGE.
const OPEN_RESOURCE_SHORTAGE: u32 = 4;
/// SSH_EXTENDED_DATA_STDERR.
const STDERR: u32 = 1;

/// `Some(deadline)` once the server is stopping: tunnels may finish until then.
pub type Drain = watch::Receiver<Option<tokio::time::Instant>>;

/// What every connection needs from the server, shared read-only.
pub struct Shared {
    /// Keys that may log in, CAs, revoked keys; replaced whole on reload.
    pub keys: Arc<LiveKeys>,
    /// Bumped after each successful reload: sessions then judge their credential again.
    pub keys_generation: watch::Receiver<u64>,
    /// The one place that decides which targets a key may reach.
    pub policy: Policy,
    /// Deadline for resolving and connecting to a tunnel target.
    pub connect_timeout: Duration,
    /// Shown in the session banner so users know which bastion they are on.
    pub name: String,
    /// Open channels (tunnels and sessions) allowed per connection.
    pub max_channels: usize,
    /// A tunnel with no byte either way for this long is closed (OpenSSH ChannelTimeout).
    pub tunnel_idle_timeout: Option<Duration>,
    /// Some(deadline) once the server is stopping: no new tunnels, open ones end by then.
    pub drain: Drain,
    /// Tunnel counts for the shutdown report.
    pub tunnels: TunnelStats,
    /// Caps name lookups in flight on the whole server (64), stuck ones
    /// included, far below tokio's 512 blocking threads (`resolve`).
    pub lookups: TotalLookups,
    /// Caps each key's name lookups in flight (4), across its connections,
    /// stuck ones included: one user's dead zone delays no one else (`resolve`).
    pub key_lookups: LookupsByKey,
    /// AWS-identity logins (`bastion login`); None unless `--user-ca-key` is set.
    pub aws_login: Option<Arc<crate::aws_login::AwsLogin>>,
    /// Who is logged in, for the sidecar's idle stop (`usage`).
    pub usage: Arc<crate::usage::Usage>,
}

/// Server-wide tunnel counts, for the shutdown report.
#[derive(Debug, Default)]
pub struct TunnelStats {
    /// Open now.
    pub open: AtomicUsize,
    /// Finished on their own while the server was draining.
    pub drained: AtomicUsize,
    /// Closed by the server at the drain deadline.
    pub cut: AtomicUsize,
}

/// What the connection task learns from the handler.
#[derive(Debug)]
pub struct Signals {
    /// Set once a key has been verified: the login grace timer and the
    /// unauthenticated-connection limits no longer apply.
    pub authenticated: watch::Sender<bool>,
    /// The client tried a password, keyboard-interactive or a public key
    /// (not just the "none" probe): failing now penalizes its source.
    pub tried_auth: AtomicBool,
    /// Open session channels, where a shutdown notice can be written.
    sessions: Mutex<Vec<ChannelId>>,
    /// Open tunnels of this connection; draining waits for zero.
    pub open_tunnels: watch::Sender<usize>,
    /// Set when the connection task is done with the connection (the client
    /// left, or the server gave up on it): its tunnels end at once, even if
    /// russh's session task, which owns them, has not noticed yet.
    pub connection_closed: watch::Sender<bool>,
    /// When the certificate or key used to log in expires: the session ends then.
    pub expires: Mutex<Option<Expiry>>,
    /// What the session logged in with, for re-checks after a reload.
    pub credential: Mutex<Option<Credential>>,
    /// Tunnel rights from the latest re-check (a reload may change permitopen).
    pub rights: Mutex<Option<KeyRights>>,
    /// Held by the connection and its tunnel tasks; shutdown waits until all are dropped.
    pub _done: Option<tokio::sync::mpsc::Sender<()>>,
    /// Where attempts to authenticate are reported to the admission limits: a
    /// connection that makes none holds its slot without progress (`limits`).
    pub progress: Option<Arc<crate::limits::Progress>>,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            authenticated: watch::Sender::new(false),
            tried_auth: AtomicBool::new(false),
            sessions: Mutex::new(Vec::new()),
            open_tunnels: watch::Sender::new(0),
            connection_closed: watch::Sender::new(false),
            expires: Mutex::new(None),
            credential: Mutex::new(None),
            rights: Mutex::new(None),
            _done: None,
            progress: None,
        }
    }
}

impl Signals {
    /// Signals that keep `done` alive for as long as the connection or any of
    /// its tunnels, and report progress to `progress`.
    pub fn holding(done: tokio::sync::mpsc::Sender<()>, progress: Arc<crate::limits::Progress>) -> Self {
        Self { _done: Some(done), progress: Some(progress), ..Self::default() }
    }

    /// The client tried to authenticate (not just the "none" probe): failing
    /// now penalizes its source, and it is making progress.
    fn tried_to_authenticate(&self) {
        self.tried_auth.store(true, Ordering::Relaxed);
        if let Some(progress) = &self.progress {
            progress.touch();
        }
    }

    pub fn session_channels(&self) -> Vec<ChannelId> {
        self.sessions.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn set_session(&self, channel: ChannelId, open: bool) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.retain(|c| *c != channel);
            if open {
                sessions.push(channel);
            }
        }
    }
}

/// Facts about the TCP connection, fixed at accept time.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Short id carried by every log event of this connection.
    pub id: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// State of a session channel (`ssh` without `-N`).
#[derive(Debug, Default)]
struct SessionChannel {
    /// A pty was requested: the client's terminal is raw, so write `\r\n`.
    pty: bool,
}

pub struct ConnectionHandler {
    shared: Arc<Shared>,
    conn: Connection,
    /// Set once a key has been verified; every later event names it.
    identity: Option<Identity>,
    /// Tells the connection task about authentication.
    signals: Arc<Signals>,
    /// Open session channels; data on them is only checked for Ctrl-C / Ctrl-D.
    sessions: HashMap<ChannelId, SessionChannel>,
    /// Numbers tunnels within the connection for the logs.
    tunnels_requested: u64,
    /// One sender per tunnel task: fired when the client closes the channel,
    /// dropped (which the task also sees) when the connection ends, so that
    /// no tunnel outlives its channel or its connection.
    tunnel_closers: HashMap<ChannelId, oneshot::Sender<()>>,
    /// Where an AWS login on this connection stands (one per connection).
    aws_login: aws_login::Step,
}

impl ConnectionHandler {
    pub fn new(shared: Arc<Shared>, conn: Connection, signals: Arc<Signals>) -> Self {
        Self {
            shared,
            conn,
            identity: None,
            signals,
            sessions: HashMap::new(),
            tunnels_requested: 0,
            tunnel_closers: HashMap::new(),
            aws_login: aws_login::Step::default(),
        }
    }

    fn user(&self) -> &str {
        self.identity.as_ref().map(|i| i.user.as_str()).unwrap_or("")
    }

    fn fingerprint(&self) -> &str {
        self.identity.as_ref().map(|i| i.fingerprint.as_str()).unwrap_or("")
    }

    /// Records a login: who, and what they logged in with, so that a key
    /// reload can judge it again and a certificate's expiry can end it.
    fn logged_in(&mut self, identity: Identity, credential: Credential) {
        if let Ok(mut expires) = self.signals.expires.lock() {
            *expires = identity.expires;
        }
        if let Ok(mut slot) = self.signals.credential.lock() {
            *slot = Some(credential);
        }
        self.identity = Some(identity);
    }

    /// Audit event for a refused request on an authenticated connection.
    fn refuse_request(&self, request: &str, detail: &str) {
        info!(
            target: "audit",
            event = "request.refused",
            conn = %self.conn.id,
            peer = %self.conn.peer,
            user = %self.user(),
            fingerprint = %self.fingerprint(),
            request,
            reason = detail,
            "refused {request}: {detail}"
        );
    }

    fn refuse_method(&self, user: &str, method: &str) {
        self.signals.tried_to_authenticate();
        info!(
            target: "audit",
            event = "auth.refused",
            conn = %self.conn.id,
            peer = %self.conn.peer,
            user,
            method,
            reason = "only publickey authentication is accepted",
            "auth refused: {method} for {user:?}"
        );
    }

    /// Ends a session channel the way a finished remote command would.
    fn finish_session(&mut self, channel: ChannelId, session: &mut Session, status: u32) -> Result<(), russh::Error> {
        self.sessions.remove(&channel);
        self.signals.set_session(channel, false);
        session.exit_status_request(channel, status)?;
        session.eof(channel)?;
        session.close(channel)
    }

    /// Refuses `exec` / `subsystem`: the request "succeeds" so that the client
    /// shows our one-line reason and exits 1, instead of OpenSSH's generic
    /// "exec request failed" and exit 255. Nothing is ever run.
    fn refuse_command(&mut self, channel: ChannelId, session: &mut Session, message: &str) -> Result<(), russh::Error> {
        session.channel_success(channel)?;
        session.extended_data(channel, STDERR, message.as_bytes().to_vec())?;
        self.finish_session(channel, session, session::REFUSED_EXIT_STATUS)
    }

    /// Refuses a channel type we never serve.
    async fn refuse_channel(&self, kind: &str, reply: ChannelOpenHandle) {
        self.refuse_request(kind, "only direct-tcpip (ssh -L/-D/-J) and session channels are served");
        reply
            .reject(ChannelOpenFailure::Other {
                code: OPEN_PROHIBITED,
                reason: format!("{kind} channels are not allowed on this bastion"),
            })
            .await;
    }
}

fn lossy(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    text.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

impl Handler for ConnectionHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::reject())
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        self.refuse_method(user, "password");
        Ok(Auth::reject())
    }

    /// Never advertised. Only `bastion login` asks for it, with its
    /// submethod, when AWS logins are on (`handler::aws_login`).
    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        if let Some(login) = self.shared.aws_login.clone()
            && submethods == bastion_common::login::SUBMETHOD
        {
            return Ok(self.aws_login_step(&login, user, response).await);
        }
        self.refuse_method(user, "keyboard-interactive");
        Ok(Auth::reject())
    }

    /// The default accepts every offered key, which tells a prober which keys
    /// exist and costs a signature check; answer only for listed keys.
    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        self.signals.tried_to_authenticate();
        match auth::check_offer(
            &self.shared.keys.get(),
            user,
            offer.public_key,
            offer.algorithm,
            self.conn.peer.ip(),
            SystemTime::now(),
        ) {
            Ok(()) => Ok(Auth::Accept),
            Err(refusal) => {
                info!(
                    target: "audit",
                    event = "auth.refused",
                    conn = %self.conn.id,
                    peer = %self.conn.peer,
                    user,
                    method = "publickey",
                    algorithm = %offer.algorithm,
                    fingerprint = %refusal.fingerprint,
                    comment = %offer.public_key.comment().as_str_lossy(),
                    reason = %refusal.reason,
                    "auth refused: {} {} for {user:?}: {}", offer.algorithm, refusal.fingerprint, refusal.reason
                );
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        match auth::check(
            &self.shared.keys.get(),
            user,
            key.public_key,
            key.algorithm,
            self.conn.peer.ip(),
            SystemTime::now(),
        ) {
            Ok(identity) => {
                info!(
                    target: "audit",
                    event = "auth.accepted",
                    conn = %self.conn.id,
                    peer = %self.conn.peer,
                    user,
                    method = "publickey",
                    algorithm = %identity.algorithm,
                    fingerprint = %identity.fingerprint,
                    comment = %identity.comment,
                    listed_at = %identity.listed_at,
                    "auth accepted: {} {} ({}) for {user:?}", identity.algorithm, identity.fingerprint, identity.comment
                );
                let credential = Credential::Key {
                    user: user.to_string(),
                    key: key.public_key.clone(),
                    algorithm: key.algorithm.clone(),
                };
                self.logged_in(identity, credential);
                Ok(Auth::Accept)
            }
            Err(refusal) => {
                info!(
                    target: "audit",
                    event = "auth.refused",
                    conn = %self.conn.id,
                    peer = %self.conn.peer,
                    user,
                    method = "publickey",
                    fingerprint = %refusal.fingerprint,
                    reason = %refusal.reason,
                    "auth refused after signature check: {}", refusal.reason
                );
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_openssh_certificate(&mut self, user: &str, certificate: &Certificate) -> Result<Auth, Self::Error> {
        let principals = certificate.valid_principals().join(",");
        match auth::check_certificate(
            &self.shared.keys.get(),
            user,
            certificate,
            self.conn.peer.ip(),
            SystemTime::now(),
        ) {
            Ok(identity) => {
                let Some(cert) = identity.certificate.as_ref() else { return Ok(Auth::reject()) };
                info!(
                    target: "audit",
                    event = "auth.accepted",
                    conn = %self.conn.id,
                    peer = %self.conn.peer,
                    user,
                    method = "publickey",
                    algorithm = %identity.algorithm,
                    fingerprint = %identity.fingerprint,
                    cert_key_id = %cert.key_id,
                    cert_serial = cert.serial,
                    cert_principals = %cert.principals.join(","),
                    ca_fingerprint = %cert.ca_fingerprint,
                    listed_at = %identity.listed_at,
                    arn = identity.arn.as_deref(),
                    "auth accepted: certificate {:?} serial {} ({}) for {user:?}",
                    cert.key_id, cert.serial, principals
                );
                let credential =
                    Credential::Certificate { user: user.to_string(), cert: Box::new(certificate.clone()) };
                self.logged_in(identity, credential);
                Ok(Auth::Accept)
            }
            Err(refusal) => {
                info!(
                    target: "audit",
                    event = "auth.refused",
                    conn = %self.conn.id,
                    peer = %self.conn.peer,
                    user,
                    method = "publickey",
                    fingerprint = %refusal.fingerprint,
                    cert_key_id = certificate.key_id(),
                    cert_serial = certificate.serial(),
                    cert_principals = %principals,
                    reason = %refusal.reason,
                    "auth refused: certificate {:?} for {user:?}: {}", certificate.key_id(), refusal.reason
                );
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        let _ = self.signals.authenticated.send(true);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.tunnel_closers.retain(|_, c| !c.is_closed());
        if self.tunnel_closers.len() + self.sessions.len() >= self.shared.max_channels {
            self.refuse_request("session", "too many open channels on this connection (--max-channels)");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let id = channel.id();
        // Requests on this channel reach the callbacks below; its data reaches
        // `data`. Dropping the Channel object means russh does not queue the
        // same messages for a reader that nobody runs.
        drop(channel);
        self.sessions.insert(id, SessionChannel::default());
        self.signals.set_session(id, true);
        reply.accept().await;
        debug!(conn = %self.conn.id, channel = id.number(), "session channel opened");
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.sessions.get_mut(&channel) {
            Some(state) => {
                state.pty = true;
                session.channel_success(channel)
            }
            None => session.channel_failure(channel),
        }
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        let Some(state) = self.sessions.get(&channel) else {
            return session.channel_failure(channel);
        };
        let banner = session::banner(&self.shared.name, &self.conn.local.to_string(), state.pty);
        session.channel_success(channel)?;
        session.data(channel, banner.into_bytes())?;
        info!(
            target: "audit",
            event = "session.shell",
            conn = %self.conn.id,
            user = %self.user(),
            fingerprint = %self.fingerprint(),
            "shell requested: banner shown, nothing run"
        );
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request("exec", &format!("command {:?} not run", lossy(data, 200)));
        self.refuse_command(channel, session, session::exec_refused())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request("subsystem", &format!("subsystem {:?} not available", lossy(name.as_bytes(), 100)));
        self.refuse_command(channel, session, &session::subsystem_refused(&lossy(name.as_bytes(), 100)))
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        debug!(conn = %self.conn.id, variable = %lossy(variable_name.as_bytes(), 100), "env request refused");
        session.channel_failure(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request("x11-req", "X11 forwarding is not allowed");
        session.channel_failure(channel)
    }

    async fn agent_request(&mut self, _channel: ChannelId, _session: &mut Session) -> Result<bool, Self::Error> {
        self.refuse_request("auth-agent-req", "agent forwarding is not allowed");
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_request(
            "tcpip-forward",
            &format!("remote forwarding (ssh -R {}:{port}) is not allowed", lossy(address.as_bytes(), 100)),
        );
        Ok(false)
    }

    async fn streamlocal_forward(&mut self, socket_path: &str, _session: &mut Session) -> Result<bool, Self::Error> {
        self.refuse_request(
            "streamlocal-forward",
            &format!("remote socket forwarding ({}) is not allowed", lossy(socket_path.as_bytes(), 100)),
        );
        Ok(false)
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel("x11", reply).await;
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel("forwarded-tcpip", reply).await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel("direct-streamlocal", reply).await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.tunnels_requested += 1;
        let Some(mut identity) = self.identity.clone() else {
            // russh only opens channels after authentication; be explicit anyway.
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        if let Some(rights) = self.signals.rights.lock().ok().and_then(|r| r.clone()) {
            identity.rights = rights; // as re-judged after the latest key reload
        }
        let log = TunnelLog {
            conn: self.conn.clone(),
            tunnel: format!("{}.{}", self.conn.id, self.tunnels_requested),
            identity,
            originator: format!("{}:{originator_port}", lossy(originator_address.as_bytes(), 64)),
        };
        if self.shared.drain.borrow().is_some() {
            let reason = "the bastion is shutting down; reconnect in a moment".to_string();
            log.refused(&format!("{}:{port_to_connect}", lossy(host_to_connect.as_bytes(), 300)), &reason);
            reply.reject(ChannelOpenFailure::Other { code: OPEN_PROHIBITED, reason }).await;
            return Ok(());
        }
        self.tunnel_closers.retain(|_, c| !c.is_closed()); // forget finished tunnels
        let open = self.tunnel_closers.len() + self.sessions.len();
        if open >= self.shared.max_channels {
            let reason = format!("too many open channels on this connection ({open}, --max-channels)");
            log.refused(&format!("{}:{port_to_connect}", lossy(host_to_connect.as_bytes(), 300)), &reason);
            reply.reject(ChannelOpenFailure::Other { code: OPEN_RESOURCE_SHORTAGE, reason }).await;
            return Ok(());
        }
        let target = match Target::parse(host_to_connect, port_to_connect) {
            Ok(target) => target,
            Err(reason) => {
                log.refused(&format!("{}:{port_to_connect}", lossy(host_to_connect.as_bytes(), 300)), &reason);
                reply.reject(ChannelOpenFailure::Other { code: OPEN_PROHIBITED, reason }).await;
                return Ok(());
            }
        };
        // Resolving and connecting can take up to the connect timeout: never
        // inside this callback, which would stall every channel of the connection.
        let shared = self.shared.clone();
        let (closer, closed) = oneshot::channel();
        self.tunnel_closers.insert(channel.id(), closer);
        tokio::spawn(open_tunnel(shared, self.signals.clone(), log, target, channel, reply, closed));
        Ok(())
    }

    async fn data(&mut self, channel: ChannelId, data: &[u8], session: &mut Session) -> Result<(), Self::Error> {
        if self.sessions.contains_key(&channel) && session::wants_close(data) {
            info!(target: "audit", event = "session.closed", conn = %self.conn.id, user = %self.user(), "session closed by Ctrl-C/Ctrl-D");
            self.finish_session(channel, session, 0)?;
        }
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        // A tunnel ends with its channel, target connection included: a browser
        // on `-D` that cancels streams must not run into --max-channels.
        if let Some(closer) = self.tunnel_closers.remove(&channel) {
            let _ = closer.send(());
        }
        self.sessions.remove(&channel);
        self.signals.set_session(channel, false);
        Ok(())
    }
}
