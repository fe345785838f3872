//! "A VPC on one machine": network namespaces joined by veth pairs stand in
//! for a laptop, the bastion's Fargate task and a private subnet, and the
//! real programs (bastion-sshd, OpenSSH's ssh and sshd, psql, pgbench, curl,
//! PostgreSQL, Python's http.server) run inside them with `ip netns exec`.
//!
//! ```text
//!  client (the laptop)         bastion (the task)                 private (the subnet)
//!  10.213.1.2 ── pub0 ─ pub0 ── 10.213.1.1   10.213.2.1 ── vpc0 ─ vpc0 ── 10.213.2.10
//!                               bastion-sshd :22 (:2222)          PostgreSQL :5432
//!                               169.254.170.2 :80                 http.server :8000
//!                               (fake ECS credentials)            sshd :22
//! ```
//!
//! The client has no route to 10.213.2.0/24 and the bastion does not forward
//! packets, so the private subnet is reachable from the laptop only through
//! bastion-sshd's tunnels. In the bastion's namespace, `/etc/hosts` (from
//! `/etc/netns/<ns>/hosts`, which `ip netns exec` mounts over it) names
//! `db.internal`, `web.internal`, `admin.internal` and
//! `ecs-credentials.internal` (169.254.170.2); the laptop knows none of them.
//!
//! Nothing here touches the machine's network: both ends of every veth are
//! created directly inside a test namespace (never in the root namespace), and
//! before anything is sent, a blackhole route for 10.213.0.0/16 in the root
//! namespace drops whatever a mistake (a command run outside its namespace)
//! would send there. Every test builds its own VPC with namespace names that
//! carry the process id, so tests and test processes run in parallel; a [`Vpc`]
//! tears everything down when dropped, on success or panic: PostgreSQL is
//! stopped, every process in its namespaces is killed, the namespaces and the
//! `/etc/netns` entry are deleted, and the last VPC of all running test
//! processes removes the blackhole route (if this suite added it) and an empty
//! `/etc/netns`. A run killed outright (SIGKILL) leaves its namespaces; the
//! next run deletes those of processes that no longer exist.
//!
//! Needs root and: iproute2, openssh-client, openssh-server, postgresql
//! (initdb, pg_ctl, pgbench), postgresql-client, curl, python3, procps, util-linux.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bastion_tests::*;
use tempfile::TempDir;

const RANGE: &str = "10.213.0.0/16";
/// The metric that marks the blackhole route as this suite's.
const ROUTE_METRIC: &str = "4213";
const CLIENT_IP: &str = "10.213.1.2";
const BASTION_PUBLIC_IP: &str = "10.213.1.1";
const BASTION_VPC_IP: &str = "10.213.2.1";
const PRIVATE_IP: &str = "10.213.2.10";
const METADATA_IP: &str = "169.254.170.2";
/// As in ECS: `$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`.
const CREDENTIALS_PATH: &str = "/v2/credentials/5b1a0b5e-7f3c-4d2e-9a61-3c0e8e2f4d10";
/// What the private HTTP service serves.
const WEB_MARKER: &str = "private web service: reached";
const LOCK_FILE: &str = "/run/lock/bastion-vpc-tests.lock";
const NETNS_ETC: &str = "/etc/netns";
const SSHD: &str = "/usr/sbin/sshd";

/// The fake ECS credentials endpoint: answers every GET with credentials
/// JSON, and prints each accepted connection, so the test can count them.
const METADATA_SERVER: &str = r#"
import http.server, json, sys
BODY = json.dumps({
    "AccessKeyId": "ASIAFAKEFAKEFAKEFAKE",
    "SecretAccessKey": "fake/secret/never/valid/anywhere/000000",
    "Token": "fake-session-token",
    "Expiration": "2099-01-01T00:00:00Z",
    "RoleArn": "arn:aws:iam::123456789012:role/bastion-task",
}).encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
class Server(http.server.HTTPServer):
    def get_request(self):
        conn, peer = super().get_request()
        print("connection from", peer[0], flush=True)
        return conn, peer
server = Server((sys.argv[1], 80), Handler)
print("listening on", sys.argv[1], flush=True)
server.serve_forever()
"#;

// --- the network -------------------------------------------------------------

