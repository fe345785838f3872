//! The images, run by a real Docker engine the way deploy/task-definition.json
//! runs them: read-only root filesystem, capabilities dropped, keys passed as
//! environment variables (ECS `secrets`). The bastion image carries a real
//! OpenSSH client's `ssh -L` to a real PostgreSQL on the host's bridge; the
//! sidecar image publishes to ministack/moto on the host's bridge, with a
//! small real HTTP server for the ECS task metadata (the one faked endpoint).
//!
//! tests/images.sh builds the images (tests/ci.sh runs it first) and writes
//! target/images/env, which these tests read.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bastion_tests::aws::{Emulator, Metadata, create_zone, fixture, records};
use bastion_tests::*;

/// What tests/images.sh built, and where the engine is.
struct Images {
    vars: HashMap<String, String>,
}

impl Images {
    fn load() -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/images/env");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e}. Build the images first: bash tests/images.sh (tests/ci.sh does)", path.display())
        });
        let vars = text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
        Images { vars }
    }

    fn var(&self, name: &str) -> &str {
        self.vars.get(name).map(String::as_str).unwrap_or_else(|| panic!("{name} missing in target/images/env"))
    }

    fn docker(&self) -> Command {
        let mut cmd = Command::new(self.var("DOCKER"));
        let host = self.var("DOCKER_HOST");
        if !host.is_empty() {
            cmd.env("DOCKER_HOST", host);
        }
        cmd
    }

    /// Runs a docker command to completion; panics with its output on failure.
    fn run(&self, args: &[&str]) -> String {
        let out = self.docker().args(args).output().expect("docker");
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn gateway(&self) -> IpAddr {
        self.var("BRIDGE_GATEWAY").parse().expect("BRIDGE_GATEWAY")
    }
}

/// A container, removed when the test ends.
struct Container<'a> {
    images: &'a Images,
    id: String,
}

