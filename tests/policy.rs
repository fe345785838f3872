//! The destination policy, through the real OpenSSH client: every spelling
//! of a denied address is refused before any connection is attempted, and
//! only explicit entries open what the defaults deny.

use std::net::SocketAddr;
use std::process::Command;

use bastion_tests::*;
use tempfile::TempDir;

fn setup() -> (TempDir, ClientKey) {
    require("ssh", "openssh-client");
    let dir = bastion_tests::tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    (dir, key)
}

fn server_with(dir: &TempDir, key: &ClientKey, permit_open: &str) -> Server {
    ServerBuilder::new(dir.path()).args(["--permit-open", permit_open]).authorize(&[key]).start()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Every way of writing loopback, "any" and the metadata endpoints, as `ssh -L` host.
fn bypass_spellings(port: u16) -> Vec<(String, String)> {
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.1"),
        ("0x7f.1", "0x7f.1"),
        ("2130706433", "2130706433"),
        ("0177.0.0.1", "0177.0.0.1"),
        ("127.8.9.10", "127.8.9.10"),
        ("[::ffff:127.0.0.1]", "[::ffff:127.0.0.1]"),
        ("[::1]", "[::1]"),
        ("localhost", "localhost"),
        ("0.0.0.0", "0.0.0.0"),
        ("169.254.170.2", "169.254.170.2"),
        ("169.254.169.254", "169.254.169.254"),
        ("[fd00:ec2::254]", "[fd00:ec2::254]"),
    ]
    .into_iter()
    .map(|(host, shown)| (host.to_string(), format!("{shown}:{port}")))
    .collect()
}

