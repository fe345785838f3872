//! Configuration under attack: authorized_keys files of every malformed shape,
//! bad `--permit-open` entries, bad host key files. Every problem names its
//! source, its line where it has one, and a reason; nothing panics or hangs;
//! a bad authorized_keys line is skipped and the other keys still log in.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bastion_tests::*;

/// `bastion-sshd ARGS` with nothing from the caller's BASTION_* environment.
fn bastion(args: &[&str]) -> Command {
    let mut cmd = Command::new(bastion_bin());
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("BASTION_") || var == "RUST_LOG" {
            cmd.env_remove(var);
        }
    }
    cmd.args(args);
    cmd
}

/// A temporary path as an argument (they are UTF-8).
fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to its exit (failing if it still runs after READY) and checks that it did not panic.
fn run_to_exit(label: &str, cmd: Command) -> Ran {
    let mut proc = Proc::spawn(cmd, Stdio::null());
    let status = proc.wait_exit(READY).unwrap_or_else(|| panic!("{label}: still running after {READY:?}"));
    let ran = Ran { code: status.code(), stdout: proc.stdout().text(), stderr: proc.stderr().text() };
    assert_ne!(ran.code, Some(101), "{label}: exit 101 (panic)\n{}", ran.stderr);
    assert!(!ran.stderr.contains("panicked"), "{label}: panicked\n{}", ran.stderr);
    ran
}

