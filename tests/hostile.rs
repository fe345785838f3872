//! Hostile peers (issue 6): before and after authentication, the server stays
//! up, its memory stays bounded, and another user's tunnel, busy with
//! checksummed transfers the whole time, never notices.
//!
//! The attacks that need packets no client sends are in `tests/hostile.py`
//! (the transport by hand before authentication, paramiko after it), run by
//! the `python3` on PATH (the README's test command puts its venv first).
//! Each test prints one `HOSTILE` line with what it measured; SECURITY.md's
//! table is made from them.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bastion_tests::*;
use serde_json::Value;
use tempfile::TempDir;

const USER: &str = "ops";

/// A server with two users: `attacker` does the attack, `bystander` holds a
/// tunnel to an echo server and pushes checksummed data through it meanwhile.
struct Fixture {
    server: Server,
    attacker: ClientKey,
    echo: EchoServer,
    bystander_port: u16,
    _bystander_ssh: Proc,
    _dir: TempDir,
}

/// What the kernel says about the server process.
#[derive(Clone, Copy, Debug)]
struct Memory {
    rss_kib: u64,
    peak_kib: u64,
    fds: usize,
}

impl Fixture {
    fn new(args: &[&str]) -> Self {
        require("ssh", "openssh-client");
        require_paramiko();
        let dir = bastion_tests::tempdir();
        let attacker = ClientKey::generate(dir.path(), "attacker", "ed25519", None);
        let bystander = ClientKey::generate(dir.path(), "bystander", "ed25519", None);
        let server = ServerBuilder::new(dir.path()).args(args).authorize(&[&attacker, &bystander]).start();
        let echo = EchoServer::start();
        let (ssh, ports) = server.tunnel(&bystander, &[("127.0.0.1", echo.addr.port())], &[]);
        Fixture { server, attacker, echo, bystander_port: ports[0], _bystander_ssh: ssh, _dir: dir }
    }

    fn memory(&self) -> Memory {
        let pid = self.server.proc.child.id();
        let status = Path::new("/proc").join(pid.to_string()).join("status");
        let kib = |field| proc_status(&status, field).trim_end_matches(" kB").trim().parse::<u64>().unwrap();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
        Memory { rss_kib: kib("VmRSS"), peak_kib: kib("VmHWM"), fds }
    }

    /// `python3 tests/hostile.py MODE` against this server, as the attacker.
    fn hostile(&self, mode: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("hostile.py"))
            .args([mode, "--port", &self.server.addr.port().to_string(), "--user", USER, "--key"])
            .arg(&self.attacker.private)
            .args(extra);
        cmd
    }

    /// Runs a mode to its end; its JSON result.
    fn run(&self, mode: &str, extra: &[&str]) -> Value {
        let out = self.hostile(mode, extra).stderr(Stdio::inherit()).output().expect("python3");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "hostile.py {mode} failed: {stdout}");
        json(stdout.lines().last().unwrap_or_else(|| panic!("hostile.py {mode} printed nothing")))
    }

    /// Starts a "hold" mode; returns it (holding its connection until dropped) and its READY result.
    fn hold(&self, mode: &str, extra: &[&str]) -> (Held, Value) {
        let mut child =
            self.hostile(mode, extra).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("python3");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let ready = line.strip_prefix("READY ").unwrap_or_else(|| panic!("hostile.py {mode}: {line:?}"));
        let value = json(ready);
        (Held { child, _stdout: stdout }, value)
    }

    /// Checksummed round trips through the bystander's tunnel, one after another, until stopped.
    fn bystander(&self) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = SocketAddr::from(([127, 0, 0, 1], self.bystander_port));
        let flag = stop.clone();
        let worker = thread::spawn(move || {
            let mut done = 0usize;
            let data = pattern(4 << 20, 6);
            while done == 0 || !flag.load(Ordering::SeqCst) {
                let back = echo_round_trip(addr, &data);
                assert!(
                    back == data,
                    "the bystander's transfer {done} came back wrong ({} of {} bytes; also seen when the test already failed and tore the tunnel down)",
                    back.len(),
                    data.len()
                );
                done += 1;
            }
            done
        });
        Bystander { stop, worker }
    }

    /// The server is up, and the bystander's tunnel carried every transfer unchanged.
    fn bystander_unharmed(&mut self, bystander: Bystander) -> usize {
        bystander.stop.store(true, Ordering::SeqCst);
        let transfers = bystander.worker.join().unwrap_or_else(|_| {
            panic!(
                "the bystander's transfer failed; the server's connection.closed events: {:?}",
                self.server.events("connection.closed")
            )
        });
        assert!(self.server.proc.is_running(), "the server died:\n{}", self.server.proc.stderr().text());
        assert!(
            self.server.events("server.error").is_empty() && !self.server.proc.stderr().text().contains("panicked"),
            "{}",
            self.server.proc.stderr().text()
        );
        transfers
    }

    /// Waits for the server's descriptors to come back to `before` (the bystander stopped).
    fn fds_back_to(&self, before: Memory, what: &str) {
        let deadline = Instant::now() + READY;
        while self.memory().fds > before.fds && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(self.memory().fds, before.fds, "{what}");
    }

    fn report(&self, attack: &str, before: Memory, outcome: &str, transfers: usize) {
        let after = self.memory();
        eprintln!(
            "HOSTILE | {attack} | {outcome} | RSS {:.1} MiB before, {:.1} MiB after, peak {:.1} MiB | fds {} -> {} | bystander: {transfers} x 4 MiB intact",
            before.rss_kib as f64 / 1024.0,
            after.rss_kib as f64 / 1024.0,
            after.peak_kib as f64 / 1024.0,
            before.fds,
            after.fds,
        );
    }

    /// Peak RSS must stay under `mib` MiB (the whole process, attack included).
    fn assert_peak_below(&self, mib: u64) {
        let peak = self.memory().peak_kib;
        assert!(peak < mib * 1024, "peak RSS {:.1} MiB, bound {mib} MiB", peak as f64 / 1024.0);
    }

    fn target(&self) -> String {
        self.echo.addr.port().to_string()
    }
}

