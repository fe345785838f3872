//! `Policy::decide` without a network: a table stands in for DNS.

use super::*;
use std::collections::HashMap;

/// A resolver backed by a table, like /etc/hosts.
struct Table(HashMap<&'static str, Vec<IpAddr>>);

impl Resolve for Table {
    async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, String> {
        self.0
            .get(target.host.trim_end_matches('.').to_ascii_lowercase().as_str())
            .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, target.port)).collect())
            .ok_or_else(|| format!("cannot resolve {}: not found", target.host))
    }
}

fn table() -> Table {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    Table(HashMap::from([
        ("db.internal", vec![ip("10.0.3.7")]),
        ("localhost", vec![ip("127.0.0.1"), ip("::1")]),
        ("rebind.example", vec![ip("10.0.3.7"), ip("169.254.170.2")]),
        ("metadata", vec![ip("169.254.170.2")]),
        ("127.1", vec![ip("127.0.0.1")]),
        ("0x7f.1", vec![ip("127.0.0.1")]),
        ("2130706433", vec![ip("127.0.0.1")]),
        ("dual.internal", vec![ip("10.0.3.7"), ip("fd12::7")]),
        ("self.internal", vec![ip("10.0.1.5")]),
        ("half-self.internal", vec![ip("10.0.3.7"), ip("10.0.1.5")]),
    ]))
}

/// The bastion's own addresses in these tests, as a task has: loopback, 10.0.1.5, fd12::5.
fn own() -> LocalAddresses {
    LocalAddresses::new(["127.0.0.1", "::1", "10.0.1.5", "fd12::5"].map(|s| s.parse().unwrap()))
}

fn policy(list: &str) -> Policy {
    Policy { global: PermitList::parse_list(list).unwrap() }
}

fn decide(policy: &Policy, rights: &KeyRights, host: &str, port: u32) -> Decision {
    decide_with(policy, rights, host, port, &own())
}

fn decide_with(policy: &Policy, rights: &KeyRights, host: &str, port: u32, own: &LocalAddresses) -> Decision {
    let target = Target::parse(host, port).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(policy.decide(rights, &target, &table(), own))
}

fn allowed(policy: &Policy, host: &str, port: u32) -> Option<Vec<String>> {
    match decide(policy, &KeyRights::default(), host, port) {
        Decision::Allow(addrs) => Some(addrs.iter().map(|a| a.to_string()).collect()),
        _ => None,
    }
}

#[test]
fn targets_are_validated() {
    assert_eq!(Target::parse("db.internal", 5432).unwrap().to_string(), "db.internal:5432");
    assert_eq!(Target::parse("::1", 22).unwrap().to_string(), "[::1]:22");
    assert_eq!(Target::parse("[::1]", 22).unwrap().host, "::1");
    assert!(Target::parse("", 22).unwrap_err().contains("empty"));
    assert!(Target::parse("db", 0).unwrap_err().contains("not in 1-65535"));
    assert!(Target::parse("db", 70000).unwrap_err().contains("not in 1-65535"));
    assert!(Target::parse("db\nx", 22).is_err());
    assert!(Target::parse(&"a".repeat(300), 22).is_err());
}

#[test]
fn default_allows_private_addresses_and_denies_the_special_ranges() {
    let p = Policy::default();
    assert_eq!(allowed(&p, "db.internal", 5432), Some(vec!["10.0.3.7:5432".into()]));
    assert_eq!(allowed(&p, "10.0.3.7", 5432), Some(vec!["10.0.3.7:5432".into()]));
    for host in [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "0.0.0.0",
        "::",
        "169.254.170.2",
        "169.254.169.254",
        "fe80::1",
        "fd00:ec2::254",
        "224.0.0.1",
        "ff02::1",
        "255.255.255.255",
        "::ffff:127.0.0.1",
        "[::ffff:127.0.0.1]",
        "::ffff:169.254.170.2",
        "::127.0.0.1",
        "64:ff9b::a9fe:aa02",
        "localhost",
        "metadata",
        "127.1",
        "0x7f.1",
        "2130706433",
    ] {
        match decide(&p, &KeyRights::default(), host, 80) {
            Decision::Deny(reason) => assert!(reason.contains("denied range"), "{host}: {reason}"),
            // A name: the client is told only that it is refused, the log why.
            Decision::Withheld { reason, detail } => {
                assert_eq!(reason, format!("{host}:80 is not permitted"));
                assert!(detail.contains("denied range"), "{host}: {detail}");
            }
            other => panic!("{host} was not denied: {other:?}"),
        }
    }
}

