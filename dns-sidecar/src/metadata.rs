//! The ECS task metadata endpoint v4 (`${ECS_CONTAINER_METADATA_URI_V4}/task`).
//! Parsed leniently: AWS adds fields, so unknown ones are ignored and all
//! but the networks are optional.
//!
//! Pure parsing, on `std`, `serde` and `serde_json` only: the fuzz targets
//! (tests/fuzz/fuzz_targets/metadata.rs) include this file by path. Fetching
//! it is in `endpoint`.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    /// `arn:aws:ecs:eu-west-1:111122223333:cluster/prod`.
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(rename = "TaskARN", default)]
    pub task_arn: Option<String>,
    #[serde(default)]
    pub family: Option<String>,
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Container {
    #[serde(default)]
    pub networks: Vec<Network>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Network {
    #[serde(rename = "IPv4Addresses", default)]
    pub ipv4_addresses: Vec<String>,
    #[serde(rename = "IPv6Addresses", default)]
    pub ipv6_addresses: Vec<String>,
    /// The MAC address of the task's network interface: it tells that
    /// interface apart from others with the same private IP (VPCs with
    /// overlapping CIDRs in one account and region).
    #[serde(rename = "MACAddress", default)]
    pub mac_address: Option<String>,
}

impl Task {
    pub fn parse(json: &str) -> Result<Self, String> {
        serde_json::from_str(json).map_err(|e| format!("task metadata is not the expected JSON: {e}"))
    }

    /// All containers of an awsvpc task share one network interface: the first address found.
    fn networks(&self) -> impl Iterator<Item = &Network> {
        self.containers.iter().flat_map(|c| c.networks.iter())
    }

    pub fn private_ipv4(&self) -> Option<Ipv4Addr> {
        self.networks().flat_map(|n| n.ipv4_addresses.iter()).find_map(|a| a.parse().ok())
    }

    /// The MAC address of the network that carries the private IPv4, lower case.
    pub fn mac_address(&self) -> Option<String> {
        self.networks()
            .find(|n| n.ipv4_addresses.iter().any(|a| a.parse::<Ipv4Addr>().is_ok()))
            .and_then(|n| n.mac_address.as_deref())
            .map(|m| m.trim().to_ascii_lowercase())
            .filter(|m| !m.is_empty())
    }

    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.networks().flat_map(|n| n.ipv6_addresses.iter()).find_map(|a| a.parse().ok())
    }

    /// `prod` from the cluster ARN (or the cluster as given).
    pub fn cluster_name(&self) -> Option<&str> {
        self.cluster.as_deref().map(|c| c.rsplit('/').next().unwrap_or(c))
    }

    /// The task id: the last part of the task ARN.
    pub fn task_id(&self) -> Option<&str> {
        self.task_arn.as_deref().and_then(|a| a.rsplit('/').next())
    }

    /// The default owner id: `<cluster>/<family>`.
    pub fn default_owner(&self) -> Option<String> {
        Some(format!("{}/{}", self.cluster_name()?, self.family.as_deref()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented Fargate v4 `/task` example, abridged, with a field AWS might add.
    pub const SAMPLE: &str = r#"{"Cluster":"arn:aws:ecs:us-west-2:111122223333:cluster/default",
     "TaskARN":"arn:aws:ecs:us-west-2:111122223333:task/default/e9028f8d5d8e4f258373e7b93ce9a3c3",
     "Family":"curltest","Revision":"3","DesiredStatus":"RUNNING","KnownStatus":"RUNNING",
     "Limits":{"CPU":0.25,"Memory":512},"AvailabilityZone":"us-west-2a","SomeNewField":{"x":1},
     "Containers":[{"DockerId":"e9028f8d-2495160603","Name":"curl","Labels":{"a":"b"},
       "Networks":[{"NetworkMode":"awsvpc","IPv4Addresses":["192.0.2.3"],
         "IPv6Addresses":["2001:dB8:10b:1a00:32bf:a372:d80f:e958"],"AttachmentIndex":0,
         "MACAddress":"02:b7:20:19:72:39","IPv4SubnetCIDRBlock":"192.0.2.0/24"}]}],
     "LaunchType":"FARGATE"}"#;

    #[test]
    fn the_documented_sample_parses() {
        let task = Task::parse(SAMPLE).unwrap();
        assert_eq!(task.private_ipv4(), Some(Ipv4Addr::new(192, 0, 2, 3)));
        assert_eq!(task.ipv6().unwrap().to_string(), "2001:db8:10b:1a00:32bf:a372:d80f:e958");
        assert_eq!(task.mac_address().as_deref(), Some("02:b7:20:19:72:39"));
        assert_eq!(task.cluster_name(), Some("default"));
        assert_eq!(task.task_id(), Some("e9028f8d5d8e4f258373e7b93ce9a3c3"));
        assert_eq!(task.default_owner().as_deref(), Some("default/curltest"));
    }

    #[test]
    fn missing_optional_fields_are_tolerated() {
        let task = Task::parse(r#"{"Containers":[{"Networks":[{"IPv4Addresses":["10.0.0.5"]}]}]}"#).unwrap();
        assert_eq!(task.private_ipv4(), Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(task.ipv6(), None);
        assert_eq!(task.mac_address(), None);
        assert_eq!(task.default_owner(), None);
        assert!(Task::parse("not json").unwrap_err().contains("not the expected JSON"));
    }
}
