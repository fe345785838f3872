//! CloudWatch metrics without an agent: bastion-sshd's Embedded Metric
//! Format records in its log, read as CloudWatch Logs would, and each one
//! checked against the shape the EMF specification gives
//! (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html).
//! CloudWatch itself cannot run here; the rules below are the specification's.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bastion_tests::*;
use serde_json::Value;

/// The units a metric may declare (CloudWatch's StandardUnit).
const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// Checks one record against the EMF specification; panics naming the rule it breaks.
fn check_emf(record: &Value) {
    let aws = record["_aws"].as_object().unwrap_or_else(|| panic!("no _aws object: {record}"));
    let timestamp = aws["Timestamp"].as_u64().unwrap_or_else(|| panic!("Timestamp is not an integer: {record}"));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(timestamp <= now && now - timestamp < 120_000, "Timestamp is not milliseconds of now: {record}");
    let directives = aws["CloudWatchMetrics"].as_array().unwrap_or_else(|| panic!("no CloudWatchMetrics: {record}"));
    assert!(!directives.is_empty(), "{record}");
    for d in directives {
        let namespace = d["Namespace"].as_str().unwrap_or_else(|| panic!("no Namespace: {record}"));
        assert!(!namespace.is_empty() && namespace.len() <= 255, "{record}");
        for set in d["Dimensions"].as_array().unwrap_or_else(|| panic!("no Dimensions: {record}")) {
            let set = set.as_array().unwrap_or_else(|| panic!("a DimensionSet is not an array: {record}"));
            assert!(set.len() <= 30, "more than 30 dimensions: {record}");
            for name in set {
                let name = name.as_str().unwrap();
                assert!(record[name].is_string(), "dimension {name} has no string value: {record}");
            }
        }
        let metrics = d["Metrics"].as_array().unwrap_or_else(|| panic!("no Metrics: {record}"));
        assert!(!metrics.is_empty() && metrics.len() <= 100, "{record}");
        for m in metrics {
            let name = m["Name"].as_str().unwrap_or_else(|| panic!("a metric without Name: {record}"));
            assert!(!name.is_empty() && name.len() <= 1024, "{record}");
            let unit = m["Unit"].as_str().unwrap_or("None");
            assert!(UNITS.contains(&unit), "unit {unit} is not a CloudWatch unit: {record}");
            assert!(record[name].is_number(), "metric {name} has no numeric value: {record}");
        }
    }
    // Low cardinality only: the bastion's name and the refusing limit, never a user, key or destination.
    let strings: Vec<&str> =
        record.as_object().unwrap().iter().filter(|(_, v)| v.is_string()).map(|(k, _)| k.as_str()).collect();
    assert!(strings.iter().all(|k| ["Bastion", "Limit"].contains(k)), "{strings:?}: {record}");
}

/// What both EMF tests make the server count: `key` tunnels `data` to an echo server (returned,
/// to keep it up) and asks for a tunnel the policy refuses (the ECS credentials endpoint); then
/// `stranger`, whose key is not authorized, fails to log in.
fn tunnel_refusal_and_stranger(server: &Server, key: &ClientKey, stranger: &ClientKey, data: &[u8]) -> EchoServer {
    let echo = EchoServer::start();
    let (ssh, ports) =
        server.tunnel(key, &[(&echo.addr.ip().to_string(), echo.addr.port()), ("169.254.170.2", 80)], &[]);
    assert!(echo_round_trip(SocketAddr::from(([127, 0, 0, 1], ports[0])), data) == data);
    refused_line(&ssh, ports[1], "169.254.170.2");
    server.wait_event("tunnel.closed", |_| true);
    drop(ssh);
    assert!(!server.ssh_output(stranger, &[&server.destination("mallory"), "true"]).status.success());
    echo
}

fn records(server: &Server) -> Vec<Value> {
    server.proc.stderr().all().iter().filter(|l| l.contains("\"_aws\"")).map(|l| json(l)).collect()
}

/// The sum of `metric` over the records with exactly these dimension values.
fn sum(records: &[Value], metric: &str, limit: Option<&str>) -> u64 {
    records.iter().filter(|r| r["Limit"].as_str() == limit).filter_map(|r| r[metric].as_u64()).sum()
}

