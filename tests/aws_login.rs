//! Access by AWS identity, end to end: the real `bastion login`, the real
//! `bastion-sshd`, the real OpenSSH client through the tunnel. STS is the
//! stand-in of `tests/sts_standin.py` (STS cannot run here and moto's does
//! not verify signatures; the stand-in verifies SigV4 exactly with test
//! secrets). Proofs the real client never sends (expired, replayed, bound to
//! another bastion) come from `tests/aws_login_client.py` (asyncssh).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bastion_tests::sts::*;
use bastion_tests::*;

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn rules(echo: &EchoServer) -> String {
    format!(
        "# who may log in\n\
         arn:aws:iam::{ACCOUNT}:user/alice permitopen=\"127.0.0.1:{port}\",valid-for=2h\n\
         arn:aws:sts::{ACCOUNT}:assumed-role/AWSReservedSSO_DBAccess_*/* permitopen=\"127.0.0.1:{port}\"\n",
        port = echo.addr.port()
    )
}

/// The tunnel carries data both ways.
fn assert_tunnel_works(ssh: &Proc, port: u16) {
    let data = pattern(64 << 10, port.into());
    let back = echo_round_trip(std::net::SocketAddr::from(([127, 0, 0, 1], port)), &data);
    assert!(back == data, "the tunnel did not carry the data back:\n{}", ssh.stderr().text());
}

#[test]
fn an_iam_user_and_an_sso_role_with_a_session_token_log_in_and_tunnel_with_stock_openssh() {
    require("ssh", "openssh-client");
    let echo = EchoServer::start();
    let b = AwsBastion::start(&rules(&echo), &[]);

    // An IAM user, credentials in the environment.
    let (out, identity) = b.login(&ALICE, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "bastion login failed: {stderr}");
    assert!(stdout.contains(&format!("logged in as {}", ALICE.arn)), "{stdout}");
    assert!(stdout.contains(&format!("(2h); tunnels: 127.0.0.1:{}", echo.addr.port())), "{stdout}");
    let mode = std::fs::metadata(&identity).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the private key must be private");
    let cert = std::fs::read_to_string(format!("{}-cert.pub", identity.display())).unwrap();
    assert!(cert.starts_with("ssh-ed25519-cert-v01@openssh.com "), "{cert}");
    // ssh-keygen reads what the bastion signed: key id = ARN, principal, only port forwarding.
    let shown = Command::new("ssh-keygen").arg("-Lf").arg(format!("{}-cert.pub", identity.display())).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains(&format!("Key ID: \"{}\"", ALICE.arn)), "{shown}");
    assert!(shown.contains("Principals: \n                alice\n"), "{shown}");
    assert!(shown.contains("Extensions: \n                permit-port-forwarding\n"), "{shown}");
    let issued = b.server.wait_event("auth.certificate_issued", |e| e["arn"] == ALICE.arn);
    assert_eq!(issued["access_key_id"], ALICE.access_key_id);

    let (ssh, ports) = b.server.tunnel(&AwsBastion::key(&identity), &[("127.0.0.1", echo.addr.port())], &[]);
    assert_tunnel_works(&ssh, ports[0]);
    let accepted = b.server.wait_event("auth.accepted", |e| e["arn"] == ALICE.arn);
    assert_eq!(accepted["cert_key_id"], ALICE.arn);
    let opened = b.server.wait_event("tunnel.opened", |e| e["arn"] == ALICE.arn);
    assert_eq!(opened["destination"], format!("127.0.0.1:{}", echo.addr.port()));
    drop(ssh);
    b.server.wait_event("tunnel.closed", |e| e["arn"] == ALICE.arn);

    // An assumed role (IAM Identity Center) with a session token, from a profile's credential_process.
    let creds = b.dir.path().join("bob.json");
    let token = BOB.session_token.unwrap();
    std::fs::write(
        &creds,
        format!(
            r#"{{"Version": 1, "AccessKeyId": "{}", "SecretAccessKey": "{}", "SessionToken": "{token}"}}"#,
            BOB.access_key_id, BOB.secret
        ),
    )
    .unwrap();
    let config = b.dir.path().join("aws-config");
    std::fs::write(&config, format!("[profile dev]\ncredential_process = cat {}\n", creds.display())).unwrap();
    // And a known_hosts file hashed by ssh-keygen -H, as Debian's ssh writes them.
    let hashed = b.dir.path().join("known_hosts.hashed");
    std::fs::copy(&b.server.known_hosts, &hashed).unwrap();
    assert!(Command::new("ssh-keygen").arg("-H").arg("-f").arg(&hashed).output().unwrap().status.success());
    assert!(std::fs::read_to_string(&hashed).unwrap().starts_with("|1|"));
    let identity = b.dir.path().join("bob_key");
    let mut cmd = b.login_command(&b.server, &hashed);
    cmd.env("AWS_CONFIG_FILE", &config).env("AWS_PROFILE", "dev");
    cmd.arg("--identity-file").arg(&identity).arg("127.0.0.1");
    let out = cmd.output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "bastion login (credential_process) failed: {stderr}");
    assert!(stdout.contains(&format!("logged in as {}", BOB.arn)), "{stdout}");
    assert!(stdout.contains("(8h)"), "no valid-for: the server's 8 h: {stdout}");
    let sent = b.sts.requests().into_iter().find(|r| r["arn"] == BOB.arn).expect("the stand-in saw bob's proof");
    assert_eq!(sent["headers"]["x-amz-security-token"], token);
    let (ssh, ports) = b.server.tunnel(&AwsBastion::key(&identity), &[("127.0.0.1", echo.addr.port())], &[]);
    assert_tunnel_works(&ssh, ports[0]);
    let accepted = b.server.wait_event("auth.accepted", |e| e["arn"] == BOB.arn);
    assert_eq!(accepted["cert_principals"], "bob@example.com");
    // Neither the session token nor a signature is ever logged.
    let log = b.server.proc.stderr().text();
    let signature = sent["headers"]["authorization"].as_str().unwrap().rsplit("Signature=").next().unwrap().to_string();
    assert!(!log.contains(token) && !log.contains(&signature), "a secret reached the log");

    // The monitoring stack's saved queries name the AWS identity (tests/insights.py).
    drop(ssh);
    b.server.wait_event("tunnel.closed", |e| e["arn"] == BOB.arn);
    let file = b.dir.path().join("log.jsonl");
    std::fs::write(&file, b.server.proc.stderr().all().join("\n") + "\n").unwrap();
    let rows = monitoring_rows(&file, &["--queries-only"]);
    for who in [ALICE.arn, BOB.arn] {
        let reached = &rows["who reached what, when"];
        assert!(reached.iter().any(|r| r["who"] == who && r["user"].is_string()), "{who}: {reached:#?}");
        let bytes = rows["bytes by user"].iter().find(|r| r["who"] == who).unwrap_or_else(|| panic!("{who}"));
        assert_eq!(bytes["up"], 64 << 10, "{who}: {bytes}");
    }
}

