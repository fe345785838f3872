//! Deploys never break the bastion's name: two dns-sidecars of one
//! deployment against Route 53 (ministack on loopback), as ECS runs them
//! during a rolling deploy with minimum healthy 100 % and maximum 200 %:
//! the new task starts, its sidecar takes the name over, the task turns
//! healthy one TTL later, then ECS stops the old task. ECS's scheduler cannot
//! run here; the test plays its part in that order, and the ECS task
//! metadata endpoint is the small real server of `bastion_tests::aws`.
//!
//! `old_tunnels_drain_…` adds two real bastion-sshd processes behind the
//! two sidecars (on 127.0.0.2 and 127.0.0.3) and a user who resolves the
//! name by reading the record, as a resolver with TTL 0 would.
//!
//! Every change batch goes through `Route53Proxy`, which refuses names
//! outside the zone as Route 53 does (ministack does not), and the test
//! checks that no written name lies outside it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bastion_tests::aws::{Emulator, Metadata, create_zone, fixture, fixture_command, records};
use bastion_tests::sidecar::{Route53Proxy, healthcheck, sidecar_command, wait_event};
use bastion_tests::*;
use serde_json::Value;

const ZONE_NAME: &str = "example.test.";
const RECORD: &str = "bastion.example.test.";

fn sidecar(r53: &str, zone: &str, metadata: &Metadata, args: &[&str]) -> Command {
    let mut cmd = sidecar_command("prod/bastion", RECORD, r53, zone, Some(metadata), None, args);
    cmd.args(["--address-source", "private"]);
    cmd
}

