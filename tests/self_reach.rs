//! No tunnel reaches the bastion itself. In "a VPC on one machine"
//! (`bastion_tests::vpc`), a service listens on 0.0.0.0 inside the bastion's
//! namespace, as anything in a task's network namespace may (a sidecar, a
//! debug port, bastion-sshd's own port 22); it answers on every address of the
//! task, not only on loopback. `ssh -L` to those addresses, `ssh -J` back to
//! the bastion's own port 22, and an address added to an interface while the
//! server runs are refused with the default policy and with wildcards and
//! ranges; only a `--permit-open` entry naming the exact address opens one.
//!
//! Needs root and: iproute2, openssh-client, curl, python3, procps.

use std::process::{Command, Stdio};

use bastion_tests::vpc::*;
use bastion_tests::*;

/// An HTTP service on 0.0.0.0:PORT that prints each accepted connection (so
/// the test sees one that carried no request too) and answers with [`SELF_MARKER`].
const SELF_SERVER: &str = r#"
import http.server, sys
BODY = sys.argv[2].encode() + b"\n"
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *args):
        pass
class Server(http.server.HTTPServer):
    def get_request(self):
        conn, peer = super().get_request()
        print("connection from", peer[0], flush=True)
        return conn, peer
server = Server(("0.0.0.0", int(sys.argv[1])), Handler)
print("listening", flush=True)
server.serve_forever()
"#;

/// What the service on the bastion's own host answers.
const SELF_MARKER: &str = "the bastion itself: reached";
/// The port of that service, and of the private web service.
const PORT: u16 = 8000;
/// How bastion-sshd refuses a literal own address (after "HOST:PORT ").
const OWN: &str = "is an address of the bastion itself";

/// [`SELF_SERVER`] in the bastion's namespace on 0.0.0.0:`port`.
fn listener_on_the_bastion(vpc: &Vpc, port: u16) -> Proc {
    require("python3", "python3");
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", SELF_SERVER, &port.to_string(), SELF_MARKER]);
    let proc = Proc::spawn(vpc.on_bastion(&cmd), Stdio::null());
    let ready = proc.stdout().wait_for(READY, |l| l == "listening");
    assert!(ready.is_some(), "the listener did not start:\n{}", proc.stderr().text());
    proc
}

/// The connections [`SELF_SERVER`] has accepted so far.
fn connections(listener: &Proc) -> Vec<String> {
    listener.stdout().all().into_iter().filter(|l| l.starts_with("connection from")).collect()
}

