//! Admission control before russh sees a byte: how many connections in all,
//! how many still unauthenticated (OpenSSH MaxStartups), how many of those
//! per source (PerSourceMaxStartups), and a growing per-source penalty after
//! failed logins (PerSourcePenalties). Pure bookkeeping, tested without a
//! network; the accept loop asks [`Admission::admit`] and holds the
//! [`Ticket`] for the life of the connection.
//!
//! Limits only ever refuse *new* connections: an established connection,
//! and its tunnels, is never touched by another source hitting a limit.
//!
//! Two rules keep a flood of idle unauthenticated connections from locking
//! everyone out (OpenSSH's MaxStartups alone would):
//! - the task's own health check comes from sources no remote client can
//!   have (loopback, `health_check_sources`): served like any other until a
//!   limit would refuse it, then from a reserve outside every limit, a few at
//!   a time; never penalized;
//! - a connection that has not tried to authenticate for [`STALLED_AFTER`]
//!   holds its slot without progress: when the unauthenticated slots are
//!   full, a new connection takes the slot of the one stalled longest, and a
//!   stalled connection's source is penalized like a failed login, whether
//!   it was evicted or left on its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::policy::canonical;

/// The limits, from the command line.
#[derive(Debug, Clone)]
pub struct Limits {
    /// All connections, authenticated or not.
    pub max_connections: usize,
    /// Connections that have not authenticated yet (OpenSSH MaxStartups).
    pub max_startups: usize,
    /// Unauthenticated connections per source (PerSourceMaxStartups); IPv6 sources count per /64.
    pub per_source_max_startups: usize,
    /// First penalty after a connection from a source fails to log in; doubles with each further failure.
    pub penalty: Duration,
    /// Longest penalty.
    pub penalty_max: Duration,
    /// Sources never penalized (a NAT gateway shared by many users, a health checker).
    pub penalty_exempt: Vec<IpNet>,
    /// The task's own health check (loopback): when a limit would refuse it,
    /// admitted from a reserve of [`RESERVED`] outside the limits; never
    /// penalized. Empty: no reservation.
    pub health_check_sources: Vec<IpNet>,
}

/// Connections from `health_check_sources` served at once outside the other limits, when those are reached.
pub const RESERVED: usize = 4;

/// An unauthenticated connection that has not tried to authenticate for this
/// long holds its slot without progress. Every real client tries within a
/// round trip or two of the key exchange; a person reading a host key prompt
/// may take longer, and is only affected when the slots are full.
pub const STALLED_AFTER: Duration = Duration::from_secs(5);

/// Why a new connection was turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections(usize),
    TooManyStartups(usize),
    TooManyStartupsFromSource(usize),
    Penalized(Duration),
    TooManyHealthChecks(usize),
}

impl Refusal {
    /// The limit, as the metrics' `Limit` dimension names it (`metrics::LIMITS`).
    pub fn limit(&self) -> &'static str {
        match self {
            Refusal::TooManyConnections(_) => "max-connections",
            Refusal::TooManyStartups(_) => "max-startups",
            Refusal::TooManyStartupsFromSource(_) => "per-source-max-startups",
            Refusal::Penalized(_) => "penalty",
            Refusal::TooManyHealthChecks(_) => "health-check-sources",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooManyConnections(n) => write!(f, "{n} connections open (--max-connections)"),
            Refusal::TooManyStartups(n) => write!(f, "{n} unauthenticated connections open (--max-startups)"),
            Refusal::TooManyStartupsFromSource(n) => {
                write!(f, "{n} unauthenticated connections open from this source (--per-source-max-startups)")
            }
            Refusal::Penalized(left) => {
                write!(f, "source penalized for failed logins, {}s left (--penalty)", left.as_secs().max(1))
            }
            Refusal::TooManyHealthChecks(n) => {
                write!(f, "{n} connections from health check sources open (--health-check-sources)")
            }
        }
    }
}

/// Sources remembered at most (about 64 bytes each).
const MAX_SOURCES: usize = 100_000;

/// Per-source bookkeeping.
#[derive(Debug, Default)]
struct Source {
    startups: usize,
    /// Failed connections counted toward the penalty.
    failures: u32,
    penalized_until: Option<Instant>,
}

