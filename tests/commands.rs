//! The command line as an operator meets it: host keys (file, env text,
//! ephemeral), keygen, check-config, healthcheck, listening, shutdown.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use bastion_tests::*;
use tempfile::TempDir;

fn setup() -> (TempDir, ClientKey) {
    require("ssh", "openssh-client");
    let dir = bastion_tests::tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    (dir, key)
}

fn bastion(args: &[&str]) -> Command {
    let mut cmd = Command::new(bastion_bin());
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("BASTION_") {
            cmd.env_remove(var);
        }
    }
    cmd.args(args);
    cmd
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn keygen(path: &Path) -> (String, String) {
    let out = bastion(&["keygen", "--out"]).arg(path).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let (stdout, _) = text(&out);
    let mut lines = stdout.lines();
    (lines.next().unwrap().to_string(), lines.next().unwrap().to_string())
}

/// Logs in and runs `true`: exit 1 with our message means key auth and host key check passed.
fn logs_in(server: &Server, key: &ClientKey) -> bool {
    let out = server.ssh_output(key, &[&server.destination("ops"), "true"]);
    out.status.code() == Some(1) && String::from_utf8_lossy(&out.stderr).contains("commands are not run")
}

#[test]
fn keygen_writes_a_key_that_loads_back() {
    let dir = bastion_tests::tempdir();
    let path = dir.path().join("host_ed25519");
    let (public, described) = keygen(&path);
    assert!(public.starts_with("ssh-ed25519 AAAA"), "{public}");
    assert!(described.starts_with("256 SHA256:") && described.ends_with("(ED25519)"), "{described}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "private key must not be readable by others");
    assert_eq!(std::fs::read_to_string(dir.path().join("host_ed25519.pub")).unwrap().trim(), public);

    // ssh-keygen agrees on the fingerprint.
    let out = Command::new("ssh-keygen").arg("-lf").arg(&path).output().unwrap();
    let (stdout, _) = text(&out);
    let fp = described.split(' ').nth(1).unwrap();
    assert!(stdout.contains(fp), "ssh-keygen -l says {stdout}, we said {described}");

    // It loads back: check-config shows the same fingerprint.
    let keys = dir.path().join("authorized_keys");
    std::fs::write(&keys, format!("{public}\n")).unwrap();
    let out = bastion(&["check-config", "--host-key"]).arg(&path).arg("--authorized-keys").arg(&keys).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("host key: {described}")), "{stdout}");

    // An existing key is never overwritten.
    let out = bastion(&["keygen", "--out"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("never overwritten"));

    // Without --out: private key on stdout, public key on stderr.
    let out = bastion(&["keygen"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(stdout.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"), "{stdout}");
    assert!(stderr.starts_with("ssh-ed25519 "), "{stderr}");
}

#[test]
fn host_key_from_file_from_env_text_and_ephemeral() {
    let (dir, key) = setup();

    let file = dir.path().join("hk_file");
    let (file_public, _) = keygen(&file);
    let server = ServerBuilder::new(dir.path()).arg("--host-key").arg(&file).authorize(&[&key]).start();
    assert_eq!(server.host_public_key, file_public);
    assert!(logs_in(&server, &key));
    drop(server);

    let env_file = dir.path().join("hk_env");
    let (env_public, _) = keygen(&env_file);
    let env_text = std::fs::read_to_string(&env_file).unwrap();
    let server = ServerBuilder::new(dir.path()).env("BASTION_HOST_KEY", &env_text).authorize(&[&key]).start();
    assert_eq!(server.host_public_key, env_public);
    let loaded = server.wait_event("hostkey.loaded", |_| true);
    assert_eq!(loaded["source"], "BASTION_HOST_KEY");
    assert!(logs_in(&server, &key));
    // The key text itself is never logged.
    let secret_line = env_text.lines().nth(1).unwrap();
    assert!(!server.proc.stderr().text().contains(secret_line));
    drop(server);

    // No host key: a loud warning, a new key each start, and it still works.
    let first = ServerBuilder::new(dir.path()).authorize(&[&key]).start();
    let warning = first.wait_event("hostkey.ephemeral", |_| true);
    assert_eq!(warning["level"], "WARN");
    assert!(warning["message"].as_str().unwrap().contains("different host key at every start"));
    let fingerprint = first.wait_event("hostkey.loaded", |_| true)["fingerprint"].as_str().unwrap().to_string();
    assert!(fingerprint.starts_with("256 SHA256:") && fingerprint.ends_with("(ED25519)"), "{fingerprint}");
    assert!(logs_in(&first, &key));
    let second = ServerBuilder::new(dir.path()).authorize(&[&key]).start();
    assert_ne!(first.host_public_key, second.host_public_key);
}

#[test]
fn bad_host_keys_stop_the_server_with_a_reason() {
    let (dir, key) = setup();
    let keys = dir.path().join("authorized_keys");
    std::fs::write(&keys, format!("{}\n", key.public_line)).unwrap();

    let rsa = ClientKey::generate(dir.path(), "rsa_host", "rsa", Some(2048));
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "not a key").unwrap();
    for (path, expect) in [
        (rsa.private.as_path(), "RSA host keys are not supported"),
        (garbage.as_path(), "not an OpenSSH private key"),
        (Path::new("/nonexistent/host_key"), "cannot read"),
    ] {
        let out = bastion(&["run", "--log-format", "text", "--listen", "127.0.0.1:0", "--host-key"])
            .arg(path)
            .arg("--authorized-keys")
            .arg(&keys)
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("host key {}: {expect}", path.display())), "{stderr}");
    }
}

