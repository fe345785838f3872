//! Destination policy: may this key open a tunnel to this target?
//!
//! [`Policy::decide`] is the single place where that question is answered.
//! It is judged on the *resolved* addresses, so that no spelling of a name
//! or an address (`127.1`, `0x7f.1`, `2130706433`, `[::ffff:127.0.0.1]`, a
//! name that resolves to a link-local address) reaches what it should not:
//!
//! 1. the key must be allowed to forward at all (`restrict`, `no-port-forwarding`);
//! 2. the name is resolved once, here, and the tunnel connects only to the
//!    addresses judged here (no second lookup, so no DNS rebinding);
//! 3. every resolved address is judged: if any lies in a denied range
//!    (loopback, link-local with the ECS and EC2 metadata endpoints, …) and no
//!    entry names it explicitly, the whole request is refused;
//! 4. an address must be allowed by the global list (`--permit-open`) and by
//!    the key's own `permitopen` list.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

/// Longest host name accepted in a direct-tcpip request (DNS limit is 253).
const MAX_HOST_LEN: usize = 255;

/// A tunnel target as the client asked for it (`ssh -L local:HOST:PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As sent by the client, with IPv6 brackets removed.
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Validates the raw fields of a direct-tcpip request.
    pub fn parse(host: &str, port: u32) -> Result<Self, String> {
        if host.is_empty() {
            return Err("empty target host".into());
        }
        if host.len() > MAX_HOST_LEN {
            return Err(format!("target host is {} bytes long; at most {MAX_HOST_LEN} allowed", host.len()));
        }
        if host.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("target host contains whitespace or control characters".into());
        }
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("target port {port} is not in 1-65535"))?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(inner) => inner.to_string(),
            None => host.to_string(),
        };
        Ok(Self { host, port })
    }

    /// The host as a strictly written IP address (dotted quad or IPv6), if it is one.
    /// Other spellings (`127.1`, `0x7f.1`) are names here and are judged after resolution.
    pub fn literal(&self) -> Option<IpAddr> {
        IpAddr::from_str(&self.host).ok()
    }

    /// The host as a name for matching: lower case, without a trailing dot.
    fn name(&self) -> String {
        self.host.trim_end_matches('.').to_ascii_lowercase()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Address ranges no tunnel may reach unless an entry names the address or
/// a range inside the block. The label is shown in refusals.
pub const DENIED_V4: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (ECS task metadata and credentials 169.254.170.2, EC2 IMDS 169.254.169.254)"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
];
pub const DENIED_V6: &[(&str, &str)] = &[
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("fd00:ec2::/32", "EC2 IPv6 metadata, DNS and time services"),
    ("ff00::/8", "multicast"),
];

/// The denied block containing `addr` (already canonical), with its label.
pub fn denied_block(addr: IpAddr) -> Option<(IpNet, &'static str)> {
    let table = if addr.is_ipv4() { DENIED_V4 } else { DENIED_V6 };
    table.iter().find_map(|(net, label)| {
        let net: IpNet = net.parse().expect("valid built-in range");
        net.contains(&addr).then_some((net, *label))
    })
}

/// IPv6 forms that carry an IPv4 address are judged as that IPv4 address:
/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`) and NAT64 (`64:ff9b::a.b.c.d`).
pub fn canonical(addr: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = addr else { return addr };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let embedded = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let compatible = s[..6] == [0; 6] && !matches!(v6, Ipv6Addr::UNSPECIFIED | Ipv6Addr::LOCALHOST);
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if compatible || nat64 { IpAddr::V4(embedded) } else { addr }
}

/// The host part of a permit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: any host, but never a denied range.
    Any,
    /// A name, matched against the name the client asked for (case-insensitive).
    Name(String),
    /// One address: also allows it inside a denied range.
    Addr(IpAddr),
    /// A CIDR range: allows a denied address only if the range lies inside that denied block.
    Net(IpNet),
}

/// One `host:port` entry of `--permit-open` or `permitopen="…"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermitRule {
    host: HostPattern,
    /// None is `*`.
    port: Option<u16>,
    /// As written, for messages.
    text: String,
}