/// Polls `dns-sidecar healthcheck` until it passes (as ECS does, every few seconds).
fn wait_healthy(proc: &Proc) -> String {
    let deadline = Instant::now() + READY;
    loop {
        let (healthy, text) = healthcheck(proc);
        if healthy {
            return text;
        }
        assert!(Instant::now() < deadline, "never healthy: {text}\n{}", proc.stderr().text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_rolling_deploy_keeps_the_name_resolvable_and_ends_on_the_new_task() {
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    let proxy = Route53Proxy::start(&r53.url, ZONE_NAME, 0);

    // The running task. It reconciles every second (the default is 5 min), so
    // that its loop runs while both tasks are alive.
    let old_meta = Metadata::start("task-1-old", "10.0.0.5", 0);
    let mut old = Proc::spawn(sidecar(&proxy.url, &zone, &old_meta, &["--reconcile-interval", "1s"]), Stdio::null());
    wait_event(&old, "record.live");
    let (healthy, text) = healthcheck(&old);
    assert!(healthy && text.contains("published"), "{text}");

    // Read the record all through the deploy, as resolvers would.
    let sampler = Proc::spawn(fixture_command(&["sample", &r53.url, &zone, RECORD]), Stdio::null());
    assert!(sampler.stdout().wait_for(READY, |_| true).is_some(), "no sample: {}", sampler.stderr().text());

    // ECS starts the new task beside it (maximum 200 %). Its sidecar takes the
    // name over in one compare-and-swap batch.
    let new_meta = Metadata::start("task-2-new", "10.0.0.6", 0);
    let args = ["--reconcile-interval", "1s", "--handover-wait", "3s"];
    let mut new = Proc::spawn(sidecar(&proxy.url, &zone, &new_meta, &args), Stdio::null());
    let changing = wait_event(&new, "record.changing");
    let why = changing["message"].as_str().unwrap_or_default();
    assert!(why.contains("taking bastion.example.test. over from task task-1-old of prod/bastion"), "{changing}");
    wait_event(&new, "sidecar.handover");
    // Until one TTL (here --handover-wait) has passed, the new task is not
    // healthy: ECS keeps the old task, which resolvers may still hand out.
    let (healthy, text) = healthcheck(&new);
    assert!(!healthy && text.contains("settling"), "{text}");

    // The old task's loop sees the newer task: it stands by, stays healthy,
    // and never takes the name back.
    let standing_by = wait_event(&old, "sidecar.standing_by");
    assert!(standing_by["message"].as_str().unwrap_or_default().contains("task task-2-new"), "{standing_by}");
    let (healthy, text) = healthcheck(&old);
    assert!(healthy && text.contains("standing_by"), "{text}");

    // The new task turns healthy; ECS stops the old one (SIGTERM). Its
    // cleanup finds the record is no longer what it wrote, and leaves it.
    wait_healthy(&new);
    old.signal("TERM");
    assert_eq!(old.wait_exit(READY).and_then(|s| s.code()), Some(0), "{}", old.stderr().text());
    wait_event(&old, "record.not_ours");
    assert!(!old.stderr().text().contains("\"event\":\"record.deleted\""), "{}", old.stderr().text());

    // A few more readings after the old task is gone.
    let mut more = 0;
    let after = sampler.stdout().wait_for(READY, |_| {
        more += 1;
        more > 10
    });
    assert!(after.is_some(), "the sampler stopped: {}", sampler.stderr().text());
    let readings: Vec<Value> = sampler.stdout().all().iter().map(|l| json(l)).collect();
    drop(sampler);

    // At every reading the name held exactly one address: the old task's,
    // then the new task's, and never the old one again.
    let addresses: Vec<String> = readings
        .iter()
        .map(|r| {
            let a: Vec<&str> = r["a"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            assert_eq!(a.len(), 1, "a reading without exactly one address: {r}");
            a[0].to_string()
        })
        .collect();
    let switch = addresses.iter().position(|a| a == "10.0.0.6").expect("the new address never appeared");
    assert!(addresses[..switch].iter().all(|a| a == "10.0.0.5"), "{addresses:?}");
    assert!(addresses[switch..].iter().all(|a| a == "10.0.0.6"), "went back to the old task: {addresses:?}");
    assert!(switch > 0 && addresses.len() - switch > 10, "{} readings, switch at {switch}", addresses.len());
    for r in &readings {
        assert_eq!(r["markers"].as_array().unwrap().len(), 1, "not exactly one marker: {r}");
    }
    let last = readings.last().unwrap()["markers"][0].as_str().unwrap().to_string();
    assert!(last.contains("task=task-2-new"), "{last}");
    println!("{} readings: {switch} on the old task, {} on the new one", addresses.len(), addresses.len() - switch);

    // Every name written lay inside the zone.
    assert_eq!(proxy.outside(ZONE_NAME), Vec::<String>::new());

    // When the new task stops in its turn, it deletes what it wrote.
    new.signal("TERM");
    assert_eq!(new.wait_exit(READY).and_then(|s| s.code()), Some(0), "{}", new.stderr().text());
    assert_eq!(records(&r53, &zone), vec![]);
}

#[test]
fn an_upgrade_takes_over_a_record_an_older_version_wrote() {
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    let proxy = Route53Proxy::start(&r53.url, ZONE_NAME, 0);
    // What a task of dns-sidecar 0.1 (today's deployments) wrote: the marker
    // at a-NAME, naming the owner only.
    fixture(&["create-legacy", &r53.url, &zone, RECORD, "10.0.0.5", "prod/bastion"]);

    let meta = Metadata::start("task-2-new", "10.0.0.6", 0);
    let out = sidecar(&proxy.url, &zone, &meta, &["--once"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("over from prod/bastion (a marker written by an older dns-sidecar)"), "{stderr}");
    let recs = records(&r53, &zone);
    assert!(recs.contains(&(RECORD.into(), "A".into(), vec!["10.0.0.6".into()], None)), "{recs:?}");
    assert!(recs.iter().any(|r| r.0 == format!("_dns-sidecar-a.{RECORD}")), "{recs:?}");
    assert!(!recs.iter().any(|r| r.0 == format!("a-{RECORD}")), "the old marker was left: {recs:?}");

    // The old task's cleanup, exactly as 0.1 sends it, no longer matches: the record stays.
    let answer = fixture(&["delete-legacy", &r53.url, &zone, RECORD, "10.0.0.5", "prod/bastion"]);
    assert!(answer["error"].as_str().unwrap_or_default().contains("InvalidChangeBatch"), "{answer}");
    assert_eq!(records(&r53, &zone), recs);
    assert_eq!(proxy.outside(ZONE_NAME), Vec::<String>::new());
}

#[test]
fn a_name_at_the_zone_apex_is_published_with_its_marker_inside_the_zone() {
    // A dedicated zone for the bastion: the record is the zone's apex.
    let apex_zone = "bastion.example.test.";
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, apex_zone);
    let proxy = Route53Proxy::start(&r53.url, apex_zone, 0);

    // First, that the proxy refuses what Route 53 refuses: the marker older
    // versions would have written, a-<apex>, lies outside the zone.
    let out =
        fixture_command(&["create", &proxy.url, &zone, "a-bastion.example.test.", "TXT", "\"x\""]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("is not permitted in zone bastion.example.test."), "{stderr}");

    let meta = Metadata::start("task-apex", "10.0.0.7", 0);
    let mut cmd = sidecar_command("prod/bastion", apex_zone, &proxy.url, &zone, Some(&meta), None, &[]);
    cmd.args(["--address-source", "private"]);
    let mut side = Proc::spawn(cmd, Stdio::null());
    wait_event(&side, "record.live");
    let recs = records(&r53, &zone);
    assert!(recs.contains(&(apex_zone.into(), "A".into(), vec!["10.0.0.7".into()], None)), "{recs:?}");
    assert!(recs.iter().any(|r| r.0 == "_dns-sidecar-a.bastion.example.test." && r.1 == "TXT"), "{recs:?}");
    side.signal("TERM");
    assert_eq!(side.wait_exit(READY).and_then(|s| s.code()), Some(0), "{}", side.stderr().text());
    assert_eq!(records(&r53, &zone), vec![]);
    // Every batch the sidecar sent named only names in the zone.
    assert_eq!(proxy.refused.load(std::sync::atomic::Ordering::SeqCst), 1, "only the probe above was refused");
    let written = proxy.written.lock().unwrap().clone();
    assert!(written.iter().filter(|n| !n.starts_with("a-")).count() >= 4, "{written:?}");
    assert_eq!(proxy.outside(apex_zone), vec!["a-bastion.example.test.".to_string()], "{written:?}");
}

#[test]
fn a_record_name_outside_the_zone_is_refused_before_anything_is_sent() {
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    let proxy = Route53Proxy::start(&r53.url, ZONE_NAME, 0);
    let meta = Metadata::start("task-x", "10.0.0.8", 0);
    let mut cmd = sidecar_command("prod/bastion", "bastion.example.org", &proxy.url, &zone, Some(&meta), None, &[]);
    cmd.args(["--address-source", "private"]);
    let mut side = Proc::spawn(cmd, Stdio::null());
    // The health status answered "starting" meanwhile; now the sidecar is gone, and so is its health.
    let error = wait_event(&side, "sidecar.error");
    assert_eq!(side.wait_exit(READY).and_then(|s| s.code()), Some(1), "{}", side.stderr().text());
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("--record-name bastion.example.org. lies outside the hosted zone example.test."),
        "{error}"
    );
    let (healthy, text) = healthcheck(&side);
    assert!(!healthy && text.contains("not answering"), "{text}");
    assert_eq!(proxy.written.lock().unwrap().clone(), Vec::<String>::new());
}

#[test]
fn the_public_ip_is_that_of_the_interface_with_the_tasks_mac_address() {
    let r53 = Emulator::ministack();
    let ec2 = Emulator::moto();
    let zone = create_zone(&r53, ZONE_NAME);
    // Two VPCs with the same CIDR in one account and region: two interfaces hold 10.0.0.42.
    let twins = fixture(&["eni-twins", &ec2.url, "10.0.0.42"]);
    let ours = &twins[1];
    let meta = Metadata::with_mac("task-eni", "10.0.0.42", ours["mac"].as_str().unwrap());
    let out = sidecar_command("prod/bastion", RECORD, &r53.url, &zone, Some(&meta), Some(&ec2.url), &["--once"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(ours["interface"].as_str().unwrap()), "{stderr}");
    let a: Vec<Vec<String>> = records(&r53, &zone).into_iter().filter(|r| r.1 == "A").map(|r| r.2).collect();
    assert_eq!(a, vec![vec![ours["public_ip"].as_str().unwrap().to_string()]]);

    // A MAC address no interface has: a clear error naming the others, and nothing published.
    let zone2 = create_zone(&r53, "other.test.");
    let stranger = Metadata::with_mac("task-x", "10.0.0.42", "02:00:00:00:00:99");
    let out = sidecar_command(
        "prod/bastion",
        "bastion.other.test",
        &r53.url,
        &zone2,
        Some(&stranger),
        Some(&ec2.url),
        &["--once", "--startup-timeout", "2s"],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("no network interface has the private IP 10.0.0.42 and the task's MAC address 02:00:00:00:00:99"),
        "{stderr}"
    );
    for twin in twins.as_array().unwrap() {
        assert!(stderr.contains(twin["interface"].as_str().unwrap()), "{stderr}");
    }
    assert_eq!(records(&r53, &zone2), vec![]);
}

#[test]
fn the_readme_commands_lower_the_zones_negative_caching_ttl() {
    // The README's "Keeping a real outage short" block, run as written with
    // the AWS CLI of the deploy venv (tests/ci.sh installs it) against
    // Route 53 on loopback, whose new zones carry Route 53's default SOA.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("**Keeping a real outage short.**").nth(1).expect("the README section");
    let block = section.split("```sh\n").nth(1).and_then(|b| b.split("\n```").next()).expect("its sh block");
    let aws_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/deploy-venv/bin");
    assert!(aws_dir.join("aws").exists(), "{}/aws is missing: tests/ci.sh installs it", aws_dir.display());

    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, "bastion.example.test.");
    let soa = |field: &str| {
        let sets = fixture(&["list-all", &r53.url, &zone]);
        sets.as_array().unwrap().iter().find(|s| s["type"] == "SOA").map(|s| s[field].clone()).unwrap()
    };
    assert_eq!(soa("ttl"), 900);
    let script = block.replace("ZONE=Z0123456789ABCDEFGHIJ", &format!("ZONE={zone}"));
    assert_ne!(script, block, "the block no longer sets ZONE=Z0123456789ABCDEFGHIJ");
    let path = format!("{}:{}", aws_dir.display(), std::env::var("PATH").unwrap_or_default());
    // sh is dash here: the block must not need bash (zsh, the macOS shell, runs POSIX sh too).
    let out = Command::new("sh")
        .args(["-euc", &script])
        .env("PATH", path)
        .env("AWS_ENDPOINT_URL", &r53.url)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("now: bastion.example.test. TTL 900"), "{shown}");
    assert_eq!(soa("ttl"), 60, "{shown}");
    let value = soa("values")[0].as_str().unwrap().to_string();
    assert!(value.ends_with(" 1 7200 900 1209600 60"), "{value}");
}

/// What a user's resolver would answer for the name now (TTL 0).
fn resolve(r53: &Emulator, zone: &str) -> String {
    let a: Vec<Vec<String>> =
        records(r53, zone).into_iter().filter(|r| r.0 == RECORD && r.1 == "A").map(|r| r.2).collect();
    assert_eq!(a.len(), 1, "the name does not resolve to one record: {a:?}");
    a[0][0].clone()
}

/// `ssh -N -L` to the bastion at `ip`:`port` by its name, the host key pinned under the name.
fn tunnel_by_name(key: &ClientKey, known_hosts: &std::path::Path, ip: &str, port: u16, target: u16) -> (Proc, u16) {
    let local = free_port();
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes"])
        .args(["-o", "HostKeyAlias=bastion.example.test", "-o", "ExitOnForwardFailure=yes", "-v", "-N"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-i")
        .arg(&key.private)
        .args(["-p", &port.to_string(), "-L", &format!("127.0.0.1:{local}:127.0.0.1:{target}")])
        .arg(format!("tunnel@{ip}"));
    let proc = Proc::spawn(cmd, Stdio::null());
    assert!(wait_forwards(&proc, &[local]), "{}", proc.stderr().text());
    (proc, local)
}

#[test]
fn old_tunnels_drain_on_the_old_task_and_new_connections_reach_the_new_one() {
    require("ssh", "openssh-client");
    let dir = bastion_tests::tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    // Both tasks serve the same host key (the stack's SSM parameter), pinned under the name.
    let host_key = dir.path().join("host_ed25519");
    let out = Command::new(bastion_bin()).args(["keygen", "--out"]).arg(&host_key).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let echo = EchoServer::start();
    let port = free_port();
    let bastion = |ip: &str| {
        ServerBuilder::new(dir.path())
            .arg("--host-key")
            .arg(&host_key)
            .args(["--listen", &format!("{ip}:{port}"), "--drain-timeout", "20s"])
            .authorize(&[&key])
            .start()
    };
    let old_bastion = bastion("127.0.0.2");
    let new_bastion = bastion("127.0.0.3");
    let known_hosts = dir.path().join("known_hosts.name");
    let pinned = &old_bastion.host_public_key;
    std::fs::write(&known_hosts, format!("bastion.example.test {pinned}\n[bastion.example.test]:{port} {pinned}\n"))
        .unwrap();

    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    let side = |ip: &str, task: &str, extra: &[&str]| {
        let mut cmd = sidecar_command("prod/bastion", RECORD, &r53.url, &zone, None, None, extra);
        cmd.args(["--address", ip, "--task-id", task, "--reconcile-interval", "1s", "--handover-wait", "1s"]);
        Proc::spawn(cmd, Stdio::null())
    };
    let mut old_side = side("127.0.0.2", "task-1-old", &[]);
    wait_event(&old_side, "record.live");

    // A user connects by the name: the old task. Their tunnel carries data.
    assert_eq!(resolve(&r53, &zone), "127.0.0.2");
    let (_alice, alice_port) = tunnel_by_name(&key, &known_hosts, "127.0.0.2", port, echo.addr.port());
    let mut alice = connect_retry(SocketAddr::from(([127, 0, 0, 1], alice_port)));
    let probe = |stream: &mut TcpStream, data: &[u8]| {
        stream.write_all(data).unwrap();
        let mut back = vec![0u8; data.len()];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(back, data);
    };
    probe(&mut alice, b"before the deploy");

    // The deploy: the new task starts, takes the name over, turns healthy.
    let new_side = side("127.0.0.3", "task-2-new", &[]);
    wait_event(&new_side, "sidecar.handover");
    wait_healthy(&new_side);
    // A new connection by the name reaches the new task.
    assert_eq!(resolve(&r53, &zone), "127.0.0.3");
    let (_bob, bob_port) = tunnel_by_name(&key, &known_hosts, "127.0.0.3", port, echo.addr.port());
    probe(&mut connect_retry(SocketAddr::from(([127, 0, 0, 1], bob_port))), b"on the new task");
    new_bastion.wait_event("auth.accepted", |_| true);

    // ECS stops the old task: the sidecar first (it leaves the name), then the
    // bastion, which drains: the open tunnel still carries data.
    old_side.signal("TERM");
    assert_eq!(old_side.wait_exit(READY).and_then(|s| s.code()), Some(0), "{}", old_side.stderr().text());
    wait_event(&old_side, "record.not_ours");
    old_bastion.proc.signal("TERM");
    old_bastion.wait_event("server.stopping", |e| e["tunnels_open"] == 1);
    probe(&mut alice, b"during the drain");
    assert_eq!(resolve(&r53, &zone), "127.0.0.3", "the name left the new task");
    drop(alice);
    let stopped = old_bastion.wait_event("server.stopped", |_| true);
    assert_eq!(stopped["tunnels_cut"], 0, "{stopped}");
}

#[test]
fn a_txt_record_at_the_old_marker_name_is_not_a_claim() {
    // Since 0.2 `a-<name>` is not our marker name: a TXT record there that is
    // no dns-sidecar marker neither blocks the name nor is touched.
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, ZONE_NAME);
    fixture(&["create", &r53.url, &zone, &format!("a-{RECORD}"), "TXT", "\"v=someone-else\""]);
    let meta = Metadata::start("task-1", "10.0.0.9", 0);
    let out = sidecar(&r53.url, &zone, &meta, &["--once"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let recs = records(&r53, &zone);
    assert!(recs.contains(&(RECORD.into(), "A".into(), vec!["10.0.0.9".into()], None)), "{recs:?}");
    assert!(recs.contains(&(format!("a-{RECORD}"), "TXT".into(), vec!["\"v=someone-else\"".into()], None)), "{recs:?}");
}