/// On the bastion's own host (not through bastion-sshd), `addr:PORT` answers:
/// what the tunnels are refused is there to be had.
fn answers_on_the_bastion_host(vpc: &Vpc, addr: &str) {
    let out = run(vpc.on_bastion(&curl(&["-f"], &format!("http://{addr}:{PORT}/"))));
    assert!(out.status.success(), "curl in the bastion namespace, {addr}: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(SELF_MARKER), "{}", text(&out));
}

/// `ssh -L` from the laptop, one forward per host (to `host:PORT`), on local
/// ports 18000, 18001, …; returns ssh and the ports.
fn forwards(vpc: &Vpc, server: &Server, key: &ClientKey, hosts: &[&str]) -> (Proc, Vec<u16>) {
    let ports: Vec<u16> = (0..hosts.len() as u16).map(|i| 18000 + i).collect();
    let specs: Vec<(&str, String)> =
        hosts.iter().zip(&ports).map(|(host, port)| ("-L", format!("127.0.0.1:{port}:{host}:{PORT}"))).collect();
    (vpc.tunnel(server, key, &specs, &ports), ports)
}

/// curl through the forward on local `port`: the body, or None if it failed.
fn fetch(vpc: &Vpc, port: u16) -> Option<String> {
    let out = run(vpc.on_client(&curl(&[], &format!("http://127.0.0.1:{port}/"))));
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// The "open failed" line ssh printed for `destination`.
fn refusal(ssh: &Proc, destination: &str) -> String {
    ssh.stderr()
        .wait_for(READY, |l| l.contains("open failed") && l.contains(destination))
        .unwrap_or_else(|| panic!("no refusal for {destination}; ssh said:\n{}", ssh.stderr().text()))
}

/// With the default policy, `ssh -L` to the bastion's own addresses, in any
/// spelling and by name, is refused, while the same tunnel to the private
/// host works; the listener never hears from the bastion.
#[test]
fn a_listener_on_0_0_0_0_in_the_bastions_namespace_is_out_of_every_tunnels_reach() {
    require("curl", "curl");
    let mut vpc = Vpc::build();
    vpc.web_server();
    let listener = listener_on_the_bastion(&vpc, PORT);
    let key = client_key(&vpc);
    let server = vpc.bastion(22, &[], &[&key]);
    for addr in [BASTION_VPC_IP, BASTION_PUBLIC_IP] {
        answers_on_the_bastion_host(&vpc, addr);
    }
    assert_eq!(connections(&listener).len(), 2);

    let own = [BASTION_VPC_IP, BASTION_PUBLIC_IP, "[::ffff:10.213.2.1]", "bastion.internal"];
    let hosts: Vec<&str> = own.iter().copied().chain([PRIVATE_IP]).collect();
    let (ssh, ports) = forwards(&vpc, &server, &key, &hosts);
    let body = fetch(&vpc, ports[own.len()]).unwrap_or_else(|| panic!("the private host: {}", ssh.stderr().text()));
    assert!(body.contains(WEB_MARKER), "{body}");
    for (host, port) in own.iter().zip(&ports) {
        let body = fetch(&vpc, *port);
        assert!(body.is_none(), "-L to {host}:{PORT} reached the bastion itself: {body:?}");
    }

    // What the user sees: a literal address is said to be the bastion's; a
    // name is only "not permitted", without what it resolved to.
    for host in &own[..3] {
        let line = refusal(&ssh, &format!("{host}:{PORT}"));
        assert!(line.contains("administratively prohibited") && line.contains(OWN), "{line}");
    }
    let line = refusal(&ssh, "bastion.internal");
    assert!(line.ends_with(&format!("bastion.internal:{PORT} is not permitted")), "{line}");
    assert!(!line.contains(BASTION_VPC_IP), "{line}");
    eprintln!(
        "ssh on the laptop:\n{}",
        ssh.stderr().all().into_iter().filter(|l| l.contains("open failed")).collect::<Vec<_>>().join("\n")
    );

    // The audit log: one tunnel.refused each, the name's with the detail.
    for host in &own {
        let refused = server.wait_event("tunnel.refused", |e| e["destination"] == format!("{host}:{PORT}"));
        assert!(refused["reason"].as_str().unwrap_or("").contains("an address of the bastion itself"), "{refused}");
    }
    let named = server.wait_event("tunnel.refused", |e| e["destination"] == format!("bastion.internal:{PORT}"));
    assert!(named["reason"].as_str().unwrap_or("").contains(&format!("resolves to {BASTION_VPC_IP}")), "{named}");
    assert_eq!(named["told_client"], format!("bastion.internal:{PORT} is not permitted"), "{named}");
    let opened = server.events("tunnel.opened");
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0]["destination"], format!("{PRIVATE_IP}:{PORT}"));
    assert_eq!(connections(&listener).len(), 2, "{:?}", connections(&listener));
}

/// bastion-sshd listens on 0.0.0.0:22, as in a task: `ssh -J` through it to
/// its own address would log in again with the bastion's address as the
/// source (which `from="10.0.0.0/8"` accepts). Refused.
#[test]
fn ssh_j_back_to_the_bastions_own_address_is_refused() {
    let vpc = Vpc::build();
    let key = client_key(&vpc);
    let server = vpc.bastion_on("0.0.0.0:22", &[], &[&key]);
    // ProxyJump's second ssh reads only the configuration file; it pins the
    // bastion's host key under both of its addresses.
    let known = vpc.dir.path().join("known_hosts.both");
    let pinned: String =
        [BASTION_PUBLIC_IP, BASTION_VPC_IP].iter().map(|a| format!("{a} {}\n", server.host_public_key)).collect();
    std::fs::write(&known, pinned).expect("writing known_hosts");
    let config = vpc.dir.path().join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host *\n  BatchMode yes\n  IdentitiesOnly yes\n  IdentityFile {}\n  UserKnownHostsFile {}\n  \
             StrictHostKeyChecking yes\n  ConnectTimeout 20\n",
            key.private.display(),
            known.display()
        ),
    )
    .expect("writing ssh_config");

    for own in [BASTION_VPC_IP, BASTION_PUBLIC_IP] {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(&config);
        if own == BASTION_PUBLIC_IP {
            // ProxyJump to the jump host itself is "jumphost loop" to ssh;
            // what -J runs, `ssh -W`, is not.
            let jump = format!("ssh -F {} -W %h:%p tunnel@{BASTION_PUBLIC_IP}", config.display());
            cmd.arg("-o").arg(format!("ProxyCommand={jump}"));
        } else {
            cmd.args(["-J", &format!("tunnel@{BASTION_PUBLIC_IP}")]);
        }
        cmd.arg(format!("tunnel@{own}"));
        let out = run(vpc.on_client(cmd.arg("true")));
        let said = text(&out);
        assert_eq!(out.status.code(), Some(255), "ssh -J back to {own}: {said}");
        assert!(said.contains("administratively prohibited") && said.contains(&format!("{own}:22 {OWN}")), "{said}");
        eprintln!("ssh through tunnel@{BASTION_PUBLIC_IP} to tunnel@{own}:\n{}", said.trim());
        let refused = server.wait_event("tunnel.refused", |e| e["destination"] == format!("{own}:22"));
        assert!(refused["reason"].as_str().unwrap_or("").contains("an address of the bastion itself"), "{refused}");
    }
    // Two logins, both from the laptop: none came back from the bastion's own address.
    let accepted = server.events("connection.accepted");
    let peers: Vec<&str> = accepted.iter().map(|e| e["peer"].as_str().unwrap_or("")).collect();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(peers.iter().all(|p| p.starts_with(&format!("{CLIENT_IP}:"))), "{peers:?}");
    assert!(server.events("tunnel.opened").is_empty());
}

