//! Name resolution under a zone whose DNS never answers: one user opening
//! tunnels to hundreds of names there must not delay another user's lookup
//! of a different name (`bastion-sshd/src/resolve.rs`).
//!
//! The bastion, its clients, a DNS server and the tunnels' target run in a
//! network namespace of their own with only loopback up. `ip netns exec`
//! mounts `/etc/netns/<ns>/resolv.conf` over /etc/resolv.conf, which points
//! getaddrinfo at `tests/dns_stub.py` on 127.0.0.1:53: names under
//! `good.test` are 127.0.0.1, names under `slow.test` are never answered, and
//! `timeout:30 attempts:1` keeps a lookup of such a name in getaddrinfo, on a
//! blocking thread, for 30 s.
//!
//! Like `tests/vpc.rs` (whose lock file it shares, so that neither removes
//! an `/etc/netns` the other is using), it needs root and tears everything
//! down when dropped, on success or panic; namespaces left by a run killed
//! outright are deleted by the next run. Needs iproute2, openssh-client and
//! a `python3` on PATH that can import paramiko.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bastion_tests::*;
use serde_json::Value;

const NETNS_ETC: &str = "/etc/netns";
/// Shared with tests/vpc.rs: held shared while creating an `/etc/netns`
/// entry, exclusively to remove an empty `/etc/netns`.
const LOCK_FILE: &str = "/run/lock/bastion-vpc-tests.lock";
/// Namespaces of this suite are `bres<pid>-<n>`.
const PREFIX: &str = "bres";
/// The echo service in the namespace, reached as `db.good.test:ECHO_PORT`.
const ECHO_PORT: u16 = 7000;
/// Names the attacker's tunnels ask for (`n0.slow.test` …), and how many at once
/// (below --max-channels, 64: each gives up after --connect-timeout and frees its channel).
const ATTACK_NAMES: usize = 720;
const ATTACK_WORKERS: usize = 48;
/// Lookups in getaddrinfo at once for the attacker's key, with the fix
/// (`resolve::LOOKUPS_PER_KEY`); without it, up to tokio's 512 threads.
const PER_KEY: usize = 4;
/// How long a lookup under slow.test stays in getaddrinfo (resolv.conf below).
const GLIBC_TIMEOUT: Duration = Duration::from_secs(30);

/// One connection (paramiko), `ATTACK_WORKERS` threads opening direct-tcpip
/// channels to distinct names under slow.test, one after another; prints
/// `authenticated`, then a JSON object counting the channels opened and
/// refused (the reasons are in the server's log: paramiko keeps one per
/// transport, not per channel).
const ATTACKER: &str = r#"
import collections, itertools, json, socket, sys, threading
import paramiko
port, key, names, workers = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
transport = paramiko.Transport(socket.create_connection(("127.0.0.1", port)))
transport.start_client(timeout=20)
transport.auth_publickey("attacker", paramiko.Ed25519Key.from_private_key_file(key))
print("authenticated", flush=True)
numbers, seen, lock = itertools.count(), collections.Counter(), threading.Lock()
def attack():
    while True:
        with lock:
            n = next(numbers)
        if n >= names:
            return
        try:
            transport.open_channel("direct-tcpip", (f"n{n}.slow.test", 80), ("127.0.0.1", 40000), timeout=60).close()
            outcome = "opened"
        except paramiko.SSHException:
            outcome = "refused"
        with lock:
            seen[outcome] += 1
threads = [threading.Thread(target=attack) for _ in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(seen), flush=True)
"#;

/// A network namespace with only loopback up and its own resolv.conf,
/// nsswitch.conf and hosts; deleted on drop with everything in it.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create() -> Namespace {
        assert!(is_root(), "tests/resolve.rs creates network namespaces: run it as root");
        require("ip", "iproute2");
        let ns = Namespace { name: format!("{PREFIX}{}-{}", std::process::id(), unique()) };
        // From here on, a panic drops `ns`, which deletes whatever exists so far.
        sweep_stale_namespaces();
        ns.write_etc();
        run(Command::new("ip").args(["netns", "add", &ns.name]));
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns
    }

    fn etc(&self) -> PathBuf {
        Path::new(NETNS_ETC).join(&self.name)
    }

    /// What `ip netns exec` mounts over /etc; readable by the bastion after it gives up root.
    fn write_etc(&self) {
        use std::os::unix::fs::PermissionsExt;
        let lock = lock_file();
        // tests/vpc.rs removes an empty /etc/netns only holding the lock exclusively.
        lock.lock_shared().expect("locking the namespace lock file");
        let dir = self.etc();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        drop(lock);
        for (file, text) in [
            ("resolv.conf", "nameserver 127.0.0.1\noptions timeout:30 attempts:1\n"),
            ("nsswitch.conf", "hosts: files dns\n"),
            ("hosts", "127.0.0.1 localhost\n::1 localhost\n"),
        ] {
            std::fs::write(dir.join(file), text).unwrap();
            std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// `cmd`, to be run inside the namespace.
    fn exec(&self, cmd: &Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped.args(["netns", "exec", &self.name]).arg(cmd.get_program()).args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => wrapped.env(key, v),
                None => wrapped.env_remove(key),
            };
        }
        wrapped
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Nothing here may panic: this also runs while a failed test unwinds.
        delete_namespace(&self.name);
        // The last user of /etc/netns removes it if empty (as tests/vpc.rs does).
        if let Ok(lock) = std::fs::OpenOptions::new().read(true).write(true).open(LOCK_FILE)
            && lock.try_lock().is_ok()
        {
            let _ = std::fs::remove_dir(NETNS_ETC);
        }
    }
}

