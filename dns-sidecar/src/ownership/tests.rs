use super::*;
use std::slice::from_ref;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

/// Our task (started at 1000 s), in simple mode.
fn desired(ip: &str) -> Desired {
    Desired::new(
        "Bastion.Example.com",
        RecordType::A,
        vec![ip.into()],
        60,
        Claim::new("prod/bastion", "task-me", at(1000)),
        None,
    )
}

/// Another task of our deployment, started at `started`.
fn sibling(id: &str, started: u64, ip: &str) -> Desired {
    Desired::new(
        "bastion.example.com.",
        RecordType::A,
        vec![ip.into()],
        60,
        Claim::new("prod/bastion", id, at(started)),
        None,
    )
}

fn set(name: &str, rtype: RecordType, value: &str) -> RecordSet {
    RecordSet { name: name.into(), rtype, ttl: 60, values: vec![value.into()], set_identifier: None, multivalue: false }
}

#[test]
fn names_and_markers() {
    let d = desired("203.0.113.7");
    assert_eq!(d.address.name, "bastion.example.com.");
    assert_eq!(d.marker.name, "_dns-sidecar-a.bastion.example.com.");
    assert_eq!(d.legacy_marker_name(), "a-bastion.example.com.");
    assert_eq!(
        d.marker.values,
        vec!["\"heritage=dns-sidecar,owner=prod/bastion,task=task-me,since=1970-01-01T00:16:40.000Z\""]
    );
    assert_eq!(owner_of(&d.marker).as_deref(), Some("prod/bastion"));
    assert_eq!(owner_of(&set("x.", RecordType::Txt, "\"v=spf1 -all\"")), None);
    let aaaa = Desired::new(
        "b.example.com.",
        RecordType::Aaaa,
        vec!["2001:db8::1".into()],
        60,
        Claim::new("o", "t", at(0)),
        None,
    );
    assert_eq!(aaaa.marker.name, "_dns-sidecar-aaaa.b.example.com.");
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
    let other_marker = set("a-bastion.example.com.", RecordType::Txt, "\"heritage=dns-sidecar,owner=staging/bastion\"");
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
    Desired::new(
        "bastion.example.com.",
        RecordType::A,
        vec![ip.into()],
        60,
        Claim::new(owner, id, at(1000)),
        Some(id.into()),
    )
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
        Plan::Apply { changes, why, .. } => {
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
        Plan::Apply { changes, why, .. } => {
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
    let d = Desired::new(
        "b.example.com",
        RecordType::A,
        vec!["203.0.113.7".into()],
        60,
        Claim::new("o", "task-1", at(0)),
        Some("task-1".into()),
    );
    let changes = d.cleanup();
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|c| c.action == Action::Delete && c.set.set_identifier.as_deref() == Some("task-1")));
    assert_eq!(changes[0].set.values, vec!["203.0.113.7"]);
}

