//! Harness for the end-to-end suites: starts the real `bastion-sshd` binary
//! on loopback, drives the real OpenSSH client against it, and provides the
//! small real peers the tunnels lead to (an echo server, PostgreSQL).
//!
//! Readiness is always observed (a log line, a port accepting), never slept for.

pub mod aws;
pub mod ecs;
pub mod sidecar;
pub mod sts;
pub mod vpc;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any readiness wait may take before the test fails.
pub const READY: Duration = Duration::from_secs(30);

/// The `bastion-sshd` binary built by `cargo build -p bastion-sshd`
/// (next to this test binary), or `$BASTION_SSHD_BIN`.
pub fn bastion_bin() -> PathBuf {
    if let Ok(path) = std::env::var("BASTION_SSHD_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/bastion-sshd
    let path = exe.parent().and_then(Path::parent).expect("target dir").join("bastion-sshd");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p bastion-sshd` (the README's test command does)",
        path.display()
    );
    path
}

/// The `tests/` directory (its Python helpers live there).
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A temporary directory bastion-sshd can still read after giving up root.
/// When the tests run as root, the server binds and then becomes 65534:65534,
/// as in the container image, and re-reads key files on reload as that user;
/// `tempfile::tempdir()` follows the umask, and with 077 it could not enter.
pub fn tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix("bastion-test-")
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .expect("creating a temporary directory")
}

/// Fails loudly if a tool the suite needs is not installed.
pub fn require(tool: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(tool)).find(|p| p.is_file()));
    found.unwrap_or_else(|| {
        panic!("`{tool}` is not installed: apt-get install {package} (the README's test command does)")
    })
}

/// A command that is killed when dropped.
pub struct Proc {
    pub child: Child,
    stderr: Arc<Lines>,
    stdout: Arc<Lines>,
}

/// Lines read from a child's pipe, with a condition variable to wait on.
#[derive(Default)]
pub struct Lines {
    lines: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Lines {
    fn spawn_reader(pipe: impl Read + Send + 'static) -> Arc<Self> {
        let this = Arc::new(Self::default());
        let writer = this.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
                        writer.lines.lock().unwrap().0.push(line);
                        writer.changed.notify_all();
                    }
                }
            }
            writer.lines.lock().unwrap().1 = true;
            writer.changed.notify_all();
        });
        this
    }

    /// Waits until a line matches; None if the pipe closed or time ran out first.
    pub fn wait_for(&self, timeout: Duration, mut pred: impl FnMut(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lines.lock().unwrap();
        let mut seen = 0;
        loop {
            if let Some(l) = guard.0[seen..].iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            seen = guard.0.len();
            let left = deadline.saturating_duration_since(Instant::now());
            if guard.1 || left.is_zero() {
                return None;
            }
            guard = self.changed.wait_timeout(guard, left).unwrap().0;
        }
    }

    pub fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().0.clone()
    }

    pub fn text(&self) -> String {
        self.all().join("\n")
    }

    /// Waits until the pipe is closed (the process exited).
    pub fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lines.lock().unwrap();
        while !guard.1 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            guard = self.changed.wait_timeout(guard, left).unwrap().0;
        }
    }
}

impl Proc {
    /// Spawns with piped stdout/stderr collected in the background; stdin as given.
    pub fn spawn(mut cmd: Command, stdin: Stdio) -> Self {
        let program = format!("{cmd:?}");
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let stderr = Lines::spawn_reader(child.stderr.take().expect("stderr"));
        let stdout = Lines::spawn_reader(child.stdout.take().expect("stdout"));
        Self { child, stderr, stdout }
    }

    pub fn stderr(&self) -> &Lines {
        &self.stderr
    }

    pub fn stdout(&self) -> &Lines {
        &self.stdout
    }

    /// Waits for exit, up to `timeout`; None if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the readers drain what the process wrote last.
                self.stderr.wait_closed(Duration::from_secs(5));
                self.stdout.wait_closed(Duration::from_secs(5));
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status();
        assert!(status.map(|s| s.success()).unwrap_or(false), "kill -{signal} failed");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client key pair made by the real `ssh-keygen`.
pub struct ClientKey {
    pub private: PathBuf,
    pub public_line: String,
}

impl ClientKey {
    /// `kind` is an `ssh-keygen -t` value; `bits` only for RSA/ECDSA.
    pub fn generate(dir: &Path, name: &str, kind: &str, bits: Option<u32>) -> Self {
        let private = dir.join(name);
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-t", kind, "-N", "", "-C", &format!("{name}@test"), "-f"]).arg(&private);
        if let Some(b) = bits {
            cmd.args(["-b", &b.to_string()]);
        }
        let out = cmd.output().expect("ssh-keygen");
        assert!(out.status.success(), "ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr));
        let public_line = std::fs::read_to_string(private.with_extension("pub"))
            .or_else(|_| std::fs::read_to_string(format!("{}.pub", private.display())))
            .expect("public key")
            .trim()
            .to_string();
        Self { private, public_line }
    }

    /// `SHA256:…`, as `ssh-keygen -l` computes it.
    pub fn fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen").arg("-lf").arg(&self.private).output().expect("ssh-keygen -l");
        String::from_utf8_lossy(&out.stdout).split(' ').nth(1).expect("fingerprint").to_string()
    }
}

/// A running `bastion-sshd` with its JSON log.
pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// The host public key (`ssh-ed25519 AAAA…`) from the start-up log.
    pub host_public_key: String,
    pub known_hosts: PathBuf,
}

/// How to start a server.
pub struct ServerBuilder {
    cmd: Command,
    dir: PathBuf,
}

impl ServerBuilder {
    pub fn new(dir: &Path) -> Self {
        let mut cmd = Command::new(bastion_bin());
        // The server's configuration comes from the test alone, not the caller's shell.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("BASTION_") || var == "RUST_LOG" {
                cmd.env_remove(var);
            }
        }
        cmd.args(["run", "--log-format", "json"]);
        Self { cmd, dir: dir.to_path_buf() }
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Authorizes `keys` through a file, listens on a free loopback port unless
    /// `--listen` was given, and waits for the "listening" event.
    pub fn authorize(self, keys: &[&ClientKey]) -> Self {
        let path = self.dir.join(format!("authorized_keys.{}", unique()));
        let text: String = keys.iter().map(|k| format!("{}\n", k.public_line)).collect();
        std::fs::write(&path, text).unwrap();
        self.arg("--authorized-keys").arg(path)
    }

    /// Authorizes through a file with these exact lines (options, comments, junk).
    pub fn authorized_lines(self, lines: &[String]) -> Self {
        let path = self.dir.join(format!("authorized_keys.{}", unique()));
        std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        self.arg("--authorized-keys").arg(path)
    }

    /// Starts the server. Unless the test set its own `--permit-open`, the
    /// server may reach 127.0.0.1 (where the test's targets listen), which
    /// the default policy denies; unless it set `--penalty`, failed logins are
    /// not penalized; unless it set `--health-check-sources`, loopback (where
    /// the test's clients connect from) is not reserved for health checks.
    pub fn start(self) -> Server {
        let given = |flag: &str| self.cmd.get_args().any(|a| a == flag);
        let (listen_given, permit_given, penalty_given, health_given) =
            (given("--listen"), given("--permit-open"), given("--penalty"), given("--health-check-sources"));
        let activity_given = given("--activity-listen");
        let metrics_given = given("--metrics-interval");
        let mut cmd = self.cmd;
        if !metrics_given {
            // Suites read the log as events; the metrics records have their own (tests/metrics.rs).
            cmd.args(["--metrics-interval", "0"]);
        }
        if !activity_given {
            // Servers run side by side: each reports its activity on a free port (`activity.listening`).
            cmd.args(["--activity-listen", "127.0.0.1:0"]);
        }
        if !listen_given {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !permit_given {
            cmd.args(["--permit-open", "127.0.0.1:*"]);
        }
        if !penalty_given {
            // Tests fail logins from 127.0.0.1 on purpose; only the penalty tests want penalties.
            cmd.args(["--penalty", "0s"]);
        }
        if !health_given {
            // Loopback stands for remote users here: give it no reservation outside the limits.
            cmd.args(["--health-check-sources", "none"]);
        }
        Server::from_log(Proc::spawn(cmd, Stdio::null()), &self.dir, None)
    }
}

impl Server {
    /// Waits for the server whose log `proc` reads (the server itself, or
    /// `docker logs -f` of a container) to listen, and pins its host key in a
    /// known_hosts file in `dir`. `reach` is the address clients use, if not
    /// the one it listens on (a container's address and port 22).
    pub fn from_log(proc: Proc, dir: &Path, reach: Option<SocketAddr>) -> Server {
        let listening = proc
            .stderr()
            .wait_for(READY, |l| event(l).as_deref() == Some("server.listening"))
            .unwrap_or_else(|| panic!("server did not start listening:\n{}", proc.stderr().text()));
        let addr = reach.unwrap_or_else(|| json(&listening)["addr"].as_str().unwrap().parse().unwrap());
        let hostkey = proc
            .stderr()
            .all()
            .into_iter()
            .find(|l| event(l).as_deref() == Some("hostkey.loaded"))
            .expect("hostkey.loaded event");
        let known = json(&hostkey)["known_hosts"].as_str().unwrap().to_string();
        // "<name> <type> <base64>"
        let host_public_key = known.split_once(' ').unwrap().1.to_string();
        let known_hosts = dir.join(format!("known_hosts.{}", unique()));
        // Pin the key for the address listened on; for a wildcard, for both loopbacks.
        let hosts = if addr.ip().is_unspecified() {
            vec!["127.0.0.1".to_string(), "::1".to_string()]
        } else {
            vec![addr.ip().to_string()]
        };
        // OpenSSH writes and looks up `host` for port 22, `[host]:port` otherwise.
        let pattern = |h: &String| if addr.port() == 22 { h.clone() } else { format!("[{h}]:{}", addr.port()) };
        let lines: String = hosts.iter().map(|h| format!("{} {host_public_key}\n", pattern(h))).collect();
        std::fs::write(&known_hosts, lines).unwrap();
        Server { proc, addr, host_public_key, known_hosts }
    }
}

/// The README's ```sshconfig block that contains `needle` (the suites run them as written).
pub fn readme_sshconfig(needle: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    readme
        .split("```sshconfig\n")
        .skip(1)
        .filter_map(|s| s.split("```").next())
        .find(|block| block.contains(needle))
        .unwrap_or_else(|| panic!("no sshconfig block with {needle:?} in README.md"))
        .to_string()
}

/// A process-wide counter for unique file names.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The `event` field of a JSON log line.
pub fn event(line: &str) -> Option<String> {
    serde_json::from_str::<Value>(line).ok()?.get("event")?.as_str().map(str::to_string)
}

pub fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

impl Server {
    /// Waits for a log event matching `pred`, returning it parsed.
    pub fn wait_event(&self, name: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let line = self
            .proc
            .stderr()
            .wait_for(READY, |l| event(l).as_deref() == Some(name) && pred(&json(l)))
            .unwrap_or_else(|| panic!("no {name} event matched; server log:\n{}", self.proc.stderr().text()));
        json(&line)
    }

    /// All log events with this name so far.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.proc.stderr().all().iter().filter(|l| event(l).as_deref() == Some(name)).map(|l| json(l)).collect()
    }

    /// `ssh` with a clean configuration, pinned to this server's host key.
    pub fn ssh(&self, key: &ClientKey) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
        .args(["-o", "ConnectTimeout=20", "-o", "ExitOnForwardFailure=yes", "-i"])
        .arg(&key.private)
        .args(["-p", &self.addr.port().to_string()]);
        cmd
    }

    /// `user@host` for this server.
    pub fn destination(&self, user: &str) -> String {
        if self.addr.ip().is_unspecified() { format!("{user}@127.0.0.1") } else { format!("{user}@{}", self.addr.ip()) }
    }

    /// Runs `ssh … ARGS` to completion.
    pub fn ssh_output(&self, key: &ClientKey, args: &[&str]) -> Output {
        let mut cmd = self.ssh(key);
        cmd.args(args).stdin(Stdio::null());
        cmd.output().expect("run ssh")
    }

    /// `ssh -N -L …` with one or more forwards `(target host, target port)`;
    /// returns the client and the local port of each forward once all listen.
    pub fn tunnel(&self, key: &ClientKey, targets: &[(&str, u16)], extra: &[&str]) -> (Proc, Vec<u16>) {
        self.tunnel_as(key, "tunnel", targets, extra)
    }

    /// [`Server::tunnel`] logging in as `user` (a certificate principal, say).
    pub fn tunnel_as(&self, key: &ClientKey, user: &str, targets: &[(&str, u16)], extra: &[&str]) -> (Proc, Vec<u16>) {
        for _attempt in 0..5 {
            let ports: Vec<u16> = targets.iter().map(|_| free_port()).collect();
            let mut cmd = self.ssh(key);
            cmd.args(["-v", "-N"]).args(extra);
            for ((host, port), local) in targets.iter().zip(&ports) {
                cmd.arg("-L").arg(format!("127.0.0.1:{local}:{host}:{port}"));
            }
            cmd.arg(self.destination(user));
            let proc = Proc::spawn(cmd, Stdio::null());
            if wait_forwards(&proc, &ports) {
                return (proc, ports);
            }
            let mut proc = proc;
            if proc.wait_exit(Duration::from_secs(5)).is_some()
                && proc.stderr().text().contains("Address already in use")
            {
                continue; // another test took the port between probe and bind
            }
            panic!("ssh -L did not start listening:\n{}", proc.stderr().text());
        }
        panic!("could not find free local ports for ssh -L");
    }
}

