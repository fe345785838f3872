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
//! 4. an address of the bastion's own interfaces (outside those ranges) is
//!    refused, whatever the port, unless both lists name that exact address;
//!    wildcards, names and CIDR ranges never open it;
//! 5. an address must be allowed by the global list (`--permit-open`) and by
//!    the key's own `permitopen` list.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

use crate::interfaces::LocalAddresses;

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

    /// Does an entry name `addr` (canonical) itself, for this port? Not `*`, a name or a range.
    /// Could the target's name be opened whatever it resolves to (outside the
    /// denied ranges): no list, a `*` host or an entry for the name itself?
    /// Only then may a failed lookup be told to the client: behind address
    /// ranges alone, "cannot resolve" against "not permitted" would say which
    /// names exist.
    fn opens_any_address_of(&self, target: &Target) -> bool {
        match self {
            PermitList::Any => true,
            PermitList::Only(rules) => rules.iter().any(|r| {
                r.port_matches(target.port)
                    && match &r.host {
                        HostPattern::Any => true,
                        HostPattern::Name(n) => *n == target.name(),
                        HostPattern::Addr(_) | HostPattern::Net(_) => false,
                    }
            }),
        }
    }

    fn names_address(&self, target: &Target, addr: IpAddr) -> bool {
        match self {
            PermitList::Any => false,
            PermitList::Only(rules) => {
                rules.iter().any(|r| r.port_matches(target.port) && r.host == HostPattern::Addr(addr))
            }
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

/// Resolves a target to addresses: [`crate::resolve::SystemResolver`]
/// (getaddrinfo, bounded in time and in concurrency) in production; a table in
/// tests, so that the policy is tested without a network.
pub trait Resolve {
    fn resolve(&self, target: &Target) -> impl Future<Output = Result<Vec<SocketAddr>, String>> + Send;
}

/// The destination policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `--permit-open`.
    pub global: PermitList,
}

impl Policy {
    /// The single entry point: may a key with `rights` open `target`, and to which addresses?
    /// `own` is the bastion's own addresses, read just before ([`LocalAddresses::read`]).
    pub async fn decide(
        &self,
        rights: &KeyRights,
        target: &Target,
        resolver: &impl Resolve,
        own: &LocalAddresses,
    ) -> Decision {
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
        // Fail closed: without its own addresses the bastion cannot tell which targets are itself.
        let own = match own.addresses() {
            Ok(own) => own,
            Err(why) => {
                return Decision::Withheld {
                    reason: format!("{target} is refused: the bastion cannot list its own addresses"),
                    detail: format!("{why}; every tunnel is refused until they can be read"),
                };
            }
        };
        let resolved = match target.literal() {
            Some(ip) => vec![SocketAddr::new(ip, target.port)],
            None => match resolver.resolve(target).await {
                Ok(addrs) if !addrs.is_empty() => addrs,
                failed => {
                    let why = match failed {
                        Ok(_) => format!("{} has no address", target.host),
                        Err(e) => e,
                    };
                    // Behind address ranges alone, the client learns only that it is refused.
                    return if self.global.opens_any_address_of(target)
                        && rights.permit_open.opens_any_address_of(target)
                    {
                        Decision::Unresolved(why)
                    } else {
                        Decision::Withheld { reason: format!("{target} is not permitted"), detail: why }
                    };
                }
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
            // The bastion itself (what listens on 0.0.0.0 in its namespace, its
            // own sshd): stricter than a denied range, only its exact address
            // opens it. Denied ranges (loopback) keep their own rule above.
            let exact = self.global.names_address(target, addr)
                && (rights.permit_open == PermitList::Any || rights.permit_open.names_address(target, addr));
            if own.contains(&addr) && denied_block(addr).is_none() && !exact {
                let why =
                    "an address of the bastion itself; only a --permit-open entry naming that exact address allows it";
                return match target.literal() {
                    Some(_) => Decision::Deny(format!("{target} is {why}")),
                    None => Decision::Withheld {
                        reason: format!("{target} is not permitted"),
                        detail: format!("{target} resolves to {addr}, {why}"),
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
mod tests;