/// An address added to the bastion's interface while the server runs is one
/// of its own from then on: the server reads them at every decision.
#[test]
fn an_address_added_while_the_server_runs_is_refused_too() {
    require("curl", "curl");
    let vpc = Vpc::build();
    let listener = listener_on_the_bastion(&vpc, PORT);
    let key = client_key(&vpc);
    let server = vpc.bastion(22, &[], &[&key]);
    let added = "10.213.2.99";
    ip(&["-n", &vpc.bastion_ns(), "addr", "add", &format!("{added}/24"), "dev", "vpc0"]);
    answers_on_the_bastion_host(&vpc, added);

    let (ssh, ports) = forwards(&vpc, &server, &key, &[added]);
    let body = fetch(&vpc, ports[0]);
    assert!(body.is_none(), "-L to {added}:{PORT}, added after the start, reached the bastion itself: {body:?}");
    let line = refusal(&ssh, &format!("{added}:{PORT}"));
    assert!(line.contains(OWN), "{line}");
    server.wait_event("tunnel.refused", |e| e["destination"] == format!("{added}:{PORT}"));
    assert_eq!(connections(&listener).len(), 1, "{:?}", connections(&listener));
}

/// `--permit-open OWN_IP:PORT` opens that address on that port; a range that
/// contains the bastion's other address does not open it, nor another port.
#[test]
fn only_an_exact_permit_open_entry_opens_an_own_address() {
    require("curl", "curl");
    let mut vpc = Vpc::build();
    vpc.web_server();
    let listener = listener_on_the_bastion(&vpc, PORT);
    let key = client_key(&vpc);
    let exact = format!("{BASTION_VPC_IP}:{PORT}");
    let server = vpc.bastion(22, &["--permit-open", &format!("{exact},10.213.0.0/16:*")], &[&key]);

    let (ssh, ports) = forwards(&vpc, &server, &key, &[BASTION_VPC_IP, BASTION_PUBLIC_IP, PRIVATE_IP]);
    let body = fetch(&vpc, ports[0]).unwrap_or_else(|| panic!("{exact}: {}", ssh.stderr().text()));
    assert!(body.contains(SELF_MARKER), "{body}");
    server.wait_event("tunnel.opened", |e| e["destination"] == exact.as_str());
    assert_eq!(connections(&listener), [format!("connection from {BASTION_VPC_IP}")]);
    let body = fetch(&vpc, ports[2]).unwrap_or_else(|| panic!("the private host: {}", ssh.stderr().text()));
    assert!(body.contains(WEB_MARKER), "{body}");

    let body = fetch(&vpc, ports[1]);
    assert!(body.is_none(), "10.213.0.0/16:* opened {BASTION_PUBLIC_IP}:{PORT}: {body:?}");
    assert!(refusal(&ssh, &format!("{BASTION_PUBLIC_IP}:{PORT}")).contains(OWN));
    assert_eq!(connections(&listener).len(), 1, "{:?}", connections(&listener));
    drop(ssh);

    // Another port of the permitted address: refused as the bastion's, not tried.
    let other =
        vpc.tunnel(&server, &key, &[("-L", format!("127.0.0.1:18010:{BASTION_VPC_IP}:{}", PORT + 1))], &[18010]);
    assert!(fetch(&vpc, 18010).is_none());
    assert!(refusal(&other, &format!("{BASTION_VPC_IP}:{}", PORT + 1)).contains(OWN));
    server.wait_event("tunnel.refused", |e| e["destination"] == format!("{BASTION_VPC_IP}:{}", PORT + 1));
    assert!(server.events("tunnel.failed").is_empty(), "{:?}", server.events("tunnel.failed"));
}
