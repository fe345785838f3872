//! OpenSSH user certificates, made with the real `ssh-keygen -s`, used by
//! the real OpenSSH client.

use std::net::SocketAddr;
use std::process::Command;

use bastion_tests::*;
use tempfile::TempDir;

struct Setup {
    dir: TempDir,
    ca: ClientKey,
    user: ClientKey,
}

fn setup() -> Setup {
    require("ssh-keygen", "openssh-client");
    let dir = bastion_tests::tempdir();
    let ca = ClientKey::generate(dir.path(), "user_ca", "ed25519", None);
    let user = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    Setup { dir, ca, user }
}

fn ca_file(s: &Setup) -> std::path::PathBuf {
    let path = s.dir.path().join("trusted_user_ca_keys");
    std::fs::write(&path, format!("{}\n", s.ca.public_line)).unwrap();
    path
}

/// A server trusting the CA through --trusted-user-ca-keys (no authorized_keys at all).
fn server_trusting_ca(s: &Setup, extra: &[&str]) -> Server {
    ServerBuilder::new(s.dir.path()).arg("--trusted-user-ca-keys").arg(ca_file(s)).args(extra).start()
}

fn login_as(server: &Server, key: &ClientKey, user: &str) -> std::process::Output {
    server.ssh_output(key, &[&server.destination(user), "true"])
}

