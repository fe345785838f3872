//! CloudWatch metrics without an agent or credentials: once per
//! `--metrics-interval` the server writes one CloudWatch Embedded Metric
//! Format record (a JSON object with an `_aws` member) to its log stream,
//! and CloudWatch Logs turns it into metrics.
//!
//! The counts come from the audit events themselves: [`CountingLayer`] sees
//! each event as it is logged, so the metrics and the audit log cannot
//! disagree. Dimensions are low-cardinality only: the bastion's name, and
//! for refused connections the limit that refused them. Never a user, a key
//! or a destination.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bastion_common::emf::{self, Metric};
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Why a connection was refused before SSH, as a dimension value (`Limit`).
pub const LIMITS: [&str; 5] =
    ["max-connections", "max-startups", "per-source-max-startups", "penalty", "health-check-sources"];

/// Counts since the start, updated from the audit events.
pub struct Counters {
    tunnels_opened: AtomicU64,
    tunnels_refused: AtomicU64,
    tunnels_failed: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    logins_accepted: AtomicU64,
    logins_refused: AtomicU64,
    /// Connections refused by each of [`LIMITS`].
    refused: [AtomicU64; 5],
}

/// The process's counters: the tracing layer is global, so they are too.
pub static COUNTERS: Counters = Counters::new();

/// One reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub tunnels_opened: u64,
    pub tunnels_refused: u64,
    pub tunnels_failed: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub logins_accepted: u64,
    pub logins_refused: u64,
    pub refused: [u64; 5],
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

impl Counters {
    pub const fn new() -> Self {
        Counters {
            tunnels_opened: AtomicU64::new(0),
            tunnels_refused: AtomicU64::new(0),
            tunnels_failed: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            logins_accepted: AtomicU64::new(0),
            logins_refused: AtomicU64::new(0),
            refused: [const { AtomicU64::new(0) }; 5],
        }
    }

    pub fn totals(&self) -> Totals {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            tunnels_opened: get(&self.tunnels_opened),
            tunnels_refused: get(&self.tunnels_refused),
            tunnels_failed: get(&self.tunnels_failed),
            bytes_up: get(&self.bytes_up),
            bytes_down: get(&self.bytes_down),
            logins_accepted: get(&self.logins_accepted),
            logins_refused: get(&self.logins_refused),
            refused: std::array::from_fn(|i| get(&self.refused[i])),
        }
    }

    /// Counts one audit event.
    fn count(&self, seen: &Seen) {
        let add = |a: &AtomicU64, n: u64| {
            a.fetch_add(n, Ordering::Relaxed);
        };
        match seen.event.as_deref() {
            Some("tunnel.opened") => add(&self.tunnels_opened, 1),
            Some("tunnel.refused") => add(&self.tunnels_refused, 1),
            Some("tunnel.failed") => add(&self.tunnels_failed, 1),
            Some("tunnel.closed") => {
                add(&self.bytes_up, seen.bytes_up);
                add(&self.bytes_down, seen.bytes_down);
            }
            Some("auth.accepted") => add(&self.logins_accepted, 1),
            Some("auth.refused") => add(&self.logins_refused, 1),
            Some("connection.refused") => {
                if let Some(i) = seen.limit.as_deref().and_then(|l| LIMITS.iter().position(|x| *x == l)) {
                    add(&self.refused[i], 1);
                }
            }
            _ => {}
        }
    }
}

impl Totals {
    /// What happened between `before` and `self`.
    fn since(&self, before: &Totals) -> Totals {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        Totals {
            tunnels_opened: d(self.tunnels_opened, before.tunnels_opened),
            tunnels_refused: d(self.tunnels_refused, before.tunnels_refused),
            tunnels_failed: d(self.tunnels_failed, before.tunnels_failed),
            bytes_up: d(self.bytes_up, before.bytes_up),
            bytes_down: d(self.bytes_down, before.bytes_down),
            logins_accepted: d(self.logins_accepted, before.logins_accepted),
            logins_refused: d(self.logins_refused, before.logins_refused),
            refused: std::array::from_fn(|i| d(self.refused[i], before.refused[i])),
        }
    }
}

/// The fields of an audit event that the counters read.
#[derive(Default)]
struct Seen {
    event: Option<String>,
    bytes_up: u64,
    bytes_down: u64,
    limit: Option<String>,
}

impl Visit for Seen {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "event" => self.event = Some(value.to_string()),
            "limit" => self.limit = Some(value.to_string()),
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "bytes_up" => self.bytes_up = value,
            "bytes_down" => self.bytes_down = value,
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `limit = %refusal.limit()` and the like arrive as Display through Debug.
        if matches!(field.name(), "event" | "limit") {
            self.record_str(field, format!("{value:?}").trim_matches('"'));
        }
    }
}

/// Counts the audit events into [`COUNTERS`]; installed beside the log output
/// (`logging`), with a filter of its own, so that `RUST_LOG` cannot turn it off.
pub struct CountingLayer;

impl<S: Subscriber> Layer<S> for CountingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut seen = Seen::default();
        event.record(&mut seen);
        COUNTERS.count(&seen);
    }
}