/// Three namespaces, their links and services; everything is torn down on drop.
struct Vpc {
    /// `bvpc<pid>-<n>`: the namespaces are `<id>-client`, `<id>-bastion`, `<id>-private`.
    id: String,
    dir: TempDir,
    /// A shared lock on [`LOCK_FILE`] while this VPC exists (see [`Vpc::drop`]).
    lock: Option<File>,
    /// Services started in the namespaces (killed on drop, with everything else in them).
    services: Vec<Proc>,
    /// The fake credentials endpoint, once started.
    metadata: Option<Proc>,
    /// The private sshd, once started.
    sshd: Option<Proc>,
    /// The PostgreSQL cluster, once started (stopped with pg_ctl first on drop).
    pg_data: Option<PathBuf>,
}

impl Vpc {
    fn build() -> Vpc {
        assert!(
            is_root(),
            "tests/vpc.rs creates network namespaces: run it as root (sudo -E cargo test -p bastion-tests --test vpc)"
        );
        require("ip", "iproute2");
        require("ssh", "openssh-client");
        require("ssh-keygen", "openssh-client");
        require("kill", "procps");
        require("sysctl", "procps");
        let id = format!("bvpc{}-{}", std::process::id(), unique());
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(LOCK_FILE)
            .unwrap_or_else(|e| panic!("{LOCK_FILE}: {e}"));
        // Shared while any VPC exists; the last one to go takes it exclusively to clean up.
        lock.lock_shared().expect("locking the VPC lock file");
        let vpc = Vpc {
            id,
            dir: bastion_tests::tempdir(),
            lock: Some(lock),
            services: Vec::new(),
            metadata: None,
            sshd: None,
            pg_data: None,
        };
        // From here on, a panic drops `vpc`, which deletes whatever exists so far.
        sweep_stale_namespaces();
        guard_the_range();
        vpc.write_bastion_hosts();
        vpc.wire();
        vpc
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.id)
    }

    fn client_ns(&self) -> String {
        self.ns("client")
    }

    fn bastion_ns(&self) -> String {
        self.ns("bastion")
    }

    fn private_ns(&self) -> String {
        self.ns("private")
    }

    fn hosts_dir(&self) -> PathBuf {
        Path::new(NETNS_ETC).join(self.bastion_ns())
    }

    /// The bastion's view of names: `ip netns exec` bind-mounts this file over /etc/hosts.
    fn write_bastion_hosts(&self) {
        let dir = self.hosts_dir();
        // Another VPC's teardown may remove an empty /etc/netns between the two
        // steps of create_dir_all; it only does so holding the lock exclusively,
        // which our shared lock prevents, so one attempt suffices.
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let hosts = format!(
            "127.0.0.1 localhost\n::1 localhost\n{PRIVATE_IP} db.internal web.internal admin.internal\n\
             {METADATA_IP} ecs-credentials.internal\n"
        );
        std::fs::write(dir.join("hosts"), hosts).unwrap();
    }

    /// Namespaces, veth pairs, addresses; then checks the routing is what the tests claim.
    fn wire(&self) {
        let (client, bastion, private) = (self.client_ns(), self.bastion_ns(), self.private_ns());
        for ns in [&client, &bastion, &private] {
            ip(&["netns", "add", ns]);
        }
        // Both ends are created inside the namespaces: no interface of this
        // suite ever exists in the root namespace.
        ip(&["link", "add", "pub0", "netns", &client, "type", "veth", "peer", "name", "pub0", "netns", &bastion]);
        ip(&["link", "add", "vpc0", "netns", &bastion, "type", "veth", "peer", "name", "vpc0", "netns", &private]);
        ip(&["-n", &client, "addr", "add", &format!("{CLIENT_IP}/24"), "dev", "pub0"]);
        ip(&["-n", &bastion, "addr", "add", &format!("{BASTION_PUBLIC_IP}/24"), "dev", "pub0"]);
        ip(&["-n", &bastion, "addr", "add", &format!("{BASTION_VPC_IP}/24"), "dev", "vpc0"]);
        ip(&["-n", &private, "addr", "add", &format!("{PRIVATE_IP}/24"), "dev", "vpc0"]);
        // The credentials endpoint is an address of the bastion's own host, as
        // 169.254.170.2 is for a task (on lo: not every kernel has `dummy`).
        ip(&["-n", &bastion, "addr", "add", &format!("{METADATA_IP}/32"), "dev", "lo"]);
        for (ns, links) in
            [(&client, &["lo", "pub0"][..]), (&bastion, &["lo", "pub0", "vpc0"]), (&private, &["lo", "vpc0"])]
        {
            for link in links {
                ip(&["-n", ns, "link", "set", link, "up"]);
            }
        }
        // A new namespace inherits the root's forwarding setting; a task does not route.
        let out = Command::new("ip")
            .args(["netns", "exec", &bastion, "sysctl", "-qw", "net.ipv4.ip_forward=0"])
            .output()
            .unwrap();
        assert!(out.status.success(), "sysctl in {bastion}: {}", String::from_utf8_lossy(&out.stderr));

        // The laptop has no route into the VPC; the bastion has one on each side.
        let out = Command::new("ip").args(["-n", &client, "route", "get", PRIVATE_IP]).output().unwrap();
        assert!(!out.status.success(), "the client namespace has a route to {PRIVATE_IP}: {}", text(&out));
        for addr in [CLIENT_IP, PRIVATE_IP] {
            ip(&["-n", &bastion, "route", "get", addr]);
        }
        // And the names resolve, in the bastion's view only.
        let out = Command::new("ip")
            .args(["netns", "exec", &bastion, "getent", "hosts", "ecs-credentials.internal"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(METADATA_IP),
            "/etc/netns/{bastion}/hosts is not in effect in the bastion namespace: {}",
            text(&out)
        );
    }

    /// `cmd`, to be run inside namespace `ns`.
    fn exec_in(&self, ns: &str, cmd: &Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped.args(["netns", "exec", ns]).arg(cmd.get_program()).args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => wrapped.env(key, v),
                None => wrapped.env_remove(key),
            };
        }
        wrapped
    }

    /// `cmd` on the laptop.
    fn on_client(&self, cmd: &Command) -> Command {
        self.exec_in(&self.client_ns(), cmd)
    }

    /// `cmd` on the bastion's host (not through bastion-sshd).
    fn on_bastion(&self, cmd: &Command) -> Command {
        self.exec_in(&self.bastion_ns(), cmd)
    }

    // --- the services ---------------------------------------------------------

    /// bastion-sshd in the bastion namespace on `BASTION_PUBLIC_IP:port`, with
    /// exactly the given flags (the destination policy is its default unless
    /// they say otherwise).
    fn bastion(&self, port: u16, flags: &[&str], keys: &[&ClientKey]) -> Server {
        let authorized = self.dir.path().join(format!("authorized_keys.{}", unique()));
        std::fs::write(&authorized, keys.iter().map(|k| format!("{}\n", k.public_line)).collect::<String>()).unwrap();
        let mut cmd = Command::new(bastion_bin());
        cmd.args(["run", "--log-format", "json", "--listen", &format!("{BASTION_PUBLIC_IP}:{port}")])
            .arg("--authorized-keys")
            .arg(&authorized)
            .args(flags);
        let mut wrapped = self.on_bastion(&cmd);
        // The server's configuration comes from the test alone, not the caller's shell.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("BASTION_") || var == "RUST_LOG" {
                wrapped.env_remove(var);
            }
        }
        Server::from_log(Proc::spawn(wrapped, Stdio::null()), self.dir.path(), None)
    }

    /// A PostgreSQL cluster in the private namespace on PRIVATE_IP:5432 (the
    /// harness's `Postgres::start_on`, with pg_ctl run under `ip netns exec`).
    /// Trusts its own subnet, where the bastion's VPC side is.
    fn postgres(&mut self) {
        require("runuser", "util-linux");
        let bin = pg_bin();
        let pg_dir = self.dir.path().join("pg");
        std::fs::create_dir(&pg_dir).unwrap();
        // initdb refuses to run as root: the cluster belongs to `postgres`.
        let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&pg_dir).status().unwrap().success();
        assert!(ok, "chown {} to postgres failed (apt-get install postgresql creates the user)", pg_dir.display());
        let data = pg_dir.join("data");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "app", "--auth=trust", "--no-sync"])
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb failed: {}", text(&out));
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).unwrap();
        rules.push_str("host all all samenet trust\n");
        std::fs::write(&hba, rules).unwrap();
        self.pg_data = Some(data.clone());
        let mut pg_ctl = as_postgres(&bin.join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(&data)
            .arg("-w")
            .arg("-l")
            .arg(pg_dir.join("pg.log"))
            .arg("-o")
            .arg(format!("-p 5432 -k {} -c listen_addresses={PRIVATE_IP}", pg_dir.display()))
            .arg("start");
        let out = self.exec_in(&self.private_ns(), &pg_ctl).output().expect("pg_ctl");
        let log = std::fs::read_to_string(pg_dir.join("pg.log")).unwrap_or_default();
        assert!(out.status.success(), "pg_ctl start failed: {}\n{log}", text(&out));
    }

    /// `python3 -m http.server` on PRIVATE_IP:8000, serving a page with [`WEB_MARKER`].
    fn web_server(&mut self) {
        require("python3", "python3");
        let www = self.dir.path().join("www");
        std::fs::create_dir(&www).unwrap();
        std::fs::write(www.join("index.html"), format!("<html><body>{WEB_MARKER}</body></html>\n")).unwrap();
        let mut cmd = Command::new("python3");
        cmd.args(["-u", "-m", "http.server", "8000", "--bind", PRIVATE_IP, "--directory"]).arg(&www);
        let proc = Proc::spawn(self.exec_in(&self.private_ns(), &cmd), Stdio::null());
        // Printed after the socket listens.
        let ready = proc.stdout().wait_for(READY, |l| l.starts_with("Serving HTTP on"));
        assert!(ready.is_some(), "http.server did not start:\n{}\n{}", proc.stdout().text(), proc.stderr().text());
        self.services.push(proc);
    }

    /// The fake ECS credentials endpoint on 169.254.170.2:80 in the bastion namespace.
    fn metadata_server(&mut self) {
        require("python3", "python3");
        let mut cmd = Command::new("python3");
        cmd.args(["-u", "-c", METADATA_SERVER, METADATA_IP]);
        let proc = Proc::spawn(self.on_bastion(&cmd), Stdio::null());
        let ready = proc.stdout().wait_for(READY, |l| l.starts_with("listening on"));
        assert!(ready.is_some(), "credentials server did not start:\n{}", proc.stderr().text());
        self.metadata = Some(proc);
    }

    /// Connections the fake credentials endpoint has accepted so far.
    fn metadata_connections(&self) -> Vec<String> {
        let proc = self.metadata.as_ref().expect("metadata_server() first");
        proc.stdout().all().into_iter().filter(|l| l.starts_with("connection from")).collect()
    }

    /// OpenSSH's sshd on PRIVATE_IP:22 with its own host key, letting `key`
    /// log in as root; returns its known_hosts line.
    fn private_sshd(&mut self, key: &ClientKey) -> String {
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is not installed: apt-get install -y --no-install-recommends openssh-server"
        );
        let dir = self.dir.path().join("sshd");
        std::fs::create_dir(&dir).unwrap();
        let host_key = dir.join("ssh_host_ed25519_key");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "private-sshd", "-f"])
            .arg(&host_key)
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-keygen: {}", text(&out));
        let host_public = std::fs::read_to_string(dir.join("ssh_host_ed25519_key.pub")).unwrap();
        let host_public = host_public.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        std::fs::write(dir.join("authorized_keys"), format!("{}\n", key.public_line)).unwrap();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port 22\nListenAddress {PRIVATE_IP}\nHostKey {}\nPidFile none\nAuthorizedKeysFile {}\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nPrintMotd no\nPrintLastLog no\nLogLevel VERBOSE\n",
                host_key.display(),
                dir.join("authorized_keys").display()
            ),
        )
        .unwrap();
        // sshd's privilege separation directory (created by the service unit on
        // a booted system; left in place, as the package expects it).
        std::fs::create_dir_all("/run/sshd").unwrap();
        let mut cmd = Command::new(SSHD);
        cmd.args(["-D", "-e", "-f"]).arg(&config);
        let proc = Proc::spawn(self.exec_in(&self.private_ns(), &cmd), Stdio::null());
        let ready = proc.stderr().wait_for(READY, |l| l.contains(&format!("Server listening on {PRIVATE_IP} port 22")));
        assert!(ready.is_some(), "sshd did not start:\n{}", proc.stderr().text());
        self.sshd = Some(proc);
        format!("{PRIVATE_IP} {host_public}")
    }

    /// `ssh -v -N` from the laptop with these forwards (`-L …`, `-D …`), once
    /// every local port listens (inside the client namespace).
    fn tunnel(&self, server: &Server, key: &ClientKey, forwards: &[(&str, String)], ports: &[u16]) -> Proc {
        let mut cmd = server.ssh(key);
        cmd.args(["-v", "-N"]);
        for (flag, spec) in forwards {
            cmd.arg(flag).arg(spec);
        }
        cmd.arg(server.destination("tunnel"));
        let proc = Proc::spawn(self.on_client(&cmd), Stdio::null());
        assert!(wait_forwards(&proc, ports), "ssh did not set up its forwards:\n{}", proc.stderr().text());
        proc
    }
}

