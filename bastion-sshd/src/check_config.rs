//! `bastion-sshd check-config`: load what the server would, say what was
//! found, list every problem, and fail if there is any.

use crate::cli::ServerArgs;
use crate::config::{Listen, Loaded};
use crate::policy::{DENIED_V4, DENIED_V6, PermitList};

/// Prints the report to stdout; returns whether the configuration is clean.
pub fn run(args: &ServerArgs) -> bool {
    let loaded = Loaded::load(args);
    let mut problems: Vec<String> = loaded.fatal_errors();
    problems.extend(loaded.key_problems.skipped.iter().map(|p| format!("{} {p} (line skipped)", p.source.what())));

    match &loaded.listen {
        Listen::Default => println!("listen: [::]:22 (default; 0.0.0.0:22 where IPv6 is off)"),
        Listen::Explicit(addrs) => {
            for addr in addrs {
                println!("listen: {addr}");
            }
        }
    }
    if loaded.host_keys.is_empty() && loaded.host_key_errors.is_empty() {
        println!("host key: none configured; an ephemeral key would be generated at every start (clients will warn)");
    }
    for key in &loaded.host_keys {
        println!("host key: {} from {}", key.describe(), key.source);
        println!("  known_hosts: {} {}", args.name, key.public_openssh());
    }
    let authorized = &loaded.keys.authorized;
    let cas = authorized.keys().iter().filter(|k| k.options.cert_authority).count();
    println!("authorized keys: {}", authorized.len() - cas);
    println!("certificate authorities: {cas}");
    println!("revoked keys: {}", loaded.keys.revoked.len());
    for key in authorized.keys() {
        let role = if key.options.cert_authority { "CA for user certificates: " } else { "" };
        println!("  {role}{} {} {} ({} line {})", key.fingerprint, key.key_type(), key.comment, key.source, key.line);
        for line in key.options.describe() {
            println!("    {line}");
        }
    }
    match (&loaded.user_ca, &loaded.sts) {
        (Some(ca), Some(sts)) => {
            println!("AWS logins (bastion login): on");
            println!("  user CA: {} from {}", ca.fingerprint, ca.source);
            println!("  proofs go to: {} (signed for region {}), and nowhere else", sts.url(), sts.region());
            println!("  certificates live at most {}", humantime::format_duration(args.max_certificate_validity));
        }
        (Some(_), None) => println!("AWS logins (bastion login): off, see the problems below"),
        (None, _) => println!("AWS logins (bastion login): off (no --user-ca-key)"),
    }
    let rules = &loaded.keys.rules;
    println!("AWS identity rules: {}", rules.len());
    for rule in rules.rules() {
        println!("  {} ({} line {})", rule.pattern.as_str(), rule.source, rule.line);
        for line in rule.describe(args.max_certificate_validity) {
            println!("    {line}");
        }
    }
    if loaded.user_ca.is_some() && rules.is_empty() {
        println!("  (none: nobody can log in with bastion login; give --aws-identity-rules)");
    }
    match &loaded.policy.global {
        PermitList::Any => println!("permit open: any host and port outside the denied ranges"),
        PermitList::Only(rules) => {
            println!("permit open: only these (denied ranges still need an entry naming them):");
            for rule in rules {
                println!("  {rule}");
            }
        }
    }
    let denied: Vec<&str> = DENIED_V4.iter().chain(DENIED_V6).map(|(net, _)| *net).collect();
    println!("denied ranges: {}", denied.join(", "));
    println!("connect timeout: {}", humantime::format_duration(args.connect_timeout));
    println!("login grace time: {}", humantime::format_duration(args.login_grace_time));
    if problems.is_empty() {
        println!("OK: no problems found");
        true
    } else {
        println!("{} problem(s):", problems.len());
        for p in &problems {
            println!("  {p}");
        }
        false
    }
}