impl<'a> Container<'a> {
    /// `docker run -d ARGS`; `env` values travel in the docker client's
    /// environment (`-e NAME`), as ECS hands secrets to the container.
    fn start(images: &'a Images, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = images.docker();
        cmd.args(["run", "-d"]);
        for (name, value) in env {
            cmd.args(["-e", name]).env(name, value);
        }
        let out = cmd.args(args).output().expect("docker run");
        assert!(out.status.success(), "docker run {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Container { images, id: String::from_utf8_lossy(&out.stdout).trim().to_string() }
    }

    fn inspect(&self, format: &str) -> String {
        self.images.run(&["inspect", "-f", format, &self.id])
    }

    /// Follows the container's log (stdout and stderr) as a process.
    fn logs(&self) -> Proc {
        let mut cmd = self.images.docker();
        cmd.args(["logs", "-f", &self.id]);
        Proc::spawn(cmd, Stdio::null())
    }

    fn ip(&self) -> IpAddr {
        self.inspect("{{.NetworkSettings.IPAddress}}").parse().expect("container IP")
    }

    /// `docker stop`: SIGTERM, then SIGKILL after `timeout` seconds.
    fn stop(&self, timeout: u32) -> Duration {
        let start = Instant::now();
        self.images.run(&["stop", "-t", &timeout.to_string(), &self.id]);
        start.elapsed()
    }

    fn exit_code(&self) -> i32 {
        self.images.run(&["wait", &self.id]).parse().expect("exit code")
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.images.docker().args(["rm", "-f", &self.id]).output();
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A container of deploy/task-definition.json, as `docker run` arguments:
/// its user, read-only root filesystem, capabilities and plain environment
/// (`${PLACEHOLDER}` values from `values`), and the names of its `secrets`,
/// which the test must supply. Running the images this way is what proves
/// that the images and the task definition agree.
struct TaskContainer {
    args: Vec<String>,
    env: Vec<(String, String)>,
    secrets: BTreeSet<String>,
    stop_timeout: u32,
    definition: serde_json::Value,
}

impl TaskContainer {
    fn from_task_definition(name: &str, values: &[(&str, &str)]) -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/task-definition.json");
        let task: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let def = task["containerDefinitions"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
        let mut args = vec!["--user".to_string(), def["user"].as_str().expect("user").to_string()];
        if def["readonlyRootFilesystem"] == true {
            args.push("--read-only".into());
        }
        let caps = &def["linuxParameters"]["capabilities"];
        for (flag, list) in [("--cap-drop", &caps["drop"]), ("--cap-add", &caps["add"])] {
            for cap in list.as_array().into_iter().flatten() {
                args.extend([flag.to_string(), cap.as_str().unwrap().to_string()]);
            }
        }
        let fill = |v: &str| values.iter().fold(v.to_string(), |acc, (k, val)| acc.replace(&format!("${{{k}}}"), val));
        let env: Vec<(String, String)> = def["environment"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| (e["name"].as_str().unwrap().to_string(), fill(e["value"].as_str().unwrap())))
            .collect();
        for (name, value) in &env {
            assert!(!value.contains("${"), "{name}={value}: the test gives no value for its placeholder");
        }
        let secrets =
            def["secrets"].as_array().into_iter().flatten().map(|s| s["name"].as_str().unwrap().to_string()).collect();
        let stop_timeout = def["stopTimeout"].as_u64().expect("stopTimeout") as u32;
        TaskContainer { args, env, secrets, stop_timeout, definition: def }
    }

    /// `docker run` with the task definition's settings, `extra` flags, the
    /// task's environment plus `env` (test settings and the secrets' values).
    fn start<'a>(&self, images: &'a Images, image: &str, extra: &[&str], env: &[(&str, &str)]) -> Container<'a> {
        let given: BTreeSet<String> = env.iter().map(|(k, _)| k.to_string()).collect();
        let missing: Vec<_> = self.secrets.difference(&given).collect();
        assert!(missing.is_empty(), "secrets of the task definition the test does not supply: {missing:?}");
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend(extra);
        args.push(image);
        let mut all: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend(env);
        Container::start(images, &args, &all)
    }
}

/// A host key made by the image itself, as the deploy guide makes it.
fn host_key(images: &Images) -> String {
    let out = images
        .docker()
        .args(["run", "--rm", "--read-only", "--cap-drop", "ALL", images.var("BASTION_IMAGE"), "keygen"])
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen in the image: {}", text(&out));
    let key = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"), "{key}");
    key
}

#[test]
fn bastion_image_carries_psql_as_nobody_turns_healthy_and_drains_on_docker_stop() {
    require("ssh", "openssh-client");
    require("psql", "postgresql-client");
    let images = Images::load();
    let dir = bastion_tests::tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let pg_dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start_on(pg_dir.path(), images.gateway());
    let target = format!("{}:{}", images.gateway(), pg.port);

    // The user CA for AWS logins: the same kind of key, made the same way.
    let user_ca = host_key(&images);
    let host_key = host_key(&images);
    let authorized = format!("{}\n", key.public_line);
    // AWS logins on, as the stack sets them up: the user CA and the rules as
    // secrets, the regional STS endpoint. Nothing here logs in that way (that is
    // tests/aws_login.rs), so nothing is sent to it.
    let rules = format!("arn:aws:iam::111122223333:user/alice permitopen=\"{target}\"\n");
    let sts = "https://sts.eu-west-1.amazonaws.com";
    let task = TaskContainer::from_task_definition(
        "bastion-sshd",
        &[
            ("RECORD_NAME", "bastion.example.test"),
            ("PERMIT_OPEN", &target),
            ("STS_ENDPOINT", sts),
            ("MAX_CERTIFICATE_VALIDITY", "8h"),
        ],
    );
    let container = task.start(
        &images,
        images.var("BASTION_IMAGE"),
        // Check health every second instead of every 30 s.
        &["--health-interval", "1s", "--health-start-period", "0s"],
        &[
            ("BASTION_HOST_KEY", &host_key),
            ("BASTION_AUTHORIZED_KEYS", &authorized),
            ("BASTION_USER_CA_KEY", &user_ca),
            ("BASTION_AWS_IDENTITY_RULES", &rules),
            ("BASTION_DRAIN_TIMEOUT", "3s"),
        ],
    );
    // The image's own settings are the task definition's.
    assert_eq!(container.inspect("{{.Config.User}}"), task.definition["user"].as_str().unwrap());
    let health = container.inspect("{{json .Config.Healthcheck.Test}}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&health).unwrap(), task.definition["healthCheck"]["command"]);
    assert!(container.inspect("{{json .Config.ExposedPorts}}").contains("\"22/tcp\""));
    assert_eq!(task.definition["portMappings"][0]["containerPort"], 22);
    let server = Server::from_log(container.logs(), dir.path(), Some(SocketAddr::new(container.ip(), 22)));
    assert_eq!(server.wait_event("hostkey.loaded", |_| true)["source"], "BASTION_HOST_KEY");
    let logins = server.wait_event("aws_login.enabled", |_| true);
    let endpoint = format!("{sts}/"); // as the STS client normalizes it
    assert_eq!(
        (logins["ca_source"].as_str(), logins["sts_endpoint"].as_str()),
        (Some("BASTION_USER_CA_KEY"), Some(endpoint.as_str()))
    );
    assert_eq!(logins["rules"], 1, "{logins}");

    // The server process, seen from the host: not root, no capabilities, no_new_privs.
    server.wait_event("server.privileges_dropped", |e| e["uid"] == 65534 && e["gid"] == 65534);
    let pid = container.inspect("{{.State.Pid}}");
    let status = PathBuf::from(format!("/proc/{pid}/status"));
    assert_eq!(proc_status(&status, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(proc_status(&status, "Gid"), "65534\t65534\t65534\t65534");
    assert_eq!(proc_status(&status, "CapEff"), "0000000000000000");
    assert_eq!(proc_status(&status, "CapPrm"), "0000000000000000");
    assert_eq!(proc_status(&status, "NoNewPrivs"), "1");

    // The image's HEALTHCHECK (`bastion-sshd healthcheck`) passes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while container.inspect("{{.State.Health.Status}}") != "healthy" {
        assert!(Instant::now() < deadline, "never healthy: {}", container.inspect("{{json .State.Health}}"));
        std::thread::sleep(Duration::from_millis(200));
    }

    // psql through `ssh -L` to the container's port 22.
    let (_ssh, ports) = server.tunnel(&key, &[(&images.gateway().to_string(), pg.port)], &[]);
    let out = psql(ports[0], "select 1 + 1, current_user");
    assert!(out.status.success(), "psql: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2|app");
    let closed = server.wait_event("tunnel.closed", |_| true);
    assert_eq!(closed["fingerprint"], key.fingerprint());
    assert_eq!(closed["resolved"], target);

    // The activity report for the sidecar's idle stop, on by default where the task's
    // containers share the loopback, and out of every tunnel's reach.
    assert_eq!(server.wait_event("activity.listening", |_| true)["addr"], "127.0.0.1:8022");
    let (ssh_report, report_ports) = server.tunnel(&key, &[("127.0.0.1", 8022)], &[]);
    let refused = bastion_tests::refused_line(&ssh_report, report_ports[0], "127.0.0.1:8022");
    assert!(refused.contains("administratively prohibited"), "{refused}");
    drop(ssh_report);

    // A tunnel still open at `docker stop`: the bastion drains (3 s here), cuts
    // it, and exits 0 before Docker's SIGKILL (the task definition's stopTimeout).
    let held = connect_retry(SocketAddr::from(([127, 0, 0, 1], ports[0])));
    let mut opened = 0;
    let second = server.proc.stderr().wait_for(READY, |l| {
        opened += usize::from(event(l).as_deref() == Some("tunnel.opened"));
        opened == 2
    });
    assert!(second.is_some(), "the held connection's tunnel did not open:\n{}", server.proc.stderr().text());
    let took = container.stop(task.stop_timeout);
    assert_eq!(container.exit_code(), 0, "{}", server.proc.stderr().text());
    let stopped = server.wait_event("server.stopped", |_| true);
    assert_eq!(stopped["tunnels_cut"], 1, "{stopped}");
    println!("docker stop with one open tunnel took {took:?} (drain timeout 3 s, stopTimeout {} s)", task.stop_timeout);
    drop(held);
}

#[test]
fn bastion_image_without_setuid_refuses_to_serve_as_root() {
    let images = Images::load();
    let key_dir = bastion_tests::tempdir();
    let key = ClientKey::generate(key_dir.path(), "alice", "ed25519", None);
    let container = Container::start(
        &images,
        &["--read-only", "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE", images.var("BASTION_IMAGE")],
        &[("BASTION_AUTHORIZED_KEYS", &key.public_line)],
    );
    // (The task definition keeps SETUID and SETGID; this is what happens if someone drops them.)
    assert_eq!(container.exit_code(), 1);
    let log = text(&images.docker().args(["logs", &container.id]).output().unwrap());
    assert!(log.contains("giving up root: setgroups([]): EPERM"), "{log}");
    assert!(!log.contains("server.listening"), "{log}");
}

#[test]
fn sidecar_image_publishes_the_task_ip_and_deletes_it_on_docker_stop() {
    let images = Images::load();
    let gateway = images.gateway();
    let r53 = Emulator::ministack_on(gateway);
    let ec2 = Emulator::moto_on(gateway);
    let zone = create_zone(&r53, "example.test.");
    let eni = fixture(&["eni", &ec2.url, "10.0.0.42"]);
    let public_ip = eni["public_ip"].as_str().unwrap().to_string();
    let meta = Metadata::with_mac_on(gateway, "task-docker", "10.0.0.42", eni["mac"].as_str().unwrap());

    let task = TaskContainer::from_task_definition(
        "dns-sidecar",
        &[
            ("RECORD_NAME", "bastion.example.test"),
            ("HOSTED_ZONE_ID", &zone),
            ("REGION", "us-east-1"),
            // The on-demand mode's idle stop, as push.sh renders it. No bastion-sshd runs
            // beside this container, so its activity report cannot be read: nothing is stopped.
            ("IDLE_STOP", "30m"),
            ("SERVICE_NAME", "bastion"),
            ("CLUSTER_NAME", "prod"),
        ],
    );
    // Essential: a sidecar that cannot publish stops the task, and fails the deployment.
    assert_eq!(task.definition["essential"], true);
    let container = task.start(
        &images,
        images.var("SIDECAR_IMAGE"),
        &[],
        &[
            ("DNS_SIDECAR_INSYNC_POLL", "100ms"),
            ("ECS_CONTAINER_METADATA_URI_V4", &meta.url),
            ("AWS_ENDPOINT_URL_ROUTE_53", &r53.url),
            ("AWS_ENDPOINT_URL_EC2", &ec2.url),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_ENDPOINT_URL_ECS", &ec2.url),
            ("DNS_SIDECAR_IDLE_POLL", "200ms"),
        ],
    );
    let logs = container.logs();
    let live = logs.stderr().wait_for(READY, |l| event(l).as_deref() == Some("record.live"));
    assert!(live.is_some(), "no record.live:\n{}", logs.stderr().text());
    // The idle stop is on, for the service the task definition names, and waits for bastion-sshd.
    let watching = logs.stderr().wait_for(READY, |l| event(l).as_deref() == Some("idle.watching"));
    let watching = json(&watching.unwrap_or_else(|| panic!("no idle.watching:\n{}", logs.stderr().text())));
    assert_eq!((watching["service"].as_str(), watching["cluster"].as_str()), (Some("bastion"), Some("prod")));
    assert_eq!(watching["activity"], "127.0.0.1:8022");
    let unread = logs.stderr().wait_for(READY, |l| event(l).as_deref() == Some("idle.activity_unreadable"));
    assert!(unread.is_some(), "{}", logs.stderr().text());
    assert_eq!(container.inspect("{{.Config.User}}"), task.definition["user"].as_str().unwrap());
    let a: Vec<_> = records(&r53, &zone).into_iter().filter(|r| r.1 == "A").collect();
    assert_eq!(a, vec![("bastion.example.test.".to_string(), "A".to_string(), vec![public_ip], None)]);

    // The task definition's health check, run in the image as ECS runs it
    // (exec form: the image has no shell), passes once the name is published.
    let check = task.definition["healthCheck"]["command"].as_array().expect("a healthCheck command");
    assert_eq!(check[0], "CMD", "{check:?}");
    let argv: Vec<&str> = check[1..].iter().map(|a| a.as_str().unwrap()).collect();
    let out = images.docker().args(["exec", &container.id]).args(&argv).output().unwrap();
    assert!(out.status.success(), "{argv:?}: {}", text(&out));
    assert!(text(&out).contains("bastion.example.test.: published"), "{}", text(&out));

    container.stop(task.stop_timeout);
    assert_eq!(container.exit_code(), 0, "{}", logs.stderr().text());
    assert!(logs.stderr().wait_for(READY, |l| event(l).as_deref() == Some("record.deleted")).is_some());
    assert_eq!(records(&r53, &zone), vec![]);
}

/// The files of an image, from `docker save` (every layer).
fn image_files(images: &Images, image: &str) -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.tar");
    images.run(&["save", "-o", archive.to_str().unwrap(), image]);
    let list = |tar: &Path, member: Option<&str>| {
        let mut cmd = Command::new("tar");
        cmd.arg("-xOf").arg(tar);
        if let Some(m) = member {
            cmd.arg(m);
        }
        cmd
    };
    let manifest = list(&archive, Some("manifest.json")).output().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.stdout).expect("manifest.json");
    let mut files = BTreeSet::new();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        let mut extract = list(&archive, Some(layer.as_str().unwrap())).stdout(Stdio::piped()).spawn().unwrap();
        let out = Command::new("tar").arg("-t").stdin(extract.stdout.take().unwrap()).output().unwrap();
        extract.wait().unwrap();
        files.extend(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string));
    }
    files
}

