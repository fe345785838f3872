//! Who wrote a record: the TXT ownership marker's name and value.
//!
//! The marker of `<name>` is `_dns-sidecar-<type>.<name>`: a name *below*
//! the record, so it lies inside the zone whatever the record is, a zone
//! apex included. Versions before 0.2 wrote `<type>-<name>` (external-dns's
//! naming), which for an apex lies outside the zone, where Route 53 refuses
//! it. Those markers are still read, so that an upgrade neither orphans nor
//! clobbers a record an older task wrote, and they are deleted when a task
//! of this version takes the record over.
//!
//! The value names the owner (the deployment: `<cluster>/<family>` by
//! default), the task and when its sidecar started:
//! `"heritage=dns-sidecar,owner=prod/bastion,task=e9028f8d…,since=2026-12-02T03:17:07.120Z"`.
//! Tasks of one owner are ordered by (since, task): during a rolling deploy
//! the newer task takes the name over and the older one stands by. A value
//! without `task` and `since` (what older versions wrote) is older than any.

use std::cmp::Ordering;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::RecordType;

const HERITAGE: &str = "heritage=dns-sidecar";

/// The marker name of a record, as this version writes it.
pub fn marker_name(name: &str, rtype: RecordType) -> String {
    format!("_dns-sidecar-{}.{name}", rtype.to_string().to_ascii_lowercase())
}

/// The marker name older versions wrote (`a-<name>`): read, never written.
pub fn legacy_marker_name(name: &str, rtype: RecordType) -> String {
    format!("{}-{name}", rtype.to_string().to_ascii_lowercase())
}

/// One task's claim on a name, as its marker says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub owner: String,
    /// The task id; `None` in markers older versions wrote.
    pub task: Option<String>,
    /// When the task's sidecar started, in whole milliseconds; `None` in old markers.
    pub since: Option<SystemTime>,
}

impl Claim {
    /// A claim of this version: every field present.
    pub fn new(owner: &str, task: &str, since: SystemTime) -> Self {
        let millis = since.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Claim {
            owner: owner.to_string(),
            task: Some(task.to_string()),
            since: Some(UNIX_EPOCH + Duration::from_millis(millis)),
        }
    }

    /// The TXT value (with its quotes, as Route 53 stores it).
    pub fn marker_value(&self) -> String {
        let mut value = format!("\"{HERITAGE},owner={}", self.owner);
        if let (Some(task), Some(since)) = (&self.task, self.since) {
            value.push_str(&format!(",task={task},since={}", humantime::format_rfc3339_millis(since)));
        }
        value.push('"');
        value
    }

    /// Reads a marker value; `None` when it is not a dns-sidecar marker.
    pub fn parse(value: &str) -> Option<Claim> {
        let rest = value.trim_matches('"').strip_prefix(HERITAGE)?.strip_prefix(",owner=")?;
        // Older versions wrote the owner alone, and did not restrict its
        // characters: only a well-formed task and time make a new claim.
        let new = rest.rsplit_once(",since=").and_then(|(head, since)| {
            let (owner, task) = head.rsplit_once(",task=")?;
            let since = humantime::parse_rfc3339(since).ok()?;
            (!task.is_empty() && !task.contains(',')).then(|| Claim {
                owner: owner.to_string(),
                task: Some(task.to_string()),
                since: Some(since),
            })
        });
        Some(new.unwrap_or_else(|| Claim { owner: rest.to_string(), task: None, since: None }))
    }

    /// Whether `other` is the same task as this one.
    pub fn same_task(&self, other: &Claim) -> bool {
        self.owner == other.owner && self.task.is_some() && self.task == other.task
    }

    /// The order of tasks of one owner: by start time, then task id; claims
    /// from older versions first.
    pub fn age_order(&self, other: &Claim) -> Ordering {
        (self.since, &self.task).cmp(&(other.since, &other.task))
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.task, self.since) {
            (Some(task), Some(since)) => {
                write!(f, "task {task} of {} (started {})", self.owner, humantime::format_rfc3339_millis(since))
            }
            _ => write!(f, "{} (a marker written by an older dns-sidecar)", self.owner),
        }
    }
}

/// Owner and task ids are written into the marker: keep them to characters
/// that cannot be mistaken for its separators or quotes. `what` names the
/// value in the error ("owner id", "task id").
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    let ok =
        !id.is_empty() && id.len() <= 200 && id.chars().all(|c| c.is_ascii_alphanumeric() || "._/:@+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {id:?} must be 1 to 200 characters of letters, digits and . _ / : @ + - (it is written \
             into the TXT ownership marker)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn marker_names_lie_below_the_record() {
        assert_eq!(marker_name("bastion.example.com.", RecordType::A), "_dns-sidecar-a.bastion.example.com.");
        assert_eq!(marker_name("example.com.", RecordType::Aaaa), "_dns-sidecar-aaaa.example.com.");
        assert_eq!(legacy_marker_name("bastion.example.com.", RecordType::A), "a-bastion.example.com.");
    }

    #[test]
    fn values_round_trip_and_old_ones_still_read() {
        let claim = Claim::new("prod/bastion", "e9028f8d", at(1_764_645_427) + Duration::from_micros(900_700));
        let value = claim.marker_value();
        assert_eq!(value, "\"heritage=dns-sidecar,owner=prod/bastion,task=e9028f8d,since=2025-12-02T03:17:07.900Z\"");
        assert_eq!(Claim::parse(&value), Some(claim));
        // What versions before 0.2 wrote.
        let old = Claim::parse("\"heritage=dns-sidecar,owner=prod/bastion\"").unwrap();
        assert_eq!(old, Claim { owner: "prod/bastion".into(), task: None, since: None });
        // An old owner id with a comma in it stays one owner.
        let odd = Claim::parse("\"heritage=dns-sidecar,owner=a,task=b\"").unwrap();
        assert_eq!(odd.owner, "a,task=b");
        assert_eq!(Claim::parse("\"heritage=dns-sidecar,owner=a,task=b,since=never\"").unwrap().task, None);
        assert_eq!(Claim::parse("\"v=spf1 -all\""), None);
        assert_eq!(Claim::parse("\"heritage=external-dns,external-dns/owner=x\""), None);
    }

    #[test]
    fn tasks_are_ordered_by_start_then_id_and_old_markers_come_first() {
        let old = Claim { owner: "o".into(), task: None, since: None };
        let a = Claim::new("o", "aaa", at(100));
        let b = Claim::new("o", "bbb", at(100));
        let c = Claim::new("o", "000", at(200));
        assert_eq!(old.age_order(&a), Ordering::Less);
        assert_eq!(a.age_order(&b), Ordering::Less);
        assert_eq!(c.age_order(&b), Ordering::Greater);
        assert!(a.same_task(&Claim::new("o", "aaa", at(999))));
        assert!(!old.same_task(&old));
    }

    #[test]
    fn owner_ids_are_checked() {
        assert!(check_id("owner id", "prod/bastion").is_ok());
        assert!(check_id("owner id", "arn:aws:ecs:eu-west-1:111122223333:cluster/x").is_ok());
        for bad in ["", "a,b", "a\"b", "a b", "a=b"] {
            let e = check_id("task id", bad).unwrap_err();
            assert!(e.starts_with("task id ") && e.contains("TXT ownership marker"), "{bad:?}: {e}");
        }
    }
}