#[test]
fn an_identity_without_a_rule_is_refused_by_name_and_nothing_is_written() {
    let echo = EchoServer::start();
    let b = AwsBastion::start(&rules(&echo), &[]);
    let (out, identity) = b.login(&CAROL, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("refused for {}: no identity rule of this bastion matches this ARN", CAROL.arn)),
        "{stderr}"
    );
    assert!(!identity.exists() && !std::path::Path::new(&format!("{}-cert.pub", identity.display())).exists());
    let refused = b.server.wait_event("auth.refused", |e| e["method"] == "aws-sts");
    assert_eq!(refused["arn"], CAROL.arn);
}

#[test]
fn a_wrong_secret_is_refused_by_sts_and_nothing_is_written() {
    let echo = EchoServer::start();
    let b = AwsBastion::start(&rules(&echo), &[]);
    let wrong = Identity { secret: "not-alices-secret-0000000000000000000000", ..ALICE };
    let (out, identity) = b.login(&wrong, &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused: STS refused the proof: SignatureDoesNotMatch"), "{stderr}");
    assert!(!identity.exists());
    let seen = b.sts.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["code"], "SignatureDoesNotMatch");
}

#[test]
fn expired_replayed_and_misbound_proofs_are_refused() {
    let echo = EchoServer::start();
    let b = AwsBastion::start(&rules(&echo), &[]);
    let refused = |args: &[&str]| {
        let outcome = hostile_login(&b, &b.server, &ALICE, args);
        assert_eq!(outcome["ok"], false, "{args:?}: {outcome}");
        outcome["reason"].as_str().unwrap().to_string()
    };
    // Six minutes old, and two minutes ahead of the bastion's clock: refused before STS is asked.
    assert!(refused(&["--date-offset-seconds", "360"]).contains("it must be at most 5m old"));
    assert!(refused(&["--date-offset-seconds", "-120"]).contains("in the future"));
    // Bound to another bastion's name, to another host key, or signed for another STS host.
    assert!(
        refused(&["--bastion-name", "other.example.com"]).contains("the proof is for bastion \"other.example.com\"")
    );
    let other_key = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert!(refused(&["--host-key-fingerprint", other_key]).contains("which is not this bastion's"));
    assert!(refused(&["--sts-host", "sts.amazonaws.com"]).contains("sends proofs only to"));
    assert!(b.sts.requests().is_empty(), "a proof refused on its face reached STS: {:?}", b.sts.requests());

    // A good proof, captured (by the bastion it was made for), then replayed.
    let captured = b.dir.path().join("captured.json");
    let ok = hostile_login(&b, &b.server, &ALICE, &["--save-proof", captured.to_str().unwrap()]);
    assert_eq!(ok["ok"], true, "{ok}");
    let again = refused(&["--replay-proof", captured.to_str().unwrap()]);
    assert!(again.contains("another connection's challenge"), "{again}");
    // ... and shown to another bastion with the same name and CA (another deployment).
    let other = AwsBastion::server(b.dir.path(), &b.sts, &b.ca, &b.rules, &[]);
    let elsewhere = hostile_login(&b, &other, &ALICE, &["--replay-proof", captured.to_str().unwrap()]);
    assert!(elsewhere["reason"].as_str().unwrap().contains("which is not this bastion's"), "{elsewhere}");
    assert_eq!(b.sts.requests().len(), 1, "only the one good proof reached STS");
    let logged: Vec<_> = b.server.events("auth.refused").into_iter().filter(|e| e["method"] == "aws-sts").collect();
    assert_eq!(logged.len(), 6, "{logged:?}");
}

