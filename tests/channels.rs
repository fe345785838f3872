//! Channels that come and go on one long-lived connection (issue 13): whoever
//! closes a channel, the server forgets it, and a tunnel ends with its channel.
//!
//! The clients are paramiko, driven by `tests/hostile.py` (its `churn` and
//! `cancel` modes), so that ten thousand channels take seconds, not the ten
//! thousand `ssh` processes a multiplexing master would need.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bastion_tests::*;
use serde_json::Value;

const USER: &str = "ops";

fn hostile(server: &Server, key: &ClientKey, mode: &str, extra: &[&str]) -> Command {
    require("python3", "python3");
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("hostile.py"))
        .args([mode, "--port", &server.addr.port().to_string(), "--user", USER, "--key"])
        .arg(&key.private)
        .args(extra)
        .stderr(Stdio::inherit());
    cmd
}

/// The server's resident memory, in KiB.
fn rss_kib(server: &Server) -> u64 {
    let status = Path::new("/proc").join(server.proc.child.id().to_string()).join("status");
    proc_status(&status, "VmRSS").trim_end_matches(" kB").trim().parse().unwrap()
}

/// A target that accepts and hangs up at once.
fn hang_up_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    addr
}

/// A target that never says anything and never closes its side; keeps every
/// connection it accepted.
fn silent_target() -> (SocketAddr, Arc<Mutex<Vec<TcpStream>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let keep = accepted.clone();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    (addr, accepted)
}

/// Has the bastion closed its end of this connection? Bytes written after
/// the bastion's half-close reach the bastion if it still holds the socket;
/// once it has closed it, the first write draws a reset and a later one fails.
fn closed_by_bastion(mut stream: &TcpStream) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if stream.write_all(b"?").is_err() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn ten_thousand_channels_closed_by_either_side_leave_no_memory_behind() {
    let dir = tempdir();
    let key = ClientKey::generate(dir.path(), "churn", "ed25519", None);
    // `restrict,port-forwarding`: what the key may do does not change what it can leak.
    let server = ServerBuilder::new(dir.path())
        .authorized_lines(&[format!("restrict,port-forwarding {}", key.public_line)])
        .start();
    let echo = EchoServer::start();
    let hang_up = hang_up_target();
    let mut child = hostile(
        &server,
        &key,
        "churn",
        &[
            "--count",
            "10000",
            "--warmup",
            "100",
            "--target-port",
            &echo.addr.port().to_string(),
            "--closing-port",
            &hang_up.port().to_string(),
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("python3");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ready = || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let fields = json(line.strip_prefix("READY ").unwrap_or_else(|| panic!("hostile.py churn: {line:?}")));
        assert_eq!(fields["alive"], true, "{fields}");
        fields
    };
    ready();
    let after_100 = rss_kib(&server);
    writeln!(stdin).unwrap();
    let all = ready();
    let after_10000 = rss_kib(&server);
    eprintln!(
        "CHANNELS | 10 000 channels on one connection ({all}) | RSS {:.1} MiB after the first 100, {:.1} MiB after all",
        after_100 as f64 / 1024.0,
        after_10000 as f64 / 1024.0
    );
    assert!(
        after_10000 <= after_100 + 1024,
        "RSS grew from {after_100} KiB after 100 channels to {after_10000} KiB after 10 000"
    );
    // Every kind went through: refused commands, tunnels the target ended, tunnels the client ended.
    for kind in ["refused", "target_closed", "client_closed"] {
        assert!(all[kind].as_u64().unwrap() >= 3300, "{all}");
    }
    writeln!(stdin).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "hostile.py churn: {status}");
    assert!(server.events("server.error").is_empty());
}

#[test]
fn a_client_closing_a_tunnel_channel_ends_the_tunnel_and_frees_its_place() {
    let dir = tempdir();
    let key = ClientKey::generate(dir.path(), "cancel", "ed25519", None);
    let server = ServerBuilder::new(dir.path()).args(["--max-channels", "4"]).authorize(&[&key]).start();
    let (target, accepted) = silent_target();
    let out = hostile(&server, &key, "cancel", &["--count", "20", "--target-port", &target.port().to_string()])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let seen: Value = json(String::from_utf8_lossy(&out.stdout).lines().last().unwrap());
    // With --max-channels 4, a tunnel kept open after its channel closed would refuse the fifth.
    assert_eq!(seen["opened"], 20, "{seen}");
    assert_eq!(seen["alive"], true, "{seen}");
    // Each tunnel is reported closed by the client, and its target connection is closed, while the
    // target has said nothing and never closed its side.
    for n in 1..=20 {
        let closed =
            server.wait_event("tunnel.closed", |e| e["tunnel"].as_str().is_some_and(|t| t.ends_with(&format!(".{n}"))));
        assert_eq!(closed["ended_by"], "client closed the channel or the connection", "{closed}");
    }
    let accepted = accepted.lock().unwrap();
    assert_eq!(accepted.len(), 20);
    let open = accepted.iter().filter(|s| !closed_by_bastion(s)).count();
    assert_eq!(open, 0, "target connections the bastion still holds");
}