impl Drop for Vpc {
    fn drop(&mut self) {
        // Nothing here may panic: this also runs while a failed test unwinds.
        if let Some(data) = &self.pg_data {
            // Stopped by pg_ctl, PostgreSQL removes its shared memory; killed, it would not.
            let _ = as_postgres(&pg_bin().join("pg_ctl"))
                .arg("-D")
                .arg(data)
                .args(["-m", "immediate", "-w", "-t", "20", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let namespaces = [self.client_ns(), self.bastion_ns(), self.private_ns()];
        for ns in &namespaces {
            kill_everything_in(ns);
            let out = Command::new("ip").args(["netns", "del", ns]).output();
            if let Ok(out) = out
                && !out.status.success()
                && !String::from_utf8_lossy(&out.stderr).contains("No such file")
            {
                eprintln!("vpc teardown: ip netns del {ns}: {}", text(&out));
            }
        }
        let _ = std::fs::remove_dir_all(self.hosts_dir());
        let Some(lock) = self.lock.take() else { return };
        // The last VPC of every running test process (an exclusive lock is
        // only granted when no other holds a shared one) removes what is
        // shared: the blackhole route, if this suite added it (its metric
        // says so), and an empty /etc/netns. A VPC being built meanwhile
        // waits for its shared lock, then adds them again.
        let _ = lock.unlock();
        if lock.try_lock().is_ok() {
            let route = Command::new("ip").args(["route", "show", "exact", RANGE]).output();
            if let Ok(route) = route
                && String::from_utf8_lossy(&route.stdout).contains(&format!("blackhole {RANGE} metric {ROUTE_METRIC}"))
            {
                let _ = Command::new("ip").args(["route", "del", "blackhole", RANGE, "metric", ROUTE_METRIC]).status();
            }
            let _ = std::fs::remove_dir(NETNS_ETC); // only if empty
        }
        drop(lock);
    }
}

/// The ids of the processes in namespace `ns` (none if it does not exist).
fn pids_in(ns: &str) -> Vec<String> {
    match Command::new("ip").args(["netns", "pids", ns]).stderr(Stdio::null()).output() {
        Ok(out) if out.status.success() => {
            String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
        }
        _ => Vec::new(),
    }
}

/// Kills every process in namespace `ns` (by pid) and waits until none is
/// left. A PostgreSQL postmaster still running there (a run killed before its
/// teardown) first gets SIGINT, a fast shutdown that removes its shared memory.
fn kill_everything_in(ns: &str) {
    let postmasters: Vec<String> = pids_in(ns)
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            argv[0].ends_with(b"/postgres") && argv.contains(&&b"-D"[..])
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in &postmasters {
        let _ = Command::new("kill").args(["-INT", pid]).stderr(Stdio::null()).status();
    }
    // An exited process leaves the namespace's list even while it is a zombie.
    while !postmasters.is_empty()
        && pids_in(ns).iter().any(|pid| postmasters.contains(pid))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20)); // polling their exit
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids = pids_in(ns);
        if pids.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("vpc teardown: processes {pids:?} in {ns} did not exit");
            return;
        }
        for pid in &pids {
            let _ = Command::new("kill").args(["-KILL", pid]).stderr(Stdio::null()).status();
        }
        std::thread::sleep(Duration::from_millis(20)); // polling their exit
    }
}