#[test]
fn check_config_reports_malformed_lines_with_their_number() {
    let (dir, key) = setup();
    let keys = dir.path().join("authorized_keys");
    std::fs::write(&keys, format!("# ops team\n{}\nssh-ed25519 AAAAnot-base64 broken\n", key.public_line)).unwrap();
    let out = bastion(&["check-config", "--authorized-keys"]).arg(&keys).output().unwrap();
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("{} line 3: not an authorized_keys line", keys.display())), "{stdout}");
    assert!(stdout.contains("authorized keys: 1"), "{stdout}");
    assert!(stdout.contains("alice@test"), "{stdout}");
    assert!(stdout.contains("ephemeral key"), "{stdout}");

    // The same text from the environment, and a clean file.
    let out = bastion(&["check-config"])
        .env("BASTION_AUTHORIZED_KEYS", format!("{}\nbogus\n", key.public_line))
        .output()
        .unwrap();
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("BASTION_AUTHORIZED_KEYS line 2:"), "{stdout}");

    std::fs::write(&keys, format!("{}\n", key.public_line)).unwrap();
    let out = bastion(&["check-config", "--authorized-keys"]).arg(&keys).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("OK: no problems found"));

    // No keys at all is an error.
    let out = bastion(&["check-config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).0.contains("no usable authorized key"));
}

#[test]
fn malformed_lines_are_skipped_and_the_rest_still_log_in() {
    let (dir, key) = setup();
    let keys = dir.path().join("authorized_keys");
    std::fs::write(&keys, format!("garbage line\n\u{0}\u{1}\u{2}\n{}\r\n", key.public_line)).unwrap();
    let server = ServerBuilder::new(dir.path()).args(["--authorized-keys"]).arg(&keys).start();
    let warning = server.wait_event("config.problem", |e| e["line"] == 1);
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["source"], keys.display().to_string());
    server.wait_event("config.problem", |e| e["line"] == 2);
    assert!(logs_in(&server, &key));
}

