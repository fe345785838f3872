//! authorized_keys options with OpenSSH semantics, through the real OpenSSH client.

use std::process::Command;

use bastion_tests::*;
use tempfile::TempDir;

fn setup() -> (TempDir, ClientKey) {
    require("ssh", "openssh-client");
    let dir = bastion_tests::tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    (dir, key)
}

fn with_options(dir: &TempDir, key: &ClientKey, options: &str) -> Server {
    ServerBuilder::new(dir.path()).authorized_lines(&[format!("{options} {}", key.public_line)]).start()
}

/// Logs in and runs `true`: exit 1 with our message means authenticated.
fn logs_in(server: &Server, key: &ClientKey) -> bool {
    let out = server.ssh_output(key, &[&server.destination("ops"), "true"]);
    match out.status.code() {
        Some(1) => true,
        Some(255) => {
            assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied (publickey)"));
            false
        }
        other => panic!("unexpected exit {other:?}: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

#[test]
fn restrict_and_no_port_forwarding_log_in_but_every_tunnel_is_refused() {
    let (dir, key) = setup();
    let echo = EchoServer::start();
    for options in ["restrict", "no-port-forwarding", "port-forwarding,restrict"] {
        let server = with_options(&dir, &key, options);
        assert!(logs_in(&server, &key), "{options}");
        let (ssh, ports) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);
        let line = refused_line(&ssh, ports[0], "port forwarding is disabled for this key");
        assert!(line.contains("administratively prohibited"), "{options}: {line}");
        server.wait_event("tunnel.refused", |e| e["reason"].as_str().unwrap().contains("disabled for this key"));
    }
    assert_eq!(echo.connection_count(), 0);

    // restrict,port-forwarding: tunnels work again.
    let server = with_options(&dir, &key, "restrict,port-forwarding");
    let (_ssh, ports) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], ports[0]));
    assert_eq!(echo_round_trip(local, b"forwarding"), b"forwarding");
}

#[test]
fn permitopen_narrows_the_global_list() {
    let (dir, key) = setup();
    let echo = EchoServer::start();
    let other = EchoServer::start();
    // Global: any port on 127.0.0.1 (the harness default). Key: only the echo port.
    let server = with_options(&dir, &key, &format!("permitopen=\"127.0.0.1:{}\"", echo.addr.port()));
    let (ssh, ports) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port()), ("127.0.0.1", other.addr.port())], &[]);
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], ports[0]));
    assert_eq!(echo_round_trip(local, b"allowed"), b"allowed");
    let line = refused_line(&ssh, ports[1], "this key's permitopen");
    assert!(line.contains(&format!("127.0.0.1:{}", other.addr.port())), "{line}");
    assert_eq!(other.connection_count(), 0);

    // The key's entry cannot widen the global list: with the default global
    // policy, loopback stays denied even though the key names it.
    let server = ServerBuilder::new(dir.path())
        .args(["--permit-open", "any"])
        .authorized_lines(&[format!("permitopen=\"127.0.0.1:{}\" {}", echo.addr.port(), key.public_line)])
        .start();
    let (ssh, ports) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);
    assert!(refused_line(&ssh, ports[0], "127.0.0.1").contains("denied range"));
}

#[test]
fn from_restricts_where_the_key_may_log_in_from() {
    let (dir, key) = setup();
    for (options, expected) in [
        ("from=\"127.0.0.1\"", true),
        ("from=\"127.0.0.0/8\"", true),
        ("from=\"127.0.0.*\"", true),
        ("from=\"10.0.0.0/8,192.0.2.?\"", false),
        ("from=\"!127.0.0.1,*\"", false),
    ] {
        let server = with_options(&dir, &key, options);
        assert_eq!(logs_in(&server, &key), expected, "{options}");
        if !expected {
            let refused = server.wait_event("auth.refused", |e| e["reason"].as_str().unwrap_or("").contains("from="));
            assert!(refused["reason"].as_str().unwrap().contains("127.0.0.1"), "{refused}");
        }
    }
}

