//! Limits under load: floods and failed logins are turned away at the door,
//! and never touch established connections or other sources.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Stdio;

use bastion_tests::*;
use tempfile::TempDir;

fn setup() -> (TempDir, ClientKey) {
    require("ssh", "openssh-client");
    let dir = bastion_tests::tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    (dir, key)
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn source(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// `ssh … true` from a chosen source address; exit 1 with our message means logged in.
fn login_from(server: &Server, key: &ClientKey, from: Ipv4Addr) -> std::process::Output {
    server.ssh_output(key, &["-b", &from.to_string(), &server.destination("ops"), "true"])
}

fn logged_in(out: &std::process::Output) -> bool {
    out.status.code() == Some(1) && String::from_utf8_lossy(&out.stderr).contains("commands are not run")
}

#[test]
fn half_open_flood_from_one_source_does_not_stop_a_legitimate_client() {
    let (dir, key) = setup();
    let server = ServerBuilder::new(dir.path()).authorize(&[&key]).start();
    // 200 connections that never say a word, all from 127.0.0.3.
    let flood: Vec<TcpStream> = (0..200).filter_map(|_| connect_from(source(3), server.addr).ok()).collect();
    let admitted = flood.iter().filter(|s| !closed_without_banner(s)).count();
    assert_eq!(admitted, 5, "per-source limit (default 5) not applied");
    let refused = server.wait_event("connection.refused", |e| e["peer"].as_str().unwrap().starts_with("127.0.0.3:"));
    assert!(refused["reason"].as_str().unwrap().contains("--per-source-max-startups"), "{refused}");

    let out = login_from(&server, &key, source(2));
    assert!(logged_in(&out), "{}", String::from_utf8_lossy(&out.stderr));
    drop(flood);
}

#[test]
fn a_many_source_flood_never_touches_established_tunnels() {
    let (dir, key) = setup();
    let server = ServerBuilder::new(dir.path()).args(["--max-startups", "20"]).authorize(&[&key]).start();
    let echo = EchoServer::start();
    let (_ssh, ports) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);

    // 40 sources x 3 silent connections: 20 take the unauthenticated slots, 20 wait for one (as
    // many as --max-startups may wait), the other 80 are refused at once. The silent ones never try
    // to log in: after 5 s each waiting connection takes the slot of one of them.
    let flood: Vec<TcpStream> =
        (10..50).flat_map(|s| (0..3).filter_map(move |_| connect_from(source(s), server.addr).ok())).collect();
    let admitted = flood.iter().filter(|s| !closed_without_banner(s)).count();
    assert_eq!(admitted, 40, "--max-startups, the waiting connections");
    let mut refused = 0;
    let all_refused = server.proc.stderr().wait_for(READY, |line| {
        refused += usize::from(event(line).as_deref() == Some("connection.refused"));
        refused == 80
    });
    assert!(all_refused.is_some(), "{refused} of 80 refused");
    server.wait_event("connection.refused", |e| e["reason"].as_str().unwrap().contains("--max-startups"));
    let evicted = server.wait_event("connection.closed", |e| e["reason"].as_str().unwrap().contains("its slot went"));
    assert!(evicted["reason"].as_str().unwrap().starts_with("no attempt to authenticate for 5s"), "{evicted}");

    // The tunnel opened before the flood carries data as if nothing happened.
    let data = pattern(4 * 1024 * 1024, 11);
    assert_eq!(checksum(&echo_round_trip(local(ports[0]), &data)), checksum(&data));

    // A new user gets in while the flood holds every slot: it waits until one of them has stalled.
    assert!(logged_in(&login_from(&server, &key, source(2))), "a new login did not get in during the flood");
    drop(flood);
}

#[test]
fn failed_logins_penalize_their_source_only() {
    let (dir, key) = setup();
    let stranger = ClientKey::generate(dir.path(), "stranger", "ed25519", None);
    let server = ServerBuilder::new(dir.path())
        .args(["--penalty", "30s", "--penalty-exempt", "127.0.0.5/32"])
        .authorize(&[&key])
        .start();

    let out = login_from(&server, &stranger, source(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied (publickey)"));
    let penalized = server.wait_event("source.penalized", |e| e["peer"].as_str().unwrap().starts_with("127.0.0.4:"));
    assert_eq!(penalized["seconds"], 30);
    // The next connection from there, even with the right key, is closed at once.
    let out = login_from(&server, &key, source(4));
    assert_eq!(out.status.code(), Some(255));
    assert!(!logged_in(&out));
    server.wait_event("connection.refused", |e| e["reason"].as_str().unwrap().contains("penalized"));
    // Another source is not affected.
    assert!(logged_in(&login_from(&server, &key, source(2))));

    // An exempt source is never penalized.
    for _ in 0..3 {
        let out = login_from(&server, &stranger, source(5));
        assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied (publickey)"));
    }
    assert!(logged_in(&login_from(&server, &key, source(5))));
}

/// A client that leaves the moment it has logged in (here: its `-L` port is taken, and
/// `ExitOnForwardFailure` ends it) must not count as a failed login. The server used to see the
/// session end before the "authenticated" signal now and then under load, and penalized the
/// source (found by the benchmark harness: 1 in 150 such logins, 30 at a time).
#[test]
fn users_who_leave_right_after_logging_in_are_not_penalized() {
    let (dir, key) = setup();
    let server = ServerBuilder::new(dir.path()).args(["--penalty", "30s"]).authorize(&[&key]).start();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let forward = format!("127.0.0.1:{}:127.0.0.1:9", busy.local_addr().unwrap().port());
    for round in 0..6u8 {
        let clients: Vec<_> = (0..25u8)
            .map(|i| {
                let from = source(100 + i).to_string();
                let mut cmd = server.ssh(&key);
                cmd.args(["-b", &from, "-N", "-o", "ExitOnForwardFailure=yes", "-L", &forward]);
                cmd.arg(server.destination("ops")).stdout(Stdio::null()).stderr(Stdio::piped());
                cmd.spawn().expect("ssh")
            })
            .collect();
        for client in clients {
            let out = client.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("Could not request local forwarding"), "round {round}: {stderr}");
        }
    }
    assert_eq!(server.events("auth.accepted").len(), 150);
    assert!(server.events("source.penalized").is_empty(), "{:?}", server.events("source.penalized"));
    assert!(logged_in(&login_from(&server, &key, source(100))));
}

#[test]
fn max_auth_tries_limits_keys_per_connection() {
    let (dir, key) = setup();
    let wrong: Vec<ClientKey> =
        (0..3).map(|i| ClientKey::generate(dir.path(), &format!("wrong{i}"), "ed25519", None)).collect();
    let server = ServerBuilder::new(dir.path()).args(["--max-auth-tries", "2"]).authorize(&[&key]).start();
    let mut cmd = server.ssh(&wrong[0]);
    for k in &wrong[1..] {
        cmd.arg("-i").arg(&k.private);
    }
    let out = cmd
        .arg("-i")
        .arg(&key.private)
        .arg(server.destination("ops"))
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", String::from_utf8_lossy(&out.stderr));
    // The right key alone still works.
    assert!(logged_in(&server.ssh_output(&key, &[&server.destination("ops"), "true"])));
}

#[test]
fn max_connections_turns_away_the_next_one() {
    let (dir, key) = setup();
    let server = ServerBuilder::new(dir.path()).args(["--max-connections", "2"]).authorize(&[&key]).start();
    let echo = EchoServer::start();
    let (_a, _) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);
    let (_b, _) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);
    let third = TcpStream::connect(server.addr).unwrap();
    assert!(closed_without_banner(&third));
    server.wait_event("connection.refused", |e| e["reason"].as_str().unwrap().contains("--max-connections"));
}

