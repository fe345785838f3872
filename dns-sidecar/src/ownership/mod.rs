//! Ownership of a DNS name, as its own small concern (the idea of
//! external-dns's TXT registry): below the address record sits a TXT
//! marker saying who wrote it (`claim`). This module decides which change
//! batch to send; it knows nothing of AWS, so every rule is unit-tested here.
//!
//! Route 53 applies a batch atomically and a DELETE must match the current
//! values exactly, so `DELETE old + CREATE new` is a compare-and-swap: if
//! someone changed the record since we read it, the whole batch fails and
//! nothing is clobbered.

mod claim;

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;

pub use claim::{Claim, check_id, legacy_marker_name, marker_name};

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
    /// What the marker says: who we are.
    pub claim: Claim,
}

impl Desired {
    /// `name` (any case, dot optional), an address record type, its values,
    /// and who we are. `set_identifier` makes it one task's record among
    /// several (multivalue answer).
    pub fn new(
        name: &str,
        rtype: RecordType,
        values: Vec<String>,
        ttl: i64,
        claim: Claim,
        set_identifier: Option<String>,
    ) -> Self {
        let name = normalize(name);
        let multivalue = set_identifier.is_some();
        Desired {
            marker: RecordSet {
                name: marker_name(&name, rtype),
                rtype: RecordType::Txt,
                ttl,
                values: vec![claim.marker_value()],
                set_identifier: set_identifier.clone(),
                multivalue,
            },
            address: RecordSet { name, rtype, ttl, values, set_identifier, multivalue },
            claim,
        }
    }

    /// Where versions before 0.2 put the marker (read, and deleted on takeover).
    pub fn legacy_marker_name(&self) -> String {
        legacy_marker_name(&self.address.name, self.address.rtype)
    }

    /// The batch that removes exactly what we wrote (both records at once).
    pub fn cleanup(&self) -> Vec<Change> {
        vec![
            Change { action: Action::Delete, set: self.address.clone() },
            Change { action: Action::Delete, set: self.marker.clone() },
        ]
    }
}

/// The claim a marker record makes, if it is a dns-sidecar marker.
pub fn claim_of(marker: &RecordSet) -> Option<Claim> {
    marker.values.iter().find_map(|v| Claim::parse(v))
}

/// The owner named by a marker TXT record, if it is a dns-sidecar marker.
pub fn owner_of(marker: &RecordSet) -> Option<String> {
    claim_of(marker).map(|c| c.owner)
}

/// Whether `name` lies inside the zone `zone` (both normalized): the zone
/// apex or a name below it. Route 53 refuses a batch with any other name.
pub fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.strip_suffix(zone).is_some_and(|head| head.ends_with('.'))
}

/// What to do about one address record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The zone already says what we want.
    UpToDate,
    /// Send these changes, in one batch. `takeover` names the older task of
    /// our deployment whose record they replace.
    Apply { changes: Vec<Change>, why: String, takeover: Option<Claim> },
    /// The name belongs to someone else: do not touch it.
    Refuse(String),
    /// A newer task of our own deployment holds the name (a rolling
    /// deploy): leave it, and do not delete it when we stop.
    StandBy { holder: Claim, why: String },
}

