//! What runs in the VPC's namespaces: bastion-sshd, and the services the
//! tunnels lead to (PostgreSQL, a web server, OpenSSH's sshd, a fake ECS
//! credentials endpoint).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::*;
use crate::bastion_bin;

const SSHD: &str = "/usr/sbin/sshd";

/// The fake ECS credentials endpoint: answers every GET with credentials
/// JSON, and prints each accepted connection, so the test can count them.
const METADATA_SERVER: &str = r#"
import http.server, json, sys
BODY = json.dumps({
    "AccessKeyId": "ASIAFAKEFAKEFAKEFAKE",
    "SecretAccessKey": "fake/secret/never/valid/anywhere/000000",
    "Token": "fake-session-token",
    "Expiration": "2099-01-01T00:00:00Z",
    "RoleArn": "arn:aws:iam::123456789012:role/bastion-task",
}).encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
class Server(http.server.HTTPServer):
    def get_request(self):
        conn, peer = super().get_request()
        print("connection from", peer[0], flush=True)
        return conn, peer
server = Server((sys.argv[1], 80), Handler)
print("listening on", sys.argv[1], flush=True)
server.serve_forever()
"#;

impl Vpc {
    /// bastion-sshd in the bastion namespace on `BASTION_PUBLIC_IP:port`, with
    /// exactly the given flags (the destination policy is its default unless
    /// they say otherwise).
    pub fn bastion(&self, port: u16, flags: &[&str], keys: &[&ClientKey]) -> Server {
        self.bastion_on(&format!("{BASTION_PUBLIC_IP}:{port}"), flags, keys)
    }

