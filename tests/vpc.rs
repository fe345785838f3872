//! The tunnels a user of the bastion opens, end to end in "a VPC on one
//! machine" (`bastion_tests::vpc`: namespaces for a laptop, the bastion's
//! task and a private subnet): psql and pgbench through `ssh -L`, `ssh -J` to
//! a private sshd, curl through `ssh -D`, and the ECS credentials endpoint out
//! of every tunnel's reach.
//!
//! Needs root and: iproute2, openssh-client, openssh-server, postgresql
//! (initdb, pg_ctl, pgbench), postgresql-client, curl, python3, procps, util-linux.

use std::process::Command;

use bastion_tests::vpc::*;
use bastion_tests::*;

// --- clients -------------------------------------------------------------------

/// `psql -h HOST -p PORT -U app -d DB -Atc SQL`, with a bounded connect timeout.
fn psql(host: &str, port: u16, db: &str, sql: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.args(["-h", host, "-p", &port.to_string(), "-U", "app", "-d", db, "-Atc", sql]).env("PGCONNECT_TIMEOUT", "5");
    cmd
}

fn pgbench(port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new("pgbench");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "app"]).args(args).env("PGCONNECT_TIMEOUT", "20");
    cmd
}

// --- the tests ---------------------------------------------------------------

/// psql on the laptop cannot reach the database; through `ssh -L` via the
/// bastion, psql and pgbench work.
#[test]
fn the_database_is_out_of_the_laptops_reach_but_psql_and_pgbench_work_through_ssh_l() {
    require("psql", "postgresql-client");
    require("pgbench", "postgresql");
    let mut vpc = Vpc::build();
    vpc.postgres();
    let key = client_key(&vpc);
    let server = vpc.bastion(22, &[], &[&key]);

    let direct = run(vpc.on_client(&psql(PRIVATE_IP, 5432, "postgres", "select 1")));
    let said = text(&direct);
    assert!(!direct.status.success(), "psql reached the database without the bastion: {said}");
    assert!(
        said.contains("Network is unreachable") || said.contains("timeout expired"),
        "psql failed for another reason than no route: {said}"
    );
    eprintln!("psql from the laptop, directly: {}", said.trim());

    let port = 15432;
    let _ssh = vpc.tunnel(&server, &key, &[("-L", format!("127.0.0.1:{port}:db.internal:5432"))], &[port]);
    let out = run(vpc.on_client(&psql(
        "127.0.0.1",
        port,
        "postgres",
        "select 1 + 1, current_user, host(inet_client_addr())",
    )));
    assert!(out.status.success(), "psql through the tunnel failed: {}", text(&out));
    // The database sees the bastion's VPC-side address.
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("2|app|{BASTION_VPC_IP}"));
    server.wait_event("tunnel.opened", |e| {
        e["destination"] == "db.internal:5432" && e["resolved"] == format!("{PRIVATE_IP}:5432")
    });

    let out = run(vpc.on_client(&psql("127.0.0.1", port, "postgres", "create database bench")));
    assert!(out.status.success(), "create database: {}", text(&out));
    let out = run(vpc.on_client(&pgbench(port, &["-i", "-q", "-s", "1", "bench"])));
    assert!(out.status.success(), "pgbench -i through the tunnel failed: {}", text(&out));
    let out = run(vpc.on_client(&pgbench(port, &["-c", "4", "-j", "2", "-T", "3", "-S", "bench"])));
    let report = text(&out);
    assert!(out.status.success(), "pgbench through the tunnel failed: {report}");
    let tps: f64 = report
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's report:\n{report}"));
    assert!(tps > 0.0, "{report}");
    assert!(report.contains("number of failed transactions: 0"), "{report}");
    eprintln!("pgbench -c 4 -j 2 -T 3 -S through ssh -L via the bastion: tps = {tps:.1}");
}

