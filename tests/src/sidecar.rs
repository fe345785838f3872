//! Running `dns-sidecar` against the emulators (`crate::aws`), and a proxy
//! in front of Route 53 that records every name a change batch writes.
//!
//! ministack accepts names outside the hosted zone; Route 53 refuses the
//! whole batch ("RRSet with DNS name … is not permitted in zone …"). The
//! proxy enforces that rule itself, as Route 53 would, so a test sees what
//! a user on AWS would see; and it can answer Throttling, as Route 53 does
//! under load.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::Value;

use crate::aws::Metadata;
use crate::{Proc, READY, bastion_bin, event, json};

pub fn sidecar_bin() -> PathBuf {
    let path = bastion_bin().with_file_name("dns-sidecar");
    assert!(path.exists(), "{} is missing: cargo build -p dns-sidecar (tests/ci.sh does)", path.display());
    path
}

/// `dns-sidecar` for the deployment `owner`, publishing `record` in `zone`
/// through Route 53 at `r53`, with a clean environment. Its health status
/// listens on a free loopback port (the `status.listening` event names it).
pub fn sidecar_command(
    owner: &str,
    record: &str,
    r53: &str,
    zone: &str,
    metadata: Option<&Metadata>,
    ec2: Option<&str>,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new(sidecar_bin());
    for (var, _) in std::env::vars_os() {
        let v = var.to_string_lossy();
        if v.starts_with("DNS_SIDECAR_") || v.starts_with("AWS_") || v.starts_with("ECS_") {
            cmd.env_remove(var);
        }
    }
    // Suites read the log as events; tests/metrics.rs turns the metrics records on.
    cmd.env("DNS_SIDECAR_METRICS_INTERVAL", "0");
    cmd.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_ROUTE_53", r53)
        .args(["--log-format", "json", "--record-name", record, "--hosted-zone-id", zone])
        .args(["--insync-poll", "100ms", "--owner-id", owner, "--status-listen", "127.0.0.1:0"]);
    if let Some(m) = metadata {
        cmd.env("ECS_CONTAINER_METADATA_URI_V4", &m.url);
    }
    if let Some(ec2) = ec2 {
        cmd.env("AWS_ENDPOINT_URL_EC2", ec2);
    }
    cmd.args(args);
    cmd
}

/// Waits for the JSON event `name` on the sidecar's stderr.
pub fn wait_event(proc: &Proc, name: &str) -> Value {
    let line = proc
        .stderr()
        .wait_for(READY, |l| event(l).as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no {name} event:\n{}", proc.stderr().text()));
    json(&line)
}

/// `dns-sidecar healthcheck` against a running sidecar: (healthy, what it printed).
pub fn healthcheck(proc: &Proc) -> (bool, String) {
    let listening = wait_event(proc, "status.listening");
    let address = listening["address"].as_str().expect("status.listening names the address");
    let out = Command::new(sidecar_bin())
        .env_remove("DNS_SIDECAR_STATUS_LISTEN")
        .args(["healthcheck", "--status-address", address])
        .output()
        .expect("dns-sidecar healthcheck");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text.trim().to_string())
}

/// A proxy in front of Route 53: records the names of every change batch,
/// refuses a batch with a name outside `zone_name` as Route 53 does, and
/// answers the first `throttle` change batches with Throttling.
pub struct Route53Proxy {
    /// `http://127.0.0.1:PORT`: give it as AWS_ENDPOINT_URL_ROUTE_53.
    pub url: String,
    /// Every record name in every change batch, in order.
    pub written: Arc<Mutex<Vec<String>>>,
    /// Batches refused for a name outside the zone.
    pub refused: Arc<AtomicUsize>,
    /// Change batches seen within the zone (the first `throttle` answered with Throttling).
    pub batches: Arc<AtomicUsize>,
}

impl Route53Proxy {
    pub fn start(upstream: &str, zone_name: &str, throttle: usize) -> Self {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let zone = zone_name.trim_end_matches('.').to_ascii_lowercase() + ".";
        let written = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let batches = Arc::new(AtomicUsize::new(0));
        let (w, r, t) = (written.clone(), refused.clone(), batches.clone());
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (zone, w, r, t) = (zone.clone(), w.clone(), r.clone(), t.clone());
                thread::spawn(move || proxy_one(client, upstream, &zone, throttle, &w, &r, &t));
            }
        });
        Route53Proxy { url, written, refused, batches }
    }

    /// The names written so far that lie outside the zone.
    pub fn outside(&self, zone_name: &str) -> Vec<String> {
        let zone = zone_name.trim_end_matches('.').to_ascii_lowercase() + ".";
        self.written.lock().unwrap().iter().filter(|n| !in_zone(n, &zone)).cloned().collect()
    }
}

fn in_zone(name: &str, zone: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase() + ".";
    name == zone || name.ends_with(&format!(".{zone}"))
}

fn proxy_one(
    client: TcpStream,
    upstream: SocketAddr,
    zone: &str,
    throttle: usize,
    written: &Mutex<Vec<String>>,
    refused: &AtomicUsize,
    batches: &AtomicUsize,
) {
    let Some((head, body)) = read_request(&client) else { return };
    let mut client = client;
    if head.starts_with("POST") && head.contains("/rrset") {
        let text = String::from_utf8_lossy(&body);
        let names: Vec<String> = text
            .split("<Name>")
            .skip(1)
            .filter_map(|rest| rest.split("</Name>").next())
            .map(|n| n.trim().to_ascii_lowercase())
            .collect();
        written.lock().unwrap().extend(names.iter().cloned());
        if let Some(outside) = names.iter().find(|n| !in_zone(n, zone)) {
            refused.fetch_add(1, Ordering::SeqCst);
            let name = outside.trim_end_matches('.').to_string() + ".";
            let message = format!("[RRSet with DNS name {name} is not permitted in zone {zone}]");
            return error(&mut client, "InvalidChangeBatch", &message);
        }
        if batches.fetch_add(1, Ordering::SeqCst) < throttle {
            return error(&mut client, "Throttling", "Rate exceeded");
        }
    }
    // Forward with Connection: close, relay the answer.
    let head = head.replace("\r\nConnection: keep-alive", "");
    let head = head.trim_end_matches("\r\n\r\n").to_string() + "\r\nConnection: close\r\n\r\n";
    let Ok(mut up) = TcpStream::connect(upstream) else { return };
    let _ = up.write_all(head.as_bytes());
    let _ = up.write_all(&body);
    let mut answer = Vec::new();
    let _ = up.read_to_end(&mut answer);
    let _ = client.write_all(&answer);
}

/// Route 53's error answer.
fn error(client: &mut TcpStream, code: &str, message: &str) {
    let xml = format!(
        r#"<?xml version="1.0"?><ErrorResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>t</RequestId></ErrorResponse>"#
    );
    let _ = write!(
        client,
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
        xml.len()
    );
}

/// One HTTP/1.1 request: the head (through the blank line) and the body.
pub fn read_request(stream: &TcpStream) -> Option<(String, Vec<u8>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().ok()))
        .flatten()
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some((head, body))
}
