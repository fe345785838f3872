//! The ECS task metadata endpoint v4 over HTTP, with retries; what it answers
//! is parsed by `metadata`.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::metadata::Task;

/// The log target these events had before fetching moved out of `metadata`:
/// JSON logs and `RUST_LOG` filters keep naming it.
const TARGET: &str = "dns_sidecar::metadata";

/// Fetches `${base}/task`, retrying (the endpoint may not be up yet when the
/// container starts) until `deadline` has passed.
pub async fn fetch(http: &reqwest::Client, base: &str, wait: Duration) -> Result<Task, String> {
    let url = format!("{}/task", base.trim_end_matches('/'));
    let deadline = Instant::now() + wait;
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = async {
            let response = http.get(&url).timeout(Duration::from_secs(5)).send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response.text().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("HTTP {status}"));
            }
            Ok(body)
        };
        match attempt.await {
            Ok(body) => {
                let task = Task::parse(&body)?;
                info!(target: TARGET, event = "metadata.read", task = task.task_arn.as_deref().unwrap_or("?"),
                    private_ipv4 = ?task.private_ipv4(), "task metadata read from {url}");
                return Ok(task);
            }
            Err(e) if Instant::now() + delay < deadline => {
                warn!(target: TARGET, event = "metadata.retry", error = %e,
                    "task metadata {url} not ready ({e}); retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(format!("task metadata {url} unavailable after {wait:?}: {e}")),
        }
    }
}