impl FromStr for PermitRule {
    type Err = String;

    /// `host:port`, `host:*`, `*:port`, `CIDR:port`, `[v6]:port`, `[v6/len]:port`.
    fn from_str(entry: &str) -> Result<Self, String> {
        let text = entry.trim().to_string();
        let bad = |why: &str| {
            format!("permit entry {text:?}: {why}; expected host:port, host:*, *:port, CIDR:port or [IPv6]:port")
        };
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            let port = after.strip_prefix(':').ok_or_else(|| bad("missing ':port' after ']'"))?;
            (inside, port)
        } else {
            text.rsplit_once(':').ok_or_else(|| bad("missing ':port'"))?
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port = match port {
            "*" => None,
            p => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("port must be 1-65535 or *"))?),
        };
        let host = if host == "*" {
            HostPattern::Any
        } else if host.contains('/') {
            let net: IpNet = host.parse().map_err(|_| bad("not a valid CIDR range"))?;
            HostPattern::Net(net.trunc())
        } else if host.contains(':') && !text.starts_with('[') {
            return Err(bad("IPv6 addresses go in brackets"));
        } else if let Ok(addr) = host.parse::<IpAddr>() {
            HostPattern::Addr(canonical(addr))
        } else if host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_') {
            if host.trim_end_matches('.').split('.').all(numeric_label) {
                // `127.1`, `0x7f.1`, `2130706433`: resolvers read these as addresses.
                return Err(bad("write addresses as a dotted quad (a.b.c.d) or in IPv6 form"));
            }
            HostPattern::Name(host.trim_end_matches('.').to_ascii_lowercase())
        } else {
            return Err(bad("invalid characters in host"));
        };
        Ok(Self { host, port, text })
    }
}

/// A label that inet_aton(3) reads as a number: decimal, octal (`0177`) or hex (`0x7f`).
fn numeric_label(label: &str) -> bool {
    match label.strip_prefix("0x").or_else(|| label.strip_prefix("0X")) {
        Some(hex) => hex.chars().all(|c| c.is_ascii_hexdigit()),
        None => !label.is_empty() && label.chars().all(|c| c.is_ascii_digit()),
    }
}

impl fmt::Display for PermitRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PermitRule {
    fn port_matches(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    /// Could this rule allow `target` for some resolution? (Checked before resolving.)
    fn may_match(&self, target: &Target) -> bool {
        self.port_matches(target.port)
            && match &self.host {
                HostPattern::Name(n) => target.literal().is_none() && *n == target.name(),
                _ => true,
            }
    }

    /// Does this rule allow connecting to `addr` (canonical) for `target`?
    fn allows(&self, target: &Target, addr: IpAddr) -> bool {
        if !self.port_matches(target.port) {
            return false;
        }
        let denied = denied_block(addr);
        match &self.host {
            HostPattern::Any => denied.is_none(),
            HostPattern::Name(n) => denied.is_none() && target.literal().is_none() && *n == target.name(),
            HostPattern::Addr(a) => *a == addr,
            HostPattern::Net(net) => {
                net.contains(&addr)
                    && denied.is_none_or(|(block, _)| {
                        block.contains(&net.network()) && net.prefix_len() >= block.prefix_len()
                    })
            }
        }
    }
}

/// A list of permit entries, or "any destination outside the denied ranges".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PermitList {
    #[default]
    Any,
    Only(Vec<PermitRule>),
}

impl PermitList {
    /// Parses a comma-separated list (`--permit-open`); `any` or empty is [`PermitList::Any`].
    pub fn parse_list(text: &str) -> Result<Self, String> {
        let entries: Vec<&str> = text.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
        if entries.is_empty() || entries == ["any"] {
            return Ok(PermitList::Any);
        }
        entries.into_iter().map(PermitRule::from_str).collect::<Result<_, _>>().map(PermitList::Only)
    }

