//! The Route 53 seam: read the record sets the sidecar cares about, send a
//! change batch, wait for INSYNC. Everything AWS-specific about Route 53
//! lives here; the decisions are in `ownership`.

use std::time::{Duration, Instant};

use aws_sdk_route53::Client;
use aws_sdk_route53::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_route53::types::{
    Change as SdkChange, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};
use tracing::info;

use crate::ownership::{Action, Change, RecordSet, RecordType, in_zone, normalize};

/// Why a Route 53 call failed, in the terms the caller acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// Route 53 refused the batch as a whole (InvalidChangeBatch): a DELETE
    /// did not match the current values, or a CREATE found the name taken.
    Conflict(String),
    /// A human must fix something: the zone, the permissions, the name.
    Fatal(String),
    /// Anything else (after the SDK's own retries).
    Other(String),
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::Conflict(m) | DnsError::Fatal(m) | DnsError::Other(m) => f.write_str(m),
        }
    }
}

/// Record sets per ListResourceRecordSets page (Route 53's maximum), and
/// the pages read for one name and type before giving up.
const PAGE: i32 = 300;
const MAX_PAGES: i32 = 20;

pub struct Zone {
    client: Client,
    /// `Z0123…` (a `/hostedzone/` prefix is accepted and stripped by the SDK).
    pub id: String,
    /// The zone's name (normalized), once `load_name` has read it: every
    /// name we write must lie inside it. Route 53 refuses a batch with a name
    /// outside the zone; emulators may not, so the rule is checked here too.
    pub name: Option<String>,
    /// The ARN partition, for the hints in permission errors.
    partition: &'static str,
}

fn sdk_type(t: RecordType) -> RrType {
    match t {
        RecordType::A => RrType::A,
        RecordType::Aaaa => RrType::Aaaa,
        RecordType::Txt => RrType::Txt,
    }
}

impl Zone {
    pub fn new(client: Client, id: String, partition: &'static str) -> Self {
        Self { client, id, name: None, partition }
    }

    /// Reads the zone's name (GetHostedZone).
    pub async fn load_name(&mut self) -> Result<String, DnsError> {
        let out =
            self.client.get_hosted_zone().id(&self.id).send().await.map_err(|e| self.classify("GetHostedZone", e))?;
        let name = out.hosted_zone().map(|z| normalize(z.name())).ok_or_else(|| {
            DnsError::Other(format!("route53:GetHostedZone on hostedzone/{}: the answer has no zone", self.id))
        })?;
        self.name = Some(name.clone());
        Ok(name)
    }

    /// Whether `name` lies inside the zone (true while the zone's name is unknown).
    pub fn contains(&self, name: &str) -> bool {
        self.name.as_deref().is_none_or(|zone| in_zone(&normalize(name), zone))
    }