#[test]
fn images_hold_the_binary_and_nothing_else_and_are_small() {
    let images = Images::load();
    let bastion = images.var("BASTION_IMAGE");
    let sidecar = images.var("SIDECAR_IMAGE");
    // The CA certificates: for the sidecar's AWS calls, and the bastion's one HTTPS call (STS, AWS logins).
    let certs = ["etc/", "etc/ssl/", "etc/ssl/certs/", "etc/ssl/certs/ca-certificates.crt"];
    let bastion_files: Vec<String> = image_files(&images, bastion).into_iter().collect();
    assert_eq!(bastion_files, [&["bastion-sshd"][..], &certs].concat());
    let sidecar_files: Vec<String> = image_files(&images, sidecar).into_iter().collect();
    assert_eq!(sidecar_files, [&["dns-sidecar"][..], &certs].concat());

    let mut table = String::from("\nimage                   bytes      MB\n");
    for image in [bastion, sidecar] {
        let bytes: u64 = images.run(&["image", "inspect", "-f", "{{.Size}}", image]).parse().unwrap();
        table.push_str(&format!("{image:<18} {bytes:>10} {:>7.1}\n", bytes as f64 / 1e6));
        if image == bastion {
            assert!(bytes < 10_000_000, "the bastion image is meant to stay under 10 MB: {bytes} bytes");
        }
    }
    std::io::stdout().write_all(table.as_bytes()).unwrap();

    // No shell to exec into: the entrypoint is all there is.
    let out = images.docker().args(["run", "--rm", "--entrypoint", "/bin/sh", bastion, "-c", "true"]).output().unwrap();
    assert!(!out.status.success(), "a shell ran in the bastion image: {}", text(&out));
}