    fn may_match(&self, target: &Target) -> bool {
        match self {
            PermitList::Any => true,
            PermitList::Only(rules) => rules.iter().any(|r| r.may_match(target)),
        }
    }

    /// As the bastion's list: [`PermitList::Any`] is everything outside the denied ranges.
    fn allows(&self, target: &Target, addr: IpAddr) -> bool {
        match self {
            PermitList::Any => denied_block(addr).is_none(),
            PermitList::Only(rules) => rules.iter().any(|r| r.allows(target, addr)),
        }
    }

    /// As a key's list, which only narrows: [`PermitList::Any`] adds no restriction.
    fn narrows_to(&self, target: &Target, addr: IpAddr) -> bool {
        match self {
            PermitList::Any => true,
            PermitList::Only(rules) => rules.iter().any(|r| r.allows(target, addr)),
        }
    }
}

/// What one authenticated key may do with tunnels (from its authorized_keys
/// options, or its certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRights {
    /// False for `restrict` without `port-forwarding`, or `no-port-forwarding`.
    pub port_forwarding: bool,
    /// `permitopen="…"` entries; [`PermitList::Any`] when there are none.
    pub permit_open: PermitList,
}

impl Default for KeyRights {
    fn default() -> Self {
        Self { port_forwarding: true, permit_open: PermitList::Any }
    }
}

/// The answer to "may this key open this target?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Connect only to these addresses, in this order.
    Allow(Vec<SocketAddr>),
    /// Refused; the reason is sent to the client and written to the audit log.
    Deny(String),
    /// Refused after resolving a name: `reason` goes to the client, `detail`
    /// (what the name resolved to, and why that is refused) only to the audit
    /// log. The bastion is no oracle for internal DNS: no refusal tells the
    /// client anything it could not have known.
    Withheld { reason: String, detail: String },
    /// The name could not be resolved (sent to the client as a connect failure).
    Unresolved(String),
}

/// Resolves a target to addresses. The system resolver in production; a
/// table in tests, so that the policy is tested without a network.
pub trait Resolve {
    fn resolve(&self, target: &Target) -> impl Future<Output = Result<Vec<SocketAddr>, String>> + Send;
}

/// getaddrinfo(3) through tokio, bounded by a timeout.
pub struct SystemResolver {
    pub timeout: Duration,
}

impl Resolve for SystemResolver {
    async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, String> {
        let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
        match tokio::time::timeout(self.timeout, lookup).await {
            Ok(Ok(addrs)) => Ok(addrs.collect()),
            Ok(Err(e)) => Err(format!("cannot resolve {}: {e}", target.host)),
            Err(_) => {
                Err(format!("resolving {} timed out after {}", target.host, humantime::format_duration(self.timeout)))
            }
        }
    }
}

/// The destination policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `--permit-open`.
    pub global: PermitList,
}

