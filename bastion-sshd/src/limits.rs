//! Admission control before russh sees a byte: how many connections in all,
//! how many still unauthenticated (OpenSSH MaxStartups), how many of those
//! per source (PerSourceMaxStartups), and a growing per-source penalty after
//! failed logins (PerSourcePenalties). Pure bookkeeping, tested without a
//! network; the accept loop asks [`Admission::admit`] and holds the
//! [`Ticket`] for the life of the connection.
//!
//! Limits only ever refuse *new* connections: an established connection,
//! and its tunnels, is never touched by another source hitting a limit.

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
}

/// Why a new connection was turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections(usize),
    TooManyStartups(usize),
    TooManyStartupsFromSource(usize),
    Penalized(Duration),
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

#[derive(Debug, Default)]
struct State {
    connections: usize,
    startups: usize,
    sources: HashMap<IpAddr, Source>,
}

/// Shared by every listener.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    state: Mutex<State>,
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
        Arc::new(Self { limits, state: Mutex::new(State::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still consistent enough to go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Ticket, Refusal> {
        let key = source_key(ip);
        let mut state = self.lock();
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
            return Err(Refusal::Penalized(until - now));
        }
        if state.connections >= self.limits.max_connections {
            return Err(Refusal::TooManyConnections(state.connections));
        }
        if state.startups >= self.limits.max_startups {
            return Err(Refusal::TooManyStartups(state.startups));
        }
        let from_source = state.sources.get(&key).map_or(0, |s| s.startups);
        if from_source >= self.limits.per_source_max_startups {
            return Err(Refusal::TooManyStartupsFromSource(from_source));
        }
        state.connections += 1;
        state.startups += 1;
        state.sources.entry(key).or_default().startups += 1;
        Ok(Ticket { admission: self.clone(), key, startup: true })
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
    key: IpAddr,
    /// Still counted as unauthenticated.
    startup: bool,
}

impl Ticket {
    /// The connection authenticated: it no longer counts toward MaxStartups,
    /// and its source's failure count starts over.
    pub fn authenticated(&mut self) {
        if !self.startup {
            return;
        }
        let mut state = self.admission.lock();
        Self::leave_startup(&mut state, self.key);
        if let Some(source) = state.sources.get_mut(&self.key) {
            source.failures = 0;
        }
        self.startup = false;
    }

    /// The connection ended without logging in after trying: penalize its
    /// source, doubling each time, up to the maximum. Returns the penalty.
    pub fn failed_login(&mut self, now: Instant) -> Option<Duration> {
        if !self.startup || self.admission.exempt(self.key) {
            return None;
        }
        let limits = &self.admission.limits;
        let mut state = self.admission.lock();
        let source = state.sources.entry(self.key).or_default();
        source.failures = source.failures.saturating_add(1);
        let factor = 2u32.saturating_pow(source.failures - 1);
        let penalty = limits.penalty.saturating_mul(factor).min(limits.penalty_max);
        if penalty.is_zero() {
            return None;
        }
        source.penalized_until = Some(now + penalty);
        Some(penalty)
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
        state.connections = state.connections.saturating_sub(1);
        if self.startup {
            Self::leave_startup(&mut state, self.key);
        }
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
    fn penalties_grow_expire_and_reset_on_login() {
        let a = Admission::new(limits());
        let t0 = Instant::now();
        let src = ip("203.0.113.5");
        let mut t = a.admit(src, t0).unwrap();
        assert_eq!(t.failed_login(t0), Some(Duration::from_secs(2)));
        drop(t);
        assert_eq!(a.admit(src, t0 + Duration::from_secs(1)).unwrap_err(), Refusal::Penalized(Duration::from_secs(1)));
        let mut t = a.admit(src, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(t.failed_login(t0 + Duration::from_secs(2)), Some(Duration::from_secs(4)));
        drop(t);
        // Doubling stops at the maximum.
        let mut now = t0 + Duration::from_secs(6);
        for expected in [8, 10, 10] {
            let mut t = a.admit(src, now).unwrap();
            assert_eq!(t.failed_login(now), Some(Duration::from_secs(expected)));
            now += Duration::from_secs(expected);
        }
        // Other sources are unaffected meanwhile; a login resets the count.
        assert!(a.admit(ip("198.51.100.1"), t0).is_ok());
        let mut t = a.admit(src, now).unwrap();
        t.authenticated();
        drop(t);
        let mut t = a.admit(src, now).unwrap();
        assert_eq!(t.failed_login(now), Some(Duration::from_secs(2)));
    }

    #[test]
    fn exempt_sources_are_never_penalized() {
        let a = Admission::new(limits());
        let now = Instant::now();
        let mut t = a.admit(ip("10.9.3.4"), now).unwrap();
        assert_eq!(t.failed_login(now), None);
        drop(t);
        assert!(a.admit(ip("10.9.3.4"), now).is_ok());
    }
}