/// How an unauthenticated connection is getting on, shared between the
/// connection (which reports progress) and the admission (which may evict it).
#[derive(Debug)]
pub struct Progress {
    /// When it was admitted, or last tried to authenticate.
    last: Mutex<Instant>,
    /// Set when a newer connection took its slot; the penalty its source got.
    evicted: Mutex<Option<Option<Duration>>>,
    /// Woken when evicted.
    evict: tokio::sync::Notify,
}

impl Progress {
    fn new(now: Instant) -> Arc<Self> {
        Arc::new(Self { last: Mutex::new(now), evicted: Mutex::new(None), evict: tokio::sync::Notify::new() })
    }

    /// The client tried to authenticate (a key offered, a method refused).
    pub fn touch(&self) {
        self.touch_at(Instant::now());
    }

    fn touch_at(&self, now: Instant) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once a newer connection has taken this one's slot.
    pub async fn evicted(&self) {
        loop {
            let notified = self.evict.notified();
            if self.evicted.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                return;
            }
            notified.await;
        }
    }
}

/// An admitted connection that has not authenticated yet.
#[derive(Debug)]
struct Startup {
    key: IpAddr,
    progress: Arc<Progress>,
    /// From a health check source: never penalized.
    health: bool,
}

#[derive(Debug, Default)]
struct State {
    connections: usize,
    startups: usize,
    sources: HashMap<IpAddr, Source>,
    /// Unauthenticated connections by ticket id (health checks excluded).
    pending: HashMap<u64, Startup>,
    next_id: u64,
    /// Connections from health check sources.
    reserved: usize,
}

/// Shared by every listener.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    state: Mutex<State>,
    /// Woken whenever an unauthenticated slot frees up, for connections waiting for one.
    released: tokio::sync::Notify,
}

/// The key a source is counted under: the address, or its /64 for IPv6.
fn source_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self { limits, state: Mutex::new(State::default()), released: tokio::sync::Notify::new() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still consistent enough to go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Ticket, Refusal> {
        let key = source_key(ip);
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        let progress = Progress::new(now);
        let health = self.health_check(ip);
        if let Some(refusal) = self.refusal(&mut state, key, now) {
            // The health check: served from the reserve when the limits are reached.
            if !health {
                return Err(refusal);
            }
            if state.reserved >= RESERVED {
                return Err(Refusal::TooManyHealthChecks(state.reserved));
            }
            state.reserved += 1;
            return Ok(Ticket { admission: self.clone(), id, key, progress, reserved: true, health });
        }
        state.connections += 1;
        state.startups += 1;
        state.sources.entry(key).or_default().startups += 1;
        state.pending.insert(id, Startup { key, progress: progress.clone(), health });
        Ok(Ticket { admission: self.clone(), id, key, progress, reserved: false, health })
    }

    fn health_check(&self, ip: IpAddr) -> bool {
        self.limits.health_check_sources.iter().any(|net| net.contains(&canonical(ip)))
    }

    /// Why a new connection from `key` cannot be admitted now, if it cannot:
    /// when the unauthenticated slots are full, the one stalled longest is
    /// evicted to make room.
    fn refusal(&self, state: &mut State, key: IpAddr, now: Instant) -> Option<Refusal> {
        // Forget sources with nothing open whose last penalty ended more than
        // penalty_max ago (until then, a new failure doubles the last penalty).
        // Under a flood of distinct sources, keep only what is active now.
        let memory = self.limits.penalty_max;
        let full = state.sources.len() >= MAX_SOURCES;
        state
            .sources
            .retain(|_, s| s.startups > 0 || s.penalized_until.is_some_and(|t| t > now || (!full && t + memory > now)));
        if let Some(until) = state.sources.get(&key).and_then(|s| s.penalized_until)
            && until > now
        {
            return Some(Refusal::Penalized(until - now));
        }
        if state.connections >= self.limits.max_connections {
            return Some(Refusal::TooManyConnections(state.connections));
        }
        let from_source = state.sources.get(&key).map_or(0, |s| s.startups);
        if from_source >= self.limits.per_source_max_startups {
            return Some(Refusal::TooManyStartupsFromSource(from_source));
        }
        if state.startups >= self.limits.max_startups && !self.evict_stalled(state, now) {
            return Some(Refusal::TooManyStartups(state.startups));
        }
        None
    }

    /// Frees the slot of the connection stalled longest, if one has stalled
    /// for [`STALLED_AFTER`], and penalizes its source. Says whether it did.
    fn evict_stalled(&self, state: &mut State, now: Instant) -> bool {
        let victim = state
            .pending
            .iter()
            .map(|(id, s)| (*id, s.progress.last()))
            .filter(|(_, last)| now.saturating_duration_since(*last) >= STALLED_AFTER)
            .min_by_key(|(_, last)| *last)
            .map(|(id, _)| id);
        let Some(startup) = victim.and_then(|id| state.pending.remove(&id)) else { return false };
        Ticket::leave_startup(state, startup.key);
        let penalty = if startup.health { None } else { self.penalize(state, startup.key, now) };
        *startup.progress.evicted.lock().unwrap_or_else(|e| e.into_inner()) = Some(penalty);
        startup.progress.evict.notify_waiters();
        true
    }

    /// Resolves when an unauthenticated slot may have freed up. Created before
    /// a refused [`Admission::admit`], it sees every release after it.
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    /// When the next unauthenticated connection will have stalled (the
    /// earliest a full set of slots can free one), if any is pending.
    pub fn next_stall(&self) -> Option<Instant> {
        self.lock().pending.values().map(|s| s.progress.last() + STALLED_AFTER).min()
    }

    /// Penalizes `key` for a failed or stalled login, doubling each time, up to the maximum.
    fn penalize(&self, state: &mut State, key: IpAddr, now: Instant) -> Option<Duration> {
        if self.exempt(key) {
            return None;
        }
        let limits = &self.limits;
        let source = state.sources.entry(key).or_default();
        source.failures = source.failures.saturating_add(1);
        let factor = 2u32.saturating_pow(source.failures - 1);
        let penalty = limits.penalty.saturating_mul(factor).min(limits.penalty_max);
        if penalty.is_zero() {
            return None;
        }
        source.penalized_until = Some(now + penalty);
        Some(penalty)
    }

    fn exempt(&self, key: IpAddr) -> bool {
        self.limits.penalty_exempt.iter().any(|net| net.contains(&key))
    }

    /// Snapshot for tests: (connections, unauthenticated).
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.connections, state.startups)
    }
}

