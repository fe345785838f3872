//! A flood of idle unauthenticated connections from many sources (issue 13),
//! in the VPC of network namespaces (`bastion_tests::vpc`): the attacker and
//! the users come from the internet side, as on a task with a public address,
//! and the health check from the task's own loopback, as ECS runs it.
//!
//! 30 connections from 6 sources, 5 each (the per-source limit), that send an
//! SSH identification and then nothing fill `--max-startups` (30). Before the
//! fix, `bastion-sshd healthcheck` then failed (three failures replace the
//! task, cutting every tunnel) and so did every new user, for as long as the
//! attacker kept it up, unpenalized.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use bastion_tests::vpc::*;
use bastion_tests::*;

/// The attacker's source addresses, on the laptop's side of the internet.
const ATTACKERS: [&str; 6] = ["10.213.1.20", "10.213.1.21", "10.213.1.22", "10.213.1.23", "10.213.1.24", "10.213.1.25"];

#[test]
fn an_idle_flood_from_many_sources_neither_fails_the_health_check_nor_locks_users_out() {
    require("python3", "python3");
    let mut vpc = Vpc::build();
    vpc.web_server();
    for addr in ATTACKERS {
        ip(&["-n", &vpc.client_ns(), "addr", "add", &format!("{addr}/24"), "dev", "pub0"]);
    }
    let key = client_key(&vpc);
    // As in the task: listening on every address, so the health check reaches it on 127.0.0.1:22,
    // and failed logins penalized (the default --penalty).
    let server = vpc.bastion_on("0.0.0.0:22", &[], &[&key]);
    let healthcheck = || {
        let mut cmd = Command::new(bastion_bin());
        cmd.args(["healthcheck", "--timeout", "5s"]);
        run(vpc.on_bastion(&cmd))
    };
    assert!(healthcheck().status.success(), "the health check fails without any flood");

    // A user's tunnel to the private web service, open before the flood.
    let port = 18080;
    let _tunnel = vpc.tunnel(&server, &key, &[("-L", format!("127.0.0.1:{port}:{PRIVATE_IP}:8000"))], &[port]);
    let through_tunnel = || {
        let out = run(vpc.on_client(&curl(&["--max-time", "10"], &format!("http://127.0.0.1:{port}/"))));
        assert!(text(&out).contains(WEB_MARKER), "the tunnel stopped carrying data: {}", text(&out));
    };
    through_tunnel();

    // The flood: 6 sources x 5 idle connections.
    let mut attack = Command::new("python3");
    attack
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("hostile.py"))
        .args(["idle-flood", "--host", BASTION_PUBLIC_IP, "--port", "22", "--count", "5", "--sources"])
        .arg(ATTACKERS.join(","));
    let mut attacker = vpc.on_client(&attack).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut attacker_out = BufReader::new(attacker.stdout.take().unwrap());
    let mut line = String::new();
    attacker_out.read_line(&mut line).unwrap();
    let ready = json(line.strip_prefix("READY ").unwrap_or_else(|| panic!("hostile.py idle-flood: {line:?}")));
    assert_eq!(ready["greeted"], 30, "every flood connection holds a slot: {ready}");
    assert!(server.events("connection.refused").is_empty());

    // The health check answers at once, however often it asks.
    for _ in 0..5 {
        let check = healthcheck();
        assert!(check.status.success(), "the health check failed during the flood: {}", text(&check));
    }
    through_tunnel();

    // A new user gets in: it waits until a flood connection has stalled and takes its slot.
    let started = Instant::now();
    let login = run(vpc.on_client(server.ssh(&key).args([&server.destination("ops"), "true"])));
    let waited = started.elapsed();
    assert_eq!(login.status.code(), Some(1), "a new user was locked out: {}", text(&login));
    assert!(text(&login).contains("commands are not run here"), "{}", text(&login));
    eprintln!("FLOOD | a new user logged in {} ms after asking, during the flood", waited.as_millis());
    through_tunnel();

    // The flood connection that lost its slot is closed, and its source penalized like a failed login.
    let evicted = server.wait_event("connection.closed", |e| e["reason"].as_str().unwrap().contains("its slot went"));
    let source = evicted["peer"].as_str().unwrap().rsplit_once(':').unwrap().0.to_string();
    assert!(ATTACKERS.contains(&source.as_str()), "{evicted}");
    let penalized = server.wait_event("source.penalized", |e| e["peer"] == evicted["peer"]);
    assert_eq!(penalized["seconds"], 2, "{penalized}");
    assert!(healthcheck().status.success());
    drop(attacker.stdin.take());
    let _ = attacker.wait();
}