/// What the server reads at the moment of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    pub connections: usize,
    pub tunnels: usize,
    /// Bytes of the window budget held by channels, and the budget (`--window-budget`); None without one.
    pub budget: Option<(usize, usize)>,
}

/// One EMF record: the counts since the last record, the gauges now.
pub fn record(name: &str, at: SystemTime, delta: &Totals, gauges: &Gauges) -> Value {
    let mut metrics = vec![
        Metric::new("OpenConnections", "Count", gauges.connections),
        Metric::new("OpenTunnels", "Count", gauges.tunnels),
        Metric::new("TunnelsOpened", "Count", delta.tunnels_opened),
        Metric::new("TunnelsRefused", "Count", delta.tunnels_refused),
        Metric::new("TunnelsFailed", "Count", delta.tunnels_failed),
        Metric::new("BytesUp", "Bytes", delta.bytes_up),
        Metric::new("BytesDown", "Bytes", delta.bytes_down),
        Metric::new("LoginsAccepted", "Count", delta.logins_accepted),
        Metric::new("LoginsRefused", "Count", delta.logins_refused),
        Metric::new("ConnectionsRefused", "Count", delta.refused.iter().sum::<u64>()),
    ];
    if let Some((used, total)) = gauges.budget {
        let percent = if total == 0 { 0.0 } else { used as f64 * 100.0 / total as f64 };
        metrics.push(Metric::new("WindowBudgetUsed", "Bytes", used));
        metrics.push(Metric::new("WindowBudgetUsedPercent", "Percent", (percent * 10.0).round() / 10.0));
    }
    emf::record(at, &[("Bastion", name)], &metrics)
}

/// The records of refused connections by limit: one per limit that refused any.
pub fn limit_records(name: &str, at: SystemTime, delta: &Totals) -> Vec<Value> {
    LIMITS
        .iter()
        .zip(delta.refused)
        .filter(|(_, n)| *n > 0)
        .map(|(limit, n)| {
            emf::record(at, &[("Bastion", name), ("Limit", limit)], &[Metric::new("ConnectionsRefused", "Count", n)])
        })
        .collect()
}

/// Writes a record every `interval` until the process ends. Each record is
/// one line, written in one call under stderr's lock, so it never
/// interleaves with a log line.
pub async fn run(name: String, interval: Duration, gauges: impl Fn() -> Gauges) {
    let mut before = COUNTERS.totals();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = COUNTERS.totals();
        let delta = now.since(&before);
        before = now;
        let at = SystemTime::now();
        let mut lines = vec![record(&name, at, &delta, &gauges())];
        lines.extend(limit_records(&name, at, &delta));
        let mut text = String::new();
        for line in lines {
            text.push_str(&line.to_string());
            text.push('\n');
        }
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::UNIX_EPOCH;

    #[test]
    fn a_record_has_the_emf_shape() {
        let delta = Totals { tunnels_opened: 3, bytes_up: 10, refused: [0, 2, 0, 1, 0], ..Totals::default() };
        let gauges = Gauges { connections: 2, tunnels: 1, budget: Some((1 << 20, 4 << 20)) };
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let r = record("bastion.example.com", at, &delta, &gauges);
        assert_eq!(r["_aws"]["Timestamp"], 1_700_000_000_123u64);
        let directive = &r["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], emf::NAMESPACE);
        assert_eq!(directive["Dimensions"], json!([["Bastion"]]));
        for m in directive["Metrics"].as_array().unwrap() {
            let name = m["Name"].as_str().unwrap();
            assert!(r[name].is_number(), "{name} has no value");
        }
        assert_eq!((r["TunnelsOpened"].as_u64(), r["ConnectionsRefused"].as_u64()), (Some(3), Some(3)));
        assert_eq!(r["WindowBudgetUsedPercent"], 25.0);
        let by_limit = limit_records("b", at, &delta);
        let limits: Vec<&str> = by_limit.iter().map(|r| r["Limit"].as_str().unwrap()).collect();
        assert_eq!(limits, ["max-startups", "penalty"]);
        assert_eq!(by_limit[0]["ConnectionsRefused"], 2);
    }

    #[test]
    fn counts_come_from_the_events() {
        let counters = Counters::new();
        let seen = |event: &str, up: u64, limit: Option<&str>| Seen {
            event: Some(event.into()),
            bytes_up: up,
            bytes_down: 1,
            limit: limit.map(str::to_string),
        };
        counters.count(&seen("tunnel.opened", 0, None));
        counters.count(&seen("tunnel.closed", 100, None));
        counters.count(&seen("tunnel.closed", 50, None));
        counters.count(&seen("auth.refused", 0, None));
        counters.count(&seen("connection.refused", 0, Some("penalty")));
        counters.count(&seen("connection.accepted", 0, None));
        let t = counters.totals();
        assert_eq!((t.tunnels_opened, t.bytes_up, t.bytes_down, t.logins_refused), (1, 150, 2, 1));
        assert_eq!(t.refused, [0, 0, 0, 1, 0]);
        assert_eq!(t.since(&t), Totals::default());
    }
}