#[test]
fn a_wrong_or_unknown_host_key_stops_the_login_before_anything_reaches_the_bastion() {
    let echo = EchoServer::start();
    let b = AwsBastion::start(&rules(&echo), &[]);
    let other = ClientKey::generate(b.dir.path(), "impostor", "ed25519", None);
    let wrong = b.dir.path().join("known_hosts.wrong");
    let name = format!("[127.0.0.1]:{}", b.server.addr.port());
    std::fs::write(&wrong, format!("{name} {}\n", other.public_line)).unwrap();
    let mut cmd = b.login_command(&b.server, &wrong);
    credentials(&mut cmd, &ALICE);
    let identity = b.dir.path().join("never");
    let out = cmd.arg("--identity-file").arg(&identity).arg("127.0.0.1").output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("HOST KEY MISMATCH"), "{stderr}");
    assert!(stderr.contains("Nothing identifying was sent"), "{stderr}");
    // The key exchange happened; no authentication request ever came, and STS saw nothing.
    b.server.wait_event("connection.closed", |_| true);
    assert!(b.server.events("auth.refused").is_empty() && b.server.events("auth.certificate_issued").is_empty());
    assert!(b.sts.requests().is_empty());
    assert!(!identity.exists());

    // Not listed at all: no connection is even made.
    let empty = b.dir.path().join("known_hosts.empty");
    std::fs::write(&empty, "").unwrap();
    let mut cmd = b.login_command(&b.server, &empty);
    credentials(&mut cmd, &ALICE);
    let out = cmd.arg("--identity-file").arg(&identity).arg("127.0.0.1").output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains(&format!("has no host key for {name} (nothing was sent to the bastion)")), "{stderr}");
    assert_eq!(b.server.events("connection.accepted").len(), 1, "a second connection was made");
    assert!(b.sts.requests().is_empty());
}