impl Policy {
    /// The single entry point: may a key with `rights` open `target`, and to which addresses?
    pub async fn decide(&self, rights: &KeyRights, target: &Target, resolver: &impl Resolve) -> Decision {
        if !rights.port_forwarding {
            return Decision::Deny("port forwarding is disabled for this key (restrict / no-port-forwarding)".into());
        }
        // Refuse what no resolution could make acceptable before asking DNS,
        // so the bastion is no oracle for names it would never connect to.
        if !self.global.may_match(target) {
            return Decision::Deny(format!("{target} is not in the bastion's permit list (--permit-open)"));
        }
        if !rights.permit_open.may_match(target) {
            return Decision::Deny(format!("{target} is not in this key's permitopen list"));
        }
        let resolved = match target.literal() {
            Some(ip) => vec![SocketAddr::new(ip, target.port)],
            None => match resolver.resolve(target).await {
                Ok(addrs) if addrs.is_empty() => {
                    return Decision::Unresolved(format!("{} has no address", target.host));
                }
                Ok(addrs) => addrs,
                Err(e) => return Decision::Unresolved(e),
            },
        };
        let mut allowed = Vec::new();
        for socket in &resolved {
            let addr = canonical(socket.ip());
            let by_global = self.global.allows(target, addr);
            let by_key = rights.permit_open.narrows_to(target, addr);
            if let Some((block, label)) = denied_block(addr)
                && !(by_global && by_key)
            {
                // One denied address taints the name: a rebinding attack mixes
                // a harmless address with an internal one.
                let why = format!(
                    "in a denied range ({block}, {label}); only an explicit --permit-open entry for that address allows it"
                );
                return match target.literal() {
                    Some(_) => Decision::Deny(format!("{target} {why}")),
                    None => Decision::Withheld {
                        reason: format!("{target} is not permitted"),
                        detail: format!("{target} resolves to {addr}, which is {why}"),
                    },
                };
            }
            if by_global && by_key {
                allowed.push(SocketAddr::new(addr, target.port));
            }
        }
        if allowed.is_empty() {
            let why = "is not permitted by --permit-open or this key's permitopen";
            if target.literal().is_some() {
                return Decision::Deny(format!("{target} {why}"));
            }
            let list: Vec<String> = resolved.iter().map(|a| canonical(a.ip()).to_string()).collect();
            return Decision::Withheld {
                reason: format!("{target} is not permitted"),
                detail: format!("{target} ({}) {why}", list.join(", ")),
            };
        }
        Decision::Allow(allowed)
    }
}

#[cfg(test)]
mod tests {
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
        ]))
    }

    fn policy(list: &str) -> Policy {
        Policy { global: PermitList::parse_list(list).unwrap() }
    }

    fn decide(policy: &Policy, rights: &KeyRights, host: &str, port: u32) -> Decision {
        let target = Target::parse(host, port).unwrap();
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(policy.decide(
            rights,
            &target,
            &table(),
        ))
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
        for (host, resolved) in [("db.internal", "10.0.3.7"), ("metadata", "169.254.170.2"), ("localhost", "127.0.0.1")]
        {
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
    fn names_outside_the_list_are_not_resolved() {
        let p = policy("db.internal:5432");
        match decide(&p, &KeyRights::default(), "unknown.name", 5432) {
            Decision::Deny(r) => assert!(r.contains("not in the bastion's permit list"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&Policy::default(), &KeyRights::default(), "unknown.name", 80),
            Decision::Unresolved(_)
        ));
    }

    #[test]
    fn key_rights_narrow_the_global_list() {
        let p = Policy::default();
        let none = KeyRights { port_forwarding: false, permit_open: PermitList::Any };
        assert!(
            matches!(decide(&p, &none, "db.internal", 5432), Decision::Deny(r) if r.contains("disabled for this key"))
        );
        let only_db =
            KeyRights { port_forwarding: true, permit_open: PermitList::parse_list("db.internal:5432").unwrap() };
        assert!(matches!(decide(&p, &only_db, "db.internal", 5432), Decision::Allow(_)));
        assert!(
            matches!(decide(&p, &only_db, "10.0.3.7", 22), Decision::Deny(r) if r.contains("this key's permitopen"))
        );
        // Both must allow: the key's explicit loopback entry does not beat the global default.
        let lo = KeyRights { port_forwarding: true, permit_open: PermitList::parse_list("127.0.0.1:22").unwrap() };
        assert!(matches!(decide(&p, &lo, "127.0.0.1", 22), Decision::Deny(_)));
        assert!(matches!(decide(&policy("127.0.0.1:22"), &lo, "127.0.0.1", 22), Decision::Allow(_)));
    }

    #[test]
    fn permit_entries_are_parsed_strictly() {
        for good in
            ["db:5432", "db:*", "*:5432", "10.0.0.0/8:5432", "[::1]:22", "[fd00::/8]:*", "10.0.0.5:80", "a-b.c_d:1"]
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
}