#[test]
fn expiry_time_refuses_expired_keys() {
    let (dir, key) = setup();
    let server = with_options(&dir, &key, "expiry-time=\"20200101\"");
    assert!(!logs_in(&server, &key));
    let refused = server.wait_event("auth.refused", |_| true);
    assert!(
        refused["reason"].as_str().unwrap().contains("key expired (expiry-time, 2020-01-01 00:00:00 UTC)"),
        "{refused}"
    );
    let server = with_options(&dir, &key, "expiry-time=\"29991231235959Z\"");
    assert!(logs_in(&server, &key));
}

#[test]
fn expiry_time_ends_a_session_that_outlives_it() {
    let (dir, key) = setup();
    // expiry-time= has a resolution of one second; UTC, written as OpenSSH reads it.
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 4;
    let out = Command::new("date").args(["-u", "-d", &format!("@{at}"), "+%Y%m%d%H%M%SZ"]).output().unwrap();
    let stamp = String::from_utf8(out.stdout).unwrap();
    let server = with_options(&dir, &key, &format!("expiry-time=\"{}\"", stamp.trim()));
    let echo = EchoServer::start();
    let (mut ssh, ports) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);
    let tunnel = std::net::SocketAddr::from(([127, 0, 0, 1], ports[0]));
    assert_eq!(echo_round_trip(tunnel, b"while valid"), b"while valid");
    let expired = server.wait_event("session.expired", |_| true);
    assert_eq!(expired["expired"], "the key's expiry-time", "{expired}");
    let closed = server.wait_event("connection.closed", |e| e["reason"] == "the key's expiry-time expired");
    assert!(closed["duration_ms"].as_u64().unwrap() >= 1000, "{closed}");
    assert!(ssh.wait_exit(READY).is_some(), "ssh still connected after the key expired");
    // And no new tunnel through that connection: it is gone.
    assert!(std::net::TcpStream::connect(tunnel).is_err(), "the forward is still listening");
}

#[test]
fn options_without_meaning_are_accepted_and_change_nothing() {
    let (dir, key) = setup();
    let server = with_options(
        &dir,
        &key,
        r#"command="/bin/sh -c 'touch /tmp/pwned'",pty,agent-forwarding,X11-forwarding,environment="A=b""#,
    );
    let out = server.ssh_output(&key, &[&server.destination("ops"), "id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("commands are not run here"));
}

#[test]
fn bad_lines_are_skipped_and_check_config_names_them() {
    let (dir, key) = setup();
    let other = ClientKey::generate(dir.path(), "bob", "ed25519", None);
    let lines = [
        "# team keys".to_string(),
        format!("frobnicate {}", other.public_line),
        format!("permitopen=db:5432 {}", other.public_line),
        format!("from=\"10.0.0.0/33\" {}", other.public_line),
        format!("expiry-time=\"2026-12-31\" {}", other.public_line),
        format!("restrict,port-forwarding,permitopen=\"127.0.0.1:*\",command=\"x\" {}", key.public_line),
        format!("cert-authority,principals=\"ops\" {}", other.public_line),
    ];
    let server = ServerBuilder::new(dir.path()).authorized_lines(&lines).start();
    for (line, why) in [(2, "unknown option"), (3, "double quotes"), (4, "CIDR"), (5, "expiry-time")] {
        let problem = server.wait_event("config.problem", |e| e["line"] == line);
        assert!(problem["reason"].as_str().unwrap().contains(why), "line {line}: {problem}");
    }
    assert!(logs_in(&server, &key));
    // The CA line's key is not a login key.
    assert!(!logs_in(&server, &other));

    let file = dir.path().join("keys_for_check");
    std::fs::write(&file, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let out = Command::new(bastion_bin()).arg("check-config").arg("--authorized-keys").arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for n in 2..=5 {
        assert!(stdout.contains(&format!("{} line {n}:", file.display())), "line {n} not reported:\n{stdout}");
    }
    assert!(stdout.contains("no effect here: command=\"x\""), "{stdout}");
    assert!(stdout.contains("tunnels: only 127.0.0.1:*"), "{stdout}");
    assert!(stdout.contains("CA for user certificates"), "{stdout}");
    assert!(stdout.contains("principals: ops"), "{stdout}");
}