fn lock_file() -> File {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(LOCK_FILE)
        .unwrap_or_else(|e| panic!("{LOCK_FILE}: {e}"))
}

/// Kills every process in namespace `name`, deletes it and its /etc/netns entry; never panics.
fn delete_namespace(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids = match Command::new("ip").args(["netns", "pids", name]).stderr(Stdio::null()).output() {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
            _ => String::new(),
        };
        if pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("resolve teardown: processes {pids} in {name} did not exit");
            break;
        }
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).stderr(Stdio::null()).status();
        }
        std::thread::sleep(Duration::from_millis(20)); // polling their exit
    }
    let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
    let _ = std::fs::remove_dir_all(Path::new(NETNS_ETC).join(name));
}

/// Deletes the namespaces of test processes that no longer exist (a run killed with SIGKILL).
fn sweep_stale_namespaces() {
    let listed = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let etc = std::fs::read_dir(NETNS_ETC)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect::<Vec<_>>())
        .unwrap_or_default();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    for name in listed.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).chain(etc) {
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next()) else { continue };
        if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !Path::new("/proc").join(pid).exists() {
            delete_namespace(&name);
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// bastion-sshd in the namespace on 127.0.0.1, failing tunnels after 1 s.
fn bastion(ns: &Namespace, dir: &Path, keys: &[&ClientKey]) -> Server {
    let authorized = dir.join("authorized_keys");
    std::fs::write(&authorized, keys.iter().map(|k| format!("{}\n", k.public_line)).collect::<String>()).unwrap();
    let mut cmd = Command::new(bastion_bin());
    cmd.args(["run", "--log-format", "json", "--listen", "127.0.0.1:0", "--authorized-keys"])
        .arg(&authorized)
        // 127.0.0.1, where good.test points, is loopback: only an explicit entry opens it.
        // `*:80` for the attacker's names: a failed lookup is told as such only where the name
        // could be opened whatever it resolves to (behind address entries alone it is "not
        // permitted", so that refusals do not say which names exist).
        .args(["--permit-open", "127.0.0.1:*,*:80", "--penalty", "0s", "--connect-timeout", "1s"]);
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("BASTION_") || var == "RUST_LOG" {
            cmd.env_remove(var);
        }
    }
    Server::from_log(Proc::spawn(ns.exec(&cmd), Stdio::null()), dir, None)
}

/// `ssh -W target` in the namespace: sends a line and expects it back
/// from the echo service. Err with what ssh said if it did not come back.
fn through(ns: &Namespace, server: &Server, key: &ClientKey, target: &str) -> Result<Duration, String> {
    let mut cmd = server.ssh(key);
    cmd.args(["-W", target]).arg(server.destination("tunnel"));
    let started = Instant::now();
    let mut ssh = Proc::spawn(ns.exec(&cmd), Stdio::piped());
    let line = format!("ping through {target}");
    if let Some(mut stdin) = ssh.child.stdin.take() {
        let _ = stdin.write_all(format!("{line}\n").as_bytes());
    }
    let status = ssh.wait_exit(Duration::from_secs(60));
    let took = started.elapsed();
    let echoed = ssh.stdout().all();
    if status.is_some_and(|s| s.success()) && echoed == [line] {
        Ok(took)
    } else {
        Err(format!("ssh -W {target}: {status:?} after {took:?}, stdout {echoed:?}, stderr:\n{}", ssh.stderr().text()))
    }
}

/// Names under slow.test the DNS server was asked for so far.
fn slow_names_asked(dns: &Proc) -> BTreeSet<String> {
    let asked = dns.stdout().all();
    asked
        .iter()
        .filter_map(|l| l.strip_prefix("query ")?.split(' ').next().map(str::to_string))
        .filter(|n| n.ends_with(".slow.test"))
        .collect()
}

