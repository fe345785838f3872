//! Pay only while used: `ssh` through `bastion proxy` wakes the service, and
//! the sidecar's idle stop scales it back to 0.
//!
//! Real here: the OpenSSH client with `ProxyCommand bastion proxy …`, the
//! `bastion`, `bastion-sshd` and `dns-sidecar` binaries, and moto's ECS, EC2,
//! Route 53 and IAM APIs (with moto checking signatures and policies where a
//! test says so). Faked, because it cannot run here: ECS's scheduler and
//! agent (`bastion_tests::ecs::Scheduler`, which starts the real processes
//! when the desired count becomes 1 and stops them with SIGTERM at 0). The
//! task's "public IP" is a loopback address the test picks, set on the
//! interface that moto's EC2 returns.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bastion_tests::aws::fixture;
use bastion_tests::ecs::{EcsStandin, Placement, Scheduler, TaskRun};
use bastion_tests::sidecar::{sidecar_command, wait_event};
use bastion_tests::{
    ClientKey, EchoServer, Proc, READY, ServerBuilder, bastion_bin, echo_round_trip, event, free_port, json, pattern,
    tempdir, unique, wait_forwards,
};

const CLUSTER: &str = "bastion";
const SERVICE: &str = "bastion";
const NAME: &str = "bastion.example.test";

fn bastion_cli() -> PathBuf {
    let path = bastion_bin().with_file_name("bastion");
    assert!(path.exists(), "{} is missing: cargo build -p bastion (tests/ci.sh does)", path.display());
    path
}

/// A loopback address of its own for one test's "task", and a port free on it.
fn task_address() -> SocketAddr {
    let n = 2 + (unique() % 200) as u8 + (std::process::id() % 50) as u8;
    let ip = Ipv4Addr::new(127, 0, 3, n);
    let port = TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
    SocketAddr::from((ip, port))
}

/// One deployment: the stand-in, a service, a zone, keys, and the task's processes.
struct Deployment {
    standin: Arc<EcsStandin>,
    dir: tempfile::TempDir,
    key: ClientKey,
    known_hosts: PathBuf,
    addr: SocketAddr,
    echo: EchoServer,
    zone: String,
}

impl Deployment {
    fn new(desired: u32) -> Self {
        let standin = Arc::new(EcsStandin::start());
        standin.setup(CLUSTER, SERVICE, desired);
        let dir = tempdir();
        let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
        let host_key = dir.path().join("host_key");
        let out = Command::new(bastion_bin()).args(["keygen", "--out"]).arg(&host_key).output().unwrap();
        assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
        let addr = task_address();
        let public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let known_hosts = dir.path().join("known_hosts");
        // `[name]:port` as ssh through the proxy looks it up; the bare name for HostKeyAlias (ssh_direct).
        let public = public.trim();
        std::fs::write(&known_hosts, format!("[{NAME}]:{} {public}\n{NAME} {public}\n", addr.port())).unwrap();
        let zone = fixture(&["create-zone", &standin.moto, "example.test."])["zone"].as_str().unwrap().to_string();
        Self { standin, dir, key, known_hosts, addr, echo: EchoServer::start(), zone }
    }

    /// The scheduler stand-in, starting bastion-sshd (the stable host key,
    /// listening on the task's address) and dns-sidecar with `--idle-stop idle`.
    fn scheduler(&self, idle: &str, public_ip: bool) -> Scheduler {
        let (dir, addr, moto, zone) =
            (self.dir.path().to_path_buf(), self.addr, self.standin.moto.clone(), self.zone.clone());
        let key_line = self.key.public_line.clone();
        let idle = idle.to_string();
        let launch = Box::new(move || {
            let authorized = dir.join(format!("authorized_keys.{}", unique()));
            std::fs::write(&authorized, format!("{key_line}\n")).unwrap();
            let server = ServerBuilder::new(&dir)
                .arg("--authorized-keys")
                .arg(&authorized)
                .args(["--listen", &addr.to_string(), "--name", NAME, "--drain-timeout", "5s", "--host-key"])
                .arg(dir.join("host_key"))
                .start();
            let activity = server.wait_event("activity.listening", |_| true)["addr"].as_str().unwrap().to_string();
            let mut sidecar = sidecar_command(
                &format!("{CLUSTER}/bastion"),
                NAME,
                &moto,
                &zone,
                None,
                None,
                &["--address", &addr.ip().to_string(), "--idle-poll", "200ms", "--activity-address", &activity],
            );
            sidecar.env("AWS_ENDPOINT_URL_ECS", &moto).args([
                "--idle-stop",
                &idle,
                "--ecs-service",
                SERVICE,
                "--ecs-cluster",
                CLUSTER,
            ]);
            let sidecar = Proc::spawn(sidecar, Stdio::null());
            wait_event(&sidecar, "record.live");
            vec![server.proc, sidecar]
        });
        let placement = Placement {
            cluster: CLUSTER.into(),
            service: SERVICE.into(),
            public_ip: public_ip.then(|| self.addr.ip().to_string()),
            private_ip: self.addr.ip().to_string(),
            health_addr: self.addr,
        };
        Scheduler::start(self.standin.clone(), placement, launch)
    }