#[test]
fn default_policy_refuses_every_spelling_of_loopback_and_metadata() {
    let (dir, key) = setup();
    let server = server_with(&dir, &key, "any");
    let echo = EchoServer::start();
    let spellings = bypass_spellings(echo.addr.port());
    let targets: Vec<(&str, u16)> = spellings.iter().map(|(h, _)| (h.as_str(), echo.addr.port())).collect();
    let (ssh, ports) = server.tunnel(&key, &targets, &[]);
    for ((host, shown), port) in spellings.iter().zip(&ports) {
        let line = refused_line(&ssh, *port, shown);
        assert!(line.contains("administratively prohibited"), "{host}: {line}");
        // An address is told why; a name (`127.1` and `0x7f.1` are names to getaddrinfo)
        // only that it is refused, never what it resolved to.
        assert!(
            line.contains("denied range") || line.ends_with(&format!("{shown} is not permitted")),
            "{host}: {line}"
        );
    }
    assert_eq!(echo.connection_count(), 0, "the bastion connected to a denied target");
    for (_, shown) in &spellings {
        let refused = server.wait_event("tunnel.refused", |e| e["destination"] == shown.as_str());
        assert!(refused["reason"].as_str().unwrap().contains("denied range"), "{refused}");
    }
    assert_eq!(server.events("tunnel.refused").len(), spellings.len());
    assert!(server.events("tunnel.opened").is_empty() && server.events("tunnel.failed").is_empty());
    let metadata =
        server.wait_event("tunnel.refused", |e| e["destination"] == format!("169.254.170.2:{}", echo.addr.port()));
    assert!(metadata["reason"].as_str().unwrap().contains("ECS task metadata"), "{metadata}");
    assert!(metadata["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
}

#[test]
fn a_permitted_name_resolving_to_a_denied_address_is_refused() {
    let (dir, key) = setup();
    let echo = EchoServer::start();
    let server = server_with(&dir, &key, &format!("localhost:{}", echo.addr.port()));
    let (ssh, ports) = server.tunnel(&key, &[("localhost", echo.addr.port())], &[]);
    let line = refused_line(&ssh, ports[0], "localhost");
    // The client is not told what the name resolved to: the bastion is no oracle for internal DNS.
    assert!(line.contains(&format!("localhost:{} is not permitted", echo.addr.port())), "{line}");
    assert!(!line.contains("127.0.0.1") && !line.contains("::1") && !line.contains("resolves"), "{line}");
    // The audit log says why.
    let refused = server.wait_event("tunnel.refused", |_| true);
    let reason = refused["reason"].as_str().unwrap();
    assert!(reason.contains("resolves to") && reason.contains("denied range"), "{refused}");
    assert_eq!(echo.connection_count(), 0);
}

#[test]
fn refusals_never_show_the_client_what_a_name_resolved_to() {
    // The case: a range is permitted, and a name outside it is asked for.
    let (dir, key) = setup();
    let server = server_with(&dir, &key, "10.1.0.0/16:5432");
    let (ssh, ports) = server.tunnel(&key, &[("localhost", 5432)], &[]);
    let line = refused_line(&ssh, ports[0], "localhost");
    assert!(line.contains("localhost:5432 is not permitted"), "{line}");
    assert!(!line.contains("127.0.0.1") && !line.contains("::1"), "{line}");
    let refused = server.wait_event("tunnel.refused", |_| true);
    assert!(refused["reason"].as_str().unwrap().contains("127.0.0.1"), "{refused}");
    assert_eq!(refused["told_client"], "localhost:5432 is not permitted", "{refused}");
}

#[test]
fn explicit_entries_open_exactly_what_they_name() {
    let (dir, key) = setup();
    let echo = EchoServer::start();
    let other = EchoServer::start();
    let server = server_with(&dir, &key, &format!("127.0.0.1:{}", echo.addr.port()));
    let (ssh, ports) = server.tunnel(
        &key,
        &[("127.0.0.1", echo.addr.port()), ("127.0.0.1", other.addr.port()), ("127.1", echo.addr.port())],
        &[],
    );
    assert_eq!(echo_round_trip(local(ports[0]), b"exact"), b"exact");
    let line = refused_line(&ssh, ports[1], &format!("127.0.0.1:{}", other.addr.port()));
    assert!(line.contains("not in the bastion's permit list"), "{line}");
    // Another spelling of the permitted address reaches that address, and only it.
    assert_eq!(echo_round_trip(local(ports[2]), b"odd"), b"odd");
    server.wait_event("tunnel.opened", |e| {
        e["destination"] == format!("127.1:{}", echo.addr.port()) && e["resolved"] == echo.addr.to_string()
    });
    assert_eq!(other.connection_count(), 0);
}

#[test]
fn wildcards_never_open_denied_ranges_but_ranges_inside_them_do() {
    let (dir, key) = setup();
    let echo = EchoServer::start();
    let port = echo.addr.port();

    let wide = server_with(&dir, &key, &format!("*:{port},0.0.0.0/0:{port}"));
    let (ssh, ports) = wide.tunnel(&key, &[("127.0.0.1", port)], &[]);
    assert!(refused_line(&ssh, ports[0], "127.0.0.1").contains("denied range"));
    drop(ssh);

    let inside = server_with(&dir, &key, "127.0.0.0/8:*");
    let (_ssh, ports) = inside.tunnel(&key, &[("127.0.0.1", port)], &[]);
    assert_eq!(echo_round_trip(local(ports[0]), b"inside"), b"inside");
}

#[test]
fn bad_permit_entries_stop_the_server_and_check_config_names_them() {
    let (dir, key) = setup();
    let keys = dir.path().join("authorized_keys");
    std::fs::write(&keys, format!("{}\n", key.public_line)).unwrap();
    for (entry, why) in [
        ("127.1:22", "dotted quad"),
        ("db.internal", "missing ':port'"),
        ("::1:22", "IPv6 addresses go in brackets"),
        ("10.0.0.0/40:5432", "not a valid CIDR"),
        ("db:99999", "port must be"),
    ] {
        for sub in ["run", "check-config"] {
            let out = Command::new(bastion_bin())
                .args([sub, "--log-format", "text", "--listen", "127.0.0.1:0", "--permit-open", entry])
                .arg("--authorized-keys")
                .arg(&keys)
                .output()
                .unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.status.code(), Some(1), "{sub} {entry}: {text}");
            assert!(text.contains("--permit-open") && text.contains(why), "{sub} {entry}: {text}");
        }
    }
}
