//! ECS for the on-demand suite: moto with a control API
//! (`tests/ecs_standin.py`), and a scheduler stand-in.
//!
//! moto's ECS records a service's desired count but never starts a task, and
//! ECS's scheduler cannot run here. So [`Scheduler`] plays it: when the
//! desired count becomes 1 it registers a task in moto (PROVISIONING, then
//! PENDING), starts the real processes the test gives it (bastion-sshd and
//! dns-sidecar), runs the image's health check command (`bastion-sshd
//! healthcheck`) as ECS's agent would, and then reports the task RUNNING and
//! HEALTHY; when the count drops to 0 it marks the task for stopping, sends
//! SIGTERM to both processes, and reports it STOPPED once they have exited.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Proc, READY, bastion_bin, tests_dir};

/// moto (ECS, EC2, Route 53, IAM) and its control API.
pub struct EcsStandin {
    _proc: Proc,
    /// moto's endpoint, for `AWS_ENDPOINT_URL_ECS` and the rest.
    pub moto: String,
    control: SocketAddr,
}

impl EcsStandin {
    pub fn start() -> Self {
        let mut cmd = Command::new("python3");
        cmd.arg(tests_dir().join("ecs_standin.py"));
        let proc = Proc::spawn(cmd, Stdio::null());
        let line = proc
            .stdout()
            .wait_for(READY, |l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("ecs_standin.py did not start:\n{}", proc.stderr().text()));
        let urls: Value = serde_json::from_str(&line).expect("ecs_standin.py's first line");
        let control = urls["control"].as_str().unwrap().trim_start_matches("http://").parse().unwrap();
        Self { moto: urls["moto"].as_str().unwrap().to_string(), control, _proc: proc }
    }

    fn request(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(self.control).expect("the stand-in's control API");
        stream.set_read_timeout(Some(READY)).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: standin\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{method} {path}: {answer}");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"))
    }

    /// A cluster, a task definition (bastion-sshd, dns-sidecar) and a service at `desired`.
    pub fn setup(&self, cluster: &str, service: &str, desired: u32) {
        self.request("POST", "/setup", Some(json!({"cluster": cluster, "service": service, "desired": desired})));
    }

    /// The service's desired count (None if there is no such service) and its tasks.
    pub fn service(&self, cluster: &str, service: &str) -> (Option<u64>, Vec<Value>) {
        let v = self.request("GET", &format!("/service?cluster={cluster}&service={service}"), None);
        (v["desired"].as_u64(), v["tasks"].as_array().cloned().unwrap_or_default())
    }

    /// Registers a PROVISIONING task with an interface holding these addresses; its ARN.
    pub fn add_task(&self, cluster: &str, service: &str, public_ip: Option<&str>, private_ip: &str) -> String {
        let body = json!({"cluster": cluster, "service": service, "public_ip": public_ip, "private_ip": private_ip});
        self.request("POST", "/task", Some(body))["arn"].as_str().unwrap().to_string()
    }

    /// Sets a task's `last` status, `desired` status, `health` of the bastion container.
    pub fn update_task(&self, cluster: &str, arn: &str, fields: Value) {
        let mut body = fields;
        body["cluster"] = json!(cluster);
        body["arn"] = json!(arn);
        self.request("POST", "/task/update", Some(body));
    }

    /// An IAM user allowed exactly `actions`; from now on moto enforces IAM
    /// on every request (signature and policy). (access key, secret, ARN).
    pub fn identity(&self, actions: &[&str]) -> (String, String, String) {
        let v = self.request("POST", "/identity", Some(json!({"actions": actions})));
        let s = |k: &str| v[k].as_str().unwrap().to_string();
        (s("access_key"), s("secret_key"), s("arn"))
    }
}

/// Where the scheduler puts a task, and what runs in it.
pub struct Placement {
    pub cluster: String,
    pub service: String,
    /// The interface's public IP (None: no public IP) and private IP.
    pub public_ip: Option<String>,
    pub private_ip: String,
    /// What `bastion-sshd healthcheck --addr` checks.
    pub health_addr: SocketAddr,
}

/// One task the scheduler started.
pub struct TaskRun {
    pub arn: String,
    /// The task's processes, bastion-sshd first; kept after they exit, for their logs.
    pub procs: Vec<Proc>,
    /// Their exit statuses once stopped.
    pub exits: Vec<Option<ExitStatus>>,
    pub stopped: bool,
}

type Launch = Box<dyn FnMut() -> Vec<Proc> + Send>;

/// ECS's service scheduler and agent, for one service (see the module doc).
pub struct Scheduler {
    pub tasks: Arc<Mutex<Vec<TaskRun>>>,
    /// While set, a desired count of 0 is not acted on yet: ECS has not got
    /// to it (a stop in flight, as long as the test needs).
    pub hold_stops: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Scheduler {
    pub fn start(standin: Arc<EcsStandin>, placement: Placement, mut launch: Launch) -> Self {
        let tasks: Arc<Mutex<Vec<TaskRun>>> = Arc::default();
        let hold_stops = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (t, h, d) = (tasks.clone(), hold_stops.clone(), done.clone());
        let thread = thread::spawn(move || {
            let p = &placement;
            while !d.load(Ordering::Relaxed) {
                let (desired, _) = standin.service(&p.cluster, &p.service);
                let live = t.lock().unwrap().iter().any(|r| !r.stopped);
                if desired.unwrap_or(0) >= 1 && !live {
                    let arn = standin.add_task(&p.cluster, &p.service, p.public_ip.as_deref(), &p.private_ip);
                    standin.update_task(&p.cluster, &arn, json!({"last": "PENDING"}));
                    let procs = launch();
                    standin.update_task(&p.cluster, &arn, json!({"last": "RUNNING"}));
                    wait_healthy(p.health_addr);
                    standin.update_task(&p.cluster, &arn, json!({"health": "HEALTHY"}));
                    t.lock().unwrap().push(TaskRun { arn, procs, exits: vec![], stopped: false });
                } else if desired == Some(0) && live && !h.load(Ordering::Relaxed) {
                    let mut runs = t.lock().unwrap();
                    let run = runs.iter_mut().find(|r| !r.stopped).unwrap();
                    standin.update_task(&p.cluster, &run.arn, json!({"desired": "STOPPED", "last": "DEACTIVATING"}));
                    for proc in &run.procs {
                        proc.signal("TERM");
                    }
                    run.exits = run.procs.iter_mut().map(|proc| proc.wait_exit(Duration::from_secs(60))).collect();
                    standin.update_task(
                        &p.cluster,
                        &run.arn,
                        json!({"last": "STOPPED", "stopped_reason": "Scaling activity initiated by (deployment ecs-svc)"}),
                    );
                    run.stopped = true;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        Self { tasks, hold_stops, done, thread: Some(thread) }
    }

    /// Waits until `pred` holds for the tasks started so far.
    pub fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&[TaskRun]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !pred(&self.tasks.lock().unwrap()) {
            assert!(Instant::now() < deadline, "scheduler stand-in: {what} did not happen within {timeout:?}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `bastion-sshd healthcheck`, the image's health check command, until it passes.
fn wait_healthy(addr: SocketAddr) {
    let deadline = Instant::now() + READY;
    loop {
        let ok = Command::new(bastion_bin())
            .args(["healthcheck", "--addr", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "bastion-sshd at {addr} never passed its health check");
        thread::sleep(Duration::from_millis(100));
    }
}