/// `bastion-sshd run` must refuse to start: exit 1, each `expected` in a config.error event.
fn assert_run_refused(label: &str, mut cmd: Command, expected: &[&str]) -> Ran {
    cmd.args(["--log-format", "json", "--listen", "127.0.0.1:0"]);
    let ran = run_to_exit(label, cmd);
    let errors: Vec<String> = ran
        .stderr
        .lines()
        .filter(|l| event(l).as_deref() == Some("config.error"))
        .map(|l| json(l)["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ran.code, Some(1), "{label}: {}", ran.stderr);
    for want in expected {
        assert!(errors.iter().any(|e| e.contains(want)), "{label}: no config.error with {want:?} in {errors:#?}");
    }
    assert!(ran.stderr.contains("run `bastion-sshd check-config` for details"), "{label}: {}", ran.stderr);
    ran
}

/// Logs in and runs `true`: exit 1 with our message means authenticated.
fn logs_in(server: &Server, key: &ClientKey) -> bool {
    let out = server.ssh_output(key, &[&server.destination("ops"), "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(1) if stderr.contains("commands are not run") => true,
        Some(255) if stderr.contains("Permission denied (publickey)") => false,
        other => panic!("unexpected exit {other:?}: {stderr}"),
    }
}

/// A key made by `ssh-keygen ARGS -f DIR/NAME`, or None if this ssh-keygen cannot make it (DSA in OpenSSH 10).
fn keygen(dir: &Path, name: &str, args: &[&str]) -> Option<PathBuf> {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen").args(["-q", "-C", name]).args(args).arg("-f").arg(&path).output().unwrap();
    out.status.success().then_some(path)
}

fn ssh_string(bytes: &[u8]) -> Vec<u8> {
    [&(bytes.len() as u32).to_be_bytes()[..], bytes].concat()
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() { T[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// What a line of the garbage file must do.
enum Want {
    /// A usable key, listed by check-config.
    Key,
    /// Blank or comment: nothing to report.
    Blank,
    /// Skipped, with a reason starting with this.
    Problem(String),
}

struct Garbage {
    file: PathBuf,
    /// Line N is `cases[N - 1]`.
    cases: Vec<(&'static str, Want)>,
    /// Keys on good lines (BOM, CRLF, last line), which must log in.
    logins: Vec<ClientKey>,
    /// `from="999.1.1.1"`: accepted as a host-name pattern that no address matches.
    fenced: ClientKey,
}

impl Garbage {
    fn keys(&self) -> usize {
        self.cases.iter().filter(|(_, w)| matches!(w, Want::Key)).count()
    }

    fn problems(&self) -> impl Iterator<Item = (usize, &'static str, &String)> {
        self.cases.iter().enumerate().filter_map(|(i, (name, want))| match want {
            Want::Problem(reason) => Some((i + 1, *name, reason)),
            _ => None,
        })
    }
}

const NOT_A_LINE: &str = "not an authorized_keys line (";

/// Text lines of the garbage file: a name, the line (`{v}`: a valid key line,
/// `{b64}`: its base64), and how the reason starts. The key is checked before
/// the options: a line whose key does not parse is `NOT_A_LINE`, whatever else
/// is wrong with it (the words in brackets come from the ssh-key crate).
const TEXT_CASES: &[(&str, &str, &str)] = &[
    ("unknown key type", "ssh-foo {b64} x", "not an authorized_keys line (unknown algorithm)"),
    ("type word only", "ssh-ed25519", NOT_A_LINE),
    ("truncated base64", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI", NOT_A_LINE),
    ("base64 of garbage", "ssh-ed25519 Z2FyYmFnZSBnYXJiYWdl x", NOT_A_LINE),
    ("type word not the blob's", "ssh-rsa {b64}", "not an authorized_keys line (unknown algorithm)"),
    ("options and no key", "restrict,port-forwarding", NOT_A_LINE),
    ("unterminated quote", "from=\"10.0.0.0/8 {v}", "unterminated quote in the options"),
    ("BOM not on line 1", "\u{feff}{v}", NOT_A_LINE),
    ("unknown option", "frobnicate {v}", "unknown option \"frobnicate\""),
    ("stray comma", "restrict,,pty {v}", "empty option (stray comma)"),
    ("unquoted value", "permitopen=db:5432 {v}", "option permitopen: the value must be in double quotes"),
    ("flag with a value", "restrict=\"yes\" {v}", "option restrict takes no value"),
    ("value option, no value", "permitopen {v}", "option permitopen needs a value: permitopen=\"…\""),
    ("from= bad CIDR", "from=\"1.0.0.0/33\" {v}", "from=\"1.0.0.0/33\": \"1.0.0.0/33\" is not a valid CIDR range"),
    ("from= bad pattern", "from=\"a;b\" {v}", "from=\"a;b\": invalid pattern \"a;b\""),
    ("permitopen= no port", "permitopen=\"db\" {v}", "permitopen: permit entry \"db\": missing ':port'"),
    ("permitopen= port 99999", "permitopen=\"db:99999\" {v}", "permitopen: permit entry \"db:99999\": port must be"),
    ("expiry-time= bad date", "expiry-time=\"2020-13-45\" {v}", "expiry-time=\"2020-13-45\": expected YYYYMMDD"),
    ("principals= alone", "principals=\"ops\" {v}", "principals= only applies to cert-authority lines"),
];

/// An authorized_keys file with one malformed shape per line, good keys in between and one at the end.
fn garbage_file(dir: &Path) -> Garbage {
    let key = |name: &str| ClientKey::generate(dir, name, "ed25519", None);
    let (bom, crlf, good, victim, flags, fenced, ca) =
        (key("bom"), key("crlf"), key("good"), key("victim"), key("flags"), key("fenced"), key("ca"));
    let rsa1024 = ClientKey::generate(dir, "rsa1024", "rsa", Some(1024));
    let cert = std::fs::read_to_string(sign_certificate(&ca, &victim, "victim", "ops", &[])).unwrap();
    let file = dir.join("authorized_keys");
    let v = victim.public_line.as_str();
    let b64 = v.split(' ').nth(1).unwrap();
    let p = |s: &str| Want::Problem(s.to_string());
    let binary = |len| -> Vec<u8> { pattern(len, 7).into_iter().map(|b| if b == b'\n' { 0xff } else { b }).collect() };
    let trailing = [ssh_string(b"ssh-ed25519"), ssh_string(&[0x22; 32]), vec![0, 0]].concat();
    let fido = [ssh_string(b"sk-ssh-ed25519@openssh.com"), ssh_string(&[0x11; 32]), ssh_string(b"ssh:")].concat();
    let mut lines: Vec<(&str, Vec<u8>, Want)> = vec![
        ("UTF-8 BOM, then a good key, on line 1", format!("\u{feff}{}", bom.public_line).into(), Want::Key),
        ("comment", b"# ops team, rotated 2024-05".to_vec(), Want::Blank),
        ("only whitespace", b" \t   ".to_vec(), Want::Blank),
        ("empty", Vec::new(), Want::Blank),
        ("CRLF line end on a good key", format!("{}\r", crlf.public_line).into(), Want::Key),
    ];
    for (name, line, reason) in TEXT_CASES {
        lines.push((name, line.replace("{v}", v).replace("{b64}", b64).into(), p(reason)));
    }
    let unsupported = "sk-ssh-ed25519@openssh.com keys are not supported; use ssh-ed25519, ecdsa-sha2-nistp256/384/521";
    lines.extend([
        ("trailing bytes in the blob", format!("ssh-ed25519 {}", base64(&trailing)).into(), p(NOT_A_LINE)),
        ("NUL inside the base64", format!("ssh-ed25519 {}\0{}", &b64[..20], &b64[20..]).into(), p(NOT_A_LINE)),
        ("1 MiB line", format!("ssh-ed25519 {}", "A".repeat(1 << 20)).into(), p("line is 1048588 bytes, longer")),
        ("16 KiB of binary", binary(16 << 10), p("not valid UTF-8 text")),
        ("64 KiB of binary", binary(64 << 10), p("line is 65536 bytes, longer than the 32768 allowed")),
        ("Latin-1 comment", [v.as_bytes(), b" caf\xe9"].concat(), p("not valid UTF-8 text")),
        ("certificate", cert.trim().into(), p("certificates do not belong in authorized_keys")),
        (
            "cert blob, plain type word",
            format!("ssh-ed25519 {}", cert.split(' ').nth(1).unwrap()).into(),
            p("certificates do not"),
        ),
        ("RSA 1024", rsa1024.public_line.clone().into(), p("RSA key of 1024 bits is too small; at least 2048")),
        ("FIDO key", format!("sk-ssh-ed25519@openssh.com {}", base64(&fido)).into(), p(unsupported)),
        ("duplicate key", bom.public_line.clone().into(), p(&format!("duplicate of {} line 1", file.display()))),
        ("duplicated flag", format!("restrict,restrict,port-forwarding {}", flags.public_line).into(), Want::Key),
        ("from= host-name pattern", format!("from=\"999.1.1.1\" {}", fenced.public_line).into(), Want::Key),
    ]);
    if let Some(dsa) = keygen(dir, "dsa", &["-t", "dsa", "-N", ""]) {
        let public = std::fs::read_to_string(dsa.with_extension("pub")).unwrap();
        lines.push(("DSA", public.trim().into(), p("DSA keys are not accepted (broken, removed from OpenSSH)")));
    }
    lines.push(("good key, last", good.public_line.clone().into(), Want::Key));
    let mut bytes = Vec::new();
    for (_, line, _) in &lines {
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
    }
    std::fs::write(&file, bytes).unwrap();
    let cases = lines.into_iter().map(|(name, _, want)| (name, want)).collect();
    Garbage { file, cases, logins: vec![bom, crlf, good], fenced }
}

#[test]
fn check_config_names_file_line_and_reason_for_every_malformed_line() {
    let dir = bastion_tests::tempdir();
    let g = garbage_file(dir.path());
    let ran = run_to_exit("check-config", bastion(&["check-config", "--authorized-keys", s(&g.file)]));
    let out = &ran.stdout;
    assert_eq!(ran.code, Some(1), "problems make check-config fail:\n{out}");
    for (i, (name, want)) in g.cases.iter().enumerate() {
        let n = i + 1;
        let prefix = format!("  keys {} line {n}: ", g.file.display());
        let problem = out.lines().find(|l| l.starts_with(&prefix));
        let listed = out.contains(&format!("({} line {n})", g.file.display()));
        eprintln!("line {n} ({name}): {}", problem.unwrap_or(if listed { "listed as a key" } else { "nothing" }));
        match want {
            Want::Key => assert!(listed && problem.is_none(), "line {n} ({name}) is not a usable key:\n{out}"),
            Want::Blank => assert!(!listed && problem.is_none(), "line {n} ({name}) was reported:\n{out}"),
            Want::Problem(reason) => {
                let line = problem.unwrap_or_else(|| panic!("line {n} ({name}) not reported:\n{out}"));
                assert!(line[prefix.len()..].starts_with(reason.as_str()), "line {n} ({name}): want {reason:?}");
                assert!(line.ends_with(" (line skipped)"), "{line}");
            }
        }
    }
    let problems = g.problems().count();
    assert_eq!(out.lines().filter(|l| l.ends_with("(line skipped)")).count(), problems, "{out}");
    assert!(out.contains(&format!("{problems} problem(s):")), "{out}");
    let keys = g.keys();
    assert!(out.contains(&format!("authorized keys: {keys}\n")), "{out}");
    assert!(out.contains("from: 999.1.1.1"), "{out}");
    assert!(!out.contains(&"A".repeat(64)), "the 1 MiB line was echoed back");
}

#[test]
fn a_server_skips_garbage_lines_and_survives_a_garbage_reload() {
    require("ssh", "openssh-client");
    let dir = bastion_tests::tempdir();
    let g = garbage_file(dir.path());
    let mut server = ServerBuilder::new(dir.path())
        .arg("--authorized-keys")
        .arg(&g.file)
        .args(["--reload-poll-interval", "1h"]) // only SIGHUP reloads here
        .start();
    let source = g.file.display().to_string();
    for (n, name, reason) in g.problems() {
        let e = server.wait_event("config.problem", |e| e["line"] == n);
        eprintln!("line {n} ({name}): {}", e["reason"]);
        assert_eq!((e["level"].as_str(), e["source"].as_str()), (Some("WARN"), Some(source.as_str())), "{e}");
        assert!(e["reason"].as_str().unwrap().starts_with(reason.as_str()), "line {n} ({name}): want {reason:?}: {e}");
    }
    assert_eq!(server.events("config.problem").len(), g.problems().count());
    assert!(!server.proc.stderr().text().contains(&"A".repeat(64)), "the 1 MiB line was logged");
    for key in &g.logins {
        assert!(logs_in(&server, key), "{} does not log in", key.public_line);
    }
    assert!(!logs_in(&server, &g.fenced), "from=\"999.1.1.1\" let 127.0.0.1 in");

    // Pure garbage replaces the file: every line is reported, nothing is left
    // to log in with, so the reload fails and the keys in force stay.
    let good_text = std::fs::read(&g.file).unwrap();
    let garbage: Vec<u8> = (0..64 * 1024).map(|i| i as u8).collect(); // 0x00..=0xff, 257 lines
    let tmp = g.file.with_extension("new");
    std::fs::write(&tmp, &garbage).unwrap();
    std::fs::rename(&tmp, &g.file).unwrap();
    server.proc.signal("HUP");
    let failed = server.wait_event("keys.reload_failed", |_| true);
    eprintln!("garbage reload: {}", failed["message"]);
    assert_eq!(failed["level"], "ERROR");
    assert!(failed["error"].as_str().unwrap().contains("no usable authorized key"), "{failed}");
    assert!(failed["message"].as_str().unwrap().contains("keeping the keys in force"), "{failed}");
    let last = server.wait_event("config.problem", |e| e["line"] == 257);
    assert_eq!(
        (last["source"].as_str(), last["reason"].as_str()),
        (Some(source.as_str()), Some("not valid UTF-8 text"))
    );
    assert!(server.proc.is_running(), "{}", server.proc.stderr().text());
    assert!(logs_in(&server, &g.logins[2]), "the keys in force were dropped");

    // The good file again: it loads.
    std::fs::write(&tmp, good_text).unwrap();
    std::fs::rename(&tmp, &g.file).unwrap();
    server.proc.signal("HUP");
    let reloaded = server.wait_event("keys.reloaded", |_| true);
    assert_eq!(reloaded["keys"], g.keys());
}

#[test]
fn unreadable_empty_and_huge_authorized_keys_stop_the_server_with_a_reason() {
    let dir = bastion_tests::tempdir();
    let missing = dir.path().join("missing");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let huge = dir.path().join("huge");
    std::fs::write(&huge, pattern(50 << 20, 50)).unwrap();
    let no_key = "no usable authorized key, certificate authority or AWS identity rule";
    let d = dir.path();
    let cases = [
        ("a directory", d, format!("keys {}: cannot read: Is a directory (os error 21)", d.display())),
        ("missing", missing.as_path(), format!("keys {}: cannot read: No such file or directory", missing.display())),
        ("empty", empty.as_path(), no_key.to_string()),
        ("50 MiB of random bytes", huge.as_path(), no_key.to_string()),
    ];
    for (name, path, expected) in &cases {
        let checked = run_to_exit(name, bastion(&["check-config", "--authorized-keys", s(path)]));
        let shown = checked.stdout.lines().find(|l| l.contains(expected.as_str()));
        eprintln!("{name}: check-config exit {:?}: {shown:?}", checked.code);
        assert_eq!(checked.code, Some(1), "{name}");
        assert!(shown.is_some(), "{name}: {expected:?} missing");
        let ran = assert_run_refused(name, bastion(&["run", "--authorized-keys", s(path)]), &[expected]);
        let skipped = ran.stderr.lines().filter(|l| l.contains(r#""event":"config.problem""#)).count();
        let listed = checked.stdout.lines().filter(|l| l.ends_with("(line skipped)")).count();
        eprintln!("{name}: {skipped} line(s) skipped");
        assert_eq!(skipped, listed, "{name}: run and check-config disagree");
        if path == &huge {
            // ~200,000 lines, each reported with its number and one of these reasons.
            assert!(skipped > 100_000, "{skipped}");
            let prefix = format!("  keys {} line ", huge.display());
            let known = ["not valid UTF-8 text", NOT_A_LINE, "line is ", "unterminated quote"];
            for line in checked.stdout.lines().filter(|l| l.ends_with("(line skipped)")) {
                let reason = line.strip_prefix(&prefix).and_then(|r| r.split_once(": ")).map_or("", |(_, r)| r);
                assert!(known.iter().any(|k| reason.starts_with(k)), "{line}");
            }
        } else {
            assert_eq!(skipped, 0, "{name}");
        }
    }
}

#[test]
fn bad_permit_open_entries_are_refused_naming_the_option_the_entry_and_why() {
    let dir = bastion_tests::tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let keys = dir.path().join("authorized_keys");
    std::fs::write(&keys, format!("{}\n", key.public_line)).unwrap();
    let bad = [
        ("host", "missing ':port'"),
        ("host:", "port must be 1-65535 or *"),
        (":22", "empty host"),
        ("host:0", "port must be 1-65535 or *"),
        ("host:65536", "port must be 1-65535 or *"),
        ("host:-1", "port must be 1-65535 or *"),
        ("[::1", "missing ']'"),
        ("[::1]", "missing ':port' after ']'"),
        ("*", "missing ':port'"),
        ("::1:22", "IPv6 addresses go in brackets"),
        ("host:22:33", "IPv6 addresses go in brackets"),
        ("127.1:22", "write addresses as a dotted quad (a.b.c.d) or in IPv6 form"),
        ("a b:22", "invalid characters in host"),
        ("[fe80::1%eth0]:22", "invalid characters in host"),
        ("10.0.0.0/33:22", "not a valid CIDR range"),
    ];
    for (value, why) in bad {
        let expected = format!("--permit-open / BASTION_PERMIT_OPEN: permit entry {value:?}: {why}");
        let flag = format!("--permit-open={value}");
        let via_cli = bastion(&["check-config", &flag, "--authorized-keys", s(&keys)]);
        let mut via_env = bastion(&["check-config", "--authorized-keys", s(&keys)]);
        via_env.env("BASTION_PERMIT_OPEN", value);
        for (how, cmd) in [("--permit-open", via_cli), ("BASTION_PERMIT_OPEN", via_env)] {
            let ran = run_to_exit(value, cmd);
            let shown = ran.stdout.lines().find(|l| l.contains("BASTION_PERMIT_OPEN:"));
            eprintln!("{value:?} via {how}: exit {:?}: {shown:?}", ran.code);
            assert_eq!(ran.code, Some(1), "{value:?} via {how}: {}", ran.stdout);
            assert!(shown.is_some_and(|l| l.contains(&expected)), "{value:?} via {how}: want {expected:?}");
        }
        assert_run_refused(value, bastion(&["run", &flag, "--authorized-keys", s(&keys)]), &[&expected]);
    }

    // Accepted: CIDR ranges and wildcards are documented entry forms; empty and
    // `any` mean the default; a name is not length-checked (it can never match
    // a target, which is at most 255 bytes).
    let long = format!("{}.example:22", "a".repeat(100 * 1024));
    let any = "permit open: any host and port outside the denied ranges";
    let good = [
        ("*:*", "\n  *:*\n"),
        ("10.0.0.0/8:5432", "\n  10.0.0.0/8:5432\n"),
        ("[::1]:22", "\n  [::1]:22\n"),
        ("db:5432,", "\n  db:5432\n"),
        ("", any),
        ("any", any),
        (long.as_str(), "only these"),
    ];
    for (value, shown) in good {
        let ran = run_to_exit(
            value,
            bastion(&["check-config", &format!("--permit-open={value}"), "--authorized-keys", s(&keys)]),
        );
        eprintln!("{:?}: exit {:?}, shown as {shown:?}", &value[..value.len().min(20)], ran.code);
        assert_eq!(ran.code, Some(0), "{}", ran.stdout);
        assert!(ran.stdout.contains(shown), "{}", ran.stdout);
    }
}

#[test]
fn bad_host_key_files_stop_the_server_naming_the_file_and_the_reason() {
    let dir = bastion_tests::tempdir();
    let d = dir.path();
    let key = ClientKey::generate(d, "alice", "ed25519", None);
    let keys = d.join("authorized_keys");
    std::fs::write(&keys, format!("{}\n", key.public_line)).unwrap();
    let file = |name: &str, bytes: &[u8]| {
        std::fs::write(d.join(name), bytes).unwrap();
        d.join(name)
    };
    let host = keygen(d, "host", &["-t", "ed25519", "-N", ""]).unwrap();
    let host_text = std::fs::read_to_string(&host).unwrap();
    let rsa = keygen(d, "rsa", &["-t", "rsa", "-b", "2048", "-N", ""]).unwrap();
    let encrypted = keygen(d, "encrypted", &["-t", "ed25519", "-N", "secret"]).unwrap();
    let pem = keygen(d, "pem_ecdsa", &["-t", "ecdsa", "-m", "PEM", "-N", ""]).unwrap();
    let bad_pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA not base64 %%%%\n-----END OPENSSH PRIVATE KEY-----\n";
    let not_openssh = "not an OpenSSH private key (";
    let mut cases = vec![
        ("missing", d.join("missing"), "cannot read: No such file or directory (os error 2)"),
        ("a directory", d.join("."), "cannot read: Is a directory (os error 21)"),
        ("empty", file("empty", b""), "empty; expected the text of a key written by `ssh-keygen`"),
        ("a public key", host.with_extension("pub"), "this is a public key (a .pub file)"),
        ("RSA", rsa, "RSA host keys are not supported (RUSTSEC-2023-0071); use an Ed25519 key"),
        ("encrypted", encrypted, "the key is encrypted with a passphrase, which a server cannot type"),
        ("binary garbage", file("binary", &pattern(4096, 3)), "cannot read: stream did not contain valid UTF-8"),
        (
            "PEM armour, garbage body",
            file("bad_pem", bad_pem.as_bytes()),
            "not an OpenSSH private key (PEM Base64 error",
        ),
        ("truncated", file("truncated", &host_text.as_bytes()[..200]), not_openssh),
        ("legacy PEM ECDSA", pem, "not an OpenSSH private key (unexpected PEM type label"),
    ];
    if let Some(dsa) = keygen(d, "dsa", &["-t", "dsa", "-N", ""]) {
        cases.push(("DSA", dsa, "ssh-dss host keys are not supported"));
    }
    for (name, path, reason) in &cases {
        let expected = format!("host key {}: {reason}", path.display());
        let checked =
            run_to_exit(name, bastion(&["check-config", "--host-key", s(path), "--authorized-keys", s(&keys)]));
        let shown = checked.stdout.lines().find(|l| l.contains("host key "));
        eprintln!("{name}: exit {:?}: {shown:?}", checked.code);
        assert_eq!(checked.code, Some(1), "{name}");
        assert!(shown.is_some_and(|l| l.trim_start().starts_with(&expected)), "{name}: want {expected:?}");
        assert_run_refused(name, bastion(&["run", "--host-key", s(path), "--authorized-keys", s(&keys)]), &[&expected]);
    }
    // The same garbage as environment text names the variable.
    let mut cmd = bastion(&["run", "--authorized-keys", s(&keys)]);
    cmd.env("BASTION_HOST_KEY", "garbage");
    assert_run_refused("BASTION_HOST_KEY", cmd, &["host key BASTION_HOST_KEY: not an OpenSSH private key ("]);
    // CRLF line ends and a byte order mark are fine.
    let crlf = file("crlf", host_text.replace('\n', "\r\n").as_bytes());
    let bom = file("bom", format!("\u{feff}{host_text}").as_bytes());
    for (name, path) in [("CRLF", crlf), ("BOM", bom)] {
        let ran = run_to_exit(name, bastion(&["check-config", "--host-key", s(&path), "--authorized-keys", s(&keys)]));
        assert_eq!(ran.code, Some(0), "{name}: {}", ran.stdout);
    }
}

#[test]
fn a_blank_bastion_host_key_is_refused_not_taken_for_an_ephemeral_key() {
    let dir = bastion_tests::tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let keys = dir.path().join("authorized_keys");
    std::fs::write(&keys, format!("{}\n", key.public_line)).unwrap();
    let ephemeral = "host key: none configured; an ephemeral key would be generated";
    let expected =
        "host key BASTION_HOST_KEY: the variable is set but empty, which would mean a new ephemeral host key";
    for (name, value) in [("empty", ""), ("blank", "  \n")] {
        let mut cmd = bastion(&["check-config", "--authorized-keys", s(&keys)]);
        cmd.env("BASTION_HOST_KEY", value);
        let checked = run_to_exit(name, cmd);
        let shown = checked.stdout.lines().find(|l| l.contains("BASTION_HOST_KEY"));
        eprintln!("{name}: check-config exit {:?}: {shown:?}", checked.code);
        assert_eq!(checked.code, Some(1), "{name}: {}", checked.stdout);
        assert!(shown.is_some_and(|l| l.trim_start().starts_with(expected)), "{name}: {}", checked.stdout);
        assert!(!checked.stdout.contains(ephemeral), "{name}: {}", checked.stdout);
        let mut cmd = bastion(&["run", "--authorized-keys", s(&keys)]);
        cmd.env("BASTION_HOST_KEY", value);
        let ran = assert_run_refused(name, cmd, &[expected]);
        assert!(!ran.stderr.contains("hostkey.ephemeral"), "{name}: {}", ran.stderr);
    }
    // Unset, and only then, the ephemeral key is still there (with its warning).
    let checked = run_to_exit("unset", bastion(&["check-config", "--authorized-keys", s(&keys)]));
    assert_eq!(checked.code, Some(0), "{}", checked.stdout);
    assert!(checked.stdout.contains(ephemeral), "{}", checked.stdout);
}

/// check-config's output, and its problem line for each line of an authorized_keys file holding `lines`.
fn problems_of(dir: &Path, lines: &[String]) -> (Vec<String>, String) {
    let path = dir.join(format!("authorized_keys.{}", unique()));
    std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let out = run_to_exit("check-config", bastion(&["check-config", "--authorized-keys", s(&path)])).stdout;
    eprintln!("{out}");
    let problem = |n: usize| out.lines().find(|l| l.contains(&format!(" line {n}: "))).unwrap_or("").to_string();
    ((1..=lines.len()).map(problem).collect(), out)
}

#[test]
fn repeated_options_never_widen_a_key() {
    let dir = bastion_tests::tempdir();
    let key = |name: &str| ClientKey::generate(dir.path(), name, "ed25519", None);
    let (a, b, ca) = (key("a"), key("b"), key("ca"));
    let (problems, out) = problems_of(
        dir.path(),
        &[
            format!("from=\"10.0.0.0/8\",from=\"0.0.0.0/0\" {}", a.public_line),
            format!("cert-authority,principals=\"ops\",principals=\"root\" {}", ca.public_line),
            format!("expiry-time=\"20200101\",expiry-time=\"29991231\" {}", b.public_line),
        ],
    );
    let earliest = !problems[2].is_empty() || out.contains("expires: 2020-01-01");
    let wrong: Vec<&str> = [
        (problems[0].is_empty(), "two from= accepted, the last (0.0.0.0/0) in force"),
        (problems[1].is_empty(), "two principals= accepted, the last (root) in force"),
        (!earliest, "of two expiry-time=, the later (2999) is in force, not OpenSSH's earliest (2020)"),
    ]
    .into_iter()
    .filter_map(|(bad, why)| bad.then_some(why))
    .collect();
    assert!(wrong.is_empty(), "{wrong:#?}\n{out}");
}

#[test]
fn certificate_lines_and_open_quotes_are_named() {
    let dir = bastion_tests::tempdir();
    let (ca, key) =
        (ClientKey::generate(dir.path(), "ca", "ed25519", None), ClientKey::generate(dir.path(), "k", "ed25519", None));
    let cert = std::fs::read_to_string(sign_certificate(&ca, &key, "k", "ops", &[])).unwrap();
    let (problems, _) =
        problems_of(dir.path(), &[cert.trim().to_string(), format!("from=\"10.0.0.0/8 {}", key.public_line)]);
    let wrong: Vec<_> = problems.iter().zip(["certificate", "quote"]).filter(|(p, w)| !p.contains(w)).collect();
    assert!(wrong.is_empty(), "reasons that do not name the problem: {wrong:#?}");
}