/// Held for the life of an admitted connection; releases its place when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    /// Its entry among the unauthenticated connections, while it is one.
    id: u64,
    key: IpAddr,
    progress: Arc<Progress>,
    /// Served from the health checks' reserve, outside the other limits.
    reserved: bool,
    /// From a health check source: never penalized.
    health: bool,
}

impl Ticket {
    /// Where the connection reports its progress, and learns of its eviction.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Set once a newer connection took this one's slot: the penalty its source got.
    pub fn evicted(&self) -> Option<Option<Duration>> {
        *self.progress.evicted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection authenticated: it no longer counts toward MaxStartups,
    /// and its source's failure count starts over.
    pub fn authenticated(&mut self) {
        let mut state = self.admission.lock();
        if state.pending.remove(&self.id).is_none() {
            return;
        }
        Self::leave_startup(&mut state, self.key);
        if let Some(source) = state.sources.get_mut(&self.key) {
            source.failures = 0;
        }
        drop(state);
        self.admission.released.notify_waiters();
    }

    /// The connection is ending without having logged in. Its source is
    /// penalized if it tried and failed (`tried`), or if it held its slot
    /// without progress for [`STALLED_AFTER`]; doubling each time, up to the
    /// maximum. Returns the penalty. Health checks and evicted connections
    /// (penalized when evicted) get none here.
    pub fn failed_login(&mut self, tried: bool, now: Instant) -> Option<Duration> {
        let mut state = self.admission.lock();
        if self.health || !state.pending.contains_key(&self.id) {
            return None;
        }
        let stalled = now.saturating_duration_since(self.progress.last()) >= STALLED_AFTER;
        if !tried && !stalled {
            return None;
        }
        self.admission.penalize(&mut state, self.key, now)
    }

    fn leave_startup(state: &mut State, key: IpAddr) {
        state.startups = state.startups.saturating_sub(1);
        if let Some(source) = state.sources.get_mut(&key) {
            source.startups = source.startups.saturating_sub(1);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        if self.reserved {
            state.reserved = state.reserved.saturating_sub(1);
            return;
        }
        state.connections = state.connections.saturating_sub(1);
        if state.pending.remove(&self.id).is_some() {
            Self::leave_startup(&mut state, self.key);
        }
        drop(state);
        self.admission.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 5,
            max_startups: 4,
            per_source_max_startups: 2,
            penalty: Duration::from_secs(2),
            penalty_max: Duration::from_secs(10),
            penalty_exempt: vec!["10.9.0.0/16".parse().unwrap()],
            health_check_sources: vec!["127.0.0.0/8".parse().unwrap()],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_source_startups_do_not_block_other_sources() {
        let a = Admission::new(limits());
        let now = Instant::now();
        let _t1 = a.admit(ip("203.0.113.1"), now).unwrap();
        let _t2 = a.admit(ip("203.0.113.1"), now).unwrap();
        assert_eq!(a.admit(ip("203.0.113.1"), now).unwrap_err(), Refusal::TooManyStartupsFromSource(2));
        assert!(a.admit(ip("198.51.100.7"), now).is_ok());
    }

    #[test]
    fn authenticated_connections_leave_the_startup_count() {
        let a = Admission::new(limits());
        let now = Instant::now();
        let mut tickets: Vec<Ticket> = (1..=4).map(|i| a.admit(ip(&format!("192.0.2.{i}")), now).unwrap()).collect();
        assert_eq!(a.admit(ip("192.0.2.9"), now).unwrap_err(), Refusal::TooManyStartups(4));
        tickets[0].authenticated();
        assert_eq!(a.counts(), (4, 3));
        tickets.push(a.admit(ip("192.0.2.9"), now).unwrap());
        assert_eq!(a.admit(ip("192.0.2.10"), now).unwrap_err(), Refusal::TooManyConnections(5));
        drop(tickets);
        assert_eq!(a.counts(), (0, 0));
    }

    #[test]
    fn ipv6_sources_count_per_64() {
        let a = Admission::new(limits());
        let now = Instant::now();
        let _t1 = a.admit(ip("2001:db8:1:2::1"), now).unwrap();
        let _t2 = a.admit(ip("2001:db8:1:2::ffff"), now).unwrap();
        assert!(a.admit(ip("2001:db8:1:2:aaaa::3"), now).is_err());
        assert!(a.admit(ip("2001:db8:1:3::1"), now).is_ok());
    }

    #[test]
    fn an_ipv6_64_is_penalized_as_one_source() {
        let a = Admission::new(limits());
        let now = Instant::now();
        let mut t = a.admit(ip("2001:db8:7:7::1"), now).unwrap();
        assert_eq!(t.failed_login(true, now), Some(Duration::from_secs(2)));
        drop(t);
        // Another address of the same /64 is the same source; the next /64 is not.
        assert_eq!(a.admit(ip("2001:db8:7:7:ffff::9"), now).unwrap_err(), Refusal::Penalized(Duration::from_secs(2)));
        assert!(a.admit(ip("2001:db8:7:8::1"), now).is_ok());
    }

    #[test]
    fn penalties_grow_expire_and_reset_on_login() {
        let a = Admission::new(limits());
        let t0 = Instant::now();
        let src = ip("203.0.113.5");
        let mut t = a.admit(src, t0).unwrap();
        assert_eq!(t.failed_login(true, t0), Some(Duration::from_secs(2)));
        drop(t);
        assert_eq!(a.admit(src, t0 + Duration::from_secs(1)).unwrap_err(), Refusal::Penalized(Duration::from_secs(1)));
        let mut t = a.admit(src, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(t.failed_login(true, t0 + Duration::from_secs(2)), Some(Duration::from_secs(4)));
        drop(t);
        // Doubling stops at the maximum.
        let mut now = t0 + Duration::from_secs(6);
        for expected in [8, 10, 10] {
            let mut t = a.admit(src, now).unwrap();
            assert_eq!(t.failed_login(true, now), Some(Duration::from_secs(expected)));
            now += Duration::from_secs(expected);
        }
        // Other sources are unaffected meanwhile; a login resets the count.
        assert!(a.admit(ip("198.51.100.1"), t0).is_ok());
        let mut t = a.admit(src, now).unwrap();
        t.authenticated();
        drop(t);
        let mut t = a.admit(src, now).unwrap();
        assert_eq!(t.failed_login(true, now), Some(Duration::from_secs(2)));
    }

    #[test]
    fn a_stalled_connection_gives_its_slot_to_a_new_one_and_its_source_is_penalized() {
        let a = Admission::new(limits());
        let t0 = Instant::now();
        let idle: Vec<Ticket> = (1..=4).map(|i| a.admit(ip(&format!("192.0.2.{i}")), t0).unwrap()).collect();
        // Full, and nobody has stalled yet: refused.
        assert_eq!(a.admit(ip("198.51.100.1"), t0 + Duration::from_secs(1)).unwrap_err(), Refusal::TooManyStartups(4));
        assert_eq!(a.next_stall(), Some(t0 + STALLED_AFTER));
        // Three of them try to log in meanwhile; the fourth (192.0.2.4) just sits there.
        for t in &idle[..3] {
            t.progress.touch_at(t0 + Duration::from_secs(4));
        }
        let later = t0 + STALLED_AFTER;
        let newcomer = a.admit(ip("198.51.100.1"), later).expect("the stalled slot is taken over");
        assert_eq!(idle[3].evicted(), Some(Some(Duration::from_secs(2))), "evicted, its source penalized");
        assert!(idle[..3].iter().all(|t| t.evicted().is_none()), "connections that made progress stay");
        assert_eq!(a.counts(), (5, 4));
        assert_eq!(a.admit(ip("192.0.2.4"), later).unwrap_err(), Refusal::Penalized(Duration::from_secs(2)));
        drop(idle);
        assert_eq!(a.counts(), (1, 1), "the evicted ticket is not counted twice");
        drop(newcomer);
        assert_eq!(a.counts(), (0, 0));
    }

    #[test]
    fn a_connection_that_stalls_and_leaves_is_penalized_one_that_leaves_at_once_is_not() {
        let a = Admission::new(limits());
        let t0 = Instant::now();
        // A port probe or ssh-keyscan: leaves without trying, before stalling.
        let mut probe = a.admit(ip("203.0.113.7"), t0).unwrap();
        assert_eq!(probe.failed_login(false, t0 + Duration::from_secs(1)), None);
        drop(probe);
        // Sits on its slot, then leaves before the login grace time without trying.
        let mut idle = a.admit(ip("203.0.113.7"), t0).unwrap();
        assert_eq!(idle.failed_login(false, t0 + STALLED_AFTER), Some(Duration::from_secs(2)));
    }

    #[test]
    fn a_health_check_source_is_served_like_any_other_until_a_limit_refuses_it() {
        let a = Admission::new(limits());
        let now = Instant::now();
        // Within the limits: counted as usual (a user on the bastion's own host is not capped at 4).
        let normal: Vec<Ticket> = (0..2).map(|_| a.admit(ip("127.0.0.1"), now).unwrap()).collect();
        assert_eq!(a.counts(), (2, 2));
        // Past --per-source-max-startups (2 here): from the reserve.
        let reserved = a.admit(ip("127.0.0.1"), now).unwrap();
        assert_eq!(a.counts(), (2, 2));
        drop((normal, reserved));
        assert_eq!(a.counts(), (0, 0));
    }

    #[test]
    fn health_checks_get_in_whatever_the_flood_and_are_never_penalized() {
        let a = Admission::new(Limits { max_connections: 4, ..limits() });
        let now = Instant::now();
        let _flood: Vec<Ticket> = (1..=4).map(|i| a.admit(ip(&format!("192.0.2.{i}")), now).unwrap()).collect();
        assert!(a.admit(ip("192.0.2.9"), now).is_err());
        let mut checks: Vec<Ticket> = (0..RESERVED).map(|_| a.admit(ip("127.0.0.1"), now).unwrap()).collect();
        assert_eq!(a.admit(ip("::ffff:127.0.0.1"), now).unwrap_err(), Refusal::TooManyHealthChecks(RESERVED));
        assert_eq!(checks[0].failed_login(true, now + STALLED_AFTER), None);
        drop(checks);
        assert!(a.admit(ip("127.0.0.1"), now).is_ok());
        assert_eq!(a.counts(), (4, 4), "health checks are outside the counts");
    }

    #[test]
    fn exempt_sources_are_never_penalized() {
        let a = Admission::new(limits());
        let now = Instant::now();
        let mut t = a.admit(ip("10.9.3.4"), now).unwrap();
        assert_eq!(t.failed_login(true, now), None);
        drop(t);
        assert!(a.admit(ip("10.9.3.4"), now).is_ok());
    }
}
