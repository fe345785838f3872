//! AWS for the tests: Route 53 from ministack (exact-match DELETE,
//! CREATE-if-absent, PENDING then INSYNC, like the real service), EC2 from
//! moto, both set up with boto3 (`tests/aws_fixture.py`), and the ECS task
//! metadata endpoint, which cannot run here: a small real HTTP server that
//! serves the documented Fargate v4 `/task` shape.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Proc, free_port, require};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An emulator process on a free port, up when its port accepts.
pub struct Emulator {
    /// Killed when the test ends.
    _proc: Proc,
    /// `http://HOST:PORT`.
    pub url: String,
}

impl Emulator {
    fn start(program: &str, args: &[&str], envs: &[(&str, String)], host: IpAddr, port: u16) -> Self {
        require(program, "pip install ministack 'moto[server]' (tests/ci.sh does, into target/ci-venv)");
        let mut cmd = Command::new(program);
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn(cmd, Stdio::null());
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect((host, port)).is_err() {
            assert!(proc.is_running(), "{program} exited:\n{}", proc.stderr().text());
            assert!(Instant::now() < deadline, "{program} did not listen on {port}:\n{}", proc.stderr().text());
            thread::sleep(Duration::from_millis(100));
        }
        Emulator { _proc: proc, url: format!("http://{}", SocketAddr::new(host, port)) }
    }

    /// Route 53 from ministack on 127.0.0.1.
    pub fn ministack() -> Self {
        Self::ministack_on(LOOPBACK)
    }

    /// Route 53 from ministack on `host` (the Docker bridge, for containers).
    pub fn ministack_on(host: IpAddr) -> Self {
        let port = free_port();
        Self::start(
            "ministack",
            &[],
            &[
                ("BIND_HOST", host.to_string()),
                ("GATEWAY_PORT", port.to_string()),
                // Only Route 53, and no MQTT listener on the fixed port 8883.
                ("SERVICES", "route53".into()),
                ("IOT_MTLS_ENABLED", "0".into()),
            ],
            host,
            port,
        )
    }

    /// EC2 (and the rest of AWS) from moto on 127.0.0.1.
    pub fn moto() -> Self {
        Self::moto_on(LOOPBACK)
    }

    /// moto on `host`.
    pub fn moto_on(host: IpAddr) -> Self {
        let port = free_port();
        Self::start("moto_server", &["-H", &host.to_string(), "-p", &port.to_string()], &[], host, port)
    }
}

/// tests/aws_fixture.py with `args`, to run as the test needs.
pub fn fixture_command(args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aws_fixture.py")).args(args);
    cmd
}

/// Runs tests/aws_fixture.py (boto3) and parses its JSON.
pub fn fixture(args: &[&str]) -> Value {
    let out = fixture_command(args).output().expect("python3");
    assert!(out.status.success(), "aws_fixture {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("fixture JSON")
}

pub fn create_zone(r53: &Emulator, zone_name: &str) -> String {
    fixture(&["create-zone", &r53.url, zone_name])["zone"].as_str().unwrap().to_string()
}

/// The zone's records other than NS/SOA, as (name, type, values, set).
pub fn records(r53: &Emulator, zone: &str) -> Vec<(String, String, Vec<String>, Option<String>)> {
    let list = fixture(&["list", &r53.url, zone]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["type"].as_str().unwrap().to_string(),
                r["values"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect(),
                r["set"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// The task metadata endpoint: `/task` answers the Fargate v4 shape for this
/// task; the first `fail_first` requests get 503 (an endpoint not up yet).
pub struct Metadata {
    /// What ECS_CONTAINER_METADATA_URI_V4 would hold.
    pub url: String,
    /// Requests answered so far.
    pub requests: Arc<AtomicUsize>,
}

impl Metadata {
    /// On 127.0.0.1.
    pub fn start(task_id: &str, private_ip: &str, fail_first: usize) -> Self {
        Self::start_on(LOOPBACK, task_id, private_ip, fail_first)
    }

    /// On 127.0.0.1, for the network interface with `mac`.
    pub fn with_mac(task_id: &str, private_ip: &str, mac: &str) -> Self {
        Self::serve(LOOPBACK, task_id, private_ip, 0, mac)
    }

    /// On `host`, for the network interface with `mac`.
    pub fn with_mac_on(host: IpAddr, task_id: &str, private_ip: &str, mac: &str) -> Self {
        Self::serve(host, task_id, private_ip, 0, mac)
    }

    /// On `host` (the Docker bridge, for containers).
    pub fn start_on(host: IpAddr, task_id: &str, private_ip: &str, fail_first: usize) -> Self {
        Self::serve(host, task_id, private_ip, fail_first, "02:b7:20:19:72:39")
    }

    fn serve(host: IpAddr, task_id: &str, private_ip: &str, fail_first: usize, mac: &str) -> Self {
        let listener = TcpListener::bind((host, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let body = format!(
            r#"{{"Cluster":"arn:aws:ecs:us-east-1:111122223333:cluster/prod",
            "TaskARN":"arn:aws:ecs:us-east-1:111122223333:task/prod/{task_id}",
            "Family":"bastion","Revision":"7","DesiredStatus":"RUNNING","KnownStatus":"RUNNING",
            "Limits":{{"CPU":0.25,"Memory":512}},"AvailabilityZone":"us-east-1a","FutureField":[1,2],
            "Containers":[{{"DockerId":"abc","Name":"dns-sidecar","Labels":{{}},
              "Networks":[{{"NetworkMode":"awsvpc","IPv4Addresses":["{private_ip}"],
                "IPv6Addresses":["2001:db8:10b:1a00::7"],"AttachmentIndex":0,"MACAddress":"{mac}"}}]}}],
            "LaunchType":"FARGATE"}}"#
        );
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut line = String::new();
                let _ = BufReader::new(stream.try_clone().unwrap()).read_line(&mut line);
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let (status, body) = if n < fail_first {
                    ("503 Service Unavailable", "not ready".to_string())
                } else if line.contains("/task ") {
                    ("200 OK", body.clone())
                } else {
                    ("404 Not Found", "{}".to_string())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Metadata { url: format!("http://{addr}/v4/token"), requests }
    }
}
