//! Ownership of a DNS name, as its own small concern (the idea of
//! external-dns's TXT registry): next to the address record sits a TXT
//! marker saying who wrote it. This module decides which change batch to
//! send; it knows nothing of AWS, so every rule is unit-tested here.
//!
//! Route 53 applies a batch atomically and a DELETE must match the current
//! values exactly, so `DELETE old + CREATE new` is a compare-and-swap: if
//! someone changed the record since we read it, the whole batch fails and
//! nothing is clobbered.

use std::collections::BTreeSet;
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

/// Decides the change batch for `desired`, given what the zone holds now:
/// every record set of the address type at the record name (`addresses`)
/// and every TXT set at the marker name (`markers`), whatever their set
/// identifiers.
///
/// Ownership is a property of the name, not of one set identifier: in
/// multivalue mode each task has its own slot (set identifier), and a slot
/// that is free says nothing about who holds the others. So every set at the
/// name must be ours: a marker naming our owner, or an address record beside
/// (same set identifier) such a marker. Other tasks of the same owner keep
/// their slots; anything else refuses the whole name, in every slot, as
/// simple mode refuses one record someone else owns.
pub fn plan(desired: &Desired, addresses: &[RecordSet], markers: &[RecordSet], force: bool) -> Plan {
    let owner = owner_of(&desired.marker);
    let ours = |marker: &RecordSet| owner_of(marker) == owner;
    let marked = |slot: Option<&str>| markers.iter().any(|m| m.set_identifier.as_deref() == slot && ours(m));
    let slot = desired.address.set_identifier.as_deref();
    let foreign: Vec<&RecordSet> = addresses
        .iter()
        .filter(|a| !marked(a.set_identifier.as_deref()))
        .chain(markers.iter().filter(|m| !ours(m)))
        .collect();
    let address = addresses.iter().find(|a| a.set_identifier.as_deref() == slot);
    let others = addresses.iter().filter(|a| a.set_identifier.as_deref() != slot).count();
    if foreign.is_empty() {
        return own_slot(desired, marked(slot), address, others);
    }

    let owners: BTreeSet<String> = foreign.iter().filter_map(|s| owner_of(s)).collect();
    let holder = if !owners.is_empty() {
        let owners: Vec<String> = owners.iter().map(|o| format!("{o:?}")).collect();
        format!("owned by {}", owners.join(", "))
    } else if foreign.iter().any(|s| s.rtype == RecordType::Txt) {
        "with a TXT record at the marker name that is not ours".into()
    } else {
        "with no ownership marker (written by someone else)".into()
    };
    let current: Vec<String> = foreign.iter().map(|s| s.to_string()).collect();
    let what = format!("{} exists {holder}: {}", desired.address.name, current.join("; "));
    if !force {
        return Plan::Refuse(format!("{what}; not touching it (--force would take it over)"));
    }
    // Taking over: delete exactly what is not ours (a compare-and-swap like
    // any DELETE), then put our slot right, all in one batch.
    let mut changes: Vec<Change> =
        foreign.iter().map(|s| Change { action: Action::Delete, set: (*s).clone() }).collect();
    if let Plan::Apply { changes: ours, .. } = own_slot(desired, marked(slot), address, others) {
        changes.extend(ours);
    }
    Plan::Apply { changes, why: format!("--force: taking over; {what}") }
}

