//! Reloading keys (SIGHUP, a changed file) without dropping live tunnels;
//! sessions whose key was removed or revoked are closed.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use bastion_tests::*;

const MIB: usize = 1024 * 1024;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn write_keys(path: &Path, keys: &[&ClientKey]) {
    // Write then rename, as a deployment tool would: the reader never sees half a file.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, keys.iter().map(|k| format!("{}\n", k.public_line)).collect::<String>()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn logged_in(server: &Server, key: &ClientKey) -> bool {
    let out = server.ssh_output(key, &[&server.destination("ops"), "true"]);
    out.status.code() == Some(1) && String::from_utf8_lossy(&out.stderr).contains("commands are not run")
}

#[test]
fn sighup_reloads_keys_while_a_transfer_runs() {
    require("ssh", "openssh-client");
    let dir = bastion_tests::tempdir();
    let alice = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let bob = ClientKey::generate(dir.path(), "bob", "ed25519", None);
    let keys = dir.path().join("authorized_keys");
    write_keys(&keys, &[&alice]);
    let server = ServerBuilder::new(dir.path())
        .arg("--authorized-keys")
        .arg(&keys)
        .args(["--reload-poll-interval", "1h"]) // only SIGHUP in this test
        .start();
    assert!(!logged_in(&server, &bob));

    let data = pattern(10 * MIB, 9);
    let (target, started) = on_demand_target(data.clone());
    let (_ssh, ports) = server.tunnel(&alice, &[("127.0.0.1", target.port())], &[]);
    let mut stream = connect_retry(local(ports[0]));
    stream.write_all(b"g").unwrap();
    // The transfer is under way, and stalls on flow control: nobody reads yet.
    started.recv_timeout(READY).unwrap();

    write_keys(&keys, &[&alice, &bob]);
    server.proc.signal("HUP");
    let reloaded = server.wait_event("keys.reloaded", |_| true);
    assert_eq!(reloaded["trigger"], "SIGHUP");
    assert_eq!(reloaded["keys"], 2);

    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut back = Vec::new();
        let _ = stream.read_to_end(&mut back);
        tx.send(back).unwrap();
    });

    let back = rx.recv_timeout(READY).unwrap();
    assert_eq!(checksum(&back), checksum(&data), "the transfer did not survive the reload");
    assert!(logged_in(&server, &bob), "the reloaded key does not work");
    assert!(server.events("session.revoked").is_empty());
}

#[test]
fn a_removed_key_loses_its_session_and_others_keep_theirs() {
    require("ssh", "openssh-client");
    let dir = bastion_tests::tempdir();
    let alice = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let bob = ClientKey::generate(dir.path(), "bob", "ed25519", None);
    let keys = dir.path().join("authorized_keys");
    write_keys(&keys, &[&alice, &bob]);
    let server = ServerBuilder::new(dir.path())
        .arg("--authorized-keys")
        .arg(&keys)
        .args(["--reload-poll-interval", "100ms"])
        .start();
    let echo = EchoServer::start();
    let (_alice_ssh, alice_ports) = server.tunnel(&alice, &[("127.0.0.1", echo.addr.port())], &[]);
    let (mut bob_ssh, _) = server.tunnel(&bob, &[("127.0.0.1", echo.addr.port())], &[]);

    write_keys(&keys, &[&alice]); // picked up by the file watch, no signal
    let reloaded = server.wait_event("keys.reloaded", |_| true);
    assert_eq!(reloaded["trigger"], "a key file changed");
    let revoked = server.wait_event("session.revoked", |_| true);
    assert_eq!(revoked["fingerprint"], bob.fingerprint());
    assert!(revoked["reason"].as_str().unwrap().contains("not in any authorized_keys"), "{revoked}");
    assert!(bob_ssh.wait_exit(READY).is_some(), "bob is still connected");

    let data = pattern(MIB, 4);
    assert_eq!(checksum(&echo_round_trip(local(alice_ports[0]), &data)), checksum(&data));
    assert_eq!(server.events("session.revoked").len(), 1);
}

#[test]
fn revoking_a_key_by_reload_closes_its_session() {
    require("ssh", "openssh-client");
    let dir = bastion_tests::tempdir();
    let alice = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let revoked = dir.path().join("revoked_keys");
    std::fs::write(&revoked, "").unwrap();
    let server = ServerBuilder::new(dir.path())
        .authorize(&[&alice])
        .arg("--revoked-keys")
        .arg(&revoked)
        .args(["--reload-poll-interval", "1h"])
        .start();
    let echo = EchoServer::start();
    let (mut ssh, _) = server.tunnel(&alice, &[("127.0.0.1", echo.addr.port())], &[]);
    write_keys(&revoked, &[&alice]);
    server.proc.signal("HUP");
    let event = server.wait_event("session.revoked", |_| true);
    assert!(event["reason"].as_str().unwrap().contains("revoked"), "{event}");
    assert!(ssh.wait_exit(READY).is_some());
    assert!(!logged_in(&server, &alice));
}

#[test]
fn a_failed_reload_keeps_the_keys_in_force() {
    require("ssh", "openssh-client");
    let dir = bastion_tests::tempdir();
    let alice = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let keys = dir.path().join("authorized_keys");
    write_keys(&keys, &[&alice]);
    let server = ServerBuilder::new(dir.path())
        .arg("--authorized-keys")
        .arg(&keys)
        .args(["--reload-poll-interval", "1h"])
        .start();
    let echo = EchoServer::start();
    let (mut ssh, ports) = server.tunnel(&alice, &[("127.0.0.1", echo.addr.port())], &[]);

    std::fs::remove_file(&keys).unwrap();
    server.proc.signal("HUP");
    let failed = server.wait_event("keys.reload_failed", |_| true);
    assert!(failed["error"].as_str().unwrap().contains("cannot read"), "{failed}");
    assert_eq!(failed["level"], "ERROR");
    assert!(ssh.is_running());
    assert_eq!(echo_round_trip(local(ports[0]), b"still"), b"still");
    assert!(logged_in(&server, &alice), "the keys in force were dropped");
}

/// Started as root, the server reads its key files before giving up root; a
/// file that 65534 cannot read afterwards (here: in a 0700 directory) could
/// not be reloaded, and the server says so at start instead of ignoring the
/// next edit in silence. (Not root: the owner can read it; no warning.)
#[test]
fn a_key_file_out_of_reach_after_dropping_root_is_reported_at_start() {
    let root = is_root();
    use std::os::unix::fs::PermissionsExt;
    let private = tempfile::Builder::new().permissions(std::fs::Permissions::from_mode(0o700)).tempdir().unwrap();
    let dir = bastion_tests::tempdir();
    let alice = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let keys = private.path().join("authorized_keys");
    write_keys(&keys, &[&alice]);
    let server = ServerBuilder::new(dir.path()).arg("--authorized-keys").arg(&keys).start();
    assert!(logged_in(&server, &alice), "{}", server.proc.stderr().text());
    if root {
        let warning = server.wait_event("keys.reload_unavailable", |_| true);
        assert_eq!(warning["file"], keys.display().to_string());
        assert!(warning["error"].as_str().unwrap().contains("Permission denied"), "{warning}");
    } else {
        assert!(server.events("keys.reload_unavailable").is_empty(), "{}", server.proc.stderr().text());
    }
}