/// Connects to a local forward whose tunnel the bastion refuses: the
/// connection closes without data, and ssh prints the reason; returns that line.
pub fn refused_line(ssh: &Proc, local_port: u16, needle: &str) -> String {
    let mut stream = connect_retry(SocketAddr::from(([127, 0, 0, 1], local_port)));
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(stream.read(&mut buf).unwrap_or(0), 0, "a refused tunnel carried data");
    ssh.stderr()
        .wait_for(READY, |l| l.contains("open failed") && l.contains(needle))
        .unwrap_or_else(|| panic!("no refusal mentioning {needle:?}; ssh said:\n{}", ssh.stderr().text()))
}

/// Waits until `ssh -v` has set up every local forward. OpenSSH prints
/// "Local forwarding listening on …" just *before* bind(2) and listen(2), so
/// readiness is "Entering interactive session.", which client_loop prints
/// after all forwards are listening (and which is never printed if one
/// failed, with ExitOnForwardFailure).
pub fn wait_forwards(proc: &Proc, ports: &[u16]) -> bool {
    let announced = ports.iter().all(|port| {
        let needle = format!("Local forwarding listening on 127.0.0.1 port {port}.");
        proc.stderr().wait_for(READY, |l| l.contains(&needle)).is_some()
    });
    announced && proc.stderr().wait_for(READY, |l| l.contains("Entering interactive session.")).is_some()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An echo server: sends back everything, and half-closes after the client does.
pub struct EchoServer {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl EchoServer {
    pub fn start() -> Self {
        Self::start_with_greeting(None)
    }

    /// Like a MySQL or SMTP server, writes `greeting` before reading anything.
    pub fn start_with_greeting(greeting: Option<&'static [u8]>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = connections.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                thread::spawn(move || {
                    if let Some(g) = greeting {
                        let _ = stream.write_all(g);
                    }
                    let mut reader = stream.try_clone().unwrap();
                    let _ = std::io::copy(&mut reader, &mut stream);
                    let _ = stream.shutdown(Shutdown::Write);
                });
            }
        });
        Self { addr, connections }
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` through `addr` (an echo behind a tunnel) while reading the
/// answer, half-closes, and returns everything that came back.
pub fn echo_round_trip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut stream = connect_retry(addr);
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let owned = data.to_vec();
    let sender = thread::spawn(move || {
        writer.write_all(&owned).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(data.len());
    stream.read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    back
}

pub fn connect_retry(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap_or_else(|e| {
        let ss = Command::new("ss").args(["-tanpe"]).output().unwrap();
        let port = format!(":{}", addr.port());
        let lines: Vec<_> =
            String::from_utf8_lossy(&ss.stdout).lines().filter(|l| l.contains(&port)).map(str::to_string).collect();
        panic!("connect {addr}: {e}\nSS:\n{}", lines.join("\n"))
    })
}

/// A 64-bit FNV-1a checksum, to report mismatches compactly.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

/// A PostgreSQL server in a temp directory on a free loopback port, stopped on drop.
pub struct Postgres {
    pub port: u16,
    data: PathBuf,
}

impl Postgres {
    /// On 127.0.0.1.
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// On `listen` (the Docker bridge, for a bastion in a container), trusting
    /// every host of the networks it is directly on.
    pub fn start_on(dir: &Path, listen: std::net::IpAddr) -> Self {
        let data = dir.join("pgdata");
        if is_root() {
            // initdb refuses to run as root: the cluster belongs to `postgres`.
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status().unwrap().success();
            assert!(ok, "chown {} to postgres failed", dir.display());
        }
        let out = pg_command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "app", "--auth=trust", "--no-sync"])
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        if !listen.is_loopback() {
            let hba = data.join("pg_hba.conf");
            let mut text = std::fs::read_to_string(&hba).unwrap();
            text.push_str("host all all samenet trust\n");
            std::fs::write(&hba, text).unwrap();
        }
        let port = free_port();
        let out = pg_command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-w")
            .arg("-l")
            .arg(dir.join("pg.log"))
            .arg("-o")
            .arg(format!("-p {port} -k {} -c listen_addresses={listen}", dir.display()))
            .arg("start")
            .output()
            .expect("pg_ctl");
        assert!(out.status.success(), "pg_ctl start failed: {}", String::from_utf8_lossy(&out.stderr));
        Self { port, data }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg_command("pg_ctl").arg("-D").arg(&self.data).args(["-m", "immediate", "stop"]).output();
    }
}

/// A PostgreSQL server tool, run as `postgres` when the tests run as root.
fn pg_command(tool: &str) -> Command {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    versions.sort();
    let bin = versions
        .pop()
        .expect("PostgreSQL server is not installed: apt-get install postgresql (the README's test command does)");
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        cmd
    } else {
        Command::new(bin.join(tool))
    }
}

/// `Field:\tvalue` of a /proc status file (`/proc/PID/status`), the value trimmed.
pub fn proc_status(path: &Path, field: &str) -> String {
    let status = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let prefix = format!("{field}:");
    let line = status.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {field} in {status}"));
    line[prefix.len()..].trim().to_string()
}

/// Whether the tests run as root (bastion-sshd then gives up root after binding).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// `psql` as user `app` on 127.0.0.1:`port` (a tunnel's local end), one query, unaligned output.
pub fn psql(port: u16, sql: &str) -> Output {
    Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "app", "-d", "postgres", "-Atc", sql])
        .env("PGCONNECT_TIMEOUT", "20")
        .output()
        .expect("psql")
}

/// Opens `target` through a SOCKS5 proxy (`ssh -D`), as curl or a browser would.
pub fn socks5_connect(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let SocketAddr::V4(v4) = target else { panic!("IPv4 targets only") };
    let mut s = connect_retry(proxy);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap(); // version 5, one method: no authentication
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).unwrap();
    assert_eq!(choice, [5, 0], "SOCKS method refused");
    let mut request = vec![5, 1, 0, 1]; // CONNECT, IPv4
    request.extend(v4.ip().octets());
    request.extend(v4.port().to_be_bytes());
    s.write_all(&request).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 0, "SOCKS CONNECT to {target} failed with code {}", reply[1]);
    s
}

/// An ssh_config for this server and key, for options that must reach the
/// `ssh` that ProxyJump (`-J`) starts, which does not inherit `-o` or `-i`.
pub fn ssh_config(server: &Server, key: &ClientKey, dir: &Path) -> PathBuf {
    let path = dir.join(format!("ssh_config.{}", unique()));
    let text = format!(
        "Host *\n  BatchMode yes\n  IdentitiesOnly yes\n  IdentityFile {}\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  ConnectTimeout 20\n",
        key.private.display(),
        server.known_hosts.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A TCP connection to `to` from a chosen loopback source address (any of
/// 127.0.0.0/8 works on Linux), so that one test can play several sources.
pub fn connect_from(source: std::net::Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(10))?;
    Ok(socket.into())
}

/// True if the server closed `stream` (EOF or reset) without the SSH banner
/// (a refused connection), false if it sent the banner (an admitted one).
pub fn closed_without_banner(mut stream: &TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 8];
    match stream.read(&mut buf) {
        Ok(0) | Err(_) => true,
        Ok(_) => {
            assert!(buf.starts_with(b"SSH-2.0"), "unexpected greeting {buf:?}");
            false
        }
    }
}

/// Signs `key` into an OpenSSH user certificate with `ssh-keygen -s`;
/// `extra` are further ssh-keygen arguments (`-V`, `-O`, `-h`). Returns the
/// certificate file (`<key>-cert.pub`, which ssh picks up next to the key).
pub fn sign_certificate(ca: &ClientKey, key: &ClientKey, id: &str, principals: &str, extra: &[&str]) -> PathBuf {
    let public = PathBuf::from(format!("{}.pub", key.private.display()));
    let mut cmd = Command::new("ssh-keygen");
    cmd.arg("-q").arg("-s").arg(&ca.private).args(["-I", id, "-z", "42"]);
    if !principals.is_empty() {
        cmd.args(["-n", principals]);
    }
    let out = cmd.args(extra).arg(&public).output().expect("ssh-keygen -s");
    assert!(out.status.success(), "ssh-keygen -s failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(format!("{}-cert.pub", key.private.display()))
}

/// A target that waits for one byte, then sends `data` in 64 KiB pieces and
/// closes, like a database answering a big query. The receiver hears when
/// the first piece is out: the transfer is then under way.
pub fn on_demand_target(data: Vec<u8>) -> (SocketAddr, std::sync::mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (started_tx, started) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else { return };
        let mut go = [0u8; 1];
        if stream.read_exact(&mut go).is_err() {
            return;
        }
        for (i, piece) in data.chunks(64 * 1024).enumerate() {
            if stream.write_all(piece).is_err() {
                return;
            }
            if i == 0 {
                let _ = started_tx.send(());
            }
        }
    });
    (addr, started)
}

/// `python3 tests/insights.py` over `log` (a server's JSON log, a sidecar's beside it): the rows
/// of each query of deploy/cloudformation/monitoring.yaml, by the query's name.
pub fn monitoring_rows(log: &Path, extra: &[&str]) -> std::collections::HashMap<String, Vec<Value>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let out = Command::new("python3")
        .arg(root.join("tests/insights.py"))
        .arg(root.join("deploy/cloudformation/monitoring.yaml"))
        .arg(log)
        .args(extra)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v = json(l);
            (v["query"].as_str().unwrap().to_string(), v["rows"].as_array().unwrap().clone())
        })
        .collect()
}