    /// Classifies an SDK error: permissions and missing zones need a human.
    fn classify<E>(&self, operation: &str, error: aws_sdk_route53::error::SdkError<E>) -> DnsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let code = error.code().unwrap_or("").to_string();
        let message = error.message().unwrap_or("").to_string();
        let shown = format!("route53:{operation} on hostedzone/{}: {}", self.id, DisplayErrorContext(&error));
        match code.as_str() {
            "InvalidChangeBatch" => DnsError::Conflict(format!("{code}: {message}")),
            "NoSuchHostedZone" => DnsError::Fatal(format!(
                "hosted zone {} does not exist ({message}); check --hosted-zone-id / DNS_SIDECAR_HOSTED_ZONE_ID",
                self.id
            )),
            "AccessDenied" | "AccessDeniedException" | "UnrecognizedClientException" | "InvalidClientTokenId" => {
                DnsError::Fatal(format!(
                    "access denied for route53:{operation} on hostedzone/{} ({message}); the task role needs \
                     route53:{operation} on arn:{}:route53:::hostedzone/{} (see the README's IAM section)",
                    self.id, self.partition, self.id
                ))
            }
            "InvalidInput" => DnsError::Fatal(format!("{shown} (is --record-name inside the zone?)")),
            _ => DnsError::Other(shown),
        }
    }

    /// Every record set named `name` of type `rtype`, whatever its set
    /// identifier: who owns a name is decided over all of them (in
    /// multivalue mode each task has its own). Follows the pages while they
    /// stay on this name and type.
    pub async fn sets(&self, name: &str, rtype: RecordType) -> Result<Vec<RecordSet>, DnsError> {
        let name = normalize(name);
        let mut found = Vec::new();
        let mut start_identifier: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let out = self
                .client
                .list_resource_record_sets()
                .hosted_zone_id(&self.id)
                .start_record_name(&name)
                .start_record_type(sdk_type(rtype))
                .set_start_record_identifier(start_identifier.clone())
                .max_items(PAGE)
                .send()
                .await
                .map_err(|e| self.classify("ListResourceRecordSets", e))?;
            for set in out.resource_record_sets() {
                if normalize(set.name()) != name || set.r#type() != &sdk_type(rtype) {
                    continue;
                }
                found.push(RecordSet {
                    name: normalize(set.name()),
                    rtype,
                    ttl: set.ttl().unwrap_or(0),
                    values: set.resource_records().iter().map(|r| r.value().to_string()).collect(),
                    set_identifier: set.set_identifier().map(str::to_string),
                    multivalue: set.multi_value_answer().unwrap_or(false),
                });
            }
            let more_here = out.is_truncated()
                && out.next_record_name().map(normalize).as_deref() == Some(name.as_str())
                && out.next_record_type() == Some(&sdk_type(rtype));
            if !more_here {
                return Ok(found);
            }
            let next = out.next_record_identifier().map(str::to_string);
            if next.is_none() || next == start_identifier {
                return Err(DnsError::Other(format!(
                    "route53:ListResourceRecordSets on hostedzone/{}: the listing of {name} {rtype} is truncated but \
                     its next record identifier is {next:?}; cannot read the rest",
                    self.id
                )));
            }
            start_identifier = next;
        }
        Err(DnsError::Other(format!(
            "route53:ListResourceRecordSets on hostedzone/{}: more than {} record sets named {name} of type {rtype}; \
             not deciding ownership on part of them",
            self.id,
            MAX_PAGES * PAGE
        )))
    }

    /// Sends one change batch; returns the change id to wait on. A batch
    /// naming anything outside the zone is refused before it is sent.
    pub async fn apply(&self, changes: &[Change], comment: &str) -> Result<String, DnsError> {
        if let Some(change) = changes.iter().find(|c| !self.contains(&c.set.name)) {
            return Err(DnsError::Fatal(format!(
                "{} lies outside the hosted zone {} ({}): Route 53 would refuse the batch; not sending it",
                change.set.name,
                self.name.as_deref().unwrap_or("?"),
                self.id
            )));
        }
        let mut batch = ChangeBatch::builder().comment(comment);
        for change in changes {
            batch = batch.changes(to_sdk(change).map_err(DnsError::Other)?);
        }
        let batch = batch.build().map_err(|e| DnsError::Other(e.to_string()))?;
        let out = self
            .client
            .change_resource_record_sets()
            .hosted_zone_id(&self.id)
            .change_batch(batch)
            .send()
            .await
            .map_err(|e| self.classify("ChangeResourceRecordSets", e))?;
        Ok(out.change_info().map(|c| c.id().to_string()).unwrap_or_default())
    }

    /// Polls GetChange every `poll` until INSYNC or `timeout` (the SDK
    /// waiter's 30 s minimum delay is too slow for a container start).
    pub async fn wait_insync(&self, change: &str, poll: Duration, timeout: Duration) -> Result<Duration, DnsError> {
        let started = Instant::now();
        loop {
            let out = self.client.get_change().id(change).send().await.map_err(|e| self.classify("GetChange", e))?;
            if out.change_info().map(|c| c.status()) == Some(&ChangeStatus::Insync) {
                return Ok(started.elapsed());
            }
            if started.elapsed() + poll > timeout {
                return Err(DnsError::Other(format!("change {change} not INSYNC after {timeout:?}")));
            }
            info!(event = "route53.pending", change, "change {change} pending; checking again in {poll:?}");
            tokio::time::sleep(poll).await;
        }
    }
}

fn to_sdk(change: &Change) -> Result<SdkChange, String> {
    let set = &change.set;
    let mut rrset = ResourceRecordSet::builder().name(&set.name).r#type(sdk_type(set.rtype)).ttl(set.ttl);
    for value in &set.values {
        rrset = rrset.resource_records(ResourceRecord::builder().value(value).build().map_err(|e| e.to_string())?);
    }
    if let Some(id) = &set.set_identifier {
        rrset = rrset.set_identifier(id).multi_value_answer(set.multivalue);
    }
    let action = match change.action {
        Action::Create => ChangeAction::Create,
        Action::Delete => ChangeAction::Delete,
    };
    SdkChange::builder()
        .action(action)
        .resource_record_set(rrset.build().map_err(|e| e.to_string())?)
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::{Claim, Desired};

    /// A client that must never be used: the batch is refused before any request.
    fn offline_zone() -> Zone {
        let config = aws_sdk_route53::Config::builder()
            .behavior_version(aws_sdk_route53::config::BehaviorVersion::latest())
            .region(aws_sdk_route53::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .build();
        let mut zone = Zone::new(Client::from_conf(config), "Z1".into(), "aws");
        zone.name = Some("example.com.".into());
        zone
    }

    #[tokio::test]
    async fn a_batch_naming_anything_outside_the_zone_is_not_sent() {
        let zone = offline_zone();
        let claim = Claim::new("o", "t", std::time::UNIX_EPOCH);
        let apex = Desired::new("example.com", RecordType::A, vec!["203.0.113.7".into()], 60, claim, None);
        assert!(zone.contains(&apex.marker.name) && zone.contains("EXAMPLE.com"));
        let legacy = RecordSet { name: apex.legacy_marker_name(), ..apex.marker.clone() };
        let batch = [
            Change { action: Action::Create, set: apex.address.clone() },
            Change { action: Action::Create, set: legacy },
        ];
        match zone.apply(&batch, "test").await {
            Err(DnsError::Fatal(e)) => {
                assert!(e.contains("a-example.com. lies outside the hosted zone example.com. (Z1)"), "{e}");
                assert!(e.contains("not sending it"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}
