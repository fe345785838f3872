//! bastion-sshd driven by the real OpenSSH client (and psql), on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use bastion_tests::*;
use tempfile::TempDir;

const MIB: usize = 1024 * 1024;

fn setup() -> (TempDir, ClientKey) {
    require("ssh", "openssh-client");
    require("ssh-keygen", "openssh-client");
    let dir = bastion_tests::tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    (dir, key)
}

/// A host key file made by `bastion-sshd keygen`.
fn host_key(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join(format!("host_key.{}", unique()));
    let out = Command::new(bastion_bin()).arg("keygen").arg("--out").arg(&path).output().unwrap();
    assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
    path
}

fn server(dir: &TempDir, keys: &[&ClientKey]) -> Server {
    ServerBuilder::new(dir.path()).arg("--host-key").arg(host_key(dir.path())).authorize(keys).start()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn local_forward_carries_16_mib_and_20_parallel_connections() {
    let (dir, key) = setup();
    let server = server(&dir, &[&key]);
    let echo = EchoServer::start();
    let (_ssh, ports) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);

    let data = pattern(16 * MIB, 1);
    let back = echo_round_trip(local(ports[0]), &data);
    assert_eq!(back.len(), data.len());
    assert_eq!(checksum(&back), checksum(&data), "16 MiB came back different");

    // The audit log counts every byte, each way.
    let closed = server.wait_event("tunnel.closed", |e| e["bytes_up"] == 16 * MIB as u64);
    assert_eq!(closed["bytes_down"], 16 * MIB as u64);
    assert_eq!(closed["destination"], format!("127.0.0.1:{}", echo.addr.port()));
    assert_eq!(closed["resolved"], echo.addr.to_string());
    assert_eq!(closed["user"], "tunnel");
    assert!(closed["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    assert!(closed["duration_ms"].is_u64());

    let workers: Vec<_> = (0..20)
        .map(|i| {
            let addr = local(ports[0]);
            thread::spawn(move || {
                let data = pattern(256 * 1024, 100 + i);
                checksum(&echo_round_trip(addr, &data)) == checksum(&data)
            })
        })
        .collect();
    for (i, w) in workers.into_iter().enumerate() {
        assert!(w.join().unwrap(), "parallel connection {i} came back different");
    }
}

/// A target that stops reading stops only its own tunnel: the client's other
/// tunnels on the same connection keep flowing. russh used to re-open a
/// channel's window as data arrived, so the stalled tunnel's queue filled and
/// the whole connection stopped (fixed by vendored russh patch 0004).
#[test]
fn a_target_that_stops_reading_does_not_hold_up_the_users_other_tunnels() {
    let (dir, key) = setup();
    let server = server(&dir, &[&key]);
    let echo = EchoServer::start();
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let (accepted, held) = std::sync::mpsc::channel();
    thread::spawn(move || {
        if let Ok((stream, _)) = sink.accept() {
            let _ = accepted.send(stream); // kept open, never read
        }
    });
    let (_ssh, ports) = server.tunnel(&key, &[("127.0.0.1", sink_port), ("127.0.0.1", echo.addr.port())], &[]);

    // Push into the stalled tunnel until at least 2 MiB went in and then nothing
    // more for a second.
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut stalled = connect_retry(local(ports[0]));
    stalled.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let counter = written.clone();
    thread::spawn(move || {
        let chunk = pattern(64 * 1024, 7);
        while stalled.write_all(&chunk).is_ok() {
            counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
        }
    });
    let _target_side = held.recv_timeout(Duration::from_secs(20)).expect("the tunnel never reached the target");
    let mut last = usize::MAX;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = written.load(std::sync::atomic::Ordering::Relaxed);
        if now == last && now >= 2 * MIB {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "after 60 s, {now} bytes had gone into the stalled tunnel");
        last = now;
        thread::sleep(Duration::from_secs(1)); // polls for "no more progress", not a wait for an event
    }

    let data = pattern(4 * MIB, 8);
    let back = echo_round_trip(local(ports[1]), &data);
    assert_eq!(checksum(&back), checksum(&data), "the second tunnel came back different");
}

#[test]
fn target_that_speaks_first_is_heard() {
    let (dir, key) = setup();
    let server = server(&dir, &[&key]);
    let smtp = EchoServer::start_with_greeting(Some(b"220 mail.internal ESMTP ready\r\n"));
    let (_ssh, ports) = server.tunnel(&key, &[("127.0.0.1", smtp.addr.port())], &[]);
    let mut stream = connect_retry(local(ports[0]));
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut greeting = [0u8; 31];
    stream.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220 mail.internal ESMTP ready\r\n");
}

#[test]
fn psql_through_the_tunnel() {
    let (dir, key) = setup();
    require("psql", "postgresql-client");
    let pg_dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(pg_dir.path());
    let server = server(&dir, &[&key]);
    let (_ssh, ports) = server.tunnel(&key, &[("127.0.0.1", pg.port)], &[]);
    let out = psql(ports[0], "select 1 + 1, current_user");
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2|app");
}

/// `ssh -L` without `-N`, stdin not a terminal: banner, tunnel works, session stays.
#[test]
fn session_without_dash_n_keeps_the_tunnel_open() {
    let (dir, key) = setup();
    let server = server(&dir, &[&key]);
    let echo = EchoServer::start();
    let port = free_port();
    let mut cmd = server.ssh(&key);
    cmd.args(["-v", "-L", &format!("127.0.0.1:{port}:127.0.0.1:{}", echo.addr.port())]).arg(server.destination("dev"));
    let mut ssh = Proc::spawn(cmd, Stdio::piped());
    assert!(wait_forwards(&ssh, &[port]), "{}", ssh.stderr().text());
    let banner = ssh.stdout().wait_for(READY, |l| l.contains("only forwards ports"));
    assert!(banner.is_some(), "no banner; stdout: {}\nstderr: {}", ssh.stdout().text(), ssh.stderr().text());
    assert!(ssh.stdout().wait_for(READY, |l| l.contains("Ctrl-C or Ctrl-D")).is_some());

    // Input other than Ctrl-C/Ctrl-D is ignored; the tunnel keeps working.
    ssh.child.stdin.as_mut().unwrap().write_all(b"ls -la\n").unwrap();
    let data = pattern(MIB, 7);
    assert_eq!(checksum(&echo_round_trip(local(port), &data)), checksum(&data));
    assert!(ssh.is_running(), "session closed on ordinary input");

    // Closing stdin (EOF) does not end the session either: the tunnel is what matters.
    drop(ssh.child.stdin.take());
    assert_eq!(checksum(&echo_round_trip(local(port), &data)), checksum(&data));
    assert!(ssh.is_running(), "session closed on stdin EOF");
    server.wait_event("session.shell", |_| true);
}

/// `ssh -tt -L …`: a pty session with a banner in CRLF; Ctrl-D closes it, exit 0.
#[test]
fn pty_session_shows_banner_and_ctrl_d_closes_it() {
    let (dir, key) = setup();
    let server = server(&dir, &[&key]);
    let echo = EchoServer::start();
    let port = free_port();
    let mut cmd = server.ssh(&key);
    cmd.args(["-v", "-tt", "-L", &format!("127.0.0.1:{port}:127.0.0.1:{}", echo.addr.port())])
        .arg(server.destination("dev"));
    let mut ssh = Proc::spawn(cmd, Stdio::piped());
    assert!(wait_forwards(&ssh, &[port]), "{}", ssh.stderr().text());
    assert!(ssh.stdout().wait_for(READY, |l| l.contains("only forwards ports")).is_some(), "{}", ssh.stdout().text());
    let data = pattern(MIB, 8);
    assert_eq!(checksum(&echo_round_trip(local(port), &data)), checksum(&data));

    ssh.child.stdin.as_mut().unwrap().write_all(&[0x04]).unwrap();
    let status = ssh.wait_exit(READY).expect("ssh did not exit after Ctrl-D");
    assert_eq!(status.code(), Some(0), "{}", ssh.stderr().text());
    server.wait_event("session.closed", |_| true);
}

#[test]
fn commands_and_subsystems_are_refused_with_a_message_and_exit_1() {
    let (dir, key) = setup();
    let server = server(&dir, &[&key]);

    let out = server.ssh_output(&key, &[&server.destination("dev"), "true"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("commands are not run here; this bastion only forwards ports"), "{stderr}");
    assert!(out.stdout.is_empty());
    let refused = server.wait_event("request.refused", |e| e["request"] == "exec");
    assert!(refused["reason"].as_str().unwrap().contains("\"true\""));

    let out = server.ssh_output(&key, &["-s", &server.destination("dev"), "sftp"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("subsystem \"sftp\" is not available"), "{stderr}");
    server.wait_event("request.refused", |e| e["request"] == "subsystem");

    // The real sftp client fails too.
    require("sftp", "openssh-client");
    let out = Command::new("sftp")
        .args(["-F", "/dev/null", "-b", "-", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", server.known_hosts.display()))
        .arg("-i")
        .arg(&key.private)
        .args(["-P", &server.addr.port().to_string()])
        .arg(server.destination("dev"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn remote_forwarding_and_agent_forwarding_are_refused() {
    let (dir, key) = setup();
    let server = server(&dir, &[&key]);

    let out = server.ssh_output(&key, &["-N", "-R", "0:127.0.0.1:9", &server.destination("dev")]);
    assert_eq!(out.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("remote port forwarding failed"), "{stderr}");
    server.wait_event("request.refused", |e| e["request"] == "tcpip-forward");

    // -A with a running agent: the request is refused (the client does not
    // wait for an answer, so the audit log is where it shows).
    require("ssh-agent", "openssh-client");
    let sock = dir.path().join("agent.sock");
    let mut agent = Proc::spawn(
        {
            let mut c = Command::new("ssh-agent");
            c.args(["-D", "-a"]).arg(&sock);
            c
        },
        Stdio::null(),
    );
    agent.stdout().wait_for(READY, |l| l.contains("SSH_AUTH_SOCK"));
    let mut cmd = server.ssh(&key);
    cmd.args(["-A", "-tt"]).arg(server.destination("dev")).env("SSH_AUTH_SOCK", &sock);
    let mut ssh = Proc::spawn(cmd, Stdio::piped());
    server.wait_event("request.refused", |e| e["request"] == "auth-agent-req");
    ssh.child.stdin.as_mut().unwrap().write_all(&[0x03]).unwrap();
    assert!(ssh.wait_exit(READY).is_some(), "Ctrl-C did not close the session");
    assert!(agent.is_running());
}

#[test]
fn only_publickey_is_offered_and_unknown_keys_are_refused() {
    let (dir, key) = setup();
    let stranger = ClientKey::generate(dir.path(), "stranger", "ed25519", None);
    let server = server(&dir, &[&key]);

    // Password and keyboard-interactive: not even offered.
    let out = server.ssh_output(
        &key,
        &["-o", "PreferredAuthentications=password,keyboard-interactive", &server.destination("dev"), "true"],
    );
    assert_eq!(out.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission denied (publickey)"), "{stderr}");

    let out = server.ssh_output(&stranger, &[&server.destination("dev"), "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied (publickey)"));
    let refused = server.wait_event("auth.refused", |e| e["fingerprint"] == stranger.fingerprint());
    assert!(refused["reason"].as_str().unwrap().contains("not in any authorized_keys"));
    assert_eq!(refused["peer"].as_str().unwrap().split(':').next(), Some("127.0.0.1"));

    // And the next client is served.
    let echo = EchoServer::start();
    let (_ssh, ports) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);
    assert_eq!(echo_round_trip(local(ports[0]), b"still here"), b"still here");
}

#[test]
fn rsa_keys_log_in_with_sha2_and_are_refused_with_sha1() {
    let (dir, _) = setup();
    let rsa = ClientKey::generate(dir.path(), "rsa", "rsa", Some(3072));
    let server = server(&dir, &[&rsa]);
    for alg in ["rsa-sha2-256", "rsa-sha2-512"] {
        let out = server
            .ssh_output(&rsa, &["-o", &format!("PubkeyAcceptedAlgorithms={alg}"), &server.destination("dev"), "true"]);
        // Exit 1 with our message: authenticated, then the command was refused.
        assert_eq!(out.status.code(), Some(1), "{alg}: {}", String::from_utf8_lossy(&out.stderr));
        server.wait_event("auth.accepted", |e| e["algorithm"] == alg);
    }
    let out = server.ssh_output(&rsa, &["-o", "PubkeyAcceptedAlgorithms=ssh-rsa", &server.destination("dev"), "true"]);
    assert_eq!(out.status.code(), Some(255), "ssh-rsa (SHA-1) was accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied (publickey)"));
    assert!(server.events("auth.accepted").iter().all(|e| e["algorithm"] != "ssh-rsa"));

    // Still serving.
    let out =
        server.ssh_output(&rsa, &["-o", "PubkeyAcceptedAlgorithms=rsa-sha2-256", &server.destination("dev"), "true"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn refused_target_fails_that_tunnel_only() {
    let (dir, key) = setup();
    let server = server(&dir, &[&key]);
    let echo = EchoServer::start();
    let closed = free_port(); // nothing listens here
    let (mut ssh, ports) = server.tunnel(&key, &[("127.0.0.1", closed), ("127.0.0.1", echo.addr.port())], &[]);

    let mut stream = connect_retry(local(ports[0]));
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(stream.read(&mut buf).unwrap_or(0), 0, "a refused tunnel must close the local connection");
    let line = ssh
        .stderr()
        .wait_for(READY, |l| l.contains("open failed"))
        .unwrap_or_else(|| panic!("ssh printed no failure:\n{}", ssh.stderr().text()));
    assert!(line.contains("connect failed"), "{line}");
    assert!(line.contains(&format!("connect to 127.0.0.1:{closed}")), "{line}");
    assert!(line.to_lowercase().contains("refused"), "{line}");
    server.wait_event("tunnel.failed", |e| e["destination"] == format!("127.0.0.1:{closed}"));

    // Same connection, other tunnel: unaffected.
    assert!(ssh.is_running(), "the SSH session ended after a failed tunnel");
    let data = pattern(MIB, 3);
    assert_eq!(checksum(&echo_round_trip(local(ports[1]), &data)), checksum(&data));
}

#[test]
fn unreachable_target_times_out_with_a_reason() {
    let (dir, key) = setup();
    let (_listener, addr) = full_listener();
    let server = ServerBuilder::new(dir.path())
        .arg("--host-key")
        .arg(host_key(dir.path()))
        .args(["--connect-timeout", "1s"])
        .authorize(&[&key])
        .start();
    let (ssh, ports) = server.tunnel(&key, &[("127.0.0.1", addr.port())], &[]);
    let mut stream = connect_retry(local(ports[0]));
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(stream.read(&mut buf).unwrap_or(0), 0);
    let line = ssh.stderr().wait_for(READY, |l| l.contains("open failed")).unwrap_or_else(|| ssh.stderr().text());
    assert!(line.contains("timed out after 1s"), "{line}");
    server.wait_event("tunnel.failed", |e| e["reason"].as_str().unwrap_or("").contains("timed out"));
}

/// A loopback listener that never accepts, with its accept queue full: the
/// kernel drops further SYNs, so a connect to it hangs like one to a
/// firewalled host (without sending anything off this machine).
fn full_listener() -> (socket2::Socket, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&local(0).into()).unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => fillers.push(s),
            Err(_) => break, // the queue is full: this SYN was dropped
        }
        assert!(fillers.len() < 64, "the accept queue never filled");
    }
    std::mem::forget(fillers); // keep the queue full for the rest of the test
    (socket, addr)
}

#[test]
fn dynamic_forward_socks_reaches_the_target() {
    let (dir, key) = setup();
    let server = server(&dir, &[&key]);
    let echo = EchoServer::start();
    let port = free_port();
    let mut cmd = server.ssh(&key);
    cmd.args(["-v", "-N", "-D", &format!("127.0.0.1:{port}")]).arg(server.destination("dev"));
    let ssh = Proc::spawn(cmd, Stdio::null());
    assert!(wait_forwards(&ssh, &[port]), "{}", ssh.stderr().text());

    let mut stream = socks5_connect(local(port), echo.addr);
    stream.write_all(b"through socks").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"through socks");
    server.wait_event("tunnel.closed", |e| e["destination"] == echo.addr.to_string() && e["bytes_up"] == 13);
}

/// `ssh -J bastion host`: the jump is a direct-tcpip channel to host:22.
/// The SSH server behind the bastion is the bastion itself here (the
/// namespace suites put a real sshd in a private network).
#[test]
fn jump_host_opens_an_ssh_session_behind_the_bastion() {
    let (dir, key) = setup();
    let server = server(&dir, &[&key]);
    let config = ssh_config(&server, &key, dir.path());
    let port = server.addr.port().to_string();
    let out = Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args(["-J", &format!("jump@127.0.0.1:{port}"), "-p", &port, "inner@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The inner session authenticated through the jump and was refused its command.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("commands are not run here"), "{stderr}");
    server.wait_event("tunnel.opened", |e| e["destination"] == format!("127.0.0.1:{port}") && e["user"] == "jump");
    server.wait_event("auth.accepted", |e| e["user"] == "inner");
}

/// A target that never closes its side must not keep a tunnel (and its
/// socket) alive after the SSH connection is gone.
#[test]
fn tunnels_end_with_their_ssh_connection() {
    let (dir, key) = setup();
    let server = server(&dir, &[&key]);
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap();
    let (saw_eof_tx, saw_eof) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let (mut s, _) = target.accept().unwrap();
        let mut hello = [0u8; 5];
        s.read_exact(&mut hello).unwrap();
        saw_eof_tx.send(hello.to_vec()).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        saw_eof_tx.send(rest).unwrap();
        thread::sleep(Duration::from_secs(120)); // holds the socket open, never closes
    });
    let (ssh, ports) = server.tunnel(&key, &[("127.0.0.1", target_addr.port())], &[]);
    let mut stream = connect_retry(local(ports[0]));
    stream.write_all(b"hello").unwrap();
    assert_eq!(saw_eof.recv_timeout(READY).unwrap(), b"hello");

    drop(ssh); // the client goes away without closing anything cleanly
    assert_eq!(saw_eof.recv_timeout(READY).unwrap(), b"", "the target did not see the tunnel end");
    let closed = server.wait_event("tunnel.closed", |_| true);
    assert_eq!(closed["bytes_up"], 5);
    assert_eq!(closed["bytes_down"], 0);
    server.wait_event("connection.closed", |_| true);
}

#[test]
fn x11_forwarding_is_refused() {
    let (dir, key) = setup();
    let server = server(&dir, &[&key]);
    let mut cmd = server.ssh(&key);
    // No X server is needed: ssh asks before anything would connect to it.
    cmd.args(["-X", "-tt"]).arg(server.destination("dev")).env("DISPLAY", "127.0.0.1:99");
    let mut ssh = Proc::spawn(cmd, Stdio::piped());
    let refused = server.wait_event("request.refused", |e| e["request"] == "x11-req");
    assert!(refused["reason"].as_str().unwrap().contains("X11"));
    ssh.child.stdin.as_mut().unwrap().write_all(&[0x04]).unwrap();
    assert!(ssh.wait_exit(READY).is_some());
}

/// The README's client guide `~/.ssh/config` stanza, as written but for where
/// things are here: `ssh db-tunnel` opens the forward, runs no session, and
/// the bastion carries it; `ssh -G` resolves the jump host alias.
#[test]
fn the_readme_ssh_config_stanza_works() {
    let (dir, key) = setup();
    let stanza = readme_sshconfig("Host bastion db-tunnel");
    let server = server(&dir, &[&key]);
    let echo = EchoServer::start();
    let port = free_port();
    let mut config = String::new();
    for line in stanza.lines() {
        let replaced = match line.split_whitespace().next() {
            Some("HostName") if line.contains("bastion.eu-west-1.example.com") => {
                format!("    HostName 127.0.0.1\n    Port {}", server.addr.port())
            }
            Some("IdentityFile") => format!("    IdentityFile {}", key.private.display()),
            Some("UserKnownHostsFile") => format!("    UserKnownHostsFile {}", server.known_hosts.display()),
            Some("LocalForward") => format!("    LocalForward 127.0.0.1:{port} 127.0.0.1:{}", echo.addr.port()),
            _ => line.to_string(),
        };
        config.push_str(&replaced);
        config.push('\n');
    }
    let path = dir.path().join("ssh_config");
    std::fs::write(&path, &config).unwrap();

    let resolved = Command::new("ssh").arg("-F").arg(&path).args(["-G", "admin-box"]).output().unwrap();
    let resolved = String::from_utf8_lossy(&resolved.stdout);
    assert!(resolved.lines().any(|l| l == "proxyjump bastion"), "{resolved}");

    let mut cmd = Command::new("ssh");
    cmd.arg("-F").arg(&path).args(["-v", "-o", "BatchMode=yes", "db-tunnel"]);
    let ssh = Proc::spawn(cmd, Stdio::null());
    assert!(wait_forwards(&ssh, &[port]), "{}\n{config}", ssh.stderr().text());
    let data = pattern(256 * 1024, 7);
    assert_eq!(checksum(&echo_round_trip(local(port), &data)), checksum(&data));
    let opened = server.wait_event("tunnel.opened", |_| true);
    assert_eq!(opened["user"], "alice");
    assert!(server.events("session.shell").is_empty(), "SessionType none opened a session");
}
