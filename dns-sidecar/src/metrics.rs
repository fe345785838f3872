//! CloudWatch metrics without an agent: once per `--metrics-interval` one
//! Embedded Metric Format record in the log (`bastion_common::emf`), under
//! the dimension `Bastion` = the record name (bastion-sshd's `--name` in the
//! stack): records published, drift repaired, errors.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bastion_common::emf::{self, Metric};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

static PUBLISHED: AtomicU64 = AtomicU64::new(0);
static REPAIRED: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);

/// A record was written (at start, or to repair drift).
pub fn published() {
    PUBLISHED.fetch_add(1, Ordering::Relaxed);
}

/// A reconcile found the record changed under us and wrote it back.
pub fn repaired() {
    REPAIRED.fetch_add(1, Ordering::Relaxed);
}

/// Counts every ERROR event as an error, whichever call site logged it.
pub struct ErrorLayer;

impl<S: Subscriber> Layer<S> for ErrorLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() == Level::ERROR {
            ERRORS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn totals() -> [u64; 3] {
    [PUBLISHED.load(Ordering::Relaxed), REPAIRED.load(Ordering::Relaxed), ERRORS.load(Ordering::Relaxed)]
}

/// The record for the counts since the last one.
pub fn record(name: &str, at: SystemTime, delta: [u64; 3]) -> serde_json::Value {
    let metrics = [
        Metric::new("RecordsPublished", "Count", delta[0]),
        Metric::new("DriftRepaired", "Count", delta[1]),
        Metric::new("SidecarErrors", "Count", delta[2]),
    ];
    emf::record(at, &[("Bastion", name)], &metrics)
}

/// Writes a record every `interval`, one line under stderr's lock.
pub async fn run(name: String, interval: Duration) {
    let mut before = totals();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = totals();
        let delta = std::array::from_fn(|i| now[i].saturating_sub(before[i]));
        before = now;
        let line = format!("{}\n", record(&name, SystemTime::now(), delta));
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_carries_the_three_counts_under_the_record_name() {
        let r = record("bastion.example.com", SystemTime::now(), [1, 2, 3]);
        assert_eq!(r["Bastion"], "bastion.example.com");
        assert_eq!(
            (r["RecordsPublished"].as_u64(), r["DriftRepaired"].as_u64(), r["SidecarErrors"].as_u64()),
            (Some(1), Some(2), Some(3))
        );
        assert_eq!(r["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().unwrap().len(), 3);
    }
}