/// Failed tunnels to names under slow.test so far, by reason (the name written NAME).
fn slow_failures(server: &Server) -> BTreeMap<String, u64> {
    let mut reasons = BTreeMap::new();
    for event in server.events("tunnel.failed") {
        let destination = event["destination"].as_str().unwrap_or_default();
        let Some(host) = destination.strip_suffix(":80").filter(|h| h.ends_with(".slow.test")) else { continue };
        *reasons.entry(event["reason"].as_str().unwrap_or_default().replace(host, "NAME")).or_default() += 1;
    }
    reasons
}

#[test]
fn a_zone_that_never_answers_does_not_delay_another_users_lookups() {
    require("ssh", "openssh-client");
    require("python3", "python3");
    let probe = Command::new("python3").args(["-c", "import paramiko"]).output().expect("python3");
    assert!(probe.status.success(), "python3 on PATH cannot import paramiko (put a venv with paramiko first on PATH)");
    let ns = Namespace::create();
    let dir = bastion_tests::tempdir();
    let attacker = ClientKey::generate(dir.path(), "attacker", "ed25519", None);
    let user = ClientKey::generate(dir.path(), "user", "ed25519", None);

    let mut stub = Command::new("python3");
    stub.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("dns_stub.py")).args(["--echo-port", &ECHO_PORT.to_string()]);
    let dns = Proc::spawn(ns.exec(&stub), Stdio::null());
    let ready = dns.stdout().wait_for(READY, |l| l == "ready");
    assert!(ready.is_some(), "dns_stub.py did not start:\n{}", dns.stderr().text());
    let server = bastion(&ns, dir.path(), &[&attacker, &user]);
    let good = format!("db.good.test:{ECHO_PORT}");
    let before = through(&ns, &server, &user, &good).unwrap_or_else(|e| panic!("before the attack: {e}"));

    // The attack: hundreds of names under slow.test, each given up after 1 s.
    let mut script = Command::new("python3");
    script
        .args(["-c", ATTACKER, &server.addr.port().to_string()])
        .arg(&attacker.private)
        .args([ATTACK_NAMES.to_string(), ATTACK_WORKERS.to_string()]);
    let mut attack = Proc::spawn(ns.exec(&script), Stdio::null());
    let authenticated = attack.stdout().wait_for(READY, |l| l == "authenticated");
    assert!(authenticated.is_some(), "the attacker did not log in:\n{}", attack.stderr().text());
    let attack_started = Instant::now();
    // Without caps, this many lookups are more than tokio's 512 blocking threads.
    let deadline = Instant::now() + Duration::from_secs(90);
    while slow_failures(&server).values().sum::<u64>() < 560 {
        assert!(attack.is_running(), "the attacker stopped early:\n{}", attack.stderr().text());
        assert!(Instant::now() < deadline, "the attack did not get going:\n{}", server.proc.stderr().text());
        std::thread::sleep(Duration::from_millis(100)); // polling the server's log
    }
    let during = through(&ns, &server, &user, &good).unwrap_or_else(|e| {
        panic!("while {} names under slow.test were being resolved: {e}", slow_names_asked(&dns).len())
    });

    let status = attack.wait_exit(Duration::from_secs(120));
    assert!(status.is_some_and(|s| s.success()), "the attacker failed: {status:?}\n{}", attack.stderr().text());
    let outcomes: Value = json(&attack.stdout().all().last().cloned().unwrap_or_default());
    drop(attack); // its connection is closed; its stuck lookups are still in getaddrinfo
    let after = through(&ns, &server, &user, &good)
        .unwrap_or_else(|e| panic!("after the attack, its lookups still stuck: {e}"));

    // The attacker's connection never had more than its 4 lookups in
    // getaddrinfo (4 more each time a stuck one gives up, after 30 s).
    let asked = slow_names_asked(&dns);
    let rounds = 1 + attack_started.elapsed().as_secs() / GLIBC_TIMEOUT.as_secs();
    eprintln!(
        "user's tunnel took {before:?} before, {during:?} during, {after:?} after the attack; \
         the DNS server was asked for {} slow.test names in {:?}; the attacker's tunnels: {outcomes}",
        asked.len(),
        attack_started.elapsed()
    );
    assert!(asked.len() as u64 <= PER_KEY as u64 * rounds, "{} slow names reached getaddrinfo", asked.len());
    assert_eq!((outcomes["opened"].as_u64(), outcomes["refused"].as_u64()), (None, Some(ATTACK_NAMES as u64)));
    // Each refused at once for want of a permit, or, the few that started, timed out.
    let failures = slow_failures(&server);
    eprintln!("the attacker's tunnels, as the server refused them: {failures:#?}");
    let count = |reason: &str| failures.get(reason).copied().unwrap_or(0);
    let busy =
        "cannot resolve NAME: too many name lookups in progress for this key (4 at most; none finished within 1s)";
    let timed_out = count("resolving NAME timed out after 1s");
    assert_eq!(count(busy) + timed_out, ATTACK_NAMES as u64, "{failures:?}");
    assert!(timed_out <= PER_KEY as u64 * rounds, "{failures:?}");
}