#[test]
fn a_newer_task_takes_the_name_over_from_an_older_one_in_one_batch() {
    let older = sibling("task-old", 500, "203.0.113.7");
    let d = desired("203.0.113.8");
    match plan(&d, from_ref(&older.address), from_ref(&older.marker), false) {
        Plan::Apply { changes, why, takeover } => {
            assert_eq!(
                changes,
                vec![
                    Change { action: Action::Delete, set: older.address.clone() },
                    Change { action: Action::Delete, set: older.marker.clone() },
                    Change { action: Action::Create, set: d.address.clone() },
                    Change { action: Action::Create, set: d.marker.clone() },
                ]
            );
            assert_eq!(takeover, Some(older.claim.clone()));
            assert!(why.contains("taking bastion.example.com. over from task task-old of prod/bastion"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // The same start time: the task id decides, the same way on both sides.
    let tie = sibling("task-a", 1000, "203.0.113.7");
    assert!(matches!(plan(&d, from_ref(&tie.address), from_ref(&tie.marker), false), Plan::Apply { .. }));
}

#[test]
fn an_older_task_stands_by_while_a_newer_one_holds_the_name() {
    let newer = sibling("task-new", 2000, "203.0.113.9");
    let d = desired("203.0.113.8");
    match plan(&d, from_ref(&newer.address), from_ref(&newer.marker), false) {
        Plan::StandBy { holder, why } => {
            assert_eq!(holder, newer.claim);
            assert!(why.contains("standing by"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // Even with --force: force is for other owners, never for our own newer task.
    assert!(matches!(plan(&d, from_ref(&newer.address), from_ref(&newer.marker), true), Plan::StandBy { .. }));
    // Once the newer task has deleted its record (it stopped), the name is free again.
    assert!(matches!(plan(&d, &[], &[], false), Plan::Apply { takeover: None, .. }));
}

#[test]
fn a_record_an_older_version_wrote_is_taken_over_and_its_marker_removed() {
    // What dns-sidecar before 0.2 wrote: `a-<name>`, owner only.
    let legacy = set("a-bastion.example.com.", RecordType::Txt, "\"heritage=dns-sidecar,owner=prod/bastion\"");
    let old = set("bastion.example.com.", RecordType::A, "203.0.113.7");
    let d = desired("203.0.113.8");
    match plan(&d, from_ref(&old), from_ref(&legacy), false) {
        Plan::Apply { changes, takeover, .. } => {
            assert_eq!(
                changes,
                vec![
                    Change { action: Action::Delete, set: old.clone() },
                    Change { action: Action::Delete, set: legacy.clone() },
                    Change { action: Action::Create, set: d.address.clone() },
                    Change { action: Action::Create, set: d.marker.clone() },
                ]
            );
            assert_eq!(takeover.and_then(|c| c.task), None);
        }
        other => panic!("{other:?}"),
    }
    // Another owner's legacy marker is still someone else's name.
    let theirs = set("a-bastion.example.com.", RecordType::Txt, "\"heritage=dns-sidecar,owner=staging/bastion\"");
    assert!(
        matches!(plan(&d, from_ref(&old), from_ref(&theirs), false), Plan::Refuse(r) if r.contains("staging/bastion"))
    );
    // Our record, up to date, with a legacy marker left beside ours: only that goes.
    let markers = [d.marker.clone(), legacy.clone()];
    match plan(&d, from_ref(&d.address), &markers, false) {
        Plan::Apply { changes, .. } => assert_eq!(changes, vec![Change { action: Action::Delete, set: legacy }]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn our_own_marker_with_another_start_time_is_rewritten() {
    // The same task, its sidecar started again (a container restart).
    let earlier = Desired::new(
        "bastion.example.com.",
        RecordType::A,
        vec!["203.0.113.8".into()],
        60,
        Claim::new("prod/bastion", "task-me", at(900)),
        None,
    );
    let d = desired("203.0.113.8");
    match plan(&d, from_ref(&earlier.address), from_ref(&earlier.marker), false) {
        Plan::Apply { changes, takeover, .. } => {
            assert_eq!(takeover, None);
            assert_eq!(
                changes,
                vec![
                    Change { action: Action::Delete, set: earlier.marker.clone() },
                    Change { action: Action::Create, set: d.marker.clone() },
                ]
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn names_are_checked_against_the_zone() {
    assert!(in_zone("example.com.", "example.com."));
    assert!(in_zone("_dns-sidecar-a.example.com.", "example.com."));
    assert!(in_zone("bastion.eu.example.com.", "example.com."));
    assert!(!in_zone("a-example.com.", "example.com."));
    assert!(!in_zone("badexample.com.", "example.com."));
    assert!(!in_zone("example.org.", "example.com."));
    // The marker of any name in the zone is in the zone; the legacy one is not, at the apex.
    let apex =
        Desired::new("example.com", RecordType::A, vec!["203.0.113.7".into()], 60, Claim::new("o", "t", at(0)), None);
    assert!(in_zone(&apex.marker.name, "example.com."));
    assert!(!in_zone(&apex.legacy_marker_name(), "example.com."));
}
