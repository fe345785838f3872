//! Name resolution for tunnel targets: getaddrinfo(3), bounded in time and in
//! concurrency, per key (across its connections, so per connection too) and
//! in total.
//!
//! getaddrinfo blocks, so each lookup runs on tokio's blocking pool. A timeout
//! can stop *waiting* for a lookup but cannot stop the thread: under a zone
//! whose name servers never answer, the thread stays in getaddrinfo for the
//! resolver's own timeout (with glibc, resolv.conf's `timeout` × `attempts`
//! for each name server: 5 s × 2 by default, minutes with other settings),
//! however short `--connect-timeout` is. Unbounded, one key opening tunnels
//! to many names under such a zone (each gives up after `--connect-timeout`
//! and frees its channel for the next) takes every blocking thread tokio
//! allows (512) and queues more behind them, and every other user's lookups
//! then time out.
//!
//! So each lookup first takes a permit from its key
//! ([`KeyLookups`]) and one from the server ([`TotalLookups`]), and
//! moves both into the blocking closure: they are returned when getaddrinfo
//! returns, not when we stop waiting. Stuck lookups keep counting against the
//! caps, so no number of timed-out lookups can exhaust the pool, and a
//! key whose lookups are stuck can only wait for its own permits.
//! Waiting for the permits counts against the same deadline as the lookup
//! (the connect timeout); a lookup that could not start says why.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout_at};

use crate::policy::{Resolve, Target};

/// Lookups in flight for one key (one user), across all its connections.
/// Answered lookups take milliseconds, and one that finds the 4 taken waits
/// for a free one (within the connect timeout), so a client resolving many
/// names at once (a browser on `-D`) is slowed, not refused. It is what keeps
/// one user's never-answering zone from delaying another user: that user's
/// stuck lookups hold their own key's 4 permits and only 4 of the server's,
/// however many connections they open.
pub const LOOKUPS_PER_KEY: usize = 4;

/// Lookups in flight on the whole server: an eighth of tokio's 512 blocking
/// threads, so that stuck lookups can never take the pool (the rest stays
/// for other blocking work), and 16 connections, each with all of its
/// lookups stuck, are needed to fill it. Answered lookups return their
/// permits at once; only stuck ones count for long.
pub const LOOKUPS_IN_TOTAL: usize = 64;

/// A counting semaphore with its size, for messages and tests.
#[derive(Debug, Clone)]
struct Slots {
    /// Free permits; an owned permit is held by the blocking lookup itself.
    free: Arc<Semaphore>,
    /// How many lookups may be in flight at once.
    cap: usize,
}

impl Slots {
    fn new(cap: usize) -> Self {
        Self { free: Arc::new(Semaphore::new(cap)), cap }
    }

    /// A permit, waiting for one until `deadline`; None if none came free in time.
    async fn take(&self, deadline: Instant) -> Option<OwnedSemaphorePermit> {
        timeout_at(deadline, self.free.clone().acquire_owned()).await.ok()?.ok()
    }

    fn in_flight(&self) -> usize {
        self.cap.saturating_sub(self.free.available_permits())
    }
}

/// The name lookups of one key: shared by its connections' tunnel tasks (see [`LookupsByKey`]).
#[derive(Debug, Clone)]
pub struct KeyLookups(Slots);

impl KeyLookups {
    pub fn new(cap: usize) -> Self {
        Self(Slots::new(cap))
    }

    /// Lookups holding a permit: waiting in getaddrinfo or about to, including abandoned ones.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight()
    }
}

impl Default for KeyLookups {
    fn default() -> Self {
        Self::new(LOOKUPS_PER_KEY)
    }
}

/// The [`KeyLookups`] of every key that has a tunnel, or a stuck lookup, now.
#[derive(Debug, Default)]
pub struct LookupsByKey(Mutex<HashMap<String, KeyLookups>>);

impl LookupsByKey {
    /// The lookups of the key with this fingerprint.
    pub fn of(&self, fingerprint: &str) -> KeyLookups {
        let mut keys = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Forget keys nothing holds any more: no tunnel resolving, no lookup stuck.
        keys.retain(|_, lookups| Arc::strong_count(&lookups.0.free) > 1);
        keys.entry(fingerprint.to_string()).or_default().clone()
    }
}

/// The name lookups of the whole server: one, shared by every connection.
#[derive(Debug, Clone)]
pub struct TotalLookups(Slots);

impl TotalLookups {
    pub fn new(cap: usize) -> Self {
        Self(Slots::new(cap))
    }

    /// Lookups holding a permit: waiting in getaddrinfo or about to, including abandoned ones.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight()
    }
}

impl Default for TotalLookups {
    fn default() -> Self {
        Self::new(LOOKUPS_IN_TOTAL)
    }
}

/// A blocking lookup of `host`, `port`.
pub type LookupFn = fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

/// getaddrinfo(3), as std (and tokio's `lookup_host`) call it.
pub fn getaddrinfo(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    (host, port).to_socket_addrs().map(Iterator::collect)
}