#[test]
fn healthcheck_exit_codes() {
    let (dir, key) = setup();
    let server = ServerBuilder::new(dir.path()).authorize(&[&key]).start();
    let out = bastion(&["healthcheck", "--addr", &server.addr.to_string()]).output().unwrap();
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(stdout.trim(), "ok: SSH-2.0-bastion");

    let closed = free_port();
    let out = bastion(&["healthcheck", "--addr", &format!("127.0.0.1:{closed}")]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("unhealthy: cannot connect"));

    // Something that is not SSH.
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http_addr = http.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        if let Ok((mut s, _)) = http.accept() {
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
        }
    });
    let out = bastion(&["healthcheck", "--addr", &http_addr.to_string(), "--timeout", "5s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("did not answer with an SSH-2.0 identification"));
}

#[test]
fn identification_does_not_reveal_the_library() {
    let (dir, key) = setup();
    let server = ServerBuilder::new(dir.path()).authorize(&[&key]).start();
    let stream = TcpStream::connect(server.addr).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    assert_eq!(line, "SSH-2.0-bastion\r\n");
}

#[test]
fn silent_connections_are_dropped_after_the_login_grace_time() {
    let (dir, key) = setup();
    let server = ServerBuilder::new(dir.path()).args(["--login-grace-time", "1s"]).authorize(&[&key]).start();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    assert!(all.starts_with(b"SSH-2.0-bastion\r\n"));
    let closed = server.wait_event("connection.closed", |_| true);
    assert!(closed["reason"].as_str().unwrap().contains("login grace time"), "{closed}");
}

#[test]
fn listens_on_ipv6_and_dual_stack() {
    let (dir, key) = setup();
    let server = ServerBuilder::new(dir.path()).args(["--listen", "[::]:0"]).authorize(&[&key]).start();
    let port = server.addr.port();
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let addr: SocketAddr = addr.parse().unwrap();
        let mut line = String::new();
        BufReader::new(TcpStream::connect(addr).unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line, "SSH-2.0-bastion\r\n", "via {addr}");
    }
    // ssh over IPv6.
    let out = server.ssh(&key).args(["-6", "ops@::1", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    server.wait_event("connection.accepted", |e| e["peer"].as_str().unwrap().starts_with("[::1]"));
}

#[test]
fn sigterm_closes_connections_and_exits_cleanly() {
    let (dir, key) = setup();
    let mut server = ServerBuilder::new(dir.path()).authorize(&[&key]).start();
    let echo = EchoServer::start();
    let (mut ssh, ports) = server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);
    assert_eq!(echo_round_trip(SocketAddr::from(([127, 0, 0, 1], ports[0])), b"ping"), b"ping");

    server.proc.signal("TERM");
    let status = server.proc.wait_exit(READY).expect("server did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", server.proc.stderr().text());
    server.wait_event("server.stopping", |e| e["signal"] == "SIGTERM");
    server.wait_event("connection.closed", |e| e["reason"].as_str().unwrap().starts_with("server shutting down"));
    server.wait_event("server.stopped", |_| true);
    // The client was told and exits; no new connections are accepted.
    assert!(ssh.wait_exit(READY).is_some(), "ssh still running after the server stopped");
    assert!(TcpStream::connect(server.addr).is_err());
}

#[test]
fn check_config_reports_every_kind_of_problem_with_its_line() {
    let (dir, key) = setup();
    let ca = ClientKey::generate(dir.path(), "ca", "ed25519", None);
    let keys = dir.path().join("authorized_keys");
    std::fs::write(&keys, format!("{}\nno-such-option {}\n", key.public_line, ca.public_line)).unwrap();
    let cas = dir.path().join("trusted_cas");
    std::fs::write(&cas, format!("# CAs\n{}\nrestrict {}\n", ca.public_line, key.public_line)).unwrap();
    let revoked = dir.path().join("revoked");
    std::fs::write(&revoked, "ssh-ed25519 not-base64\n").unwrap();
    let host_key = dir.path().join("host_key");
    std::fs::write(&host_key, "junk").unwrap();
    let out = bastion(&["check-config", "--permit-open", "db"])
        .arg("--authorized-keys")
        .arg(&keys)
        .arg("--trusted-user-ca-keys")
        .arg(&cas)
        .arg("--revoked-keys")
        .arg(&revoked)
        .arg("--host-key")
        .arg(&host_key)
        .output()
        .unwrap();
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for expected in [
        format!("{} line 2: unknown option \"no-such-option\"", keys.display()),
        format!("{} line 3: options are not allowed in a trusted CA keys file", cas.display()),
        format!("revoked keys {} line 1: not a public key", revoked.display()),
        format!("host key {}: not an OpenSSH private key", host_key.display()),
        "--permit-open / BASTION_PERMIT_OPEN: permit entry \"db\"".to_string(),
    ] {
        assert!(stdout.contains(&expected), "missing {expected:?} in:\n{stdout}");
    }
    assert!(stdout.contains("certificate authorities: 1"), "{stdout}");
}

/// The README's configuration section must document every flag both binaries accept.
#[test]
fn the_readme_documents_every_flag() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let sidecar = bastion_bin().with_file_name("dns-sidecar");
    for (program, args) in [(bastion_bin(), vec!["run", "--help"]), (sidecar, vec!["--help"])] {
        let out = Command::new(&program).args(&args).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        let flags: Vec<&str> = help
            .split_whitespace()
            .map(|w| w.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-')))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .filter(|w| !matches!(*w, "--help" | "--version"))
            .collect();
        assert!(flags.len() > 10, "no flags found in {} --help", program.display());
        for flag in flags {
            assert!(
                readme.contains(&format!("`{flag}")),
                "{flag} ({}) is not documented in README.md",
                program.display()
            );
        }
    }
}

/// As in the container image: started as root, the server binds its port and
/// then becomes 65534:65534 with no capability, no supplementary group and
/// no_new_privs on every thread, and only then accepts. Started as another
/// user, it keeps that user (and still sets no_new_privs).
#[test]
fn gives_up_root_after_binding_and_before_accepting() {
    let (dir, key) = setup();
    let root = is_root();
    let server = ServerBuilder::new(dir.path()).authorize(&[&key]).start();
    let events: Vec<String> = server.proc.stderr().all().iter().filter_map(|l| event(l)).collect();
    let status = std::path::PathBuf::from(format!("/proc/{}/status", server.proc.child.id()));
    let listening = events.iter().position(|e| e == "server.listening").unwrap();
    if root {
        let dropped = events.iter().position(|e| e == "server.privileges_dropped").expect("privileges_dropped event");
        assert!(dropped < listening, "{events:?}");
        assert_eq!(proc_status(&status, "Uid"), "65534\t65534\t65534\t65534");
        assert_eq!(proc_status(&status, "Gid"), "65534\t65534\t65534\t65534");
        assert_eq!(proc_status(&status, "Groups"), "");
        assert_eq!(proc_status(&status, "CapPrm"), "0000000000000000");
        assert_eq!(proc_status(&status, "CapEff"), "0000000000000000");
        assert_eq!(proc_status(&status, "CapAmb"), "0000000000000000");
    } else {
        assert!(events.iter().any(|e| e == "server.unprivileged"), "{events:?}");
    }
    let tasks: Vec<_> = std::fs::read_dir(status.with_file_name("task")).unwrap().map(|t| t.unwrap().path()).collect();
    assert!(tasks.len() > 1, "the async runtime's threads: {tasks:?}");
    for task in tasks {
        let task_status = task.join("status");
        assert_eq!(proc_status(&task_status, "NoNewPrivs"), "1", "{task:?}");
        if root {
            // Capabilities are per thread: every thread of the runtime has none.
            for set in ["CapPrm", "CapEff", "CapAmb"] {
                assert_eq!(proc_status(&task_status, set), "0000000000000000", "{set} of {task:?}");
            }
        }
    }
    assert!(logs_in(&server, &key), "{}", server.proc.stderr().text());
}

/// Root whose uid change leaves the capabilities in place must not serve. `setpriv` sets
/// SECBIT_NO_SETUID_FIXUP (exec keeps it, and the kernel then clears no capability when
/// the uids change), keeps only SETGID and NET_BIND_SERVICE, and makes the real uid 65534,
/// so that `setresuid` needs no CAP_SETUID and `setuid(0)` fails afterwards: the ids and
/// that check pass, yet both capabilities are still effective (CapEff 0000000000000440).
#[test]
fn capabilities_left_after_the_uid_change_stop_the_server() {
    if !is_root() {
        eprintln!("skipped: only root can start bastion-sshd with capabilities to give up");
        return;
    }
    let setpriv = require("setpriv", "util-linux");
    let (dir, key) = setup();
    let keys = dir.path().join("authorized_keys");
    std::fs::write(&keys, format!("{}\n", key.public_line)).unwrap();
    let mut cmd = Command::new(setpriv);
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("BASTION_") {
            cmd.env_remove(var);
        }
    }
    cmd.args(["--securebits", "+no_setuid_fixup", "--bounding-set", "-all,+setgid,+net_bind_service"])
        .args(["--inh-caps", "-all", "--ruid", "65534", "--"])
        .arg(bastion_bin())
        .args(["run", "--log-format", "json", "--listen", "127.0.0.1:0", "--authorized-keys"])
        .arg(&keys);
    let mut proc = Proc::spawn(cmd, std::process::Stdio::null());
    let outcome = ["server.listening", "server.error"];
    let last = proc.stderr().wait_for(READY, |l| event(l).is_some_and(|e| outcome.contains(&e.as_str())));
    if last.as_deref().and_then(event).as_deref() == Some("server.listening") {
        let status = std::path::PathBuf::from(format!("/proc/{}/status", proc.child.id()));
        let (uid, eff) = (proc_status(&status, "Uid"), proc_status(&status, "CapEff"));
        panic!("serves as uid {uid} with CapEff {eff}:\n{}", proc.stderr().text());
    }
    let exit = proc.wait_exit(READY).expect("bastion-sshd exits");
    let log = proc.stderr().text();
    assert_eq!(exit.code(), Some(1), "{log}");
    let want = "giving up root: capabilities left after the uid change: \
                CapPrm 0000000000000440, CapEff 0000000000000440 (is SECBIT_NO_SETUID_FIXUP set?)";
    let error = log.lines().find(|l| event(l).as_deref() == Some("server.error")).unwrap_or_default();
    assert_eq!(json(error)["message"], want, "{log}");
}

#[test]
fn run_as_root_or_by_name_is_refused() {
    for (value, reason) in [
        ("0:0", "never serves as root"),
        ("65534:0", "never serves as root"),
        ("nobody:nogroup", "is not a number"),
        ("65534", "is not UID:GID"),
    ] {
        let out = bastion(&["run", "--run-as", value]).output().unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains("--run-as") && stderr.contains(reason), "{value}: {stderr}");
    }
}
