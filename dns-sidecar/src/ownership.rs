//! Ownership of a DNS name, as its own small concern (the idea of
//! external-dns's TXT registry): next to the address record sits a TXT
//! marker saying who wrote it. This module decides which change batch to
//! send; it knows nothing of AWS, so every rule is unit-tested here.
//!
//! Route 53 applies a batch atomically and a DELETE must match the current
//! values exactly, so `DELETE old + CREATE new` is a compare-and-swap: if
//! someone changed the record since we read it, the whole batch fails and
//! nothing is clobbered.

use std::fmt;

/// The record types the sidecar writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    A,
    Aaaa,
    Txt,
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
            RecordType::Txt => "TXT",
        })
    }
}

/// A resource record set, as Route 53 has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSet {
    /// Lower case, with the trailing dot.
    pub name: String,
    pub rtype: RecordType,
    pub ttl: i64,
    pub values: Vec<String>,
    /// Multivalue answer records: one set per task.
    pub set_identifier: Option<String>,
    pub multivalue: bool,
}

impl fmt::Display for RecordSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} [{}]", self.name, self.ttl, self.rtype, self.values.join(", "))?;
        if let Some(id) = &self.set_identifier {
            write!(f, " (set {id})")?;
        }
        Ok(())
    }
}

/// `bastion.example.com` → `bastion.example.com.` (lower case).
pub fn normalize(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    if lower.ends_with('.') { lower } else { format!("{lower}.") }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Delete,
}

/// One entry of a change batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub action: Action,
    pub set: RecordSet,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Create => "CREATE",
            Action::Delete => "DELETE",
        };
        write!(f, "{action} {}", self.set)
    }
}

/// What the sidecar wants in the zone for one address type: the address
/// record and its TXT ownership marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub address: RecordSet,
    pub marker: RecordSet,
}

const HERITAGE: &str = "heritage=dns-sidecar";

impl Desired {
    /// `name` (any case, dot optional), an address record type, its values,
    /// and who we are. `set_identifier` makes it one task's record among
    /// several (multivalue answer).
    pub fn new(
        name: &str,
        rtype: RecordType,
        values: Vec<String>,
        ttl: i64,
        owner: &str,
        set_identifier: Option<String>,
    ) -> Self {
        let name = normalize(name);
        let multivalue = set_identifier.is_some();
        let marker_name = format!("{}-{name}", rtype.to_string().to_ascii_lowercase());
        Desired {
            address: RecordSet { name, rtype, ttl, values, set_identifier: set_identifier.clone(), multivalue },
            marker: RecordSet {
                name: marker_name,
                rtype: RecordType::Txt,
                ttl,
                values: vec![marker_value(owner)],
                set_identifier,
                multivalue,
            },
        }
    }

    /// The batch that removes exactly what we wrote (both records at once).
    pub fn cleanup(&self) -> Vec<Change> {
        vec![
            Change { action: Action::Delete, set: self.address.clone() },
            Change { action: Action::Delete, set: self.marker.clone() },
        ]
    }
}

/// The TXT value that marks a record as ours: `"heritage=dns-sidecar,owner=<owner>"`.
pub fn marker_value(owner: &str) -> String {
    format!("\"{HERITAGE},owner={owner}\"")
}

/// The owner named by a marker TXT record, if it is a dns-sidecar marker.
pub fn owner_of(marker: &RecordSet) -> Option<String> {
    marker.values.iter().find_map(|v| {
        let v = v.trim_matches('"');
        let rest = v.strip_prefix(HERITAGE)?.strip_prefix(",owner=")?;
        Some(rest.to_string())
    })
}

/// What to do about one address record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The zone already says what we want.
    UpToDate,
    /// Send these changes, in one batch.
    Apply { changes: Vec<Change>, why: String },
    /// The name belongs to someone else: do not touch it.
    Refuse(String),
}

