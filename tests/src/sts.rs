//! AWS logins end to end: the STS stand-in (`tests/sts_standin.py`), a
//! bastion with a user CA and identity rules, and the real `bastion` binary.
//!
//! STS is faked because it cannot run here, and moto's STS does not verify
//! signatures: the stand-in verifies SigV4 exactly, with test secrets, and
//! answers GetCallerIdentity as the real service does.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use crate::{ClientKey, Proc, READY, Server, ServerBuilder, tests_dir, unique};

/// The account every test identity belongs to.
pub const ACCOUNT: &str = "111122223333";

/// An AWS identity the stand-in knows.
#[derive(Debug, Clone)]
pub struct Identity {
    pub access_key_id: &'static str,
    pub secret: &'static str,
    pub session_token: Option<&'static str>,
    pub arn: &'static str,
}

/// An IAM user: long-term keys, no session token.
pub const ALICE: Identity = Identity {
    access_key_id: "AKIAALICEEXAMPLE0001",
    secret: "alice-secret-key-for-tests-only-00000000",
    session_token: None,
    arn: "arn:aws:iam::111122223333:user/alice",
};

/// An IAM Identity Center user: an assumed role with a session token.
pub const BOB: Identity = Identity {
    access_key_id: "ASIABOBEXAMPLE000002",
    secret: "bob-secret-key-for-tests-only-0000000000",
    session_token: Some("IQoJb3JpZ2luX2VjEBob-session-token-for-tests"),
    arn: "arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_DBAccess_0a1b2c3d/bob@example.com",
};

/// An IAM user no rule names.
pub const CAROL: Identity = Identity {
    access_key_id: "AKIACAROLEXAMPLE0003",
    secret: "carol-secret-key-for-tests-only-0000000",
    session_token: None,
    arn: "arn:aws:iam::111122223333:user/carol",
};

/// The stand-in, serving until dropped.
pub struct StsStandin {
    pub proc: Proc,
    pub port: u16,
    log: PathBuf,
    /// Served over HTTPS (with this certificate, for `localhost`), as the real endpoint is.
    pub https: bool,
}

/// A certificate for `localhost` and the CA that signed it, made with `openssl`:
/// (certificate, key, CA certificate). webpki accepts no self-signed end-entity certificate.
pub fn localhost_certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    crate::require("openssl", "openssl");
    let file = |ext: &str| dir.join(format!("{name}.{ext}"));
    let openssl = |args: &[&str], paths: &[(&str, PathBuf)]| {
        let mut cmd = Command::new("openssl");
        cmd.args(args);
        for (flag, path) in paths {
            cmd.arg(flag).arg(path);
        }
        let out = cmd.output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(
        &[&["req", "-x509", "-days", "1", "-subj", &format!("/CN={name} test CA")][..], &ec].concat(),
        &[("-keyout", file("ca.key")), ("-out", file("ca.crt"))],
    );
    openssl(
        &[&["req", "-subj", "/CN=localhost"][..], &ec].concat(),
        &[("-keyout", file("key")), ("-out", file("csr"))],
    );
    std::fs::write(file("ext"), "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl(
        &["x509", "-req", "-days", "1", "-CAcreateserial"],
        &[
            ("-in", file("csr")),
            ("-CA", file("ca.crt")),
            ("-CAkey", file("ca.key")),
            ("-extfile", file("ext")),
            ("-out", file("crt")),
        ],
    );
    (file("crt"), file("key"), file("ca.crt"))
}

impl StsStandin {
    pub fn start(dir: &Path, identities: &[&Identity]) -> Self {
        Self::start_with(dir, identities, None)
    }

    /// With `tls` = (certificate, key), over HTTPS.
    pub fn start_with(dir: &Path, identities: &[&Identity], tls: Option<&(PathBuf, PathBuf, PathBuf)>) -> Self {
        let file = dir.join(format!("sts-identities.{}.json", unique()));
        let list: Vec<Value> = identities
            .iter()
            .map(|i| {
                json!({"access_key_id": i.access_key_id, "secret_access_key": i.secret,
                    "session_token": i.session_token, "arn": i.arn, "account": ACCOUNT,
                    "user_id": format!("AIDA{}", i.access_key_id)})
            })
            .collect();
        std::fs::write(&file, serde_json::to_string(&list).unwrap()).unwrap();
        let log = dir.join(format!("sts-requests.{}.log", unique()));
        let mut cmd = Command::new(python());
        cmd.arg(tests_dir().join("sts_standin.py")).arg("--identities").arg(&file).arg("--log").arg(&log);
        if let Some((cert, key, _)) = tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        let proc = Proc::spawn(cmd, Stdio::null());
        let line = proc
            .stdout()
            .wait_for(READY, |l| l.starts_with("listening on "))
            .unwrap_or_else(|| panic!("the STS stand-in did not start:\n{}", proc.stderr().text()));
        let port = line.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        Self { proc, port, log, https: tls.is_some() }
    }

    /// `127.0.0.1:PORT` (`localhost:PORT` over HTTPS): the host proofs are signed for.
    pub fn host(&self) -> String {
        if self.https { format!("localhost:{}", self.port) } else { format!("127.0.0.1:{}", self.port) }
    }

    pub fn endpoint(&self) -> String {
        if self.https { format!("https://{}", self.host()) } else { format!("http://{}", self.host()) }
    }

    /// Every request the stand-in received so far.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("stand-in log line"))
            .collect()
    }
}

/// The Python with asyncssh: the test venv's, first on PATH in the README's test command.
pub fn python() -> PathBuf {
    PathBuf::from("python3")
}