/// Decides the change batch for `desired`, given what the zone holds now:
/// every record set of the address type at the record name (`addresses`)
/// and every TXT set at the marker names, this version's and the legacy one
/// (`markers`), whatever their set identifiers.
///
/// Ownership is a property of the name, not of one set identifier: in
/// multivalue mode each task has its own slot (set identifier), and a slot
/// that is free says nothing about who holds the others. So every set at the
/// name must be ours: a marker naming our owner, or an address record beside
/// (same set identifier) such a marker. Other tasks of the same owner keep
/// their slots; anything else refuses the whole name, in every slot, as
/// simple mode refuses one record someone else owns.
///
/// Within our owner, the newest task holds a slot: we take it over from an
/// older task (a rolling deploy starts the new task first) and stand by
/// while a newer one holds it.
pub fn plan(desired: &Desired, addresses: &[RecordSet], markers: &[RecordSet], force: bool) -> Plan {
    let owner = &desired.claim.owner;
    let ours = |marker: &RecordSet| owner_of(marker).as_ref() == Some(owner);
    let marked = |slot: Option<&str>| markers.iter().any(|m| m.set_identifier.as_deref() == slot && ours(m));
    let slot = desired.address.set_identifier.as_deref();
    let foreign: Vec<&RecordSet> = addresses
        .iter()
        .filter(|a| !marked(a.set_identifier.as_deref()))
        .chain(markers.iter().filter(|m| !ours(m)))
        .collect();
    let address = addresses.iter().find(|a| a.set_identifier.as_deref() == slot);
    let slot_markers: Vec<&RecordSet> =
        markers.iter().filter(|m| m.set_identifier.as_deref() == slot && ours(m)).collect();
    let others = addresses.iter().filter(|a| a.set_identifier.as_deref() != slot).count();
    if foreign.is_empty() {
        return own_slot(desired, &slot_markers, address, others);
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
    let mut takeover = None;
    if let Plan::Apply { changes: ours, takeover: older, .. } = own_slot(desired, &slot_markers, address, others) {
        changes.extend(ours);
        takeover = older;
    }
    Plan::Apply { changes, why: format!("--force: taking over; {what}"), takeover }
}

/// Our own slot, once nothing at the name belongs to anyone else:
/// `markers` are our owner's markers in it (this version's and legacy),
/// `address` is the record there, `others` counts the records of our other
/// tasks (multivalue) beside it.
fn own_slot(desired: &Desired, markers: &[&RecordSet], address: Option<&RecordSet>, others: usize) -> Plan {
    let delete = |set: &RecordSet| Change { action: Action::Delete, set: set.clone() };
    let create = |set: &RecordSet| Change { action: Action::Create, set: set.clone() };
    let me = &desired.claim;
    let Some(holder) = markers.iter().filter_map(|m| claim_of(m)).max_by(|a, b| a.age_order(b)) else {
        // No marker of ours: the name is free (a record without one would be foreign).
        return Plan::Apply {
            changes: vec![create(&desired.address), create(&desired.marker)],
            why: if others == 0 {
                "the name is free: creating the record and its ownership marker".into()
            } else {
                format!("the name holds {others} other record(s) of ours: adding this task's record and its marker")
            },
            takeover: None,
        };
    };
    let takeover = (!holder.same_task(me)).then_some(holder.clone());
    if takeover.is_some() && holder.age_order(me) == Ordering::Greater {
        return Plan::StandBy {
            why: format!(
                "{} is held by {holder}, which started after us ({me}): a newer task of this deployment took it                  over; standing by, and leaving it when we stop",
                desired.address.name
            ),
            holder,
        };
    }
    // Ours, or an older task's of our deployment: converge on exactly our
    // record and our marker, in one batch (deletes first: a DELETE that no
    // longer matches fails the whole batch, so nothing newer is clobbered).
    let (mut deletes, mut creates) = (Vec::new(), Vec::new());
    let mut why = None;
    match address {
        Some(current) if current.values == desired.address.values && current.ttl == desired.address.ttl => {}
        Some(current) => {
            deletes.push(delete(current));
            creates.push(create(&desired.address));
            why = Some(format!("we own the record; replacing {current}"));
        }
        None => {
            creates.push(create(&desired.address));
            why = Some("our ownership marker is there but the record is gone: recreating it".to_string());
        }
    }
    let same_marker = |m: &RecordSet| {
        m.name == desired.marker.name && m.values == desired.marker.values && m.ttl == desired.marker.ttl
    };
    for marker in markers.iter().filter(|m| !same_marker(m)) {
        deletes.push(delete(marker));
    }
    if !markers.iter().any(|m| same_marker(m)) {
        creates.push(create(&desired.marker));
    }
    if deletes.is_empty() && creates.is_empty() {
        return Plan::UpToDate;
    }
    let why = match &takeover {
        Some(older) => format!("taking {} over from {older}, an older task of this deployment", desired.address.name),
        None => why.unwrap_or_else(|| "updating our ownership marker".into()),
    };
    deletes.extend(creates);
    Plan::Apply { changes: deletes, why, takeover }
}

#[cfg(test)]
mod tests;
