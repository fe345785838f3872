//! "A VPC on one machine": network namespaces joined by veth pairs stand in
//! for a laptop, the bastion's Fargate task and a private subnet, and the
//! real programs (bastion-sshd, OpenSSH's ssh and sshd, psql, pgbench, curl,
//! PostgreSQL, Python's http.server) run inside them with `ip netns exec`.
//! The suites `tests/vpc.rs` and `tests/self_reach.rs` build one per test.
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
//! `db.internal`, `web.internal`, `admin.internal`, `bastion.internal` (the
//! task's own VPC address) and `ecs-credentials.internal` (169.254.170.2); the
//! laptop knows none of them.
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
//! processes removes the blackhole route (if a VPC suite added it) and an empty
//! `/etc/netns`. A run killed outright (SIGKILL) leaves its namespaces; the
//! next run deletes those of processes that no longer exist.
//!
//! Needs root and: iproute2, openssh-client, openssh-server, postgresql
//! (initdb, pg_ctl, pgbench), postgresql-client, curl, python3, procps, util-linux.

mod services;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{ClientKey, Proc, READY, Server, is_root, require, unique, wait_forwards};

const RANGE: &str = "10.213.0.0/16";
/// The metric that marks the blackhole route as the VPC suites'.
const ROUTE_METRIC: &str = "4213";
pub const CLIENT_IP: &str = "10.213.1.2";
pub const BASTION_PUBLIC_IP: &str = "10.213.1.1";
pub const BASTION_VPC_IP: &str = "10.213.2.1";
pub const PRIVATE_IP: &str = "10.213.2.10";
pub const METADATA_IP: &str = "169.254.170.2";
/// As in ECS: `$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`.
pub const CREDENTIALS_PATH: &str = "/v2/credentials/5b1a0b5e-7f3c-4d2e-9a61-3c0e8e2f4d10";
/// What the private HTTP service serves.
pub const WEB_MARKER: &str = "private web service: reached";
const LOCK_FILE: &str = "/run/lock/bastion-vpc-tests.lock";
const NETNS_ETC: &str = "/etc/netns";

// --- the network -------------------------------------------------------------

/// Three namespaces, their links and services; everything is torn down on drop.
pub struct Vpc {
    /// `bvpc<pid>-<n>`: the namespaces are `<id>-client`, `<id>-bastion`, `<id>-private`.
    id: String,
    pub dir: TempDir,
    /// A shared lock on [`LOCK_FILE`] while this VPC exists (see [`Vpc::drop`]).
    lock: Option<File>,
    /// Services started in the namespaces (killed on drop, with everything else in them).
    services: Vec<Proc>,
    /// The fake credentials endpoint, once started.
    metadata: Option<Proc>,
    /// The private sshd, once started.
    pub sshd: Option<Proc>,
    /// The PostgreSQL cluster, once started (stopped with pg_ctl first on drop).
    pg_data: Option<PathBuf>,
}

impl Vpc {
    pub fn build() -> Vpc {
        assert!(
            is_root(),
            "the VPC suites create network namespaces: run them as root (sudo -E cargo test -p bastion-tests --test vpc)"
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
            dir: crate::tempdir(),
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

    pub fn client_ns(&self) -> String {
        self.ns("client")
    }

    pub fn bastion_ns(&self) -> String {
        self.ns("bastion")
    }

    pub fn private_ns(&self) -> String {
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
             {BASTION_VPC_IP} bastion.internal\n{METADATA_IP} ecs-credentials.internal\n"
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
    pub fn exec_in(&self, ns: &str, cmd: &Command) -> Command {
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
    pub fn on_client(&self, cmd: &Command) -> Command {
        self.exec_in(&self.client_ns(), cmd)
    }

    /// `cmd` on the bastion's host (not through bastion-sshd).
    pub fn on_bastion(&self, cmd: &Command) -> Command {
        self.exec_in(&self.bastion_ns(), cmd)
    }

    /// `ssh -v -N` from the laptop with these forwards (`-L …`, `-D …`), once
    /// every local port listens (inside the client namespace).
    pub fn tunnel(&self, server: &Server, key: &ClientKey, forwards: &[(&str, String)], ports: &[u16]) -> Proc {
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
            services::stop_postgres(data);
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
        // shared: the blackhole route, if a VPC suite added it (its metric
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
        "{RANGE} is routed on this machine ({foreign:?}); the VPC suites need it unused (change RANGE)"
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
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), text(&out));
}

/// What a command printed, stdout then stderr.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

// --- clients -------------------------------------------------------------------

pub fn client_key(vpc: &Vpc) -> ClientKey {
    ClientKey::generate(vpc.dir.path(), "alice", "ed25519", None)
}

/// `curl -sS --max-time 20 ARGS URL`.
pub fn curl(args: &[&str], url: &str) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20"]).args(args).arg(url);
    cmd
}

pub fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}