#[test]
fn trust_from_ssm_records_the_published_host_key_and_refuses_one_that_disagrees() {
    let echo = EchoServer::start();
    let b = AwsBastion::start(&rules(&echo), &[]);
    let moto = bastion_tests::aws::Emulator::moto();
    let name = "/bastion/host-public-key";
    bastion_tests::aws::fixture(&["put-parameter", &moto.url, name, &b.server.host_public_key]);
    let known_hosts = b.dir.path().join(".ssh/known_hosts");
    let login = |known: &std::path::Path, parameter: &str| {
        let mut cmd = b.login_command(&b.server, known);
        credentials(&mut cmd, &ALICE);
        cmd.env("AWS_ENDPOINT_URL_SSM", &moto.url).args(["--trust-from-ssm", parameter]);
        let identity = b.dir.path().join(format!("id_ssm_{}", unique()));
        let out = cmd.arg("--identity-file").arg(&identity).arg("127.0.0.1").output().unwrap();
        (out, identity)
    };
    // No known_hosts yet: the key comes from SSM, is recorded, and the login goes on.
    let (out, identity) = login(&known_hosts, name);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("recorded ssh-ed25519 SHA256:"), "{stderr}");
    assert!(stdout.contains(&format!("logged in as {}", ALICE.arn)), "{stdout}");
    assert!(identity.exists());
    let recorded = std::fs::read_to_string(&known_hosts).unwrap();
    assert_eq!(recorded, format!("[127.0.0.1]:{} {}\n", b.server.addr.port(), b.server.host_public_key));
    // Again: nothing is added twice.
    assert!(login(&known_hosts, name).0.status.success());
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), recorded);

    // The parameter disagrees with known_hosts: stop, name both, send nothing.
    let other = ClientKey::generate(b.dir.path(), "replaced", "ed25519", None);
    bastion_tests::aws::fixture(&["put-parameter", &moto.url, name, &other.public_line]);
    let requests = b.sts.requests().len();
    let (out, identity) = login(&known_hosts, name);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("lists another host key for") && stderr.contains("ssh-keygen -R"), "{stderr}");
    assert!(!identity.exists());
    assert_eq!(b.sts.requests().len(), requests, "a proof was sent");
    // A missing parameter is named.
    let (out, _) = login(&b.dir.path().join("kh2"), "/bastion/nope");
    assert!(text(&out).1.contains("ParameterNotFound"), "{}", text(&out).1);
}

#[test]
fn a_rules_permitopen_narrows_the_certificates_tunnels() {
    let allowed = EchoServer::start();
    let other = EchoServer::start();
    let b = AwsBastion::start(&rules(&allowed), &[]);
    let (out, identity) = b.login(&ALICE, &[]);
    assert!(out.status.success(), "{}", text(&out).1);
    let key = AwsBastion::key(&identity);
    let (ssh, ports) =
        b.server.tunnel(&key, &[("127.0.0.1", allowed.addr.port()), ("127.0.0.1", other.addr.port())], &[]);
    assert_tunnel_works(&ssh, ports[0]);
    let line = refused_line(&ssh, ports[1], "open failed");
    assert!(line.contains("is not in this key's permitopen list"), "{line}");
    let refused = b.server.wait_event("tunnel.refused", |e| e["arn"] == ALICE.arn);
    assert_eq!(refused["destination"], format!("127.0.0.1:{}", other.addr.port()));
    assert_eq!(other.connection_count(), 0);
}

#[test]
fn a_rule_removed_by_reload_closes_the_sessions_it_admitted() {
    let echo = EchoServer::start();
    let b = AwsBastion::start(&rules(&echo), &[]);
    let (out, alice_key) = b.login(&ALICE, &[]);
    assert!(out.status.success(), "{}", text(&out).1);
    let (out, bob_key) = b.login(&BOB, &[]);
    assert!(out.status.success(), "{}", text(&out).1);
    let (mut alice, a) = b.server.tunnel(&AwsBastion::key(&alice_key), &[("127.0.0.1", echo.addr.port())], &[]);
    let (mut bob, p) = b.server.tunnel(&AwsBastion::key(&bob_key), &[("127.0.0.1", echo.addr.port())], &[]);
    assert_tunnel_works(&alice, a[0]);
    assert_tunnel_works(&bob, p[0]);

    // Alice's rule goes; Bob's stays.
    let kept: String = rules(&echo).lines().filter(|l| !l.contains("user/alice")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&b.rules, kept).unwrap();
    b.server.proc.signal("HUP");
    let revoked = b.server.wait_event("session.revoked", |_| true);
    assert!(
        revoked["reason"].as_str().unwrap().contains(&format!("no identity rule matches {} (any more)", ALICE.arn)),
        "{revoked}"
    );
    assert!(alice.wait_exit(Duration::from_secs(20)).is_some(), "alice's ssh is still connected");
    assert!(bob.is_running(), "bob's session must stay");
    assert_tunnel_works(&bob, p[0]);
    // And a new login by Alice is refused.
    let (out, _) = b.login(&ALICE, &[]);
    assert!(text(&out).1.contains("no identity rule of this bastion matches"), "{}", text(&out).1);
    let _ = bob.child.kill();
}

