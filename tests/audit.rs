//! ssh-audit (PyPI, pinned by tests/ci.sh) against the running server; and
//! the audit log itself: in the text format, what a client sends can never
//! start a line of its own.

use std::process::{Command, Stdio};

use bastion_tests::*;
use serde_json::Value;

/// Runs ssh-audit in JSON mode; returns its exit code and report.
fn audit(server: &Server) -> (i32, Value) {
    require("ssh-audit", "ssh-audit from PyPI (tests/ci.sh installs it into target/ci-venv)");
    let out = Command::new("ssh-audit")
        .args(["-n", "-j", "-p", &server.addr.port().to_string(), &server.addr.ip().to_string()])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ssh-audit printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), report)
}

/// Every (section, algorithm, level, note) ssh-audit reports at `level`.
fn notes(report: &Value, level: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for section in ["kex", "key", "enc", "mac"] {
        for entry in report[section].as_array().unwrap_or(&Vec::new()) {
            for note in entry["notes"][level].as_array().unwrap_or(&Vec::new()) {
                found.push((section.to_string(), entry["algorithm"].as_str().unwrap().to_string(), note.to_string()));
            }
        }
    }
    found
}

fn algorithms(report: &Value, section: &str) -> Vec<String> {
    report[section].as_array().unwrap().iter().map(|e| e["algorithm"].as_str().unwrap().to_string()).collect()
}

#[test]
fn default_algorithms_pass_ssh_audit_but_for_classic_curve25519() {
    let dir = bastion_tests::tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let server = ServerBuilder::new(dir.path()).authorize(&[&key]).start();
    let (code, report) = audit(&server);

    assert_eq!(notes(&report, "fail"), vec![], "ssh-audit reports failures");
    let warnings = notes(&report, "warn");
    assert!(!warnings.is_empty());
    for (section, algorithm, note) in &warnings {
        assert_eq!(section, "kex", "{algorithm}: {note}");
        assert!(algorithm.starts_with("curve25519-sha256"), "{algorithm}: {note}");
        assert!(note.contains("post-quantum"), "{algorithm}: {note}");
    }
    assert_eq!(code, 2, "warnings only");
    assert_eq!(report["cves"], serde_json::json!([]));
    assert_eq!(report["banner"]["raw"], "SSH-2.0-bastion");
    assert_eq!(
        algorithms(&report, "kex"),
        [
            "mlkem768x25519-sha256",
            "curve25519-sha256",
            "curve25519-sha256@libssh.org",
            "ext-info-s",
            "kex-strict-s-v00@openssh.com"
        ]
    );
    assert_eq!(algorithms(&report, "key"), ["ssh-ed25519"]);
    assert_eq!(
        algorithms(&report, "enc"),
        ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com"]
    );
    assert_eq!(algorithms(&report, "mac"), ["hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com"]);
    assert_eq!(report["compression"], serde_json::json!(["none"]));
}

#[test]
fn post_quantum_only_passes_ssh_audit_cleanly() {
    let dir = bastion_tests::tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let server = ServerBuilder::new(dir.path()).arg("--post-quantum-only").authorize(&[&key]).start();
    let (code, report) = audit(&server);
    assert_eq!(notes(&report, "fail"), vec![]);
    assert_eq!(notes(&report, "warn"), vec![]);
    assert_eq!(code, 0, "{report}");

    // OpenSSH 9.2 has no ML-KEM: it cannot negotiate, and says so.
    let out = server.ssh_output(&key, &[&server.destination("ops"), "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no matching key exchange method"));
}

/// Logs in with paramiko (python3 on PATH, as tests/hostile.rs) as `user`,
/// asks for a tunnel the policy refuses and one to a malformed host, and
/// closes. paramiko sends any user name, control characters included.
const HOSTILE_NAMES: &str = r#"
import sys, paramiko
port, key, user = int(sys.argv[1]), sys.argv[2], sys.argv[3]
t = paramiko.Transport(("127.0.0.1", port))
t.start_client(timeout=10)
t.auth_publickey(user, paramiko.Ed25519Key.from_private_key_file(key))
assert t.is_authenticated()
for host in ["127.0.0.1", "db\nFAKE event=tunnel.opened\r"]:
    try:
        t.open_channel("direct-tcpip", (host, 5432), ("127.0.0.1", 40000), timeout=10)
    except paramiko.ChannelException as e:
        print("refused", host.encode(), e.code, flush=True)
t.close()
"#;

/// The start of a text-format event line: `2026-01-02T03:04:05.678901Z  INFO `.
fn starts_like_an_event(line: &str) -> bool {
    let Some((timestamp, rest)) = line.split_once(' ') else { return false };
    let shape: String = timestamp.chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect();
    let level = rest.trim_start().split(' ').next().unwrap_or("");
    shape.starts_with("9999-99-99T99:99:99.")
        && shape.ends_with('Z')
        && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level)
}

#[test]
fn text_log_lines_cannot_be_forged_through_a_user_name() {
    require("python3", "python3");
    let probe = Command::new("python3").args(["-c", "import paramiko"]).output().expect("python3");
    assert!(probe.status.success(), "python3 on PATH cannot import paramiko (tests/ci.sh installs it)");
    let dir = bastion_tests::tempdir();
    let key = ClientKey::generate(dir.path(), "ops", "ed25519", None);
    let keys = dir.path().join("authorized_keys");
    std::fs::write(&keys, format!("{}\n", key.public_line)).unwrap();

    // Not ServerBuilder: its log is JSON, and this is about the text format.
    let mut cmd = Command::new(bastion_bin());
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("BASTION_") || var == "RUST_LOG" {
            cmd.env_remove(var);
        }
    }
    // No colours: then no escape character at all belongs in the output.
    cmd.env("NO_COLOR", "1")
        .args(["run", "--log-format", "text", "--listen", "127.0.0.1:0", "--penalty", "0s", "--authorized-keys"])
        .arg(&keys);
    let mut server = Proc::spawn(cmd, Stdio::null());
    let listening = server
        .stderr()
        .wait_for(READY, |l| l.contains("event=\"server.listening\""))
        .unwrap_or_else(|| panic!("server did not start listening:\n{}", server.stderr().text()));
    let port = listening.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).expect("listening port");

    let user = "ops\nFAKE event=auth.accepted user=root\r\u{1b}[2K\u{85}\u{2028}x";
    let out = Command::new("python3")
        .args(["-c", HOSTILE_NAMES, &port.to_string()])
        .arg(&key.private)
        .arg(user)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "paramiko: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("refused").count(), 2, "{stdout}");
    server.stderr().wait_for(READY, |l| l.contains("event=\"connection.closed\"")).expect("connection.closed");
    server.signal("TERM");
    assert!(server.wait_exit(READY).is_some(), "server did not stop");

    let lines = server.stderr().all();
    assert!(lines.iter().any(|l| l.contains("event=\"tunnel.refused\"")), "{lines:#?}");
    for line in &lines {
        assert!(starts_like_an_event(line), "a line that is not an event:\n{line:?}\nin\n{lines:#?}");
        assert!(!line.starts_with("FAKE"), "forged line: {line:?}");
        assert!(!line.chars().any(|c| c.is_control() || c == '\u{2028}'), "raw control character: {line:?}");
    }
    // The name is still there, escaped, on the lines it belongs to.
    assert!(lines.iter().any(|l| l.contains(r"ops\nFAKE event=auth.accepted user=root\r\x1b[2K")), "{lines:#?}");
}