    /// The environment `bastion proxy` runs in: test credentials, moto for ECS and EC2.
    fn aws_env(&self, cmd: &mut Command) {
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(var);
            }
        }
        cmd.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_ENDPOINT_URL_ECS", &self.standin.moto)
            .env("AWS_ENDPOINT_URL_EC2", &self.standin.moto);
    }

    /// `ssh -N -L` to the echo server, through the README's on-demand `~/.ssh/config` stanza
    /// (`ProxyCommand bastion proxy …`, with `proxy_extra` flags), and this test's key,
    /// known_hosts and port.
    fn ssh_tunnel(&self, proxy_extra: &str) -> (Proc, u16) {
        let local = free_port();
        let stanza = bastion_tests::readme_sshconfig("ProxyCommand bastion proxy");
        let host = stanza.lines().find_map(|l| l.strip_prefix("Host ")).expect("a Host line").trim().to_string();
        let mut config = String::new();
        for line in stanza.lines() {
            let line = line
                .replace("ProxyCommand bastion proxy", &format!("ProxyCommand {} proxy", bastion_cli().display()))
                .replace("<ClusterName>", CLUSTER)
                .replace(" %h %p", &format!(" {proxy_extra} %h %p"));
            config.push_str(&line);
            config.push('\n');
        }
        config.push_str(&format!(
            "    Port {}\n    User alice\n    IdentityFile {}\n    IdentitiesOnly yes\n    BatchMode yes\n    \
             StrictHostKeyChecking yes\n    UserKnownHostsFile {}\n    HostKeyAlias {NAME}\n    \
             ExitOnForwardFailure yes\n",
            self.addr.port(),
            self.key.private.display(),
            self.known_hosts.display()
        ));
        let path = self.dir.path().join(format!("ssh_config.{}", unique()));
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(&path).args(["-v", "-N", "-L", &format!("{local}:{}", self.echo.addr)]).arg(&host);
        self.aws_env(&mut cmd);
        let ssh = Proc::spawn(cmd, Stdio::null());
        assert!(wait_forwards(&ssh, &[local]), "the tunnel did not open:\n{}", ssh.stderr().text());
        (ssh, local)
    }

    /// Plain ssh straight to the task's address, no proxy (a user who knows it).
    fn ssh_direct(&self) -> (Proc, u16) {
        let local = free_port();
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-v", "-N", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "ExitOnForwardFailure=yes", "-o"])
            .arg(format!("HostKeyAlias={NAME}"))
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg("-i")
            .arg(&self.key.private)
            .args(["-p", &self.addr.port().to_string(), "-L", &format!("{local}:{}", self.echo.addr)])
            .arg(format!("alice@{}", self.addr.ip()));
        let ssh = Proc::spawn(cmd, Stdio::null());
        assert!(wait_forwards(&ssh, &[local]), "the tunnel did not open:\n{}", ssh.stderr().text());
        (ssh, local)
    }

    /// `bastion proxy` on its own, with stdin closed: what a failure prints.
    fn proxy(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bastion_cli());
        cmd.arg("proxy").args(args).stdin(Stdio::null());
        self.aws_env(&mut cmd);
        cmd.output().unwrap()
    }

    fn desired(&self) -> Option<u64> {
        self.standin.service(CLUSTER, SERVICE).0
    }

    fn wait_desired(&self, want: u64) {
        let deadline = Instant::now() + READY;
        while self.desired() != Some(want) {
            assert!(Instant::now() < deadline, "the desired count never became {want} (is {:?})", self.desired());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The zone's records other than NS and SOA.
    fn records(&self) -> usize {
        fixture(&["list", &self.standin.moto, &self.zone]).as_array().unwrap().len()
    }
}

fn tunnel_carries_data(local: u16) {
    let data = pattern(256 << 10, unique());
    assert!(echo_round_trip(SocketAddr::from(([127, 0, 0, 1], local)), &data) == data, "the tunnel garbled the data");
}

fn sidecar(run: &TaskRun) -> &Proc {
    &run.procs[1]
}

fn events(proc: &Proc, name: &str) -> Vec<serde_json::Value> {
    proc.stderr().all().iter().filter(|l| event(l).as_deref() == Some(name)).map(|l| json(l)).collect()
}

/// One read of the task's bastion-sshd activity report, as the sidecar reads it.
fn activity_report(run: &TaskRun) -> serde_json::Value {
    let listening = run.procs[0].stderr().all().into_iter().find(|l| event(l).as_deref() == Some("activity.listening"));
    let addr: SocketAddr = json(&listening.expect("activity.listening"))["addr"].as_str().unwrap().parse().unwrap();
    let mut line = String::new();
    std::io::Read::read_to_string(&mut std::net::TcpStream::connect(addr).unwrap(), &mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

fn one_line(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    text.lines().last().unwrap_or_default().to_string()
}

#[test]
fn ssh_wakes_the_service_and_the_idle_stop_scales_it_back_to_zero() {
    let d = Deployment::new(0);
    let scheduler = d.scheduler("5s", true);
    let started = Instant::now();
    let (mut ssh, local) = d.ssh_tunnel("");
    println!("first ssh through the proxy had its tunnel after {:?}", started.elapsed());
    tunnel_carries_data(local);

    // What the user saw, on ssh's stderr (the proxy's), in order.
    let said = ssh.stderr().text();
    let woke = said.find("bastion: service bastion has no running task; starting one (desired count 0 -> 1)");
    let healthy = said.find("RUNNING, healthy after");
    let connecting = said.find(&format!("; connecting to {}", d.addr));
    assert!(woke.is_some() && healthy > woke && connecting > healthy, "{said}");
    assert_eq!(d.desired(), Some(1));
    assert_eq!(scheduler.tasks.lock().unwrap().len(), 1);

    // Nobody logged in any more: after the idle period the service goes to 0,
    // ECS (the stand-in) stops the task, both containers exit 0, and the
    // sidecar deletes the record.
    ssh.signal("TERM");
    ssh.wait_exit(READY);
    assert_eq!(d.records(), 2, "the record and its marker, while the task runs");
    d.wait_desired(0);
    scheduler.wait("the task stopping", READY, |runs| runs.iter().all(|r| r.stopped));
    let runs = scheduler.tasks.lock().unwrap();
    let stop = events(sidecar(&runs[0]), "idle.stopping");
    assert_eq!(stop.len(), 1, "{}", sidecar(&runs[0]).stderr().text());
    assert!(stop[0]["idle_seconds"].as_u64().unwrap() >= 2, "{}", stop[0]);
    for (proc, exit) in runs[0].procs.iter().zip(&runs[0].exits) {
        assert!(exit.is_some_and(|e| e.success()), "{exit:?}:\n{}", proc.stderr().text());
    }
    assert_eq!(d.records(), 0, "the sidecar left records behind");
}

#[test]
fn an_open_session_prevents_the_stop_and_a_running_service_is_not_touched() {
    // The service runs already (desired 1), and the task has no public IP: a VPN user.
    let d = Deployment::new(1);
    let scheduler = d.scheduler("3s", false);
    scheduler.wait("the first task", READY, |runs| runs.len() == 1);
    let (ssh, local) = d.ssh_tunnel("--address private");
    let said = ssh.stderr().text();
    assert!(!said.contains("starting"), "a running service was started again:\n{said}");
    assert!(said.contains(&format!("connecting to {}", d.addr)), "{said}");
    assert_eq!(d.desired(), Some(1));

    // What the sidecar reads: counts and an idle clock, nothing about who or where.
    let runs = scheduler.tasks.lock().unwrap();
    let report = activity_report(&runs[0]);
    let keys: Vec<&str> = report.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["connections", "draining", "idle_seconds", "logins", "sessions", "tunnels"], "{report}");
    assert_eq!((report["sessions"].as_u64(), report["idle_seconds"].as_f64()), (Some(1), None), "{report}");

    // The session stays open, idle, for many idle periods: the task stays.
    let sidecar = sidecar(&runs[0]);
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_secs(5) {
        assert!(
            events(sidecar, "idle.stopping").is_empty(),
            "stopped under an open session:\n{}",
            sidecar.stderr().text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(d.desired(), Some(1));
    drop(runs);
    tunnel_carries_data(local);
    drop(ssh);
    // Once it closes, the idle clock runs and the stop follows.
    d.wait_desired(0);
}

#[test]
fn a_connection_during_the_stop_keeps_the_service() {
    let d = Deployment::new(0);
    let scheduler = d.scheduler("5s", true);
    let (mut ssh, local) = d.ssh_tunnel("");
    tunnel_carries_data(local);
    // ECS gets to a desired count of 0 only when the test lets it.
    scheduler.hold_stops.store(true, Ordering::Relaxed);
    ssh.signal("TERM");
    ssh.wait_exit(READY);
    d.wait_desired(0);

    // 1. `ssh` through the proxy while the stop is in flight: the proxy starts
    //    the service again and connects to the same task, which ECS keeps.
    let (mut ssh, local) = d.ssh_tunnel("");
    let said = ssh.stderr().text();
    assert!(
        said.contains("bastion: service bastion is stopping (idle); starting it again (desired count 0 -> 1)"),
        "{said}"
    );
    tunnel_carries_data(local);
    assert_eq!(d.desired(), Some(1));
    let runs = scheduler.tasks.lock().unwrap();
    assert_eq!(runs.len(), 1, "the same task serves it");
    wait_event(sidecar(&runs[0]), "idle.woken");
    drop(runs);

    // 2. A login straight to the task's address during a stop (no proxy to raise
    //    the count): the sidecar sees it and scales the service back to 1.
    ssh.signal("TERM");
    ssh.wait_exit(READY);
    let stops = || events(sidecar(&scheduler.tasks.lock().unwrap()[0]), "idle.stopping").len();
    let deadline = Instant::now() + READY;
    while stops() < 2 {
        assert!(Instant::now() < deadline, "no second idle stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(d.desired(), Some(0));
    let (direct, local) = d.ssh_direct();
    d.wait_desired(1);
    tunnel_carries_data(local);
    wait_event(sidecar(&scheduler.tasks.lock().unwrap()[0]), "idle.restored");
    scheduler.hold_stops.store(false, Ordering::Relaxed);
    assert_eq!(scheduler.tasks.lock().unwrap().len(), 1);
    drop(direct);
}

#[test]
fn failures_say_what_to_fix_in_one_line() {
    let d = Deployment::new(0);
    let host = ["example.test", "22"];
    let with = |args: &[&str]| -> Vec<String> { args.iter().chain(&host).map(|s| s.to_string()).collect() };

    // A service or cluster that does not exist.
    let args = with(&["--cluster", CLUSTER, "--service", "nope"]);
    let out = d.proxy(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    assert_eq!(
        one_line(&out),
        "bastion: service nope does not exist in cluster bastion (us-east-1): check --service, --cluster and --region"
    );
    let args = with(&["--cluster", "elsewhere", "--service", SERVICE]);
    let out = d.proxy(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let line = one_line(&out);
    assert!(line.starts_with("bastion: ") && line.contains("elsewhere"), "{line}");
    assert!(out.stdout.is_empty(), "stdout carries SSH only");

    // No task within the timeout: the proxy started one, nothing came.
    let args = with(&["--cluster", CLUSTER, "--service", SERVICE, "--wait-timeout", "3s"]);
    let out = d.proxy(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let line = one_line(&out);
    assert!(
        line.starts_with("bastion: no healthy task of service bastion within 3s (--wait-timeout); ")
            && line.contains("last service events:"),
        "{line}"
    );
    assert_eq!(d.desired(), Some(1), "the proxy raised the count before waiting");

    // A task without a public IP, asked for its public IP.
    let arn = d.standin.add_task(CLUSTER, SERVICE, None, "10.0.1.9");
    d.standin.update_task(CLUSTER, &arn, serde_json::json!({"last": "RUNNING", "health": "HEALTHY"}));
    let args = with(&["--cluster", CLUSTER, "--service", SERVICE]);
    let out = d.proxy(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let line = one_line(&out);
    assert!(line.contains("has no public IP") && line.contains("--address private (10.0.1.9)"), "{line}");

    // Access denied, by moto's own IAM: a user who may look but not start.
    d.standin.update_task(CLUSTER, &arn, serde_json::json!({"desired": "STOPPED", "last": "STOPPED"}));
    let mut cmd = Command::new(bastion_cli());
    cmd.args(["proxy", "--cluster", CLUSTER, "--service", SERVICE, "example.test", "22"]).stdin(Stdio::null());
    d.aws_env(&mut cmd);
    // Back to 0, then only the read actions for the new identity.
    fixture(&["ecs-desired", &d.standin.moto, CLUSTER, SERVICE, "0"]);
    let (key, secret, user) = d.standin.identity(&["ecs:DescribeServices", "ecs:ListTasks", "ecs:DescribeTasks"]);
    let out = cmd.env("AWS_ACCESS_KEY_ID", &key).env("AWS_SECRET_ACCESS_KEY", &secret).output().unwrap();
    let line = one_line(&out);
    assert!(
        line.starts_with("bastion: access denied: your AWS identity may not call ecs:UpdateService on service bastion of cluster bastion (")
            && line.contains(&user)
            && line.contains("deploy/iam/proxy-policy.json"),
        "{line}"
    );
    assert_eq!(d.desired(), Some(0));
    // And a wrong secret is refused by moto's signature check, not let through.
    let out = cmd.env("AWS_SECRET_ACCESS_KEY", "wrong").output().unwrap();
    let line = one_line(&out);
    assert!(line.contains("SignatureDoesNotMatch") || line.contains("signature"), "{line}");
}

#[test]
fn no_activity_report_means_no_stop() {
    // bastion-sshd's report cannot be read (nothing listens there): nobody is known to be idle.
    let d = Deployment::new(1);
    let nothing = free_port();
    let mut cmd = sidecar_command(
        &format!("{CLUSTER}/bastion"),
        NAME,
        &d.standin.moto,
        &d.zone,
        None,
        None,
        &["--address", "127.0.0.9", "--idle-poll", "100ms", "--activity-address", &format!("127.0.0.1:{nothing}")],
    );
    cmd.env("AWS_ENDPOINT_URL_ECS", &d.standin.moto).args([
        "--idle-stop",
        "1s",
        "--ecs-service",
        SERVICE,
        "--ecs-cluster",
        CLUSTER,
    ]);
    let side = Proc::spawn(cmd, Stdio::null());
    let unreadable = wait_event(&side, "idle.activity_unreadable");
    assert!(
        unreadable["message"].as_str().unwrap_or_default().contains("no idle stop until it answers"),
        "{unreadable}"
    );
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(d.desired(), Some(1));
    assert!(events(&side, "idle.stopping").is_empty(), "{}", side.stderr().text());
    // Said once per outage, not at every poll.
    assert_eq!(events(&side, "idle.activity_unreadable").len(), 1, "{}", side.stderr().text());
}

#[test]
fn both_binaries_default_to_the_same_activity_address() {
    // In the task, bastion-sshd and dns-sidecar share the loopback; with no
    // configuration the sidecar reads where bastion-sshd reports.
    let help = |bin: &Path, args: &[&str]| {
        let out = Command::new(bin).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let sshd = help(&bastion_bin(), &["run", "--help"]);
    let sidecar = help(&bastion_tests::sidecar::sidecar_bin(), &["--help"]);
    assert!(sshd.contains("Default 127.0.0.1:8022"), "{sshd}");
    assert!(
        sidecar.contains("[env: DNS_SIDECAR_ACTIVITY_ADDRESS=] [default: 127.0.0.1:8022]")
            || sidecar.contains("[default: 127.0.0.1:8022]"),
        "{sidecar}"
    );
}