/// Deletes the namespaces (and /etc/netns entries) of test processes that no
/// longer exist: what a run killed with SIGKILL left behind.
fn sweep_stale_namespaces() {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let etc = std::fs::read_dir(NETNS_ETC)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect::<Vec<_>>())
        .unwrap_or_default();
    for name in listed.into_iter().chain(etc) {
        let Some(pid) = name.strip_prefix("bvpc").and_then(|rest| rest.split('-').next()) else { continue };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_everything_in(&name);
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(Path::new(NETNS_ETC).join(&name));
    }
}

/// Before any traffic: a blackhole route for the whole test range in the
/// root namespace, so that nothing addressed to it can leave the machine.
fn guard_the_range() {
    let routes = Command::new("ip").args(["route", "show", "root", RANGE]).output().expect("ip route show");
    let routes = String::from_utf8_lossy(&routes.stdout).to_string();
    let foreign: Vec<&str> = routes.lines().filter(|l| !l.starts_with(&format!("blackhole {RANGE}"))).collect();
    assert!(
        foreign.is_empty(),
        "{RANGE} is routed on this machine ({foreign:?}); tests/vpc.rs needs it unused (change RANGE)"
    );
    if !routes.lines().any(|l| l.starts_with(&format!("blackhole {RANGE}"))) {
        let out =
            Command::new("ip").args(["route", "add", "blackhole", RANGE, "metric", ROUTE_METRIC]).output().unwrap();
        // Another test process may have added it at the same moment.
        assert!(
            out.status.success() || String::from_utf8_lossy(&out.stderr).contains("File exists"),
            "ip route add blackhole {RANGE}: {}",
            text(&out)
        );
    }
    let out = Command::new("ip").args(["route", "get", PRIVATE_IP]).output().unwrap();
    assert!(!out.status.success(), "the root namespace would route {PRIVATE_IP}: {}", text(&out));
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), text(&out));
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The newest PostgreSQL server's bin directory.
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().expect("PostgreSQL server is not installed: apt-get install postgresql")
}