/// Our own slot, once nothing at the name belongs to anyone else: `marked`
/// says our marker is in it, `address` is the record there (without our
/// marker it is not ours, and `plan` deletes it first under --force),
/// `others` counts the records of our other tasks (multivalue) beside it.
fn own_slot(desired: &Desired, marked: bool, address: Option<&RecordSet>, others: usize) -> Plan {
    let create = |set: &RecordSet| Change { action: Action::Create, set: set.clone() };
    match (marked, address) {
        (false, _) => Plan::Apply {
            changes: vec![create(&desired.address), create(&desired.marker)],
            why: if others == 0 {
                "the name is free: creating the record and its ownership marker".into()
            } else {
                format!("the name holds {others} other record(s) of ours: adding this task's record and its marker")
            },
        },
        (true, Some(current)) if current.values == desired.address.values && current.ttl == desired.address.ttl => {
            Plan::UpToDate
        }
        (true, Some(current)) => Plan::Apply {
            changes: vec![Change { action: Action::Delete, set: current.clone() }, create(&desired.address)],
            why: format!("we own the record; replacing {current}"),
        },
        (true, None) => Plan::Apply {
            changes: vec![create(&desired.address)],
            why: "our ownership marker is there but the record is gone: recreating it".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::slice::from_ref;

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
        match plan(&d, &[], &[], false) {
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
        let marker = [d.marker.clone()];
        match plan(&d, from_ref(&old), &marker, false) {
            Plan::Apply { changes, .. } => assert_eq!(
                changes,
                vec![
                    Change { action: Action::Delete, set: old.clone() },
                    Change { action: Action::Create, set: d.address.clone() }
                ]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(plan(&d, from_ref(&d.address), &marker, false), Plan::UpToDate);
        // A changed TTL is drift too.
        let mut ttl = d.address.clone();
        ttl.ttl = 300;
        assert!(matches!(plan(&d, &[ttl], &marker, false), Plan::Apply { .. }));
        // Our marker alone: the record is recreated.
        assert!(matches!(plan(&d, &[], &marker, false), Plan::Apply { changes, .. } if changes.len() == 1));
    }

    #[test]
    fn someone_elses_record_is_never_touched_without_force() {
        let d = desired("203.0.113.8");
        let theirs = set("bastion.example.com.", RecordType::A, "198.51.100.1");
        let other_marker =
            set("a-bastion.example.com.", RecordType::Txt, "\"heritage=dns-sidecar,owner=staging/bastion\"");
        for (address, marker) in [
            (Some(theirs.clone()), None),
            (Some(theirs.clone()), Some(other_marker.clone())),
            (None, Some(other_marker.clone())),
            (Some(theirs.clone()), Some(set("a-bastion.example.com.", RecordType::Txt, "\"hello\""))),
        ] {
            match plan(&d, address.as_slice(), marker.as_slice(), false) {
                Plan::Refuse(reason) => {
                    assert!(reason.contains("bastion.example.com. exists"), "{reason}");
                    assert!(reason.contains("not touching it"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
        let (theirs, other_marker) = ([theirs], [other_marker]);
        match plan(&d, &theirs, &other_marker, true) {
            Plan::Apply { changes, .. } => {
                assert_eq!(changes.iter().filter(|c| c.action == Action::Delete).count(), 2);
                assert_eq!(changes.iter().filter(|c| c.action == Action::Create).count(), 2);
            }
            other => panic!("{other:?}"),
        }
        let refused = plan(&d, &theirs, &other_marker, false);
        assert!(
            matches!(refused, Plan::Refuse(r) if r.contains("owned by \"staging/bastion\"") && r.contains("198.51.100.1"))
        );
    }

    /// One task's record and marker at the name, in multivalue mode.
    fn task(owner: &str, id: &str, ip: &str) -> Desired {
        Desired::new("bastion.example.com.", RecordType::A, vec![ip.into()], 60, owner, Some(id.into()))
    }

    #[test]
    fn multivalue_refuses_a_name_another_owner_holds_in_another_slot() {
        let d = task("prod/bastion", "task-y", "203.0.113.8");
        let theirs = task("staging/bastion", "task-x", "198.51.100.1");
        // Our slot (task-y) is free; the name is not.
        let refused = plan(&d, from_ref(&theirs.address), from_ref(&theirs.marker), false);
        match refused {
            Plan::Refuse(reason) => {
                assert!(reason.contains("bastion.example.com. exists owned by \"staging/bastion\""), "{reason}");
                assert!(reason.contains("198.51.100.1] (set task-x)"), "{reason}");
                assert!(reason.contains("not touching it (--force would take it over)"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Their marker alone, their record alone (no marker), or a TXT that is no marker: the same.
        let hello = RecordSet {
            set_identifier: Some("task-x".into()),
            ..set("a-bastion.example.com.", RecordType::Txt, "\"hello\"")
        };
        for (addresses, markers) in [
            (vec![], vec![theirs.marker.clone()]),
            (vec![theirs.address.clone()], vec![]),
            (vec![theirs.address.clone()], vec![hello]),
        ] {
            assert!(matches!(plan(&d, &addresses, &markers, false), Plan::Refuse(_)), "{addresses:?} {markers:?}");
        }
        // A foreign slot refuses even when ours is already published (a deployment that slipped in).
        let addresses = [d.address.clone(), theirs.address.clone()];
        let markers = [d.marker.clone(), theirs.marker.clone()];
        assert!(matches!(plan(&d, &addresses, &markers, false), Plan::Refuse(r) if r.contains("staging/bastion")));
        // Simple mode sees multivalue records someone else wrote, too.
        let simple = desired("203.0.113.8");
        assert!(matches!(plan(&simple, from_ref(&theirs.address), from_ref(&theirs.marker), false), Plan::Refuse(_)));
    }

    #[test]
    fn multivalue_tasks_of_the_same_owner_share_the_name() {
        let d = task("prod/bastion", "task-y", "203.0.113.8");
        let sibling = task("prod/bastion", "task-x", "203.0.113.7");
        match plan(&d, from_ref(&sibling.address), from_ref(&sibling.marker), false) {
            Plan::Apply { changes, why } => {
                assert_eq!(
                    changes,
                    vec![
                        Change { action: Action::Create, set: d.address.clone() },
                        Change { action: Action::Create, set: d.marker.clone() }
                    ]
                );
                assert!(why.contains("1 other record(s) of ours"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let addresses = [sibling.address.clone(), d.address.clone()];
        let markers = [d.marker.clone(), sibling.marker.clone()];
        assert_eq!(plan(&d, &addresses, &markers, false), Plan::UpToDate);
        // A sibling's orphaned marker is ours too.
        assert!(
            matches!(plan(&d, &[], from_ref(&sibling.marker), false), Plan::Apply { changes, .. } if changes.len() == 2)
        );
    }

    #[test]
    fn multivalue_force_deletes_only_the_foreign_sets() {
        let d = task("prod/bastion", "task-y", "203.0.113.8");
        let sibling = task("prod/bastion", "task-z", "203.0.113.9");
        let theirs = task("staging/bastion", "task-x", "198.51.100.1");
        let addresses = [sibling.address.clone(), theirs.address.clone()];
        let markers = [sibling.marker.clone(), theirs.marker.clone()];
        match plan(&d, &addresses, &markers, true) {
            Plan::Apply { changes, why } => {
                assert_eq!(
                    changes,
                    vec![
                        Change { action: Action::Delete, set: theirs.address.clone() },
                        Change { action: Action::Delete, set: theirs.marker.clone() },
                        Change { action: Action::Create, set: d.address.clone() },
                        Change { action: Action::Create, set: d.marker.clone() },
                    ]
                );
                assert!(why.starts_with("--force: taking over;"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // Already published: --force only deletes theirs.
        let addresses = [d.address.clone(), theirs.address.clone()];
        let markers = [d.marker.clone(), theirs.marker.clone()];
        match plan(&d, &addresses, &markers, true) {
            Plan::Apply { changes, .. } => assert_eq!(
                changes,
                vec![
                    Change { action: Action::Delete, set: theirs.address.clone() },
                    Change { action: Action::Delete, set: theirs.marker.clone() },
                ]
            ),
            other => panic!("{other:?}"),
        }
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
