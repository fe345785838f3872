//! dns-sidecar against AWS emulators on loopback (see `bastion_tests::aws`):
//! Route 53 from ministack, EC2 from moto (an ENI with an associated Elastic
//! IP), and a small real HTTP server for the ECS task metadata endpoint.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::thread;

use bastion_tests::aws::{Emulator, Metadata, create_zone, fixture, records};
use bastion_tests::sidecar::{Route53Proxy, sidecar_command, wait_event};
use bastion_tests::*;

const ZONE_NAME: &str = "example.test.";
const RECORD: &str = "bastion.example.test.";

fn a_values(r53: &Emulator, zone: &str) -> Vec<String> {
    let mut values: Vec<String> =
        records(r53, zone).into_iter().filter(|r| r.0 == RECORD && r.1 == "A").flat_map(|r| r.2).collect();
    values.sort();
    values
}

/// `dns-sidecar` pointed at the emulators, with a clean environment.
fn sidecar(r53: &str, zone: &str, metadata: Option<&Metadata>, ec2: Option<&str>, args: &[&str]) -> Command {
    sidecar_as("prod/bastion", r53, zone, metadata, ec2, args)
}

/// The same, for the deployment whose owner id is `owner`.
fn sidecar_as(
    owner: &str,
    r53: &str,
    zone: &str,
    metadata: Option<&Metadata>,
    ec2: Option<&str>,
    args: &[&str],
) -> Command {
    sidecar_command(owner, "bastion.example.test", r53, zone, metadata, ec2, args)
}

#[test]
fn a_free_name_is_published_and_deleted_on_sigterm() {
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    let mut cmd = sidecar(&r53.url, &zone, None, None, &["--address", "203.0.113.7"]);
    cmd.stdin(Stdio::null());
    let mut side = Proc::spawn(cmd, Stdio::null());
    wait_event(&side, "record.live");
    // ministack answers PENDING first: the sidecar polled until INSYNC.
    assert!(side.stderr().text().contains("\"event\":\"route53.pending\""), "{}", side.stderr().text());
    let recs = records(&r53, &zone);
    assert!(recs.contains(&(RECORD.into(), "A".into(), vec!["203.0.113.7".into()], None)), "{recs:?}");
    let marker = recs.iter().find(|r| r.0 == format!("_dns-sidecar-a.{RECORD}") && r.1 == "TXT").expect("marker");
    assert!(marker.2[0].starts_with("\"heritage=dns-sidecar,owner=prod/bastion,task=local-"), "{recs:?}");

    side.signal("TERM");
    let status = side.wait_exit(READY).expect("sidecar did not exit");
    assert_eq!(status.code(), Some(0), "{}", side.stderr().text());
    assert!(side.stderr().text().contains("\"event\":\"record.deleted\""));
    assert_eq!(records(&r53, &zone), vec![]);
}