fn as_postgres(tool: &Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(tool);
    cmd
}

// --- clients -------------------------------------------------------------------

fn client_key(vpc: &Vpc) -> ClientKey {
    ClientKey::generate(vpc.dir.path(), "alice", "ed25519", None)
}

/// `psql -h HOST -p PORT -U app -d DB -Atc SQL`, with a bounded connect timeout.
fn psql(host: &str, port: u16, db: &str, sql: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.args(["-h", host, "-p", &port.to_string(), "-U", "app", "-d", db, "-Atc", sql]).env("PGCONNECT_TIMEOUT", "5");
    cmd
}

fn pgbench(port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new("pgbench");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "app"]).args(args).env("PGCONNECT_TIMEOUT", "20");
    cmd
}

/// `curl -sS --max-time 20 ARGS URL`.
fn curl(args: &[&str], url: &str) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20"]).args(args).arg(url);
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

// --- the tests ---------------------------------------------------------------

/// psql on the laptop cannot reach the database; through `ssh -L` via the
/// bastion, psql and pgbench work.
#[test]
fn the_database_is_out_of_the_laptops_reach_but_psql_and_pgbench_work_through_ssh_l() {
    require("psql", "postgresql-client");
    require("pgbench", "postgresql");
    let mut vpc = Vpc::build();
    vpc.postgres();
    let key = client_key(&vpc);
    let server = vpc.bastion(22, &[], &[&key]);

    let direct = run(vpc.on_client(&psql(PRIVATE_IP, 5432, "postgres", "select 1")));
    let said = text(&direct);
    assert!(!direct.status.success(), "psql reached the database without the bastion: {said}");
    assert!(
        said.contains("Network is unreachable") || said.contains("timeout expired"),
        "psql failed for another reason than no route: {said}"
    );
    eprintln!("psql from the laptop, directly: {}", said.trim());

    let port = 15432;
    let _ssh = vpc.tunnel(&server, &key, &[("-L", format!("127.0.0.1:{port}:db.internal:5432"))], &[port]);
    let out = run(vpc.on_client(&psql(
        "127.0.0.1",
        port,
        "postgres",
        "select 1 + 1, current_user, host(inet_client_addr())",
    )));
    assert!(out.status.success(), "psql through the tunnel failed: {}", text(&out));
    // The database sees the bastion's VPC-side address.
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("2|app|{BASTION_VPC_IP}"));
    server.wait_event("tunnel.opened", |e| {
        e["destination"] == "db.internal:5432" && e["resolved"] == format!("{PRIVATE_IP}:5432")
    });

    let out = run(vpc.on_client(&psql("127.0.0.1", port, "postgres", "create database bench")));
    assert!(out.status.success(), "create database: {}", text(&out));
    let out = run(vpc.on_client(&pgbench(port, &["-i", "-q", "-s", "1", "bench"])));
    assert!(out.status.success(), "pgbench -i through the tunnel failed: {}", text(&out));
    let out = run(vpc.on_client(&pgbench(port, &["-c", "4", "-j", "2", "-T", "3", "-S", "bench"])));
    let report = text(&out);
    assert!(out.status.success(), "pgbench through the tunnel failed: {report}");
    let tps: f64 = report
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's report:\n{report}"));
    assert!(tps > 0.0, "{report}");
    assert!(report.contains("number of failed transactions: 0"), "{report}");
    eprintln!("pgbench -c 4 -j 2 -T 3 -S through ssh -L via the bastion: tps = {tps:.1}");
}