/// `ssh -J bastion` reaches an sshd in the private subnet when
/// --permit-open allows its port 22, and is refused when it does not.
#[test]
fn ssh_j_reaches_a_private_sshd_only_when_permit_open_allows_port_22() {
    let mut vpc = Vpc::build();
    let key = client_key(&vpc);
    let private_known = vpc.private_sshd(&key);
    let allowing = vpc.bastion(22, &["--permit-open", &format!("{PRIVATE_IP}:22")], &[&key]);
    let denying = vpc.bastion(2222, &["--permit-open", &format!("{PRIVATE_IP}:5432")], &[&key]);

    // ProxyJump starts a second ssh that reads only the configuration file (-F is passed on).
    let known = vpc.dir.path().join("known_hosts.private");
    std::fs::write(&known, format!("{private_known}\n")).unwrap();
    let config = vpc.dir.path().join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host *\n  BatchMode yes\n  IdentitiesOnly yes\n  IdentityFile {}\n  UserKnownHostsFile {} {} {}\n  \
             StrictHostKeyChecking yes\n  ConnectTimeout 20\n",
            key.private.display(),
            allowing.known_hosts.display(),
            denying.known_hosts.display(),
            known.display()
        ),
    )
    .unwrap();
    let jump = |bastion: &str| {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(&config).args(["-J", bastion, &format!("root@{PRIVATE_IP}"), "echo ok"]);
        run(vpc.on_client(&cmd))
    };

    let out = jump(&format!("tunnel@{BASTION_PUBLIC_IP}"));
    assert!(out.status.success(), "ssh -J failed: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    allowing.wait_event("tunnel.opened", |e| e["destination"] == format!("{PRIVATE_IP}:22"));
    let sshd = vpc.sshd.as_ref().unwrap();
    let accepted = sshd.stderr().wait_for(READY, |l| l.contains("Accepted publickey for root"));
    let accepted = accepted.unwrap_or_else(|| panic!("the private sshd logged no login:\n{}", sshd.stderr().text()));
    assert!(accepted.contains(&format!("from {BASTION_VPC_IP} ")), "{accepted}");

    let out = jump(&format!("tunnel@{BASTION_PUBLIC_IP}:2222"));
    let said = text(&out);
    assert_eq!(out.status.code(), Some(255), "ssh -J through a bastion that does not permit port 22: {said}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ok"), "{said}");
    assert!(said.contains("administratively prohibited"), "{said}");
    assert!(said.contains("not in the bastion's permit list"), "{said}");
    eprintln!("ssh -J through a bastion without {PRIVATE_IP}:22 in --permit-open:\n{}", said.trim());
    let refused = denying.wait_event("tunnel.refused", |e| e["destination"] == format!("{PRIVATE_IP}:22"));
    assert!(refused["reason"].as_str().unwrap().contains("--permit-open"), "{refused}");
    assert!(denying.events("tunnel.opened").is_empty());
    // The private sshd saw the one connection that was allowed, and no other.
    let connections: Vec<String> = sshd.stderr().all().into_iter().filter(|l| l.contains("Connection from")).collect();
    assert_eq!(connections.len(), 1, "{connections:?}");
}

