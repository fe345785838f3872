//! SIGTERM drains: no new connections or tunnels, open tunnels may finish
//! within --drain-timeout, the rest are cut, and the process exits 0.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;

use bastion_tests::*;

const MIB: usize = 1024 * 1024;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn sigterm_lets_a_running_transfer_finish_and_refuses_new_tunnels() {
    require("ssh", "openssh-client");
    let dir = bastion_tests::tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let mut server = ServerBuilder::new(dir.path()).authorize(&[&key]).start();
    let data = pattern(10 * MIB, 5);
    let (target, _started) = on_demand_target(data.clone());

    // ssh -L without -N: a session channel, where the shutdown notice appears.
    let port = free_port();
    let mut cmd = server.ssh(&key);
    cmd.args(["-v", "-L", &format!("127.0.0.1:{port}:127.0.0.1:{}", target.port())]).arg(server.destination("dev"));
    let ssh = Proc::spawn(cmd, Stdio::piped());
    assert!(wait_forwards(&ssh, &[port]), "{}", ssh.stderr().text());
    let mut stream = connect_retry(local(port));
    server.wait_event("tunnel.opened", |_| true);

    server.proc.signal("TERM");
    let stopping = server.wait_event("server.stopping", |_| true);
    assert_eq!(stopping["tunnels_open"], 1);
    assert!(
        ssh.stdout().wait_for(READY, |l| l.contains("this bastion is shutting down")).is_some(),
        "{}",
        ssh.stdout().text()
    );

    // A new tunnel is refused while draining.
    let line = refused_line(&ssh, port, "shutting down");
    assert!(line.contains("administratively prohibited"), "{line}");

    // The transfer that was running completes.
    let (tx, rx) = mpsc::channel();
    stream.write_all(b"g").unwrap();
    thread::spawn(move || {
        let mut back = Vec::new();
        let _ = stream.read_to_end(&mut back);
        tx.send(back).unwrap();
    });
    let back = rx.recv_timeout(READY).unwrap();
    assert_eq!(back.len(), data.len());
    assert_eq!(checksum(&back), checksum(&data));

    let status = server.proc.wait_exit(READY).expect("server did not exit");
    assert_eq!(status.code(), Some(0));
    let stopped = server.wait_event("server.stopped", |_| true);
    assert_eq!(
        (stopped["tunnels_open"].as_u64(), stopped["tunnels_drained"].as_u64(), stopped["tunnels_cut"].as_u64()),
        (Some(1), Some(1), Some(0)),
        "{stopped}"
    );
    assert_eq!(stopped["all_closed"], true);
}

#[test]
fn tunnels_still_open_at_the_drain_timeout_are_cut() {
    require("ssh", "openssh-client");
    let dir = bastion_tests::tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let mut server = ServerBuilder::new(dir.path()).args(["--drain-timeout", "1s"]).authorize(&[&key]).start();
    let echo = EchoServer::start();
    let (_ssh, ports) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);
    let mut stream = connect_retry(local(ports[0]));
    stream.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    stream.read_exact(&mut b).unwrap();

    server.proc.signal("TERM");
    stream.set_read_timeout(Some(READY)).unwrap();
    assert_eq!(stream.read(&mut b).unwrap_or(0), 0, "the tunnel was not cut");
    let status = server.proc.wait_exit(READY).expect("server did not exit");
    assert_eq!(status.code(), Some(0));
    let closed = server.wait_event("tunnel.closed", |_| true);
    assert!(closed["ended_by"].as_str().unwrap().contains("--drain-timeout"), "{closed}");
    let stopped = server.wait_event("server.stopped", |_| true);
    assert_eq!((stopped["tunnels_drained"].as_u64(), stopped["tunnels_cut"].as_u64()), (Some(0), Some(1)), "{stopped}");
}