#[test]
fn one_denied_address_refuses_the_name() {
    let p = policy("rebind.example:443");
    match decide(&p, &KeyRights::default(), "rebind.example", 443) {
        Decision::Withheld { reason, detail } => {
            assert_eq!(reason, "rebind.example:443 is not permitted", "no resolved address for the client");
            assert!(detail.contains("resolves to 169.254.170.2"), "{detail}");
            assert!(detail.contains("link-local"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wildcards_and_wide_ranges_never_open_denied_ranges() {
    for list in ["*:80", "*:*", "0.0.0.0/0:80", "127.0.0.0/7:80", "[::/0]:80", "localhost:80"] {
        let p = policy(list);
        assert_eq!(allowed(&p, "127.0.0.1", 80), None, "{list}");
        assert_eq!(allowed(&p, "localhost", 80), None, "{list}");
        assert_eq!(allowed(&p, "::1", 80), None, "{list}");
    }
}

#[test]
fn explicit_entries_open_denied_addresses() {
    assert_eq!(allowed(&policy("127.0.0.1:5432"), "127.0.0.1", 5432), Some(vec!["127.0.0.1:5432".into()]));
    assert_eq!(allowed(&policy("127.0.0.1:5432"), "127.0.0.1", 5433), None);
    assert_eq!(allowed(&policy("127.0.0.1:*"), "127.0.0.1", 9), Some(vec!["127.0.0.1:9".into()]));
    assert_eq!(allowed(&policy("127.0.0.0/8:80"), "127.1.2.3", 80), Some(vec!["127.1.2.3:80".into()]));
    assert_eq!(allowed(&policy("[::1]:22"), "::1", 22), Some(vec!["[::1]:22".into()]));
    // The IPv4-mapped form of an explicitly permitted address is that address.
    assert_eq!(allowed(&policy("127.0.0.1:22"), "::ffff:127.0.0.1", 22), Some(vec!["127.0.0.1:22".into()]));
    // An odd spelling resolves to the permitted address: allowed, as the address it is.
    assert_eq!(allowed(&policy("127.0.0.1:22"), "127.1", 22), Some(vec!["127.0.0.1:22".into()]));
    // Permitting 169.254.170.2 does not permit IMDS.
    assert_eq!(allowed(&policy("169.254.170.2:80"), "169.254.169.254", 80), None);
}

#[test]
fn the_bastions_own_addresses_are_refused_unless_an_entry_names_them() {
    let spellings = ["10.0.1.5", "[::ffff:10.0.1.5]", "::10.0.1.5", "64:ff9b::a00:105", "fd12::5"];
    let names = ["self.internal", "half-self.internal"];
    for list in ["any", "*:9000", "*:*", "10.0.0.0/8:*", "10.0.1.5/32:9000", "[::/0]:*", "self.internal:9000"] {
        for host in spellings.iter().chain(&names) {
            assert_eq!(allowed(&policy(list), host, 9000), None, "--permit-open {list}: {host}");
        }
    }
    // What the client is told: a literal is the client's own words; a name's address is not.
    match decide(&Policy::default(), &KeyRights::default(), "[::ffff:10.0.1.5]", 9000) {
        Decision::Deny(r) => assert_eq!(
            r,
            "[::ffff:10.0.1.5]:9000 is an address of the bastion itself; only a --permit-open entry naming that exact address allows it"
        ),
        other => panic!("{other:?}"),
    }
    for name in names {
        match decide(&policy("*:9000"), &KeyRights::default(), name, 9000) {
            Decision::Withheld { reason, detail } => {
                assert_eq!(reason, format!("{name}:9000 is not permitted"));
                assert!(detail.contains("resolves to 10.0.1.5, an address of the bastion itself"), "{detail}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // Loopback, also an own address, keeps the denied ranges' rule.
    assert_eq!(allowed(&policy("127.0.0.0/8:*"), "127.0.0.1", 22), Some(vec!["127.0.0.1:22".into()]));
}

#[test]
fn an_exact_entry_opens_an_own_address_on_its_port_only() {
    let p = policy("10.0.1.5:9000, [fd12::5]:*");
    assert_eq!(allowed(&p, "10.0.1.5", 9000), Some(vec!["10.0.1.5:9000".into()]));
    assert_eq!(allowed(&p, "::ffff:10.0.1.5", 9000), Some(vec!["10.0.1.5:9000".into()]));
    assert_eq!(allowed(&p, "10.0.1.5", 22), None);
    assert_eq!(allowed(&p, "fd12::5", 22), Some(vec!["[fd12::5]:22".into()]));
    // The key's list must name it too (or have no list).
    let key = |list: &str| KeyRights { port_forwarding: true, permit_open: PermitList::parse_list(list).unwrap() };
    assert!(matches!(decide(&p, &key("10.0.1.5:9000"), "10.0.1.5", 9000), Decision::Allow(_)));
    for wide in ["10.0.0.0/8:*", "*:9000"] {
        assert!(matches!(decide(&p, &key(wide), "10.0.1.5", 9000), Decision::Deny(r) if r.contains("bastion itself")));
    }
    // Not an own address here: the wildcard list allows it as any other.
    let elsewhere = LocalAddresses::new(["10.9.9.9".parse().unwrap()]);
    let d = decide_with(&policy("*:9000"), &KeyRights::default(), "10.0.1.5", 9000, &elsewhere);
    assert!(matches!(d, Decision::Allow(_)), "{d:?}");
}

#[test]
fn unreadable_own_addresses_refuse_every_tunnel() {
    let unknown = LocalAddresses::unreadable("cannot list the bastion's own addresses (getifaddrs: EMFILE)");
    for host in ["10.0.3.7", "db.internal"] {
        match decide_with(&Policy::default(), &KeyRights::default(), host, 5432, &unknown) {
            Decision::Withheld { reason, detail } => {
                assert_eq!(reason, format!("{host}:5432 is refused: the bastion cannot list its own addresses"));
                assert!(detail.contains("EMFILE") && detail.contains("every tunnel is refused"), "{detail}");
            }
            other => panic!("{host}: {other:?}"),
        }
    }
}

#[test]
fn permit_list_narrows_by_host_and_port() {
    let p = policy("db.internal:5432, 10.1.0.0/16:*, [fd12::/16]:443");
    assert_eq!(allowed(&p, "db.internal", 5432), Some(vec!["10.0.3.7:5432".into()]));
    assert_eq!(allowed(&p, "DB.Internal.", 5432), Some(vec!["10.0.3.7:5432".into()]));
    assert_eq!(allowed(&p, "db.internal", 22), None);
    assert_eq!(allowed(&p, "10.0.3.7", 5432), None, "a name entry does not permit its address");
    assert_eq!(allowed(&p, "10.1.200.3", 8080), Some(vec!["10.1.200.3:8080".into()]));
    assert_eq!(allowed(&p, "10.2.0.1", 8080), None);
    assert_eq!(
        allowed(&p, "dual.internal", 443),
        Some(vec!["[fd12::7]:443".into()]),
        "only permitted addresses are used"
    );
}

#[test]
fn refusals_of_names_never_show_what_they_resolved_to() {
    let p = policy("10.1.0.0/16:5432");
    for (host, resolved) in [("db.internal", "10.0.3.7"), ("metadata", "169.254.170.2"), ("localhost", "127.0.0.1")] {
        match decide(&p, &KeyRights::default(), host, 5432) {
            Decision::Withheld { reason, detail } => {
                assert_eq!(reason, format!("{host}:5432 is not permitted"));
                assert!(detail.contains(resolved), "the audit log says why: {detail}");
            }
            other => panic!("{host}: {other:?}"),
        }
    }
    // A literal address was the client's own words: saying it back reveals nothing.
    match decide(&p, &KeyRights::default(), "10.0.3.7", 5432) {
        Decision::Deny(reason) => assert!(reason.starts_with("10.0.3.7:5432 is not permitted by"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn behind_address_ranges_a_name_that_does_not_resolve_is_only_refused() {
    // With ranges only, "cannot resolve" against "not permitted" would tell which names exist.
    let p = policy("10.1.0.0/16:5432");
    match decide(&p, &KeyRights::default(), "nx.internal", 5432) {
        Decision::Withheld { reason, detail } => {
            assert_eq!(reason, "nx.internal:5432 is not permitted");
            assert!(detail.contains("cannot resolve nx.internal"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // Where the name could be opened whatever it resolves to, the user is told why it failed.
    for list in ["any", "*:5432", "nx.internal:5432, 10.1.0.0/16:5432"] {
        match decide(&policy(list), &KeyRights::default(), "nx.internal", 5432) {
            Decision::Unresolved(reason) => assert!(reason.contains("cannot resolve nx.internal"), "{list}: {reason}"),
            other => panic!("{list}: {other:?}"),
        }
    }
    // A key's own ranges count the same way.
    let ranges = KeyRights { permit_open: PermitList::parse_list("10.1.0.0/16:*").unwrap(), ..KeyRights::default() };
    assert!(matches!(decide(&policy("any"), &ranges, "nx.internal", 5432), Decision::Withheld { .. }));
}

#[test]
fn names_outside_the_list_are_not_resolved() {
    let p = policy("db.internal:5432");
    match decide(&p, &KeyRights::default(), "unknown.name", 5432) {
        Decision::Deny(r) => assert!(r.contains("not in the bastion's permit list"), "{r}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(decide(&Policy::default(), &KeyRights::default(), "unknown.name", 80), Decision::Unresolved(_)));
}

#[test]
fn key_rights_narrow_the_global_list() {
    let p = Policy::default();
    let none = KeyRights { port_forwarding: false, permit_open: PermitList::Any };
    assert!(matches!(decide(&p, &none, "db.internal", 5432), Decision::Deny(r) if r.contains("disabled for this key")));
    let only_db = KeyRights { port_forwarding: true, permit_open: PermitList::parse_list("db.internal:5432").unwrap() };
    assert!(matches!(decide(&p, &only_db, "db.internal", 5432), Decision::Allow(_)));
    assert!(matches!(decide(&p, &only_db, "10.0.3.7", 22), Decision::Deny(r) if r.contains("this key's permitopen")));
    // Both must allow: the key's explicit loopback entry does not beat the global default.
    let lo = KeyRights { port_forwarding: true, permit_open: PermitList::parse_list("127.0.0.1:22").unwrap() };
    assert!(matches!(decide(&p, &lo, "127.0.0.1", 22), Decision::Deny(_)));
    assert!(matches!(decide(&policy("127.0.0.1:22"), &lo, "127.0.0.1", 22), Decision::Allow(_)));
}

#[test]
fn permit_entries_are_parsed_strictly() {
    for good in ["db:5432", "db:*", "*:5432", "10.0.0.0/8:5432", "[::1]:22", "[fd00::/8]:*", "10.0.0.5:80", "a-b.c_d:1"]
    {
        assert!(good.parse::<PermitRule>().is_ok(), "{good}");
    }
    for bad in [
        "db",
        "db:",
        "db:0",
        "db:70000",
        ":80",
        "::1:22",
        "10.0.0.0/33:80",
        "127.1:22",
        "0x7f.1:22",
        "2130706433:22",
        "[::1:22",
        "a b:22",
        "db:x",
    ] {
        let err = bad.parse::<PermitRule>().unwrap_err();
        assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
    }
    assert_eq!(PermitList::parse_list("").unwrap(), PermitList::Any);
    assert_eq!(PermitList::parse_list("any").unwrap(), PermitList::Any);
}

#[test]
fn canonical_maps_embedded_ipv4() {
    let c = |s: &str| canonical(s.parse().unwrap()).to_string();
    assert_eq!(c("::ffff:10.0.0.1"), "10.0.0.1");
    assert_eq!(c("::10.0.0.1"), "10.0.0.1");
    assert_eq!(c("64:ff9b::a9fe:aa02"), "169.254.170.2");
    assert_eq!(c("::1"), "::1");
    assert_eq!(c("::"), "::");
    assert_eq!(c("fd12::1"), "fd12::1");
}