/// The `bastion` binary, next to `bastion-sshd`.
pub fn bastion_login_bin() -> PathBuf {
    let path = crate::bastion_bin().with_file_name("bastion");
    assert!(path.exists(), "{} is missing: build it with `cargo build -p bastion`", path.display());
    path
}

/// A bastion with AWS logins on, and its stand-in.
pub struct AwsBastion {
    pub dir: tempfile::TempDir,
    pub sts: StsStandin,
    pub server: Server,
    pub rules: PathBuf,
    pub ca: ClientKey,
}

impl AwsBastion {
    /// `rules` is the identity rules text; `extra` more server flags.
    pub fn start(rules: &str, extra: &[&str]) -> Self {
        Self::start_with(crate::tempdir(), rules, extra, None, &[])
    }

    /// With an HTTPS stand-in (`tls`, see [`localhost_certificate`]) and more server environment.
    pub fn start_with(
        dir: tempfile::TempDir,
        rules: &str,
        extra: &[&str],
        tls: Option<&(PathBuf, PathBuf, PathBuf)>,
        env: &[(&str, &Path)],
    ) -> Self {
        let sts = StsStandin::start_with(dir.path(), &[&ALICE, &BOB, &CAROL], tls);
        let ca = ClientKey::generate(dir.path(), "user_ca", "ed25519", None);
        let path = dir.path().join("identity_rules");
        std::fs::write(&path, rules).unwrap();
        let server = Self::server_with(dir.path(), &sts, &ca, &path, extra, env);
        Self { dir, sts, server, rules: path, ca }
    }

    /// Another bastion with the same CA and rules (another task, another deployment).
    pub fn server(dir: &Path, sts: &StsStandin, ca: &ClientKey, rules: &Path, extra: &[&str]) -> Server {
        Self::server_with(dir, sts, ca, rules, extra, &[])
    }

    fn server_with(
        dir: &Path,
        sts: &StsStandin,
        ca: &ClientKey,
        rules: &Path,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> Server {
        let host_key = dir.join(format!("host_key.{}", unique()));
        let out = Command::new(crate::bastion_bin()).arg("keygen").arg("--out").arg(&host_key).output().unwrap();
        assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
        let mut builder = ServerBuilder::new(dir)
            .arg("--host-key")
            .arg(&host_key)
            .arg("--user-ca-key")
            .arg(&ca.private)
            .arg("--aws-identity-rules")
            .arg(rules)
            .args(["--sts-endpoint", &sts.endpoint(), "--sts-region", "us-east-1"])
            .args(extra);
        if !extra.contains(&"--name") {
            builder = builder.args(["--name", "127.0.0.1"]);
        }
        for (name, value) in env {
            builder = builder.env(name, value);
        }
        builder.start()
    }

    /// `bastion login` as `who`, writing the key to a new file in the test's directory.
    pub fn login(&self, who: &Identity, extra: &[&str]) -> (Output, PathBuf) {
        let identity = self.dir.path().join(format!("id_{}", unique()));
        let mut cmd = self.login_command(&self.server, &self.server.known_hosts);
        credentials(&mut cmd, who);
        cmd.arg("--identity-file").arg(&identity).args(extra).arg(self.server.addr.ip().to_string());
        (cmd.output().expect("run bastion login"), identity)
    }

    /// `bastion login -p PORT --known-hosts FILE`, with an environment that
    /// holds no AWS credentials and reads no AWS configuration.
    pub fn login_command(&self, server: &Server, known_hosts: &Path) -> Command {
        let mut cmd = Command::new(bastion_login_bin());
        for (var, _) in std::env::vars_os() {
            let name = var.to_string_lossy();
            if name.starts_with("AWS_") || name.starts_with("BASTION_") || name == "SSH_AUTH_SOCK" {
                cmd.env_remove(var);
            }
        }
        cmd.env("HOME", self.dir.path())
            .env("AWS_CONFIG_FILE", self.dir.path().join("no-aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.dir.path().join("no-aws-credentials"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_REGION", "us-east-1")
            .env("BASTION_STS_HOST", self.sts.host())
            .stdin(Stdio::null())
            .args(["login", "-p", &server.addr.port().to_string(), "--known-hosts"])
            .arg(known_hosts);
        cmd
    }

    /// The key `bastion login` wrote, as a client key for the ssh helpers.
    pub fn key(identity: &Path) -> ClientKey {
        ClientKey { private: identity.to_path_buf(), public_line: String::new() }
    }
}

/// Puts `who`'s credentials in the environment, as `aws configure export-credentials` would.
pub fn credentials(cmd: &mut Command, who: &Identity) {
    cmd.env("AWS_ACCESS_KEY_ID", who.access_key_id).env("AWS_SECRET_ACCESS_KEY", who.secret);
    if let Some(token) = who.session_token {
        cmd.env("AWS_SESSION_TOKEN", token);
    }
}

/// Runs `tests/aws_login_client.py` (asyncssh): proofs the real client never
/// sends (expired, replayed, bound elsewhere). Returns the outcome it was sent.
pub fn hostile_login(bastion: &AwsBastion, server: &Server, who: &Identity, args: &[&str]) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(tests_dir().join("aws_login_client.py"))
        .args(["--host", "127.0.0.1", "--port", &server.addr.port().to_string(), "--bastion-name", "127.0.0.1"])
        .args(["--access-key-id", who.access_key_id, "--secret-access-key", who.secret]);
    if let Some(token) = who.session_token {
        cmd.args(["--session-token", token]);
    }
    let _ = bastion;
    let out = cmd.args(args).stdin(Stdio::null()).output().expect("run aws_login_client.py");
    assert!(
        out.status.success(),
        "aws_login_client.py got no outcome: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("outcome: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}