/// `ssh -J bastion` reaches an sshd in the private subnet when
/// --permit-open allows its port 22, and is refused when it does not.
#[test]
fn ssh_j_reaches_a_private_sshd_only_when_permit_open_allows_port_22() {
    let mut vpc = Vpc::build();
    let key = client_key(&vpc);
    let private_known = vpc.private_sshd(&key);
    let allowing = vpc.bastion(22, &["--permit-open", &format!("{PRIVATE_IP}:22")], &[&key]);
    let denying = vpc.bastion(2222, &["--permit-open", &format!("{PRIVATE_IP}:5432")], &[&key]);

    // ProxyJump starts a second ssh that reads only the configuration file (-F is passed on).
    let known = vpc.dir.path().join("known_hosts.private");
    std::fs::write(&known, format!("{private_known}\n")).unwrap();
    let config = vpc.dir.path().join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host *\n  BatchMode yes\n  IdentitiesOnly yes\n  IdentityFile {}\n  UserKnownHostsFile {} {} {}\n  \
             StrictHostKeyChecking yes\n  ConnectTimeout 20\n",
            key.private.display(),
            allowing.known_hosts.display(),
            denying.known_hosts.display(),
            known.display()
        ),
    )
    .unwrap();
    let jump = |bastion: &str| {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(&config).args(["-J", bastion, &format!("root@{PRIVATE_IP}"), "echo ok"]);
        run(vpc.on_client(&cmd))
    };

    let out = jump(&format!("tunnel@{BASTION_PUBLIC_IP}"));
    assert!(out.status.success(), "ssh -J failed: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    allowing.wait_event("tunnel.opened", |e| e["destination"] == format!("{PRIVATE_IP}:22"));
    let sshd = vpc.sshd.as_ref().unwrap();
    let accepted = sshd.stderr().wait_for(READY, |l| l.contains("Accepted publickey for root"));
    let accepted = accepted.unwrap_or_else(|| panic!("the private sshd logged no login:\n{}", sshd.stderr().text()));
    assert!(accepted.contains(&format!("from {BASTION_VPC_IP} ")), "{accepted}");

    let out = jump(&format!("tunnel@{BASTION_PUBLIC_IP}:2222"));
    let said = text(&out);
    assert_eq!(out.status.code(), Some(255), "ssh -J through a bastion that does not permit port 22: {said}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ok"), "{said}");
    assert!(said.contains("administratively prohibited"), "{said}");
    assert!(said.contains("not in the bastion's permit list"), "{said}");
    eprintln!("ssh -J through a bastion without {PRIVATE_IP}:22 in --permit-open:\n{}", said.trim());
    let refused = denying.wait_event("tunnel.refused", |e| e["destination"] == format!("{PRIVATE_IP}:22"));
    assert!(refused["reason"].as_str().unwrap().contains("--permit-open"), "{refused}");
    assert!(denying.events("tunnel.opened").is_empty());
    // The private sshd saw the one connection that was allowed, and no other.
    let connections: Vec<String> = sshd.stderr().all().into_iter().filter(|l| l.contains("Connection from")).collect();
    assert_eq!(connections.len(), 1, "{connections:?}");
}