#[test]
fn authorized_keys_logins_keep_working_beside_aws_logins() {
    let echo = EchoServer::start();
    let dir = tempdir();
    let key = ClientKey::generate(dir.path(), "ops", "ed25519", None);
    let keys = dir.path().join("authorized_keys");
    std::fs::write(&keys, format!("{}\n", key.public_line)).unwrap();
    let b = AwsBastion::start(&rules(&echo), &["--authorized-keys", keys.to_str().unwrap()]);
    let (ssh, ports) = b.server.tunnel(&key, &[("127.0.0.1", echo.addr.port())], &[]);
    assert_tunnel_works(&ssh, ports[0]);
    let accepted = b.server.wait_event("auth.accepted", |e| e["comment"] == "ops@test");
    assert!(accepted.get("arn").is_none(), "{accepted}");
    // keyboard-interactive is never offered, so stock ssh never prompts for a proof.
    let stranger = ClientKey::generate(dir.path(), "stranger", "ed25519", None);
    let out = b.server.ssh_output(&stranger, &["-v", &b.server.destination("someone"), "true"]);
    let log = String::from_utf8_lossy(&out.stderr).replace('\r', "");
    assert!(log.contains("Authentications that can continue: publickey\n"), "{log}");
    assert!(!log.contains("keyboard-interactive"), "{log}");
    let (out, _) = b.login(&ALICE, &[]);
    assert!(out.status.success(), "{}", text(&out).1);
}

