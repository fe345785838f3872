//! CloudWatch Embedded Metric Format: a log line that CloudWatch Logs turns
//! into metrics, with no agent and no credentials
//! (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html).
//! bastion-sshd and dns-sidecar write one such record per metrics interval.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

/// The CloudWatch namespace of every metric the project writes.
pub const NAMESPACE: &str = "fargate-bastion";

/// One metric of a record: its name, its CloudWatch unit (`Count`, `Bytes`, `Percent`) and value.
#[derive(Debug, Clone)]
pub struct Metric<'a> {
    pub name: &'a str,
    pub unit: &'a str,
    pub value: Value,
}

impl<'a> Metric<'a> {
    pub fn new(name: &'a str, unit: &'a str, value: impl Into<Value>) -> Self {
        Self { name, unit, value: value.into() }
    }
}

/// One record: the metrics under one dimension set (`[("Bastion", name)]`), at `at`.
pub fn record(at: SystemTime, dimensions: &[(&str, &str)], metrics: &[Metric<'_>]) -> Value {
    let mut root = Map::new();
    for (name, value) in dimensions {
        root.insert((*name).to_string(), json!(value));
    }
    for m in metrics {
        root.insert(m.name.to_string(), m.value.clone());
    }
    let names: Vec<&str> = dimensions.iter().map(|(n, _)| *n).collect();
    let definitions: Vec<Value> = metrics.iter().map(|m| json!({"Name": m.name, "Unit": m.unit})).collect();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64,
            "CloudWatchMetrics": [{ "Namespace": NAMESPACE, "Dimensions": [names], "Metrics": definitions }]
        }),
    );
    Value::Object(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_record_names_its_dimensions_and_metrics_at_the_top_level() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let r = record(at, &[("Bastion", "b"), ("Limit", "penalty")], &[Metric::new("ConnectionsRefused", "Count", 2)]);
        assert_eq!(r["_aws"]["Timestamp"], 1_700_000_000_123u64);
        assert_eq!(r["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Bastion", "Limit"]]));
        assert_eq!(
            r["_aws"]["CloudWatchMetrics"][0]["Metrics"],
            json!([{"Name": "ConnectionsRefused", "Unit": "Count"}])
        );
        assert_eq!(
            (r["Bastion"].as_str(), r["Limit"].as_str(), r["ConnectionsRefused"].as_u64()),
            (Some("b"), Some("penalty"), Some(2))
        );
    }
}
