//! ssh-audit (PyPI, pinned by tests/ci.sh) against the running server.

use std::process::Command;

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