/// getaddrinfo on tokio's blocking pool, bounded by a deadline and by the
/// connection's and the server's caps. `L` is the blocking lookup:
/// [`getaddrinfo`] in production, one that blocks on demand in the tests.
#[derive(Debug, Clone)]
pub struct SystemResolver<L = LookupFn> {
    /// For waiting for permits and for the lookup, together (`--connect-timeout`).
    timeout: Duration,
    /// The tunnel's connection's permits; a lookup holds one until getaddrinfo returns.
    connection: KeyLookups,
    /// The server's permits, held the same way.
    total: TotalLookups,
    lookup: L,
}

impl SystemResolver {
    pub fn new(timeout: Duration, connection: &KeyLookups, total: &TotalLookups) -> Self {
        Self::with_lookup(timeout, connection, total, getaddrinfo)
    }
}

impl<L> SystemResolver<L> {
    pub fn with_lookup(timeout: Duration, connection: &KeyLookups, total: &TotalLookups, lookup: L) -> Self {
        Self { timeout, connection: connection.clone(), total: total.clone(), lookup }
    }
}

impl<L> Resolve for SystemResolver<L>
where
    L: Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Clone + Send + Sync + 'static,
{
    async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, String> {
        let deadline = Instant::now() + self.timeout;
        let waited = humantime::format_duration(self.timeout);
        let busy = |scope: &str, cap: usize| {
            format!(
                "cannot resolve {}: too many name lookups in progress {scope} ({cap} at most; none finished within {waited})",
                target.host
            )
        };
        // The connection's permit first: a connection waits for the server's
        // with at most its own few lookups, never with all of them.
        let Some(own) = self.connection.0.take(deadline).await else {
            return Err(busy("for this key", self.connection.0.cap));
        };
        let Some(all) = self.total.0.take(deadline).await else {
            return Err(busy("on the bastion", self.total.0.cap));
        };
        let (host, port, lookup) = (target.host.clone(), target.port, self.lookup.clone());
        let lookup = tokio::task::spawn_blocking(move || {
            // Returned when getaddrinfo returns, even if nobody waits for it any more.
            let _permits = (own, all);
            lookup(&host, port)
        });
        match timeout_at(deadline, lookup).await {
            Ok(Ok(Ok(addrs))) => Ok(addrs),
            Ok(Ok(Err(e))) => Err(format!("cannot resolve {}: {e}", target.host)),
            Ok(Err(e)) => Err(format!("cannot resolve {}: the lookup did not finish ({e})", target.host)),
            Err(_) => Err(format!("resolving {} timed out after {waited}", target.host)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};

    /// A lookup that answers 127.0.0.1 at once, except for names starting with
    /// `stuck`, which block until the gate opens (a zone that never answers).
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
        /// Every name the lookup was called with.
        asked: Mutex<Vec<String>>,
    }

    impl Gate {
        fn lookup(self: &Arc<Self>) -> impl Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Clone + Send + Sync + use<> {
            let gate = self.clone();
            move |host: &str, port: u16| {
                gate.asked.lock().unwrap().push(host.to_string());
                if host.starts_with("stuck") {
                    let mut open = gate.open.lock().unwrap();
                    while !*open {
                        open = gate.opened.wait(open).unwrap();
                    }
                }
                Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
            }
        }

        fn release(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }

        fn asked(&self) -> Vec<String> {
            self.asked.lock().unwrap().clone()
        }
    }

    /// Opens the gate when dropped, also when a test fails: the runtime's
    /// shutdown waits for its blocking threads.
    struct Release(Arc<Gate>);

    impl Drop for Release {
        fn drop(&mut self) {
            self.0.release();
        }
    }

    async fn resolve<L>(resolver: &SystemResolver<L>, host: &str) -> Result<Vec<SocketAddr>, String>
    where
        L: Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Clone + Send + Sync + 'static,
    {
        resolver.resolve(&Target::parse(host, 5432).unwrap()).await
    }

    /// Waits (up to 10 s) until `done` holds.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    const SHORT: Duration = Duration::from_millis(300);
    const LONG: Duration = Duration::from_secs(10);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stuck_lookups_hold_their_connections_permits_until_they_return() {
        let gate = Arc::new(Gate::default());
        let _release = Release(gate.clone());
        let total = TotalLookups::new(LOOKUPS_IN_TOTAL);
        let (a, b) = (KeyLookups::default(), KeyLookups::default());
        let short_a = SystemResolver::with_lookup(SHORT, &a, &total, gate.lookup());

        // Connection A's four lookups under a dead zone time out...
        for n in 0..LOOKUPS_PER_KEY {
            let err = resolve(&short_a, &format!("stuck{n}.slow.test")).await.unwrap_err();
            assert_eq!(err, format!("resolving stuck{n}.slow.test timed out after 300ms"));
        }
        until("the four lookups are in getaddrinfo", || gate.asked().len() == 4).await;
        // ...but their threads are still in getaddrinfo, and keep their permits.
        assert_eq!((a.in_flight(), total.in_flight()), (4, 4));

        // The fifth on A waits for one of them until its deadline, and never starts.
        let started = Instant::now();
        let err = resolve(&short_a, "db.good.test").await.unwrap_err();
        assert_eq!(
            err,
            "cannot resolve db.good.test: too many name lookups in progress for this key (4 at most; none finished within 300ms)"
        );
        assert!(started.elapsed() >= SHORT && started.elapsed() < SHORT * 5, "{:?}", started.elapsed());
        assert!(!gate.asked().contains(&"db.good.test".to_string()), "the fifth lookup ran: {:?}", gate.asked());

        // Connection B is not delayed by A's dead zone.
        let b_resolver = SystemResolver::with_lookup(LONG, &b, &total, gate.lookup());
        let started = Instant::now();
        assert_eq!(resolve(&b_resolver, "db.good.test").await.unwrap(), vec![SocketAddr::from(([127, 0, 0, 1], 5432))]);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!((b.in_flight(), total.in_flight()), (0, 4));

        // When getaddrinfo returns, and only then, A's permits come back.
        gate.release();
        until("the stuck lookups returned their permits", || a.in_flight() == 0 && total.in_flight() == 0).await;
        assert_eq!(resolve(&short_a, "db.good.test").await.unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_bastion_says_so_and_waiting_lookups_start_when_a_permit_returns() {
        let gate = Arc::new(Gate::default());
        let _release = Release(gate.clone());
        // Five in total: A's four stuck lookups and one of B's fill it.
        let total = TotalLookups::new(5);
        let (a, b, c) = (KeyLookups::default(), KeyLookups::default(), KeyLookups::default());
        let on = |conn: &KeyLookups, timeout| SystemResolver::with_lookup(timeout, conn, &total, gate.lookup());
        for n in 0..4 {
            assert!(resolve(&on(&a, SHORT), &format!("stuck{n}.slow.test")).await.is_err());
        }
        assert!(resolve(&on(&b, SHORT), "stuck4.slow.test").await.is_err());
        assert_eq!((a.in_flight(), b.in_flight(), total.in_flight()), (4, 1, 5));

        for conn in [&b, &c] {
            let err = resolve(&on(conn, SHORT), "db.good.test").await.unwrap_err();
            assert_eq!(
                err,
                "cannot resolve db.good.test: too many name lookups in progress on the bastion (5 at most; none finished within 300ms)"
            );
        }
        // A lookup waiting for a permit starts as soon as one returns, within its deadline.
        let waiting = tokio::spawn({
            let resolver = on(&c, LONG);
            async move { resolve(&resolver, "db.good.test").await }
        });
        until("C's lookup holds its connection's permit", || c.in_flight() == 1).await;
        assert!(!waiting.is_finished());
        gate.release();
        assert_eq!(waiting.await.unwrap().unwrap().len(), 1);
        until("every permit is back", || total.in_flight() == 0).await;
        assert!(gate.asked().iter().filter(|n| *n == "db.good.test").count() == 1, "{:?}", gate.asked());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_keys_connections_share_its_lookups_and_other_keys_are_not_delayed() {
        let gate = Arc::new(Gate::default());
        let _release = Release(gate.clone());
        let (keys, total) = (LookupsByKey::default(), TotalLookups::default());
        // Two connections of one key: their stuck lookups count together.
        let (first, second) = (keys.of("SHA256:attacker"), keys.of("SHA256:attacker"));
        for n in 0..LOOKUPS_PER_KEY {
            let resolver = SystemResolver::with_lookup(SHORT, &first, &total, gate.lookup());
            assert!(resolve(&resolver, &format!("stuck{n}.slow.test")).await.is_err());
        }
        let err = resolve(&SystemResolver::with_lookup(SHORT, &second, &total, gate.lookup()), "db.good.test")
            .await
            .unwrap_err();
        assert!(err.contains("too many name lookups in progress for this key"), "{err}");
        let other = keys.of("SHA256:user");
        let resolved = resolve(&SystemResolver::with_lookup(LONG, &other, &total, gate.lookup()), "db.good.test").await;
        assert_eq!(resolved.unwrap().len(), 1);
        // A key is forgotten once nothing holds its lookups, and not before.
        drop((first, second, other));
        assert_eq!(keys.of("SHA256:attacker").in_flight(), LOOKUPS_PER_KEY, "its stuck lookups still count");
        gate.release();
        until("the stuck lookups returned", || total.in_flight() == 0).await;
        assert_eq!(keys.0.lock().unwrap().len(), 1, "only the key just asked for is kept");
    }

    #[tokio::test]
    async fn getaddrinfo_errors_and_literals_come_through() {
        let (conn, total) = (KeyLookups::default(), TotalLookups::default());
        let resolver = SystemResolver::new(LONG, &conn, &total);
        assert_eq!(resolve(&resolver, "10.0.3.7").await.unwrap(), vec![SocketAddr::from(([10, 0, 3, 7], 5432))]);
        let failing = SystemResolver::with_lookup(LONG, &conn, &total, |_: &str, _: u16| {
            Err(io::Error::other("Name or service not known"))
        });
        assert_eq!(
            resolve(&failing, "nx.test").await.unwrap_err(),
            "cannot resolve nx.test: Name or service not known"
        );
        assert_eq!((conn.in_flight(), total.in_flight()), (0, 0));
    }
}