struct Bystander {
    stop: Arc<AtomicBool>,
    worker: thread::JoinHandle<usize>,
}

/// A hostile.py process in a "hold" mode; dropping it closes its stdin, and it exits.
struct Held {
    child: Child,
    _stdout: BufReader<ChildStdout>,
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if self.child.wait_timeout_or_kill(Duration::from_secs(10)).is_none() {
            eprintln!("hostile.py did not exit; killed");
        }
    }
}

trait WaitTimeout {
    fn wait_timeout_or_kill(&mut self, limit: Duration) -> Option<std::process::ExitStatus>;
}

impl WaitTimeout for Child {
    fn wait_timeout_or_kill(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.kill();
        let _ = self.wait();
        None
    }
}

fn require_paramiko() {
    require("python3", "python3");
    let probe = Command::new("python3").args(["-c", "import paramiko"]).output().expect("python3");
    assert!(
        probe.status.success(),
        "python3 on PATH cannot import paramiko (pip install paramiko==5.1.0 into a venv first on PATH)\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
}

/// A tunnel target that accepts and never reads a byte.
fn sink() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, accepted)
}

/// A tunnel target that writes without end to everyone who connects; counts what the kernel took.
fn firehose() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let total = written.clone();
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let total = total.clone();
            thread::spawn(move || {
                let chunk = vec![0x5au8; 64 * 1024];
                while let Ok(n) = stream.write(&chunk) {
                    total.fetch_add(n as u64, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, written)
}

/// Waits until `counter` has not moved for a second: the flow has stalled. Returns its value.
fn until_still(counter: &AtomicU64) -> u64 {
    let deadline = Instant::now() + READY;
    let mut last = counter.load(Ordering::SeqCst);
    let mut since = Instant::now();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        let now = counter.load(Ordering::SeqCst);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= Duration::from_secs(1) {
            return now;
        }
    }
    panic!("the flow never stalled ({last} bytes)");
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

// ------------------------------------------------------------------ before authentication

#[test]
fn random_bytes_and_an_endless_banner_are_cut_off() {
    let mut f = Fixture::new(&[]);
    let before = f.memory();
    let bystander = f.bystander();

    let random = f.run("random-banner", &[]);
    assert_eq!(random["closed"], true, "{random}");
    let endless = f.run("endless-banner", &[]);
    assert_eq!(endless["closed"], true, "{endless}");
    // russh reads at most 256 bytes of identification line (RFC 4253 says 255 and CR LF).
    let accepted = endless["sent"].as_u64().unwrap();
    assert!(accepted < 8 << 20, "the server read {accepted} bytes of banner");
    let closed = f.server.events("connection.closed");
    assert!(closed.len() >= 2, "{closed:?}");

    let transfers = f.bystander_unharmed(bystander);
    f.assert_peak_below(64);
    f.report(
        "random bytes for a banner; a banner line that never ends",
        before,
        &format!("both closed by the server; the endless line was cut after {} sent", mib(accepted)),
        transfers,
    );
}

#[test]
fn ten_thousand_connections_without_a_banner_leave_nothing_behind() {
    let mut f = Fixture::new(&["--max-startups", "100", "--per-source-max-startups", "10"]);
    let before = f.memory();
    let bystander = f.bystander();
    let started = Instant::now();
    let addr = f.server.addr;
    let workers: Vec<_> = (0..4u8)
        .map(|w| {
            thread::spawn(move || {
                let mut made = 0;
                for i in 0..2500u32 {
                    // 250 sources per worker, 10 connections each, in turn.
                    let source = Ipv4Addr::new(127, 1 + w, (i % 250) as u8, 1);
                    if let Ok(stream) = connect_from(source, addr) {
                        made += 1;
                        drop(stream);
                    }
                }
                made
            })
        })
        .collect();
    let made: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(made, 10_000);

    let transfers = f.bystander_unharmed(bystander);
    // Every one of them is closed and forgotten.
    f.fds_back_to(before, "file descriptors leaked");
    f.assert_peak_below(64);
    f.report(
        "10 000 connections that close before a banner (40 sources)",
        before,
        &format!("all closed, no descriptor left; {seconds:.1} s for the 10 000"),
        transfers,
    );
}

#[test]
fn five_hundred_half_open_connections_from_one_source_leave_room_for_others() {
    let mut f = Fixture::new(&[]);
    let before = f.memory();
    let bystander = f.bystander();
    let flood: Vec<TcpStream> =
        (0..500).filter_map(|_| connect_from(Ipv4Addr::new(127, 0, 0, 9), f.server.addr).ok()).collect();
    let admitted = flood.iter().filter(|s| !closed_without_banner(s)).count();
    assert_eq!(admitted, 5, "per-source limit (default 5)");
    // Another user logs in and opens a tunnel while the 5 sit there.
    let (_ssh, ports) = f.server.tunnel(&f.attacker, &[("127.0.0.1", f.echo.addr.port())], &["-b", "127.0.0.10"]);
    let data = pattern(1 << 20, 9);
    assert_eq!(echo_round_trip(SocketAddr::from(([127, 0, 0, 1], ports[0])), &data), data);
    let transfers = f.bystander_unharmed(bystander);
    f.assert_peak_below(64);
    f.report(
        "500 half-open connections held from one source (slowloris)",
        before,
        "5 admitted (per-source limit), 495 closed at once; a new login from elsewhere works",
        transfers,
    );
    drop(flood);
}

#[test]
fn a_client_that_stops_reading_mid_kex_is_dropped_at_the_login_grace_time() {
    let mut f = Fixture::new(&["--login-grace-time", "3s"]);
    let before = f.memory();
    let bystander = f.bystander();
    let (_held, _) = f.hold("stop-reading", &[]);
    let started = Instant::now();
    let closed = f.server.wait_event("connection.closed", |e| e["reason"].as_str().unwrap_or("").contains("grace"));
    let seconds = started.elapsed().as_secs_f64();
    let transfers = f.bystander_unharmed(bystander);
    f.fds_back_to(before, &format!("the stuck connection still holds a descriptor after {closed}"));
    f.assert_peak_below(64);
    f.report(
        "a client that stops reading mid key exchange",
        before,
        &format!("dropped {seconds:.1} s later (login grace time 3 s): \"{}\"", closed["reason"].as_str().unwrap()),
        transfers,
    );
}

#[test]
fn a_client_that_stops_reading_altogether_is_dropped() {
    let mut f = Fixture::new(&["--keepalive-interval", "1s", "--keepalive-max", "2"]);
    let (target, written) = firehose();
    let before = f.memory();
    let bystander = f.bystander();
    let (ssh, ports) = f.server.tunnel(&f.attacker, &[("127.0.0.1", target.port())], &[]);
    let mut local = connect_retry(SocketAddr::from(([127, 0, 0, 1], ports[0])));
    let mut first = [0u8; 1 << 16];
    std::io::Read::read_exact(&mut local, &mut first).unwrap();
    // The laptop's ssh stops (SIGSTOP): the kernel still acknowledges, nothing is read.
    ssh.signal("STOP");
    let stopped = Instant::now();
    // The attacker's tunnel, by its destination: the bystander opens tunnels all along.
    let destination = format!("127.0.0.1:{}", target.port());
    let conn = f.server.wait_event("tunnel.opened", |e| e["destination"] == destination.as_str())["conn"].clone();
    let closed = f.server.wait_event("connection.closed", |e| e["conn"] == conn);
    let seconds = stopped.elapsed().as_secs_f64();
    ssh.signal("CONT");
    let transfers = f.bystander_unharmed(bystander);
    f.assert_peak_below(96);
    f.report(
        "an authenticated client that stops reading altogether (ssh stopped with SIGSTOP) while its target streams",
        before,
        &format!(
            "dropped {seconds:.1} s later (keepalive 1 s x 2): \"{}\"; {} had left the target",
            closed["reason"].as_str().unwrap(),
            mib(written.load(Ordering::SeqCst))
        ),
        transfers,
    );
}

#[test]
fn an_oversized_packet_length_is_refused_without_allocating_it() {
    let mut f = Fixture::new(&[]);
    let before = f.memory();
    let bystander = f.bystander();
    let result = f.run("oversized-packet", &[]);
    assert_eq!(result["closed"], true, "{result}");
    let closed = f.server.wait_event("connection.closed", |e| e["reason"].as_str().is_some());
    let transfers = f.bystander_unharmed(bystander);
    f.assert_peak_below(64);
    f.report(
        "a packet length of 4 GiB",
        before,
        &format!("closed: \"{}\"", closed["reason"].as_str().unwrap()),
        transfers,
    );
}

#[test]
fn the_all_zero_curve25519_value_ends_the_key_exchange() {
    let mut f = Fixture::new(&[]);
    let before = f.memory();
    let bystander = f.bystander();
    let result = f.run("zero-curve25519", &[]);
    assert_eq!(result["replied"], false, "the server answered a low-order point: {result}");
    let closed = f.server.wait_event("connection.closed", |_| true);
    assert!(f.server.events("auth.accepted").len() <= 1, "only the bystander logged in");
    let transfers = f.bystander_unharmed(bystander);
    f.report(
        "the all-zero curve25519 public value",
        before,
        &format!("no KEX_ECDH_REPLY; closed: \"{}\"", closed["reason"].as_str().unwrap_or("?")),
        transfers,
    );
}

// ------------------------------------------------------------------ after authentication

#[test]
fn ten_thousand_channel_opens_on_one_connection() {
    let mut f = Fixture::new(&[]);
    let before = f.memory();
    let bystander = f.bystander();
    let result = f.run("channel-flood", &["--count", "10000", "--target-port", &f.target()]);
    assert_eq!(result["answered"], true, "{result}");
    assert_eq!(result["confirmed"], 64, "--max-channels default is 64: {result}");
    assert_eq!(result["failed"], 10_000 - 64, "{result}");
    assert_eq!(result["alive"], true, "{result}");
    let transfers = f.bystander_unharmed(bystander);
    f.assert_peak_below(96);
    f.report(
        "10 000 channel opens on one connection, without waiting for answers",
        before,
        &format!("64 opened, 9 936 refused, all answered in {} s; the connection still answers", result["seconds"]),
        transfers,
    );
}

#[test]
fn window_adjustments_that_overflow_are_harmless() {
    let mut f = Fixture::new(&[]);
    let before = f.memory();
    let bystander = f.bystander();
    let result = f.run("window-overflow", &["--target-port", &f.target()]);
    assert_eq!(result["echoed"], true, "{result}");
    assert_eq!(result["alive"], true, "{result}");
    let transfers = f.bystander_unharmed(bystander);
    f.report(
        "WINDOW_ADJUST of 2^32-1 twice, 2^31 and 0 on one channel",
        before,
        "the window saturates; 1 MiB through the same channel comes back intact",
        transfers,
    );
}

#[test]
fn messages_for_channels_that_do_not_exist_are_ignored() {
    let mut f = Fixture::new(&[]);
    let before = f.memory();
    let bystander = f.bystander();
    let result = f.run("no-such-channel", &["--target-port", &f.target()]);
    let outcome = &result["outcome"];
    let mut closing: Vec<String> = vec![];
    for (kind, targets) in outcome.as_object().expect("outcome") {
        for (which, what) in targets.as_object().unwrap() {
            assert!(what == "ignored" || what == "closed", "{kind} to a {which} channel: {what}");
            if what == "closed" {
                closing.push(format!("{kind} ({which})"));
            }
        }
    }
    let mut reasons: Vec<String> = f
        .server
        .events("connection.closed")
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        // What paramiko's own close looks like from the server is not the point.
        .filter(|r| !["client disconnected", "reset by peer", "early eof", "Broken pipe"].iter().any(|n| r.contains(n)))
        .collect();
    reasons.sort();
    reasons.dedup();
    eprintln!("no-such-channel: {result}; reasons {reasons:?}");
    let transfers = f.bystander_unharmed(bystander);
    f.report(
        "data, requests, EOF, close, confirmations for never-opened and closed channels",
        before,
        &format!("all ignored except: {} (connection closed: {reasons:?})", closing.join(", ")),
        transfers,
    );
}

#[test]
fn tunnels_the_client_never_reads_hold_bounded_memory() {
    let mut f = Fixture::new(&[]);
    let (target, written) = firehose();
    let before = f.memory();
    let bystander = f.bystander();
    let (_held, ready) = f.hold("never-read", &["--count", "64", "--target-port", &target.port().to_string()]);
    assert_eq!(ready["channels"], 64, "{ready}");
    let stalled_at = until_still(&written);
    let during = f.memory();
    let transfers = f.bystander_unharmed(bystander);
    f.assert_peak_below(128);
    f.report(
        "64 tunnels from a target that never stops sending, to a client that never reads",
        before,
        &format!(
            "the flow stops by itself after {} in all (the client's windows, then TCP); RSS {:.1} MiB while stalled",
            mib(stalled_at),
            during.rss_kib as f64 / 1024.0
        ),
        transfers,
    );
}

#[test]
fn a_target_that_never_reads_while_the_client_sends_a_gibibyte() {
    for tunnels in [1u64, 64] {
        let mut f = Fixture::new(&[]);
        let (target, accepted) = sink();
        let before = f.memory();
        let bystander = f.bystander();
        let count = tunnels.to_string();
        let (held, result) = f.hold(
            "push",
            &["--count", &count, "--bytes", &(1u64 << 30).to_string(), "--target-port", &target.port().to_string()],
        );
        assert_eq!(accepted.load(Ordering::SeqCst) as u64, tunnels);
        assert_eq!(result["stalled"], true, "{result}");
        let sent = result["sent"].as_u64().unwrap();
        let during = f.memory();
        let transfers = f.bystander_unharmed(bystander);
        // Per tunnel: one window queued in the server (2 MiB, russh patch 0004) and the socket buffers (the kernel's).
        f.assert_peak_below(24 + 4 * tunnels);
        f.report(
            &format!("a well-behaved client sends 1 GiB into each of {tunnels} tunnels whose target never reads"),
            before,
            &format!(
                "the flow stops after {} in all; RSS {:.1} MiB while stalled",
                mib(sent),
                during.rss_kib as f64 / 1024.0
            ),
            transfers,
        );
        drop(held);
    }
}

#[test]
fn a_client_that_ignores_flow_control_is_disconnected() {
    // 200 000-byte packets break the 32 KiB maximum packet size. 32 KiB packets
    // regardless of the window: the window is re-opened only as the tunnel consumes
    // (russh patch 0004) and nothing is consumed, so the excess adds up past a tenth of
    // the window (OpenSSH's rule). Both are disconnected.
    for (packet, expected) in
        [("200000", "over the maximum packet size of 32768"), ("32768", "bytes of data over the window, in all")]
    {
        let mut f = Fixture::new(&[]);
        let (target, _accepted) = sink();
        let before = f.memory();
        let bystander = f.bystander();
        let (held, result) = f.hold(
            "push",
            &[
                "--ignore-window",
                "--count",
                "64",
                "--packet",
                packet,
                "--bytes",
                &(1u64 << 30).to_string(),
                "--target-port",
                &target.port().to_string(),
            ],
        );
        let sent = mib(result["sent"].as_u64().unwrap());
        assert_eq!(result["disconnected"], true, "{result}");
        let closed = f.server.wait_event("connection.closed", |e| {
            e["reason"].as_str().is_some_and(|r| r.contains("the peer ignored the flow control"))
        });
        let reason = closed["reason"].as_str().unwrap().to_string();
        assert!(reason.contains(expected), "{reason}");
        let outcome = format!("disconnected after {sent} had been sent: \"{reason}\"");
        let transfers = f.bystander_unharmed(bystander);
        f.assert_peak_below(64);
        f.report(
            &format!(
                "raw data packets of {packet} bytes regardless of the window, into 64 tunnels whose target never reads"
            ),
            before,
            &outcome,
            transfers,
        );
        drop(held);
    }
}