/// `ssh -D` and curl's SOCKS options reach the private HTTP service, by
/// name (resolved by the bastion) and by address.
#[test]
fn ssh_d_lets_curl_reach_the_private_web_service() {
    require("curl", "curl");
    let mut vpc = Vpc::build();
    vpc.web_server();
    let key = client_key(&vpc);
    let server = vpc.bastion(22, &[], &[&key]);

    let url = format!("http://{PRIVATE_IP}:8000/");
    let direct = run(vpc.on_client(&curl(&["--max-time", "5"], &url)));
    assert!(!direct.status.success(), "curl reached the web service without the bastion: {}", text(&direct));
    eprintln!("curl from the laptop, directly: {}", text(&direct).trim());

    let socks = 1080;
    let _ssh = vpc.tunnel(&server, &key, &[("-D", format!("127.0.0.1:{socks}"))], &[socks]);
    let proxy = format!("127.0.0.1:{socks}");
    for (option, url, destination) in [
        ("--socks5-hostname", "http://web.internal:8000/".to_string(), "web.internal:8000".to_string()),
        ("--socks5", url.clone(), format!("{PRIVATE_IP}:8000")),
    ] {
        let out = run(vpc.on_client(&curl(&[option, &proxy], &url)));
        assert!(out.status.success(), "curl {option} {url}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(WEB_MARKER), "{}", text(&out));
        let closed = server.wait_event("tunnel.closed", |e| e["destination"] == destination.as_str());
        assert_eq!(closed["resolved"], format!("{PRIVATE_IP}:8000"));
        assert!(closed["bytes_down"].as_u64().unwrap() > WEB_MARKER.len() as u64, "{closed}");
    }
}

/// 169.254.170.2 (the ECS credentials endpoint) answers the bastion's own
/// host, but no tunnel reaches it, however it is spelled.
#[test]
fn the_credentials_endpoint_answers_the_bastion_host_but_no_tunnel_reaches_it() {
    require("curl", "curl");
    let mut vpc = Vpc::build();
    vpc.metadata_server();
    let key = client_key(&vpc);
    let server = vpc.bastion(22, &[], &[&key]);

    // On the bastion's host, by address and by name: the credentials are there to be had.
    for host in [METADATA_IP, "ecs-credentials.internal"] {
        let out = run(vpc.on_bastion(&curl(&["-f"], &format!("http://{host}{CREDENTIALS_PATH}"))));
        assert!(out.status.success(), "curl in the bastion namespace, {host}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"AccessKeyId\""), "{}", text(&out));
    }
    assert_eq!(vpc.metadata_connections().len(), 2);

    // Through bastion-sshd (its default policy), from the laptop: -L with
    // every spelling, and -D with curl's SOCKS options.
    let spellings =
        [METADATA_IP, "[::ffff:169.254.170.2]", "2852039170", "0xa9.0xfe.0xaa.0x02", "ecs-credentials.internal"];
    let socks = 1080;
    let ports: Vec<u16> = (0..spellings.len() as u16).map(|i| 18000 + i).collect();
    let mut forwards: Vec<(&str, String)> =
        spellings.iter().zip(&ports).map(|(host, port)| ("-L", format!("127.0.0.1:{port}:{host}:80"))).collect();
    forwards.push(("-D", format!("127.0.0.1:{socks}")));
    let all_ports: Vec<u16> = ports.iter().copied().chain([socks]).collect();
    let ssh = vpc.tunnel(&server, &key, &forwards, &all_ports);

    let mut expected: Vec<String> = Vec::new();
    for (host, port) in spellings.iter().zip(&ports) {
        let out = run(vpc.on_client(&curl(&[], &format!("http://127.0.0.1:{port}{CREDENTIALS_PATH}"))));
        assert!(!out.status.success(), "-L to {host}:80 answered: {}", text(&out));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("AccessKeyId"), "{}", text(&out));
        expected.push(format!("{host}:80"));
    }
    let proxy = format!("127.0.0.1:{socks}");
    for (option, host, destination) in [
        ("--socks5", METADATA_IP, format!("{METADATA_IP}:80")),
        ("--socks5-hostname", "ecs-credentials.internal", "ecs-credentials.internal:80".to_string()),
        // curl sends this as a 16-byte IPv6 address (SOCKS5 ATYP 4), not as a name.
        ("--socks5-hostname", "[::ffff:169.254.170.2]", "[::ffff:169.254.170.2]:80".to_string()),
    ] {
        let out = run(vpc.on_client(&curl(&[option, &proxy], &format!("http://{host}{CREDENTIALS_PATH}"))));
        assert!(!out.status.success(), "-D, curl {option} {host}: {}", text(&out));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("AccessKeyId"), "{}", text(&out));
        expected.push(destination);
    }

    // What the user sees: ssh reports each refusal with the bastion's reason;
    // for a name (odd numeric spellings are names too), without what it resolved to.
    for destination in &expected {
        let line = ssh
            .stderr()
            .wait_for(READY, |l| l.contains("open failed") && l.contains(destination.as_str()))
            .unwrap_or_else(|| panic!("no refusal for {destination}; ssh said:\n{}", ssh.stderr().text()));
        assert!(line.contains("administratively prohibited"), "{line}");
        if destination.parse::<std::net::SocketAddr>().is_ok() {
            assert!(line.contains("denied range"), "{line}");
        } else {
            assert!(line.ends_with(&format!("{destination} is not permitted")), "{line}");
            assert!(!line.contains(METADATA_IP), "{line}");
        }
    }
    let shown: Vec<String> = ssh.stderr().all().into_iter().filter(|l| l.contains("open failed")).collect();
    eprintln!("ssh on the laptop:\n{}", shown.join("\n"));

    // And the audit log has one tunnel.refused for each, with the reason.
    for destination in &expected {
        server.wait_event("tunnel.refused", |e| e["destination"] == destination.as_str());
    }
    let refused = server.events("tunnel.refused");
    let mut logged: Vec<String> = refused.iter().map(|e| e["destination"].as_str().unwrap().to_string()).collect();
    logged.sort();
    expected.sort();
    assert_eq!(logged, expected);
    for event in &refused {
        let reason = event["reason"].as_str().unwrap();
        assert!(reason.contains("ECS task metadata") && reason.contains("169.254.0.0/16"), "{event}");
    }
    for name in refused.iter().filter(|e| e["destination"] == "ecs-credentials.internal:80") {
        assert!(name["reason"].as_str().unwrap().contains("resolves to 169.254.170.2"), "{name}");
    }
    assert!(server.events("tunnel.opened").is_empty() && server.events("tunnel.failed").is_empty());
    // The endpoint never heard from the bastion: only the two direct requests.
    assert_eq!(vpc.metadata_connections().len(), 2, "{:?}", vpc.metadata_connections());
}