/// Decides the change batch for `desired`, given what the zone holds now
/// (`address` and `marker` with the same name, type and set identifier).
pub fn plan(desired: &Desired, address: Option<&RecordSet>, marker: Option<&RecordSet>, force: bool) -> Plan {
    let ours = marker.and_then(owner_of) == owner_of(&desired.marker);
    let create = |set: &RecordSet| Change { action: Action::Create, set: set.clone() };
    let delete = |set: &RecordSet| Change { action: Action::Delete, set: set.clone() };
    match (address, marker) {
        (None, None) => Plan::Apply {
            changes: vec![create(&desired.address), create(&desired.marker)],
            why: "the name is free: creating the record and its ownership marker".into(),
        },
        (Some(current), Some(_)) if ours => {
            if current.values == desired.address.values && current.ttl == desired.address.ttl {
                Plan::UpToDate
            } else {
                Plan::Apply {
                    changes: vec![delete(current), create(&desired.address)],
                    why: format!("we own the record; replacing {current}"),
                }
            }
        }
        (None, Some(_)) if ours => Plan::Apply {
            changes: vec![create(&desired.address)],
            why: "our ownership marker is there but the record is gone: recreating it".into(),
        },
        (address, marker) => {
            let holder = match marker.and_then(owner_of) {
                Some(owner) => format!("owned by {owner:?}"),
                None if marker.is_some() => "with a TXT record at the marker name that is not ours".into(),
                None => "with no ownership marker (written by someone else)".into(),
            };
            let current: Vec<String> = address.into_iter().chain(marker).map(|s| s.to_string()).collect();
            let what = format!("{} exists {holder}: {}", desired.address.name, current.join("; "));
            if !force {
                return Plan::Refuse(format!("{what}; not touching it (--force would take it over)"));
            }
            let mut changes: Vec<Change> = address.into_iter().chain(marker).map(delete).collect();
            changes.push(create(&desired.address));
            changes.push(create(&desired.marker));
            Plan::Apply { changes, why: format!("--force: taking over; {what}") }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(ip: &str) -> Desired {
        Desired::new("Bastion.Example.com", RecordType::A, vec![ip.into()], 60, "prod/bastion", None)
    }

    fn set(name: &str, rtype: RecordType, value: &str) -> RecordSet {
        RecordSet {
            name: name.into(),
            rtype,
            ttl: 60,
            values: vec![value.into()],
            set_identifier: None,
            multivalue: false,
        }
    }

    #[test]
    fn names_and_markers() {
        let d = desired("203.0.113.7");
        assert_eq!(d.address.name, "bastion.example.com.");
        assert_eq!(d.marker.name, "a-bastion.example.com.");
        assert_eq!(d.marker.values, vec!["\"heritage=dns-sidecar,owner=prod/bastion\""]);
        assert_eq!(owner_of(&d.marker).as_deref(), Some("prod/bastion"));
        assert_eq!(owner_of(&set("x.", RecordType::Txt, "\"v=spf1 -all\"")), None);
        let aaaa = Desired::new("b.example.com.", RecordType::Aaaa, vec!["2001:db8::1".into()], 60, "o", None);
        assert_eq!(aaaa.marker.name, "aaaa-b.example.com.");
    }

    #[test]
    fn a_free_name_is_created_with_its_marker_in_one_batch() {
        let d = desired("203.0.113.7");
        match plan(&d, None, None, false) {
            Plan::Apply { changes, .. } => {
                assert_eq!(changes.len(), 2);
                assert!(changes.iter().all(|c| c.action == Action::Create));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn our_record_is_replaced_by_compare_and_swap() {
        let d = desired("203.0.113.8");
        let old = set("bastion.example.com.", RecordType::A, "203.0.113.7");
        match plan(&d, Some(&old), Some(&d.marker), false) {
            Plan::Apply { changes, .. } => assert_eq!(
                changes,
                vec![
                    Change { action: Action::Delete, set: old.clone() },
                    Change { action: Action::Create, set: d.address.clone() }
                ]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(plan(&d, Some(&d.address), Some(&d.marker), false), Plan::UpToDate);
        // A changed TTL is drift too.
        let mut ttl = d.address.clone();
        ttl.ttl = 300;
        assert!(matches!(plan(&d, Some(&ttl), Some(&d.marker), false), Plan::Apply { .. }));
        // Our marker alone: the record is recreated.
        assert!(matches!(plan(&d, None, Some(&d.marker), false), Plan::Apply { changes, .. } if changes.len() == 1));
    }

    #[test]
    fn someone_elses_record_is_never_touched_without_force() {
        let d = desired("203.0.113.8");
        let theirs = set("bastion.example.com.", RecordType::A, "198.51.100.1");
        let other_marker =
            set("a-bastion.example.com.", RecordType::Txt, "\"heritage=dns-sidecar,owner=staging/bastion\"");
        for (address, marker) in [
            (Some(&theirs), None),
            (Some(&theirs), Some(&other_marker)),
            (None, Some(&other_marker)),
            (Some(&theirs), Some(&set("a-bastion.example.com.", RecordType::Txt, "\"hello\""))),
        ] {
            match plan(&d, address, marker, false) {
                Plan::Refuse(reason) => {
                    assert!(reason.contains("bastion.example.com. exists"), "{reason}");
                    assert!(reason.contains("not touching it"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
        match plan(&d, Some(&theirs), Some(&other_marker), true) {
            Plan::Apply { changes, .. } => {
                assert_eq!(changes.iter().filter(|c| c.action == Action::Delete).count(), 2);
                assert_eq!(changes.iter().filter(|c| c.action == Action::Create).count(), 2);
            }
            other => panic!("{other:?}"),
        }
        let refused = plan(&d, Some(&theirs), Some(&other_marker), false);
        assert!(
            matches!(refused, Plan::Refuse(r) if r.contains("owned by \"staging/bastion\"") && r.contains("198.51.100.1"))
        );
    }

    #[test]
    fn cleanup_deletes_exactly_what_was_written() {
        let d =
            Desired::new("b.example.com", RecordType::A, vec!["203.0.113.7".into()], 60, "o", Some("task-1".into()));
        let changes = d.cleanup();
        assert_eq!(changes.len(), 2);
        assert!(
            changes.iter().all(|c| c.action == Action::Delete && c.set.set_identifier.as_deref() == Some("task-1"))
        );
        assert_eq!(changes[0].set.values, vec!["203.0.113.7"]);
    }
}