#[test]
fn the_audit_events_become_emf_metrics() {
    let dir = tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let stranger = ClientKey::generate(dir.path(), "mallory", "ed25519", None);
    let server = ServerBuilder::new(dir.path())
        .authorize(&[&key])
        .args(["--metrics-interval", "1s", "--name", "bastion.example.test"])
        .start();
    let data = pattern(300_000, 7);
    let _echo = tunnel_refusal_and_stranger(&server, &key, &stranger, &data);
    server.wait_event("auth.refused", |_| true);

    let deadline = Instant::now() + READY;
    loop {
        let all = records(&server);
        let done = sum(&all, "TunnelsOpened", None) >= 1
            && sum(&all, "TunnelsRefused", None) >= 1
            && sum(&all, "LoginsRefused", None) >= 1
            && sum(&all, "BytesUp", None) >= data.len() as u64;
        if done {
            for r in &all {
                check_emf(r);
            }
            assert_eq!(sum(&all, "LoginsAccepted", None), 1, "alice logged in once");
            assert_eq!(sum(&all, "TunnelsOpened", None), 1);
            assert!(sum(&all, "BytesDown", None) >= data.len() as u64);
            let last = all.last().unwrap();
            assert_eq!(last["Bastion"], "bastion.example.test");
            assert_eq!(last["_aws"]["CloudWatchMetrics"][0]["Namespace"], "fargate-bastion");
            assert!(last["WindowBudgetUsedPercent"].is_number(), "{last}");
            break;
        }
        assert!(Instant::now() < deadline, "the records never added up:\n{all:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn refusals_by_a_limit_carry_the_limit_as_a_dimension() {
    let dir = tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let stranger = ClientKey::generate(dir.path(), "mallory", "ed25519", None);
    let server = ServerBuilder::new(dir.path())
        .authorize(&[&key])
        .args(["--metrics-interval", "1s", "--penalty", "60s"])
        .start();
    // A failed login penalizes the source; its next connection is refused by the penalty.
    assert!(!server.ssh_output(&stranger, &[&server.destination("mallory"), "true"]).status.success());
    server.wait_event("source.penalized", |_| true);
    assert!(!server.ssh_output(&key, &[&server.destination("alice"), "true"]).status.success());
    server.wait_event("connection.refused", |e| e["limit"] == "penalty");

    let deadline = Instant::now() + READY;
    while sum(&records(&server), "ConnectionsRefused", Some("penalty")) == 0 {
        assert!(Instant::now() < deadline, "no record with Limit=penalty:\n{:#?}", records(&server));
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = records(&server);
    for r in &all {
        check_emf(r);
    }
    let by_limit = all.iter().find(|r| r["Limit"] == "penalty").unwrap();
    assert_eq!(by_limit["_aws"]["CloudWatchMetrics"][0]["Dimensions"], serde_json::json!([["Bastion", "Limit"]]));
    assert!(sum(&all, "ConnectionsRefused", None) >= 1, "the total carries it too");
}

#[test]
fn an_interval_of_0_writes_no_record() {
    let dir = tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let server = ServerBuilder::new(dir.path()).authorize(&[&key]).args(["--metrics-interval", "0"]).start();
    let _ = server.ssh_output(&key, &[&server.destination("alice"), "true"]);
    server.wait_event("connection.closed", |_| true);
    assert!(records(&server).is_empty());
}

#[test]
fn the_sidecar_counts_publications_repairs_and_errors() {
    use bastion_tests::aws::{Emulator, create_zone, fixture};
    use bastion_tests::sidecar::{sidecar_command, wait_event};
    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, "example.test.");
    let record = "bastion.example.test";
    let args = ["--address", "203.0.113.7", "--reconcile-interval", "1s", "--metrics-interval", "1s"];
    let side = Proc::spawn(
        sidecar_command("test/bastion", record, &r53.url, &zone, None, None, &args),
        std::process::Stdio::null(),
    );
    wait_event(&side, "record.live");
    // Someone edits our record; the next reconcile writes it back.
    fixture(&["upsert", &r53.url, &zone, record, "A", "198.51.100.99"]);
    let records =
        || -> Vec<Value> { side.stderr().all().iter().filter(|l| l.contains("\"_aws\"")).map(|l| json(l)).collect() };
    let deadline = Instant::now() + READY;
    loop {
        let all = records();
        if sum(&all, "DriftRepaired", None) >= 1 {
            for r in &all {
                check_emf(r);
            }
            assert_eq!(sum(&all, "RecordsPublished", None), 2, "the first publication and the repair");
            assert_eq!(sum(&all, "SidecarErrors", None), 0);
            assert_eq!(all[0]["Bastion"], record);
            break;
        }
        assert!(Instant::now() < deadline, "no repair counted:\n{all:#?}\n{}", side.stderr().text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_counts_do_not_depend_on_the_log_level() {
    // The audit target held at warn hides the audit events from the log (the server's own
    // events, `listening` among them, stay at info); the metrics still count them.
    let dir = tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let stranger = ClientKey::generate(dir.path(), "mallory", "ed25519", None);
    let server = ServerBuilder::new(dir.path())
        .authorize(&[&key])
        .env("RUST_LOG", "warn,bastion_sshd=info")
        .args(["--metrics-interval", "1s"])
        .start();
    assert!(!server.ssh_output(&stranger, &[&server.destination("mallory"), "true"]).status.success());
    let deadline = Instant::now() + READY;
    while sum(&records(&server), "LoginsRefused", None) == 0 {
        assert!(Instant::now() < deadline, "no refusal counted:\n{:#?}", records(&server));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(server.events("auth.refused").is_empty(), "the log level let audit events through");
}

/// deploy/cloudformation/monitoring.yaml against a real log (CloudWatch cannot run here):
/// tests/insights.py runs its saved queries and the dashboard's log widget over the events a
/// server wrote, checks every field they read and every metric its alarms and widgets name
/// against what the server and the sidecar wrote, and returns the rows; a user's rows are checked
/// here. `arn` appears only after `bastion login` (tests/aws_login.rs runs the same check with it).
#[test]
fn the_monitoring_stacks_queries_and_metrics_match_what_the_binaries_write() {
    use bastion_tests::aws::{Emulator, create_zone};
    use bastion_tests::sidecar::{sidecar_command, wait_event};
    let dir = tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let stranger = ClientKey::generate(dir.path(), "mallory", "ed25519", None);
    let name = "bastion.example.test";
    let server = ServerBuilder::new(dir.path())
        .authorize(&[&key])
        .args(["--metrics-interval", "1s", "--penalty", "60s", "--name", name])
        .start();
    let data = pattern(200_000, 9);
    let echo = tunnel_refusal_and_stranger(&server, &key, &stranger, &data);
    // The stranger's failed login penalizes the source: its next connection is refused.
    server.wait_event("source.penalized", |_| true);
    assert!(!server.ssh_output(&key, &[&server.destination("alice"), "true"]).status.success());
    server.wait_event("connection.refused", |e| e["limit"] == "penalty");
    let deadline = Instant::now() + READY;
    while sum(&records(&server), "ConnectionsRefused", Some("penalty")) == 0
        || sum(&records(&server), "BytesUp", None) < data.len() as u64
    {
        assert!(Instant::now() < deadline, "the records never added up:\n{:#?}", records(&server));
        std::thread::sleep(Duration::from_millis(200));
    }

    let r53 = Emulator::ministack();
    let zone = create_zone(&r53, "example.test.");
    let side = Proc::spawn(
        sidecar_command(
            "test/bastion",
            name,
            &r53.url,
            &zone,
            None,
            None,
            &["--address", "203.0.113.7", "--metrics-interval", "1s"],
        ),
        std::process::Stdio::null(),
    );
    wait_event(&side, "record.live");
    let deadline = Instant::now() + READY;
    while !side.stderr().all().iter().any(|l| l.contains("\"_aws\"") && l.contains("RecordsPublished")) {
        assert!(Instant::now() < deadline, "no sidecar record:\n{}", side.stderr().text());
        std::thread::sleep(Duration::from_millis(200));
    }

    let log = dir.path().join("log.jsonl");
    let mut lines = server.proc.stderr().all();
    lines.extend(side.stderr().all());
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let rows = monitoring_rows(&log, &["--allow-missing", "arn"]);

    let who = key.fingerprint();
    let destination = format!("{}:{}", echo.addr.ip(), echo.addr.port());
    let reached = &rows["who reached what, when"];
    assert!(
        reached.iter().any(|r| r["who"] == who.as_str() && r["destination"] == destination.as_str()),
        "{reached:#?}"
    );
    assert_eq!(rows["dashboard: Who reached what, when"], *reached, "the dashboard shows the saved query's rows");
    let refusals = &rows["refusals by reason"];
    for (event, why) in [("connection.refused", "penalty"), ("auth.refused", ""), ("tunnel.refused", "")] {
        assert!(
            refusals.iter().any(|r| r["event"] == event && r["why"].as_str().unwrap_or("").contains(why)),
            "no {event} row ({why}): {refusals:#?}"
        );
    }
    let bytes = &rows["bytes by user"];
    let alice = bytes.iter().find(|r| r["who"] == who.as_str()).unwrap_or_else(|| panic!("{bytes:#?}"));
    assert_eq!(alice["up"], data.len() as u64, "{alice}");
    assert_eq!(alice["down"], data.len() as u64, "{alice}");
    assert_eq!(alice["tunnels"], 1, "{alice}");
}