#[test]
fn a_restart_with_a_new_address_replaces_our_record() {
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    for ip in ["203.0.113.7", "203.0.113.8"] {
        let out = sidecar(&r53.url, &zone, None, None, &["--address", ip, "--once"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(a_values(&r53, &zone), vec!["203.0.113.8"]);
}

#[test]
fn a_record_we_do_not_own_is_left_alone_and_the_sidecar_fails() {
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    fixture(&["create", &r53.url, &zone, RECORD, "A", "198.51.100.1"]);
    let out = sidecar(&r53.url, &zone, None, None, &["--address", "203.0.113.7", "--once"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing to touch bastion.example.test."), "{stderr}");
    assert!(stderr.contains("198.51.100.1"), "the error names the current value: {stderr}");
    assert_eq!(a_values(&r53, &zone), vec!["198.51.100.1"]);

    // --dry-run shows what --force would do, and sends nothing.
    let out =
        sidecar(&r53.url, &zone, None, None, &["--address", "203.0.113.7", "--force", "--dry-run"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("DELETE bastion.example.test. 300 A [198.51.100.1]"), "{stdout}");
    assert!(stdout.contains("CREATE bastion.example.test. 60 A [203.0.113.7]"), "{stdout}");
    assert_eq!(a_values(&r53, &zone), vec!["198.51.100.1"]);
}

#[test]
fn sigterm_after_a_newer_task_took_over_leaves_its_record() {
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    let old_args = ["--address", "203.0.113.7", "--task-id", "task-old"];
    let mut old = Proc::spawn(sidecar(&r53.url, &zone, None, None, &old_args), Stdio::null());
    wait_event(&old, "record.live");
    // The replacement task (same service, so same owner) publishes its address.
    let new_args = ["--address", "203.0.113.8", "--task-id", "task-new", "--once"];
    let out = sidecar(&r53.url, &zone, None, None, &new_args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    old.signal("TERM");
    let status = old.wait_exit(READY).expect("old sidecar did not exit");
    assert_eq!(status.code(), Some(0), "{}", old.stderr().text());
    let not_ours = wait_event(&old, "record.not_ours");
    assert!(not_ours["reason"].as_str().unwrap().contains("InvalidChangeBatch"), "{not_ours}");
    assert_eq!(a_values(&r53, &zone), vec!["203.0.113.8"], "the newer task's record was touched");
    assert!(records(&r53, &zone).iter().any(|r| r.1 == "TXT"), "the newer task's marker was deleted");
}

#[test]
fn multivalue_sidecars_each_own_and_delete_only_their_record() {
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    let m1 = Metadata::start("task1", "10.0.0.5", 0);
    let m2 = Metadata::start("task2", "10.0.0.6", 0);
    let args = ["--mode", "multivalue", "--address-source", "private"];
    let mut s1 = Proc::spawn(sidecar(&r53.url, &zone, Some(&m1), None, &args), Stdio::null());
    wait_event(&s1, "record.live");
    let mut s2 = Proc::spawn(sidecar(&r53.url, &zone, Some(&m2), None, &args), Stdio::null());
    wait_event(&s2, "record.live");
    assert_eq!(a_values(&r53, &zone), vec!["10.0.0.5", "10.0.0.6"]);
    let sets: Vec<Option<String>> = records(&r53, &zone).into_iter().filter(|r| r.1 == "A").map(|r| r.3).collect();
    assert!(sets.contains(&Some("task1".into())) && sets.contains(&Some("task2".into())), "{sets:?}");

    s1.signal("TERM");
    assert_eq!(s1.wait_exit(READY).and_then(|s| s.code()), Some(0), "{}", s1.stderr().text());
    assert_eq!(a_values(&r53, &zone), vec!["10.0.0.6"]);
    s2.signal("TERM");
    assert_eq!(s2.wait_exit(READY).and_then(|s| s.code()), Some(0));
    assert_eq!(records(&r53, &zone), vec![]);
}

#[test]
fn multivalue_refuses_a_name_another_owner_publishes() {
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    let args = ["--mode", "multivalue", "--address-source", "private", "--once"];
    // Another deployment (owner staging/bastion) publishes under the name first, as set "their-task".
    let theirs = Metadata::start("their-task", "10.0.1.5", 0);
    let out = sidecar_as("staging/bastion", &r53.url, &zone, Some(&theirs), None, &args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = records(&r53, &zone);
    let marker = format!("_dns-sidecar-a.{RECORD}");
    let staging = |r: &(String, String, Vec<String>, Option<String>), task: &str| {
        r.0 == marker
            && r.2[0].starts_with(&format!("\"heritage=dns-sidecar,owner=staging/bastion,task={task},since="))
            && r.3.as_deref() == Some(task)
    };
    assert!(before.contains(&(RECORD.into(), "A".into(), vec!["10.0.1.5".into()], Some("their-task".into()))));
    assert!(before.iter().any(|r| staging(r, "their-task")), "{before:?}");

    // Our task, set "task1": its own set identifier is free, the name is not.
    let ours = Metadata::start("task1", "10.0.0.5", 0);
    let out = sidecar(&r53.url, &zone, Some(&ours), None, &args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("\"event\":\"sidecar.error\""), "{stderr}");
    assert!(stderr.contains("refusing to touch bastion.example.test."), "{stderr}");
    assert!(stderr.contains("owned by \\\"staging/bastion\\\""), "the error names the owner: {stderr}");
    assert!(stderr.contains("10.0.1.5") && stderr.contains("set their-task"), "and the current record: {stderr}");
    assert!(!stderr.contains("\"event\":\"record.changing\""), "a change was sent: {stderr}");
    assert_eq!(records(&r53, &zone), before, "the zone changed");

    // --dry-run --force shows the takeover (their record and marker deleted), and sends nothing.
    let forced = ["--mode", "multivalue", "--address-source", "private", "--force", "--dry-run"];
    let out = sidecar(&r53.url, &zone, Some(&ours), None, &forced).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("DELETE bastion.example.test. 60 A [10.0.1.5] (set their-task)"), "{stdout}");
    assert!(stdout.contains("CREATE bastion.example.test. 60 A [10.0.0.5] (set task1)"), "{stdout}");
    assert_eq!(records(&r53, &zone), before, "--dry-run sent something");

    // A second task of the owner of the name, with its own set identifier, still joins it.
    let theirs2 = Metadata::start("their-task2", "10.0.1.6", 0);
    let out = sidecar_as("staging/bastion", &r53.url, &zone, Some(&theirs2), None, &args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(a_values(&r53, &zone), vec!["10.0.1.5", "10.0.1.6"]);
    let after = records(&r53, &zone);
    assert!(after.iter().any(|r| staging(r, "their-task2")), "{after:?}");
    assert!(after.iter().all(|r| !r.2.iter().any(|v| v.contains("prod/bastion"))), "{after:?}");
}

#[test]
fn the_public_ip_comes_from_the_tasks_network_interface() {
    let r53 = Emulator::ministack();
    let ec2 = Emulator::moto();
    let zone = create_zone(&r53, ZONE_NAME);
    let eni = fixture(&["eni", &ec2.url, "10.0.0.42"]);
    let public_ip = eni["public_ip"].as_str().unwrap().to_string();
    let meta = Metadata::with_mac("task-eni", "10.0.0.42", eni["mac"].as_str().unwrap());
    let out = sidecar(&r53.url, &zone, Some(&meta), Some(&ec2.url), &["--once"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(eni["interface"].as_str().unwrap()), "{stderr}");
    assert_eq!(a_values(&r53, &zone), vec![public_ip]);
}

#[test]
fn a_slow_metadata_endpoint_is_retried() {
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    let meta = Metadata::start("task-slow", "10.0.0.9", 3);
    let out = sidecar(&r53.url, &zone, Some(&meta), None, &["--address-source", "private", "--once"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(meta.requests.load(Ordering::SeqCst) >= 4);
    assert_eq!(a_values(&r53, &zone), vec!["10.0.0.9"]);
}

#[test]
fn a_garbage_checkip_answer_is_a_clear_error() {
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    let meta = Metadata::start("task-checkip", "10.0.0.9", 0);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let body = "<html>captive portal</html>";
            let _ =
                write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    let out =
        sidecar(&r53.url, &zone, Some(&meta), None, &["--address-source", "checkip", "--checkip-url", &url, "--once"])
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("which is not an IP address") && stderr.contains("captive portal"), "{stderr}");
    assert_eq!(records(&r53, &zone), vec![]);
}

#[test]
fn throttling_is_retried() {
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    let proxy = Route53Proxy::start(&r53.url, ZONE_NAME, 2);
    let out = sidecar(&proxy.url, &zone, None, None, &["--address", "203.0.113.7", "--once"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(proxy.batches.load(Ordering::SeqCst) >= 3, "the proxy saw no retry");
    assert_eq!(a_values(&r53, &zone), vec!["203.0.113.7"]);
}

#[test]
fn a_missing_zone_fails_fast_with_what_to_fix() {
    let r53 = Emulator::ministack();
    let out = sidecar(&r53.url, "ZNOSUCHZONE", None, None, &["--address", "203.0.113.7", "--once"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ZNOSUCHZONE") && stderr.contains("--hosted-zone-id"), "{stderr}");
}

#[test]
fn drift_is_repaired_under_the_same_ownership_rules() {
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    let mut cmd = sidecar(&r53.url, &zone, None, None, &["--address", "203.0.113.7", "--reconcile-interval", "1s"]);
    cmd.stdin(Stdio::null());
    let side = Proc::spawn(cmd, Stdio::null());
    wait_event(&side, "record.live");
    // Someone edits our record by hand; the marker still says it is ours.
    fixture(&["upsert", &r53.url, &zone, RECORD, "A", "198.51.100.99"]);
    let repaired = side
        .stderr()
        .wait_for(READY, |l| event(l).as_deref() == Some("record.changing") && l.contains("198.51.100.99"))
        .unwrap_or_else(|| panic!("drift not repaired:\n{}", side.stderr().text()));
    assert!(repaired.contains("replacing"), "{repaired}");
    let mut live = 0;
    let again = side.stderr().wait_for(READY, |l| {
        live += usize::from(event(l).as_deref() == Some("record.live"));
        live == 2
    });
    assert!(again.is_some(), "the repair never went live:\n{}", side.stderr().text());
    assert_eq!(a_values(&r53, &zone), vec!["203.0.113.7"]);
}

#[test]
fn an_interface_without_a_public_ip_is_waited_for_then_reported() {
    let r53 = Emulator::ministack();
    let ec2 = Emulator::moto();
    let zone = create_zone(&r53, ZONE_NAME);
    let eni = fixture(&["eni-private", &ec2.url, "10.0.0.77"]);
    let meta = Metadata::with_mac("task-private", "10.0.0.77", eni["mac"].as_str().unwrap());
    let out =
        sidecar(&r53.url, &zone, Some(&meta), Some(&ec2.url), &["--once", "--startup-timeout", "3s"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("\"event\":\"address.retry\""), "no retry: {stderr}");
    assert!(stderr.contains(&format!("{} has no public IP yet", eni["interface"].as_str().unwrap())), "{stderr}");
    assert!(stderr.contains("assignPublicIp"), "{stderr}");
    assert_eq!(records(&r53, &zone), vec![]);
}

#[test]
fn aaaa_publishes_the_tasks_ipv6_address_too() {
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    let meta = Metadata::start("task-v6", "10.0.0.8", 0);
    let mut side = Proc::spawn(
        sidecar(&r53.url, &zone, Some(&meta), None, &["--address-source", "private", "--aaaa"]),
        Stdio::null(),
    );
    let mut live = 0;
    let both = side.stderr().wait_for(READY, |l| {
        live += usize::from(event(l).as_deref() == Some("record.live"));
        live == 2
    });
    assert!(both.is_some(), "{}", side.stderr().text());
    let recs = records(&r53, &zone);
    assert!(recs.contains(&(RECORD.into(), "AAAA".into(), vec!["2001:db8:10b:1a00::7".into()], None)), "{recs:?}");
    assert!(recs.iter().any(|r| r.0 == format!("_dns-sidecar-aaaa.{RECORD}") && r.1 == "TXT"), "{recs:?}");
    assert_eq!(a_values(&r53, &zone), vec!["10.0.0.8"]);
    side.signal("TERM");
    assert_eq!(side.wait_exit(READY).and_then(|s| s.code()), Some(0));
    assert_eq!(records(&r53, &zone), vec![]);
}