#[test]
fn login_agent_adds_the_certificate_to_ssh_agent_and_config_writes_a_working_stanza() {
    require("ssh-agent", "openssh-client");
    let echo = EchoServer::start();
    let b = AwsBastion::start(&rules(&echo), &[]);
    let socket = b.dir.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent");
    agent.arg("-D").arg("-a").arg(&socket);
    let _agent = Proc::spawn(agent, Stdio::null());
    let list = || Command::new("ssh-add").arg("-l").env("SSH_AUTH_SOCK", &socket).output().unwrap();
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut cmd = b.login_command(&b.server, &b.server.known_hosts);
    credentials(&mut cmd, &ALICE);
    let out = cmd.env("SSH_AUTH_SOCK", &socket).arg("--agent").arg("127.0.0.1").output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("added to ssh-agent"), "{stdout}");
    let listed = String::from_utf8_lossy(&list().stdout).to_string();
    assert!(listed.contains("ED25519-CERT"), "{listed}");
    assert!(!b.dir.path().join(".ssh").exists(), "--agent wrote files under HOME");

    // Through the agent, with no key file at all.
    let port = free_port();
    let mut ssh = Command::new("ssh");
    ssh.args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-v", "-N"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", b.server.known_hosts.display()))
        .arg("-o")
        .arg(format!("IdentityAgent={}", socket.display()))
        .args(["-p", &b.server.addr.port().to_string(), "-L"])
        .arg(format!("127.0.0.1:{port}:127.0.0.1:{}", echo.addr.port()))
        .arg("127.0.0.1");
    let ssh = Proc::spawn(ssh, Stdio::null());
    assert!(wait_forwards(&ssh, &[port]), "{}", ssh.stderr().text());
    assert_tunnel_works(&ssh, port);
    drop(ssh);

    // `bastion config HOST`, used as ~/.ssh/config, after a login that wrote the files.
    let identity = b.dir.path().join("configured");
    let mut login = b.login_command(&b.server, &b.server.known_hosts);
    credentials(&mut login, &ALICE);
    assert!(login.arg("--identity-file").arg(&identity).arg("127.0.0.1").output().unwrap().status.success());
    let stanza = Command::new(bastion_login_bin())
        .args(["config", "-p", &b.server.addr.port().to_string(), "--identity-file"])
        .arg(&identity)
        .arg("127.0.0.1")
        .output()
        .unwrap();
    assert!(stanza.status.success());
    let config = b.dir.path().join("ssh_config");
    std::fs::write(&config, &stanza.stdout).unwrap();
    let port = free_port();
    let mut ssh = Command::new("ssh");
    ssh.arg("-F")
        .arg(&config)
        .args(["-o", "BatchMode=yes", "-v", "-N"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", b.server.known_hosts.display()))
        .arg("-L")
        .arg(format!("127.0.0.1:{port}:127.0.0.1:{}", echo.addr.port()))
        .arg("127.0.0.1");
    let ssh = Proc::spawn(ssh, Stdio::null());
    assert!(wait_forwards(&ssh, &[port]), "{}", ssh.stderr().text());
    assert_tunnel_works(&ssh, port);
}

#[test]
fn the_session_closes_when_the_certificate_expires() {
    let echo = EchoServer::start();
    let b = AwsBastion::start(&rules(&echo), &["--max-certificate-validity", "4s"]);
    let (out, identity) = b.login(&ALICE, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("(3s)") || stdout.contains("(4s)"), "capped by --max-certificate-validity: {stdout}");
    let (mut ssh, ports) = b.server.tunnel(&AwsBastion::key(&identity), &[("127.0.0.1", echo.addr.port())], &[]);
    assert_tunnel_works(&ssh, ports[0]);
    let expired = b.server.wait_event("session.expired", |_| true);
    assert_eq!(expired["expired"], "the certificate");
    assert!(ssh.wait_exit(Duration::from_secs(20)).is_some(), "ssh still connected after the certificate expired");
    // And the certificate no longer logs in.
    let again = b.server.ssh_output(&AwsBastion::key(&identity), &[&b.server.destination("tunnel"), "true"]);
    assert_eq!(again.status.code(), Some(255), "{}", String::from_utf8_lossy(&again.stderr));
}

#[test]
fn check_config_lists_the_rules_and_every_problem_with_its_source_and_line() {
    let dir = tempdir();
    let ca = ClientKey::generate(dir.path(), "ca", "ed25519", None);
    let rules = dir.path().join("rules");
    std::fs::write(
        &rules,
        "arn:aws:iam::111122223333:user/alice permitopen=\"db.internal:5432\",valid-for=12h\n\
         arn:aws:iam::*:user/bob\n\
         arn:aws:iam::111122223333:user/carol frobnicate\n",
    )
    .unwrap();
    let check = |extra: &[&str]| {
        let out = Command::new(bastion_bin())
            .args(["check-config", "--aws-identity-rules"])
            .arg(&rules)
            .args(extra)
            .env_remove("BASTION_USER_CA_KEY")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let ca_path = ca.private.to_str().unwrap();
    let (code, out) = check(&["--user-ca-key", ca_path, "--sts-endpoint", "https://sts.eu-west-1.amazonaws.com"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("AWS logins (bastion login): on"), "{out}");
    assert!(
        out.contains(
            "proofs go to: https://sts.eu-west-1.amazonaws.com/ (signed for region eu-west-1), and nowhere else"
        ),
        "{out}"
    );
    assert!(out.contains("AWS identity rules: 1"), "{out}");
    assert!(out.contains(&format!("arn:aws:iam::111122223333:user/alice ({} line 1)", rules.display())), "{out}");
    assert!(out.contains("tunnels: only db.internal:5432"), "{out}");
    assert!(out.contains("certificates valid for 8h (valid-for=12h, capped by --max-certificate-validity)"), "{out}");
    let line2 = format!("{} line 2: ARN pattern \"arn:aws:iam::*:user/bob\" has account \"*\"", rules.display());
    assert!(out.contains(&line2), "{out}");
    assert!(out.contains(&format!("{} line 3: option \"frobnicate\" is not allowed", rules.display())), "{out}");

    // Rules without a CA, a CA without an STS endpoint, plain http to a remote STS: each named.
    let (code, out) = check(&[]);
    assert_eq!(code, Some(1));
    assert!(out.contains("--aws-identity-rules is set but --user-ca-key"), "{out}");
    let (_, out) = check(&["--user-ca-key", ca_path]);
    assert!(out.contains("there is no STS endpoint: set AWS_REGION (ECS sets it) or --sts-endpoint"), "{out}");
    let (_, out) = check(&["--user-ca-key", ca_path, "--sts-endpoint", "http://sts.eu-west-1.amazonaws.com"]);
    assert!(out.contains("http:// only to a loopback address"), "{out}");
    let (_, out) =
        check(&["--user-ca-key", ca_path, "--host-key", ca_path, "--sts-endpoint", "https://sts.amazonaws.com"]);
    assert!(out.contains("is also a host key: give the CA a key of its own"), "{out}");
    let (_, out) = check(&["--user-ca-key", rules.to_str().unwrap(), "--sts-endpoint", "https://sts.amazonaws.com"]);
    assert!(out.contains(&format!("user CA key {}: not an OpenSSH private key", rules.display())), "{out}");
}

#[test]
fn a_refused_proof_penalizes_its_source_and_a_login_does_not() {
    let echo = EchoServer::start();
    let b = AwsBastion::start(&rules(&echo), &["--penalty", "30s"]);
    let (out, _) = b.login(&ALICE, &[]);
    assert!(out.status.success(), "{}", text(&out).1);
    b.server.wait_event("connection.closed", |_| true);
    assert!(b.server.events("source.penalized").is_empty(), "a good login was penalized");
    let (out, _) = b.login(&CAROL, &[]);
    assert_eq!(out.status.code(), Some(1));
    let penalized = b.server.wait_event("source.penalized", |_| true);
    assert_eq!(penalized["seconds"], 30);
    // The next login from that source is refused at the door.
    let (out, identity) = b.login(&ALICE, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out).0);
    assert!(!identity.exists());
}

#[test]
fn an_sts_outage_refuses_the_login_without_penalizing_the_user() {
    let echo = EchoServer::start();
    let mut b = AwsBastion::start(&rules(&echo), &["--penalty", "30s"]);
    let _ = b.sts.proc.child.kill();
    let _ = b.sts.proc.child.wait();
    let (out, identity) = b.login(&ALICE, &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused: STS is unavailable:"), "{stderr}");
    assert!(!identity.exists());
    b.server.wait_event("connection.closed", |_| true);
    assert!(b.server.events("source.penalized").is_empty(), "an STS outage was penalized");
}

#[test]
fn a_rules_from_decides_where_the_login_and_the_certificate_work() {
    let echo = EchoServer::start();
    let rules = format!(
        "arn:aws:iam::{ACCOUNT}:user/alice from=\"10.0.0.0/8\"\n\
         arn:aws:sts::{ACCOUNT}:assumed-role/AWSReservedSSO_DBAccess_*/* from=\"127.0.0.0/8\",permitopen=\"127.0.0.1:{}\"\n",
        echo.addr.port()
    );
    let b = AwsBastion::start(&rules, &[]);
    let (out, identity) = b.login(&ALICE, &[]);
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("connection from 127.0.0.1 is not allowed by from=\"10.0.0.0/8\" (identity rule"),
        "{stderr}"
    );
    assert!(!identity.exists());
    let (out, identity) = b.login(&BOB, &[]);
    assert!(out.status.success(), "{}", text(&out).1);
    let shown = Command::new("ssh-keygen").arg("-Lf").arg(format!("{}-cert.pub", identity.display())).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("Critical Options: \n                source-address 127.0.0.0/8\n"), "{shown}");
    let (ssh, ports) = b.server.tunnel(&AwsBastion::key(&identity), &[("127.0.0.1", echo.addr.port())], &[]);
    assert_tunnel_works(&ssh, ports[0]);
}

#[test]
fn over_https_the_sts_certificate_is_verified_against_ssl_cert_file() {
    let echo = EchoServer::start();
    let dir = tempdir();
    let sts_tls = localhost_certificate(dir.path(), "sts");
    // The bastion trusts the stand-in's certificate: the login works over TLS.
    let trusted: &std::path::Path = &sts_tls.2;
    let b = AwsBastion::start_with(dir, &rules(&echo), &[], Some(&sts_tls), &[("SSL_CERT_FILE", trusted)]);
    assert!(b.server.proc.stderr().text().contains(&format!("proofs go to https://localhost:{}/ only", b.sts.port)));
    let (out, identity) = b.login(&ALICE, &[]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(identity.exists());
    assert_eq!(b.sts.requests().len(), 1);

    // Another CA only: the stand-in's certificate does not verify, and nothing is sent to it.
    let dir = tempdir();
    let sts_tls = localhost_certificate(dir.path(), "sts");
    let other = localhost_certificate(dir.path(), "other");
    let untrusted: &std::path::Path = &other.2;
    let b = AwsBastion::start_with(dir, &rules(&echo), &[], Some(&sts_tls), &[("SSL_CERT_FILE", untrusted)]);
    let (out, identity) = b.login(&ALICE, &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused: STS is unavailable:") && stderr.contains("TLS: invalid peer certificate"),
        "{stderr}"
    );
    assert!(!identity.exists());
    assert!(b.sts.requests().is_empty(), "a proof went out over an unverified connection");
}