#[test]
fn max_channels_limits_tunnels_per_connection() {
    let (dir, key) = setup();
    let server = ServerBuilder::new(dir.path()).args(["--max-channels", "2"]).authorize(&[&key]).start();
    let echo = EchoServer::start();
    let (ssh, ports) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);
    // Two tunnels held open.
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect_retry(local(ports[0]))).collect();
    for s in held.iter_mut() {
        use std::io::{Read, Write};
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
    }
    let line = refused_line(&ssh, ports[0], "too many open channels");
    assert!(line.contains("resource shortage"), "{line}");
    // Closing one makes room.
    drop(held.pop());
    server.wait_event("tunnel.closed", |_| true);
    assert_eq!(echo_round_trip(local(ports[0]), b"room"), b"room");
}

#[test]
fn idle_tunnels_are_closed() {
    let (dir, key) = setup();
    let server = ServerBuilder::new(dir.path()).args(["--tunnel-idle-timeout", "1s"]).authorize(&[&key]).start();
    let echo = EchoServer::start();
    let (_ssh, ports) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);
    let mut s = connect_retry(local(ports[0]));
    use std::io::{Read, Write};
    s.write_all(b"hi").unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    s.set_read_timeout(Some(READY)).unwrap();
    assert_eq!(s.read(&mut b).unwrap_or(0), 0, "the idle tunnel was not closed");
    let closed = server.wait_event("tunnel.closed", |_| true);
    assert!(closed["ended_by"].as_str().unwrap().contains("idle"), "{closed}");
}

#[test]
fn a_silent_peer_is_dropped_after_unanswered_keepalives() {
    let (dir, key) = setup();
    let server = ServerBuilder::new(dir.path())
        .args(["--keepalive-interval", "1s", "--keepalive-max", "2"])
        .authorize(&[&key])
        .start();
    let echo = EchoServer::start();
    let (ssh, _) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);
    server.wait_event("auth.accepted", |_| true);
    // Freeze the client: it stops answering keepalives, like a laptop that lost its network.
    ssh.signal("STOP");
    let closed = server.wait_event("connection.closed", |_| true);
    ssh.signal("CONT");
    assert!(closed["duration_ms"].as_u64().unwrap() >= 2000, "{closed}");
}