/// `ssh -D` and curl's SOCKS options reach the private HTTP service, by
/// name (resolved by the bastion) and by address.
#[test]
fn ssh_d_lets_curl_reach_the_private_web_service() {
    require("curl", "curl");
    let mut vpc = Vpc::build();
    vpc.web_server();
    let key = client_key(&vpc);
    let server = vpc.bastion(22, &[], &[&key]);

    let url = format!("http://{PRIVATE_IP}:8000/");
    let direct = run(vpc.on_client(&curl(&["--max-time", "5"], &url)));
    assert!(!direct.status.success(), "curl reached the web service without the bastion: {}", text(&direct));
    eprintln!("curl from the laptop, directly: {}", text(&direct).trim());

    let socks = 1080;
    let _ssh = vpc.tunnel(&server, &key, &[("-D", format!("127.0.0.1:{socks}"))], &[socks]);
    let proxy = format!("127.0.0.1:{socks}");
    for (option, url, destination) in [
        ("--socks5-hostname", "http://web.internal:8000/".to_string(), "web.internal:8000".to_string()),
        ("--socks5", url.clone(), format!("{PRIVATE_IP}:8000")),
    ] {
        let out = run(vpc.on_client(&curl(&[option, &proxy], &url)));
        assert!(out.status.success(), "curl {option} {url}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(WEB_MARKER), "{}", text(&out));
        let closed = server.wait_event("tunnel.closed", |e| e["destination"] == destination.as_str());
        assert_eq!(closed["resolved"], format!("{PRIVATE_IP}:8000"));
        assert!(closed["bytes_down"].as_u64().unwrap() > WEB_MARKER.len() as u64, "{closed}");
    }
}

/// 169.254.170.2 (the ECS credentials endpoint) answers the bastion's own
/// host, but no tunnel reaches it, however it is spelled.
#[test]
fn the_credentials_endpoint_answers_the_bastion_host_but_no_tunnel_reaches_it() {
    require("curl", "curl");
    let mut vpc = Vpc::build();
    vpc.metadata_server();
    let key = client_key(&vpc);
    let server = vpc.bastion(22, &[], &[&key]);

    // On the bastion's host, by address and by name: the credentials are there to be had.
    for host in [METADATA_IP, "ecs-credentials.internal"] {
        let out = run(vpc.on_bastion(&curl(&["-f"], &format!("http://{host}{CREDENTIALS_PATH}"))));
        assert!(out.status.success(), "curl in the bastion namespace, {host}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"AccessKeyId\""), "{}", text(&out));
    }
    assert_eq!(vpc.metadata_connections().len(), 2);

    // Through bastion-sshd (its default policy), from the laptop: -L with
    // every spelling, and -D with curl's SOCKS options.
    let spellings =
        [METADATA_IP, "[::ffff:169.254.170.2]", "2852039170", "0xa9.0xfe.0xaa.0x02", "ecs-credentials.internal"];
    let socks = 1080;
    let ports: Vec<u16> = (0..spellings.len() as u16).map(|i| 18000 + i).collect();
    let mut forwards: Vec<(&str, String)> =
        spellings.iter().zip(&ports).map(|(host, port)| ("-L", format!("127.0.0.1:{port}:{host}:80"))).collect();
    forwards.push(("-D", format!("127.0.0.1:{socks}")));
    let all_ports: Vec<u16> = ports.iter().copied().chain([socks]).collect();
    let ssh = vpc.tunnel(&server, &key, &forwards, &all_ports);

    let mut expected: Vec<String> = Vec::new();
    for (host, port) in spellings.iter().zip(&ports) {
        let out = run(vpc.on_client(&curl(&[], &format!("http://127.0.0.1:{port}{CREDENTIALS_PATH}"))));
        assert!(!out.status.success(), "-L to {host}:80 answered: {}", text(&out));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("AccessKeyId"), "{}", text(&out));
        expected.push(format!("{host}:80"));
    }
    let proxy = format!("127.0.0.1:{socks}");
    for (option, host, destination) in [
        ("--socks5", METADATA_IP, format!("{METADATA_IP}:80")),
        ("--socks5-hostname", "ecs-credentials.internal", "ecs-credentials.internal:80".to_string()),
        // curl sends this as a 16-byte IPv6 address (SOCKS5 ATYP 4), not as a name.
        ("--socks5-hostname", "[::ffff:169.254.170.2]", "[::ffff:169.254.170.2]:80".to_string()),
    ] {
        let out = run(vpc.on_client(&curl(&[option, &proxy], &format!("http://{host}{CREDENTIALS_PATH}"))));
        assert!(!out.status.success(), "-D, curl {option} {host}: {}", text(&out));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("AccessKeyId"), "{}", text(&out));
        expected.push(destination);
    }

    // What the user sees: ssh reports each refusal with the bastion's reason.
    for destination in &expected {
        let line = ssh
            .stderr()
            .wait_for(READY, |l| l.contains("open failed") && l.contains(destination.as_str()))
            .unwrap_or_else(|| panic!("no refusal for {destination}; ssh said:\n{}", ssh.stderr().text()));
        assert!(line.contains("administratively prohibited") && line.contains("denied range"), "{line}");
    }
    let shown: Vec<String> = ssh.stderr().all().into_iter().filter(|l| l.contains("open failed")).collect();
    eprintln!("ssh on the laptop:\n{}", shown.join("\n"));

    // And the audit log has one tunnel.refused for each, with the reason.
    for destination in &expected {
        server.wait_event("tunnel.refused", |e| e["destination"] == destination.as_str());
    }
    let refused = server.events("tunnel.refused");
    let mut logged: Vec<String> = refused.iter().map(|e| e["destination"].as_str().unwrap().to_string()).collect();
    logged.sort();
    expected.sort();
    assert_eq!(logged, expected);
    for event in &refused {
        let reason = event["reason"].as_str().unwrap();
        assert!(reason.contains("ECS task metadata") && reason.contains("169.254.0.0/16"), "{event}");
    }
    for name in refused.iter().filter(|e| e["destination"] == "ecs-credentials.internal:80") {
        assert!(name["reason"].as_str().unwrap().contains("resolves to 169.254.170.2"), "{name}");
    }
    assert!(server.events("tunnel.opened").is_empty() && server.events("tunnel.failed").is_empty());
    // The endpoint never heard from the bastion: only the two direct requests.
    assert_eq!(vpc.metadata_connections().len(), 2, "{:?}", vpc.metadata_connections());
}
