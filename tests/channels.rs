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

/// Runs a hostile.py mode to its end; its last line, parsed.
fn outcome(mut cmd: Command) -> Value {
    let out = cmd.output().expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "hostile.py failed: {stdout}");
    json(stdout.lines().last().unwrap_or_else(|| panic!("hostile.py printed nothing")))
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
    let seen =
        outcome(hostile(&server, &key, "cancel", &["--count", "20", "--target-port", &target.port().to_string()]));
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

/// A target that accepts with tiny socket buffers and never reads: the
/// bastion's writes to it are stuck after a few KiB.
fn stuck_target() -> (SocketAddr, Arc<Mutex<Vec<TcpStream>>>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    socket.listen(16).unwrap();
    let listener: TcpListener = socket.into();
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

#[test]
fn small_packets_and_requests_behind_a_stuck_tunnel_do_not_freeze_the_connection() {
    let dir = tempdir();
    let key = ClientKey::generate(dir.path(), "trickle", "ed25519", None);
    let server = ServerBuilder::new(dir.path()).authorize(&[&key]).start();
    let (stuck, _held) = stuck_target();
    let echo = EchoServer::start();
    // Once the tunnel is stuck its queue holds the window (64 packets of 32 KiB); then 300 one-byte
    // data packets (within the tenth of the window tolerated over it) and 300 requests, which use
    // no window: three times the 100 places of the channel's queue.
    let (stuck, echo) = (stuck.port().to_string(), echo.addr.port().to_string());
    let args = ["--count", "300", "--timeout", "10", "--target-port", &stuck, "--closing-port", &echo];
    let seen = outcome(hostile(&server, &key, "stall-then-trickle", &args));
    eprintln!("CHANNELS | stuck tunnel, then 300 x 1-byte packets and 300 requests | {seen}");
    assert_eq!(seen["echoed"], true, "the connection froze behind the stuck tunnel: {seen}");
    assert_eq!(seen["alive"], true, "{seen}");
}

#[test]
fn requests_piling_up_behind_a_stuck_tunnel_end_that_connection_only() {
    let dir = tempdir();
    let key = ClientKey::generate(dir.path(), "flood", "ed25519", None);
    let server = ServerBuilder::new(dir.path()).authorize(&[&key]).start();
    let (stuck, _held) = stuck_target();
    let echo = EchoServer::start();
    // Requests use no window: past 1 024 waiting behind a reader that does not read, the peer is
    // disconnected rather than queued without end.
    let (stuck, echo_port) = (stuck.port().to_string(), echo.addr.port().to_string());
    let args = ["--count", "1100", "--timeout", "5", "--target-port", &stuck, "--closing-port", &echo_port];
    let seen = outcome(hostile(&server, &key, "stall-then-trickle", &args));
    // The server hung up (paramiko may not have noticed yet: the server's log says why).
    assert_ne!(seen["echoed"], true, "{seen}");
    let closed = server.wait_event("connection.closed", |_| true);
    assert!(closed["reason"].as_str().unwrap().contains("more than 1024 channel requests waiting"), "{closed}");
    // The server goes on serving others.
    let (_ssh, ports) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);
    let tunnel = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    assert_eq!(echo_round_trip(tunnel, b"still here"), b"still here");
}

/// Milliseconds since the epoch of a log event's timestamp (RFC 3339, UTC).
fn event_ms(event: &Value) -> i64 {
    let stamp = event["timestamp"].as_str().unwrap();
    let out = Command::new("date").args(["-u", "-d", stamp, "+%s%3N"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

#[test]
fn a_connection_the_server_gives_up_on_takes_its_tunnels_and_target_sockets_with_it() {
    let dir = tempdir();
    let key = ClientKey::generate(dir.path(), "frozen", "ed25519", None);
    let server = ServerBuilder::new(dir.path())
        .args(["--keepalive-interval", "1s", "--keepalive-max", "2"])
        .authorize(&[&key])
        .start();
    let (stuck, held) = stuck_target();
    // A tunnel stuck behind its target, requests piled up behind it, then the client stops
    // altogether (SIGSTOP): the server gives up on the connection.
    let mut child = hostile(
        &server,
        &key,
        "stall-then-trickle",
        &["--count", "300", "--then-hold", "--target-port", &stuck.port().to_string()],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("python3");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let ready = json(line.strip_prefix("READY ").unwrap_or_else(|| panic!("hostile.py: {line:?}")));
    let pid = ready["pid"].as_u64().unwrap().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let closed = server.wait_event("connection.closed", |_| true);
    let tunnel = server.wait_event("tunnel.closed", |_| true);
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    let _ = child.wait();
    let after = event_ms(&tunnel) - event_ms(&closed);
    eprintln!("CHANNELS | given up on: {} | tunnel closed {after} ms later ({})", closed["reason"], tunnel["ended_by"]);
    assert!(after < 1000, "the tunnel outlived its connection by {after} ms: {tunnel}");
    let held = held.lock().unwrap();
    assert_eq!(held.len(), 1);
    assert!(closed_by_bastion(&held[0]), "the target socket outlived the connection");
}

#[test]
fn a_spent_window_budget_slows_the_newest_stream_and_refuses_nothing() {
    let dir = tempdir();
    let key = ClientKey::generate(dir.path(), "budget", "ed25519", None);
    // 4 MiB for the whole server: two stuck tunnels of 2 MiB windows spend it.
    let server = ServerBuilder::new(dir.path()).args(["--window-budget", "4"]).authorize(&[&key]).start();
    let (stuck, _held) = stuck_target();
    let echo = EchoServer::start();
    let (stuck, echo) = (stuck.port().to_string(), echo.addr.port().to_string());
    let args = ["--count", "2", "--stall", "2", "--target-port", &stuck, "--closing-port", &echo];
    let seen = outcome(hostile(&server, &key, "squeeze", &args));
    eprintln!("CHANNELS | window budget 4 MiB, two stuck tunnels, then a new one | {seen}");
    // The newest tunnel opens (nothing is refused) but gets no window while the budget is spent...
    assert_eq!(seen["echoed_while_full"], 0, "{seen}");
    // ...and flows once the full tunnels close and give their windows back.
    assert_eq!(seen["intact"], true, "{seen}");
    assert_eq!(seen["alive"], true, "{seen}");
    assert!(server.events("tunnel.refused").is_empty());
}