    /// [`Vpc::bastion`] listening on `listen` (`0.0.0.0:22`, as in a task:
    /// then every address of the namespace answers). The [`Server`]'s address,
    /// known_hosts and destination are those of `BASTION_PUBLIC_IP`.
    pub fn bastion_on(&self, listen: &str, flags: &[&str], keys: &[&ClientKey]) -> Server {
        let listen_addr: std::net::SocketAddr = listen.parse().expect("--listen as IP:PORT");
        let authorized = self.dir.path().join(format!("authorized_keys.{}", unique()));
        std::fs::write(&authorized, keys.iter().map(|k| format!("{}\n", k.public_line)).collect::<String>()).unwrap();
        let mut cmd = Command::new(bastion_bin());
        cmd.args(["run", "--log-format", "json", "--listen", listen])
            .arg("--authorized-keys")
            .arg(&authorized)
            .args(flags);
        let mut wrapped = self.on_bastion(&cmd);
        // The server's configuration comes from the test alone, not the caller's shell.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("BASTION_") || var == "RUST_LOG" {
                wrapped.env_remove(var);
            }
        }
        let reach = listen_addr.ip().is_unspecified().then(|| {
            let public: std::net::IpAddr = BASTION_PUBLIC_IP.parse().expect("an address");
            std::net::SocketAddr::new(public, listen_addr.port())
        });
        Server::from_log(Proc::spawn(wrapped, Stdio::null()), self.dir.path(), reach)
    }

    /// A PostgreSQL cluster in the private namespace on PRIVATE_IP:5432 (the
    /// harness's `Postgres::start_on`, with pg_ctl run under `ip netns exec`).
    /// Trusts its own subnet, where the bastion's VPC side is.
    pub fn postgres(&mut self) {
        require("runuser", "util-linux");
        let bin = pg_bin();
        let pg_dir = self.dir.path().join("pg");
        std::fs::create_dir(&pg_dir).unwrap();
        // initdb refuses to run as root: the cluster belongs to `postgres`.
        let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&pg_dir).status().unwrap().success();
        assert!(ok, "chown {} to postgres failed (apt-get install postgresql creates the user)", pg_dir.display());
        let data = pg_dir.join("data");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "app", "--auth=trust", "--no-sync"])
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb failed: {}", text(&out));
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).unwrap();
        rules.push_str("host all all samenet trust\n");
        std::fs::write(&hba, rules).unwrap();
        self.pg_data = Some(data.clone());
        let mut pg_ctl = as_postgres(&bin.join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(&data)
            .arg("-w")
            .arg("-l")
            .arg(pg_dir.join("pg.log"))
            .arg("-o")
            .arg(format!("-p 5432 -k {} -c listen_addresses={PRIVATE_IP}", pg_dir.display()))
            .arg("start");
        let out = self.exec_in(&self.private_ns(), &pg_ctl).output().expect("pg_ctl");
        let log = std::fs::read_to_string(pg_dir.join("pg.log")).unwrap_or_default();
        assert!(out.status.success(), "pg_ctl start failed: {}\n{log}", text(&out));
    }

    /// `python3 -m http.server` on PRIVATE_IP:8000, serving a page with [`WEB_MARKER`].
    pub fn web_server(&mut self) {
        require("python3", "python3");
        let www = self.dir.path().join("www");
        std::fs::create_dir(&www).unwrap();
        std::fs::write(www.join("index.html"), format!("<html><body>{WEB_MARKER}</body></html>\n")).unwrap();
        let mut cmd = Command::new("python3");
        cmd.args(["-u", "-m", "http.server", "8000", "--bind", PRIVATE_IP, "--directory"]).arg(&www);
        let proc = Proc::spawn(self.exec_in(&self.private_ns(), &cmd), Stdio::null());
        // Printed after the socket listens.
        let ready = proc.stdout().wait_for(READY, |l| l.starts_with("Serving HTTP on"));
        assert!(ready.is_some(), "http.server did not start:\n{}\n{}", proc.stdout().text(), proc.stderr().text());
        self.services.push(proc);
    }

    /// The fake ECS credentials endpoint on 169.254.170.2:80 in the bastion namespace.
    pub fn metadata_server(&mut self) {
        require("python3", "python3");
        let mut cmd = Command::new("python3");
        cmd.args(["-u", "-c", METADATA_SERVER, METADATA_IP]);
        let proc = Proc::spawn(self.on_bastion(&cmd), Stdio::null());
        let ready = proc.stdout().wait_for(READY, |l| l.starts_with("listening on"));
        assert!(ready.is_some(), "credentials server did not start:\n{}", proc.stderr().text());
        self.metadata = Some(proc);
    }

    /// Connections the fake credentials endpoint has accepted so far.
    pub fn metadata_connections(&self) -> Vec<String> {
        let proc = self.metadata.as_ref().expect("metadata_server() first");
        proc.stdout().all().into_iter().filter(|l| l.starts_with("connection from")).collect()
    }

    /// OpenSSH's sshd on PRIVATE_IP:22 with its own host key, letting `key`
    /// log in as root; returns its known_hosts line.
    pub fn private_sshd(&mut self, key: &ClientKey) -> String {
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is not installed: apt-get install -y --no-install-recommends openssh-server"
        );
        let dir = self.dir.path().join("sshd");
        std::fs::create_dir(&dir).unwrap();
        let host_key = dir.join("ssh_host_ed25519_key");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "private-sshd", "-f"])
            .arg(&host_key)
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-keygen: {}", text(&out));
        let host_public = std::fs::read_to_string(dir.join("ssh_host_ed25519_key.pub")).unwrap();
        let host_public = host_public.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        std::fs::write(dir.join("authorized_keys"), format!("{}\n", key.public_line)).unwrap();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port 22\nListenAddress {PRIVATE_IP}\nHostKey {}\nPidFile none\nAuthorizedKeysFile {}\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nPrintMotd no\nPrintLastLog no\nLogLevel VERBOSE\n",
                host_key.display(),
                dir.join("authorized_keys").display()
            ),
        )
        .unwrap();
        // sshd's privilege separation directory (created by the service unit on
        // a booted system; left in place, as the package expects it).
        std::fs::create_dir_all("/run/sshd").unwrap();
        let mut cmd = Command::new(SSHD);
        cmd.args(["-D", "-e", "-f"]).arg(&config);
        let proc = Proc::spawn(self.exec_in(&self.private_ns(), &cmd), Stdio::null());
        let ready = proc.stderr().wait_for(READY, |l| l.contains(&format!("Server listening on {PRIVATE_IP} port 22")));
        assert!(ready.is_some(), "sshd did not start:\n{}", proc.stderr().text());
        self.sshd = Some(proc);
        format!("{PRIVATE_IP} {host_public}")
    }
}

/// The newest PostgreSQL server's bin directory.
pub(super) fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().expect("PostgreSQL server is not installed: apt-get install postgresql")
}

pub(super) fn as_postgres(tool: &Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(tool);
    cmd
}

/// Stops the cluster with pg_ctl: so stopped, PostgreSQL removes its shared
/// memory; killed, it would not. Never panics (runs while a test unwinds).
pub(super) fn stop_postgres(data: &Path) {
    let _ = as_postgres(&pg_bin().join("pg_ctl"))
        .arg("-D")
        .arg(data)
        .args(["-m", "immediate", "-w", "-t", "20", "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