fn logged_in(out: &std::process::Output) -> bool {
    out.status.code() == Some(1) && String::from_utf8_lossy(&out.stderr).contains("commands are not run")
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn a_certificate_from_a_trusted_ca_logs_in_as_its_principals() {
    let s = setup();
    sign_certificate(&s.ca, &s.user, "alice@laptop", "alice,ops", &["-V", "-5m:+1h"]);
    let server = server_trusting_ca(&s, &[]);

    assert!(logged_in(&login_as(&server, &s.user, "alice")));
    let accepted = server.wait_event("auth.accepted", |e| e["user"] == "alice");
    assert_eq!(accepted["cert_key_id"], "alice@laptop");
    assert_eq!(accepted["cert_serial"], 42);
    assert_eq!(accepted["cert_principals"], "alice,ops");
    assert_eq!(accepted["algorithm"], "ssh-ed25519-cert-v01@openssh.com");
    assert!(accepted["ca_fingerprint"].as_str().unwrap().starts_with("SHA256:"));

    assert!(logged_in(&login_as(&server, &s.user, "ops")));
    assert!(!logged_in(&login_as(&server, &s.user, "root")));
    let refused = server.wait_event("auth.refused", |e| e["user"] == "root" && e["cert_key_id"].is_string());
    assert!(refused["reason"].as_str().unwrap().contains("not among the certificate's principals"), "{refused}");

    // The bare key, without its certificate, is not authorized.
    let bare = ClientKey::generate(s.dir.path(), "bare", "ed25519", None);
    assert!(!logged_in(&login_as(&server, &bare, "alice")));

    // And the certificate carries tunnels (permit-port-forwarding is in ssh-keygen's defaults).
    let echo = EchoServer::start();
    let (_ssh, ports) = server.tunnel_as(&s.user, "alice", &[("127.0.0.1", echo.addr.port())], &[]);
    assert_eq!(echo_round_trip(local(ports[0]), b"certified"), b"certified");
}

#[test]
fn cert_authority_lines_with_principals_and_restrictions() {
    let s = setup();
    let echo = EchoServer::start();
    let other = EchoServer::start();
    sign_certificate(&s.ca, &s.user, "alice@laptop", "ops", &[]);
    let line = format!(
        "cert-authority,principals=\"ops,dba\",restrict,port-forwarding,permitopen=\"127.0.0.1:{}\" {}",
        echo.addr.port(),
        s.ca.public_line
    );
    let server = ServerBuilder::new(s.dir.path()).authorized_lines(&[line]).start();
    // With principals= on the CA line, the login name is free; the certificate must carry a listed principal.
    assert!(logged_in(&login_as(&server, &s.user, "whoever")));
    let (ssh, ports) =
        server.tunnel_as(&s.user, "alice", &[("127.0.0.1", echo.addr.port()), ("127.0.0.1", other.addr.port())], &[]);
    assert_eq!(echo_round_trip(local(ports[0]), b"ok"), b"ok");
    assert!(refused_line(&ssh, ports[1], "this key's permitopen").contains("administratively prohibited"));
    drop(ssh);

    let dev = ClientKey::generate(s.dir.path(), "dev", "ed25519", None);
    sign_certificate(&s.ca, &dev, "dev@laptop", "dev", &[]);
    assert!(!logged_in(&login_as(&server, &dev, "ops")));
    let refused = server.wait_event("auth.refused", |e| e["cert_key_id"] == "dev@laptop");
    assert!(refused["reason"].as_str().unwrap().contains("principals=\"ops,dba\""), "{refused}");
}

#[test]
fn validity_window_is_enforced_with_a_small_clock_skew_allowance() {
    let s = setup();
    let server = server_trusting_ca(&s, &[]);
    sign_certificate(&s.ca, &s.user, "expired", "alice", &["-V", "-2h:-1h"]);
    assert!(!logged_in(&login_as(&server, &s.user, "alice")));
    sign_certificate(&s.ca, &s.user, "future", "alice", &["-V", "+1h:+2h"]);
    assert!(!logged_in(&login_as(&server, &s.user, "alice")));
    sign_certificate(&s.ca, &s.user, "now", "alice", &["-V", "-1m:+1h"]);
    assert!(logged_in(&login_as(&server, &s.user, "alice")));
    // A CA whose clock runs 30 s ahead: within the 60 s allowance.
    sign_certificate(&s.ca, &s.user, "ahead", "alice", &["-V", "+30s:+1h"]);
    assert!(logged_in(&login_as(&server, &s.user, "alice")));
    // The end of the window is exact: expired 30 s ago is expired.
    sign_certificate(&s.ca, &s.user, "just-expired", "alice", &["-V", "-1h:-30s"]);
    assert!(!logged_in(&login_as(&server, &s.user, "alice")));
    sign_certificate(&s.ca, &s.user, "ahead-5m", "alice", &["-V", "+5m:+1h"]);
    assert!(!logged_in(&login_as(&server, &s.user, "alice")));
}

#[test]
fn source_address_and_critical_options() {
    let s = setup();
    let server = server_trusting_ca(&s, &[]);
    sign_certificate(&s.ca, &s.user, "elsewhere", "alice", &["-O", "source-address=10.0.0.0/8,192.0.2.1"]);
    assert!(!logged_in(&login_as(&server, &s.user, "alice")));
    let refused = server.wait_event("auth.refused", |e| e["cert_key_id"] == "elsewhere");
    assert!(refused["reason"].as_str().unwrap().contains("source-address"), "{refused}");

    sign_certificate(&s.ca, &s.user, "here", "alice", &["-O", "source-address=127.0.0.0/8"]);
    assert!(logged_in(&login_as(&server, &s.user, "alice")));

    sign_certificate(&s.ca, &s.user, "strange", "alice", &["-O", "critical:frobnicate=yes"]);
    assert!(!logged_in(&login_as(&server, &s.user, "alice")));
    let refused = server.wait_event("auth.refused", |e| e["cert_key_id"] == "strange");
    assert!(refused["reason"].as_str().unwrap().contains("unknown critical option \"frobnicate\""), "{refused}");

    // force-command has no effect here: nothing ever runs.
    sign_certificate(&s.ca, &s.user, "forced", "alice", &["-O", "force-command=/bin/sh"]);
    assert!(logged_in(&login_as(&server, &s.user, "alice")));
}

/// sshd reads source-address as addresses and CIDR ranges only
/// (addr_match_cidr_list), and refuses a certificate whose list is anything
/// else; authorized_keys' `from=` patterns (`*`, `?`, `!`) are not allowed.
#[test]
fn source_address_patterns_refuse_the_certificate() {
    let s = setup();
    let server = server_trusting_ca(&s, &[]);
    // ssh-keygen refuses `-O source-address=*` itself ("Invalid source-address
    // list"); `critical:source-address=` writes the same option unchecked, as
    // another CA could.
    for (i, list) in ["*", "127.0.0.*", "127.0.0.1/8"].into_iter().enumerate() {
        let id = format!("pattern-{i}");
        sign_certificate(&s.ca, &s.user, &id, "alice", &["-O", &format!("critical:source-address={list}")]);
        assert!(!logged_in(&login_as(&server, &s.user, "alice")), "source-address={list} logged in");
        let refused = server.wait_event("auth.refused", |e| e["cert_key_id"] == id.as_str());
        let reason = refused["reason"].as_str().unwrap();
        assert!(reason.contains("source-address") && reason.contains(&format!("{list:?}")), "{refused}");
    }
    // The same CA, the same key, a plain address list: logs in.
    sign_certificate(&s.ca, &s.user, "plain", "alice", &["-O", "source-address=192.0.2.0/24,127.0.0.1,::1"]);
    assert!(logged_in(&login_as(&server, &s.user, "alice")));
}

#[test]
fn a_certificate_without_port_forwarding_cannot_tunnel() {
    let s = setup();
    let server = server_trusting_ca(&s, &[]);
    sign_certificate(&s.ca, &s.user, "no-fwd", "alice", &["-O", "no-port-forwarding"]);
    let echo = EchoServer::start();
    let (ssh, ports) = server.tunnel_as(&s.user, "alice", &[("127.0.0.1", echo.addr.port())], &[]);
    refused_line(&ssh, ports[0], "port forwarding is disabled");
    assert_eq!(echo.connection_count(), 0);
}

#[test]
fn untrusted_cas_and_host_certificates_are_refused() {
    let s = setup();
    let server = server_trusting_ca(&s, &[]);
    let rogue = ClientKey::generate(s.dir.path(), "rogue_ca", "ed25519", None);
    sign_certificate(&rogue, &s.user, "rogue", "alice", &[]);
    assert!(!logged_in(&login_as(&server, &s.user, "alice")));
    let refused = server.wait_event("auth.refused", |e| e["cert_key_id"] == "rogue");
    assert!(refused["reason"].as_str().unwrap().contains("not a trusted certificate authority"), "{refused}");

    sign_certificate(&s.ca, &s.user, "host", "alice", &["-h"]);
    assert!(!logged_in(&login_as(&server, &s.user, "alice")));
}

#[test]
fn the_session_ends_when_the_certificate_expires() {
    let s = setup();
    let server = server_trusting_ca(&s, &[]);
    sign_certificate(&s.ca, &s.user, "short", "alice", &["-V", "-1m:+4s"]);
    let echo = EchoServer::start();
    let (mut ssh, ports) = server.tunnel_as(&s.user, "alice", &[("127.0.0.1", echo.addr.port())], &[]);
    assert_eq!(echo_round_trip(local(ports[0]), b"while valid"), b"while valid");
    server.wait_event("session.expired", |_| true);
    let closed = server.wait_event("connection.closed", |e| e["reason"] == "the certificate expired");
    assert!(closed["duration_ms"].as_u64().unwrap() >= 1000, "{closed}");
    assert!(ssh.wait_exit(READY).is_some(), "ssh still connected after the certificate expired");
}

#[test]
fn revoked_keys_and_cas_are_refused() {
    let s = setup();
    sign_certificate(&s.ca, &s.user, "alice", "alice", &[]);
    let plain = ClientKey::generate(s.dir.path(), "plain", "ed25519", None);
    let revoked = s.dir.path().join("revoked_keys");

    // Nothing revoked: both log in.
    std::fs::write(&revoked, "# nothing yet\n").unwrap();
    let server = ServerBuilder::new(s.dir.path())
        .arg("--trusted-user-ca-keys")
        .arg(ca_file(&s))
        .arg("--revoked-keys")
        .arg(&revoked)
        .authorize(&[&plain])
        .start();
    assert!(logged_in(&login_as(&server, &s.user, "alice")));
    assert!(logged_in(&login_as(&server, &plain, "ops")));
    drop(server);

    for (what, listed, victim) in
        [("plain key", &plain, &plain), ("certificate key", &s.user, &s.user), ("CA", &s.ca, &s.user)]
    {
        std::fs::write(&revoked, format!("{}\n", listed.public_line)).unwrap();
        let server = ServerBuilder::new(s.dir.path())
            .arg("--trusted-user-ca-keys")
            .arg(ca_file(&s))
            .arg("--revoked-keys")
            .arg(&revoked)
            .authorize(&[&plain])
            .start();
        let user = if std::ptr::eq(victim, &plain) { "ops" } else { "alice" };
        assert!(!logged_in(&login_as(&server, victim, user)), "revoked {what} still logs in");
        let refused = server.wait_event("auth.refused", |e| e["reason"].as_str().unwrap_or("").contains("revoked"));
        assert!(refused["reason"].as_str().unwrap().contains("--revoked-keys"), "{what}: {refused}");
    }

    // A revocation list that cannot be read stops the server: revocation fails closed.
    std::fs::write(&revoked, "garbage\n").unwrap();
    let out = Command::new(bastion_bin())
        .args(["run", "--log-format", "text", "--listen", "127.0.0.1:0", "--revoked-keys"])
        .arg(&revoked)
        .arg("--trusted-user-ca-keys")
        .arg(ca_file(&s))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1: not a public key"));
}
