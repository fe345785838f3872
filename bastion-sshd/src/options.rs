//! `authorized_keys` options, with OpenSSH's sshd(8) syntax and semantics,
//! as far as they mean something on a tunnel-only bastion.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

use crate::policy::{KeyRights, PermitList, PermitRule, canonical};

/// Options accepted for compatibility that change nothing here: sessions
/// never run anything, and agent, X11, remote and tun forwarding are always refused.
const NO_EFFECT: &[&str] = &[
    "command",
    "environment",
    "tunnel",
    "pty",
    "no-pty",
    "agent-forwarding",
    "no-agent-forwarding",
    "x11-forwarding",
    "no-x11-forwarding",
    "user-rc",
    "no-user-rc",
    "permitlisten",
    "no-touch-required",
    "verify-required",
];

/// The parsed options of one `authorized_keys` line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyOptions {
    /// `restrict`, `[no-]port-forwarding`, `permitopen=`.
    pub rights: KeyRights,
    /// `from="pattern-list"`: where the client may connect from.
    pub from: Option<FromList>,
    /// `expiry-time=`: seconds since the epoch after which the key is refused.
    pub expiry: Option<u64>,
    /// `cert-authority`: the key is a CA for user certificates, not a login key.
    pub cert_authority: bool,
    /// `principals="a,b"` (cert-authority lines only).
    pub principals: Option<Vec<String>>,
    /// Options accepted that have no effect here (`command=`, `pty`, …), as written.
    pub no_effect: Vec<String>,
}

impl KeyOptions {
    /// Parses the options field (the text before the key type). Any unknown
    /// or malformed option makes the whole line invalid, as in OpenSSH.
    pub fn parse(field: &str) -> Result<Self, String> {
        let mut this = Self::default();
        let mut permits = Vec::new();
        for option in split_options(field)? {
            let (name, value) = match option.split_once('=') {
                Some((n, v)) => (n.to_ascii_lowercase(), Some(unquote(v).map_err(|e| format!("option {n}: {e}"))?)),
                None => (option.to_ascii_lowercase(), None),
            };
            let need = |v: Option<String>| v.ok_or_else(|| format!("option {name} needs a value: {name}=\"…\""));
            let flag = |v: &Option<String>| match v {
                Some(_) => Err(format!("option {name} takes no value")),
                None => Ok(()),
            };
            match name.as_str() {
                "restrict" => {
                    flag(&value)?;
                    this.rights.port_forwarding = false;
                }
                "port-forwarding" => {
                    flag(&value)?;
                    this.rights.port_forwarding = true;
                }
                "no-port-forwarding" => {
                    flag(&value)?;
                    this.rights.port_forwarding = false;
                }
                "permitopen" => {
                    let v = need(value)?;
                    permits.push(v.parse::<PermitRule>().map_err(|e| format!("permitopen: {e}"))?);
                }
                // Twice would leave one reader thinking the first applies: refused, as in OpenSSH.
                "from" if this.from.is_some() => return Err("from= given twice (write one list)".into()),
                "from" => this.from = Some(FromList::parse(&need(value)?)?),
                // OpenSSH keeps the earliest; so do we.
                "expiry-time" => {
                    let at = parse_expiry(&need(value)?)?;
                    this.expiry = Some(this.expiry.map_or(at, |earlier| earlier.min(at)));
                }
                "cert-authority" => {
                    flag(&value)?;
                    this.cert_authority = true;
                }
                "principals" if this.principals.is_some() => {
                    return Err("principals= given twice (write one list)".into());
                }
                "principals" => {
                    let list: Vec<String> =
                        need(value)?.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect();
                    if list.is_empty() {
                        return Err("principals= lists no principal".into());
                    }
                    this.principals = Some(list);
                }
                other if NO_EFFECT.contains(&other) => this.no_effect.push(option.to_string()),
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        if !permits.is_empty() {
            this.rights.permit_open = PermitList::Only(permits);
        }
        if this.principals.is_some() && !this.cert_authority {
            return Err("principals= only applies to cert-authority lines".into());
        }
        Ok(this)
    }

    /// What the options mean here, one line each, for `check-config`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.rights.port_forwarding {
            lines.push("tunnels: refused (restrict / no-port-forwarding); the key can log in but not forward".into());
        } else if let PermitList::Only(rules) = &self.rights.permit_open {
            let shown: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
            lines.push(format!("tunnels: only {} (and only where --permit-open also allows)", shown.join(", ")));
        }
        if let Some(from) = &self.from {
            lines.push(format!("from: {}", from.text));
        }
        if let Some(expiry) = self.expiry {
            lines.push(format!("expires: {} UTC", format_epoch(expiry)));
        }
        if let Some(principals) = &self.principals {
            lines.push(format!("principals: {}", principals.join(", ")));
        }
        if !self.no_effect.is_empty() {
            lines.push(format!(
                "no effect here: {} (sessions never run anything; agent, X11, remote and tun forwarding are always refused)",
                self.no_effect.join(", ")
            ));
        }
        lines
    }

    /// Is the key refused at `now`, given where the client connects from? The reason if so.
    pub fn refuse_login(&self, peer: IpAddr, now: SystemTime) -> Option<String> {
        if let Some(expiry) = self.expiry {
            let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            if now >= expiry {
                return Some(format!("key expired (expiry-time, {} UTC)", format_epoch(expiry)));
            }
        }
        if let Some(from) = &self.from
            && !from.matches(peer)
        {
            return Some(format!("connection from {} is not allowed by from=\"{}\"", canonical(peer), from.text));
        }
        None
    }
}

/// The characters of `text` outside double quotes, with their byte offsets
/// (`\"` inside quotes does not end them), and whether every quote was closed.
pub(crate) fn outside_quotes(text: &str) -> (Vec<(usize, char)>, bool) {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if !quoted => out.push((i, c)),
            _ => {}
        }
    }
    (out, !quoted)
}

/// Splits `a,b="x,y",c` at commas outside double quotes.
pub(crate) fn split_options(field: &str) -> Result<Vec<&str>, String> {
    let (outside, closed) = outside_quotes(field);
    if !closed {
        return Err("unterminated quote in options".into());
    }
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in outside.into_iter().filter(|(_, c)| *c == ',') {
        out.push(&field[start..i]);
        start = i + 1;
    }
    out.push(&field[start..]);
    if out.iter().any(|o| o.is_empty()) {
        return Err("empty option (stray comma)".into());
    }
    Ok(out)
}

/// `"value"` → `value`, with `\"` unescaped. OpenSSH requires the quotes.
fn unquote(v: &str) -> Result<String, String> {
    let inner = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).ok_or("the value must be in double quotes")?;
    Ok(inner.replace("\\\"", "\""))
}

/// Splits the options field from the rest of an authorized_keys line. The
/// line has options when it does not start with a key type; the options end
/// at the first whitespace outside quotes.
pub fn split_line(line: &str) -> (Option<&str>, &str) {
    let first = line.split_whitespace().next().unwrap_or("");
    let is_key_type = first.starts_with("ssh-") || first.starts_with("ecdsa-") || first.starts_with("sk-");
    if is_key_type {
        return (None, line);
    }
    match outside_quotes(line).0.into_iter().find(|(_, c)| c.is_whitespace()) {
        Some((i, _)) => (Some(&line[..i]), line[i..].trim_start()),
        None => (Some(line), ""),
    }
}

/// Whether a double quote in `text` is never closed.
pub fn has_unclosed_quote(text: &str) -> bool {
    !outside_quotes(text).1
}

/// `from="pattern-list"`: addresses with `*`/`?` wildcards, CIDR ranges, `!` negation.
/// Only for authorized_keys: a certificate's `source-address` is stricter
/// (addresses and CIDR ranges only, as in sshd), see `auth::SourceAddresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromList {
    patterns: Vec<(bool, FromPattern)>,
    /// As written, for messages.
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FromPattern {
    Net(IpNet),
    Wildcard(String),
}

impl FromList {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for raw in text.split(',').map(str::trim) {
            let (negated, p) = match raw.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, raw),
            };
            if p.is_empty() {
                return Err(format!("from=\"{text}\": empty pattern"));
            }
            let pattern = if p.contains('/') {
                FromPattern::Net(
                    p.parse::<IpNet>()
                        .map_err(|_| format!("from=\"{text}\": {p:?} is not a valid CIDR range"))?
                        .trunc(),
                )
            } else if p.chars().all(|c| c.is_ascii_alphanumeric() || ".:-*?_".contains(c)) {
                FromPattern::Wildcard(p.to_ascii_lowercase())
            } else {
                return Err(format!("from=\"{text}\": invalid pattern {p:?}"));
            };
            patterns.push((negated, pattern));
        }
        Ok(Self { patterns, text: text.to_string() })
    }

    /// The list as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// OpenSSH's match_host_and_ip: a matching negated pattern refuses at
    /// once; otherwise any matching pattern allows. Host names are not
    /// looked up (sshd's UseDNS no), so only addresses match.
    pub fn matches(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        let text = peer.to_string();
        let mut allowed = false;
        for (negated, pattern) in &self.patterns {
            let hit = match pattern {
                FromPattern::Net(net) => net.contains(&peer),
                FromPattern::Wildcard(w) => wildcard(w.as_bytes(), text.as_bytes()),
            };
            if hit && *negated {
                return false;
            }
            allowed |= hit;
        }
        allowed
    }
}

/// `*` and `?` glob, as OpenSSH's match_pattern, in O(pattern × text) time:
/// on a mismatch, only the most recent `*` takes one more character. (A
/// recursive version backtracks exponentially on patterns like
/// `*a*a*a*a*a*b`; the fuzzer found that, see SECURITY.md.)
pub(crate) fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // After the last `*` seen: where the pattern resumes, and how much text the `*` took.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((resume, taken)) => {
                    star = Some((resume, taken + 1));
                    p = resume;
                    t = taken + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// `YYYYMMDD[HHMM[SS]][Z]` → seconds since the epoch. Times are UTC, with
/// or without `Z` (OpenSSH reads a time without `Z` as the server's local
/// time; the bastion's container runs in UTC).
pub fn parse_expiry(text: &str) -> Result<u64, String> {
    let bad = || format!("expiry-time=\"{text}\": expected YYYYMMDD[HHMM[SS]][Z]");
    let digits = text.strip_suffix('Z').or_else(|| text.strip_suffix('z')).unwrap_or(text);
    if !digits.chars().all(|c| c.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let n = |range: std::ops::Range<usize>| digits.get(range).map(|s| s.parse::<u64>().unwrap_or(0)).unwrap_or(0);
    let (year, month, day) = (n(0..4), n(4..6), n(6..8));
    let (hour, minute, second) = (n(8..10), n(10..12), n(12..14));
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if year < 1970 || day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return Err(bad());
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days from 1970-01-01 to a date (Howard Hinnant's algorithm), for year >= 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS`.
pub fn format_epoch(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn restrict_and_port_forwarding_follow_openssh_order() {
        assert!(KeyOptions::parse("port-forwarding").unwrap().rights.port_forwarding);
        assert!(!KeyOptions::parse("restrict").unwrap().rights.port_forwarding);
        assert!(KeyOptions::parse("restrict,port-forwarding").unwrap().rights.port_forwarding);
        assert!(!KeyOptions::parse("no-port-forwarding").unwrap().rights.port_forwarding);
        assert!(!KeyOptions::parse("RESTRICT").unwrap().rights.port_forwarding, "option names are case-insensitive");
    }

    #[test]
    fn permitopen_entries_build_the_key_list() {
        let o =
            KeyOptions::parse(r#"restrict,port-forwarding,permitopen="db.internal:5432",permitopen="10.0.0.0/16:*""#)
                .unwrap();
        match &o.rights.permit_open {
            PermitList::Only(rules) => {
                let shown: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
                assert_eq!(shown, ["db.internal:5432", "10.0.0.0/16:*"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(KeyOptions::parse(r#"permitopen="db""#).unwrap_err().contains("permitopen"));
        assert!(KeyOptions::parse("permitopen=db:5432").unwrap_err().contains("double quotes"));
    }

    #[test]
    fn repeated_options_never_widen_a_key() {
        let twice = KeyOptions::parse(r#"from="10.0.0.0/8",from="0.0.0.0/0""#).unwrap_err();
        assert!(twice.contains("from= given twice"), "{twice}");
        let twice = KeyOptions::parse(r#"cert-authority,principals="ops",principals="root""#).unwrap_err();
        assert!(twice.contains("principals= given twice"), "{twice}");
        let earliest = KeyOptions::parse(r#"expiry-time="29991231",expiry-time="20200101""#).unwrap();
        assert_eq!(earliest.expiry, Some(parse_expiry("20200101").unwrap()));
        // permitopen= is a list by design: each one adds a destination.
        assert!(KeyOptions::parse(r#"permitopen="a:1",permitopen="b:2""#).is_ok());
    }

    #[test]
    fn options_without_meaning_here_are_accepted_and_listed() {
        let o = KeyOptions::parse(
            r#"command="/bin/false",no-pty,agent-forwarding,environment="A=b",tunnel="1",X11-forwarding"#,
        )
        .unwrap();
        assert_eq!(o.no_effect.len(), 6);
        assert!(o.rights.port_forwarding);
    }

    #[test]
    fn unknown_and_malformed_options_invalidate_the_line() {
        for bad in [
            "frobnicate",
            "restrict,,pty",
            r#"from="10.0.0.1"#,
            "restrict=\"x\"",
            "expiry-time=\"2026\"",
            "principals=\"a\"",
        ] {
            assert!(KeyOptions::parse(bad).is_err(), "{bad}");
        }
        assert!(KeyOptions::parse("frobnicate").unwrap_err().contains("unknown option \"frobnicate\""));
    }

    #[test]
    fn wildcard_agrees_with_the_recursive_definition_and_stays_linear() {
        // The obvious recursive glob, exponential on some patterns: the oracle for small inputs.
        fn oracle(p: &[u8], t: &[u8]) -> bool {
            match (p.first(), t.first()) {
                (None, None) => true,
                (Some(b'*'), _) => oracle(&p[1..], t) || (!t.is_empty() && oracle(p, &t[1..])),
                (Some(b'?'), Some(_)) => oracle(&p[1..], &t[1..]),
                (Some(a), Some(b)) if a == b => oracle(&p[1..], &t[1..]),
                _ => false,
            }
        }
        fn all(alphabet: &[u8], max: usize) -> Vec<Vec<u8>> {
            let mut out = vec![vec![]];
            let mut last = vec![vec![]];
            for _ in 0..max {
                last = last
                    .iter()
                    .flat_map(|w: &Vec<u8>| alphabet.iter().map(move |c| [w.clone(), vec![*c]].concat()))
                    .collect();
                out.extend(last.clone());
            }
            out
        }
        for pattern in all(b"ab*?", 5) {
            for text in all(b"ab", 5) {
                assert_eq!(wildcard(&pattern, &text), oracle(&pattern, &text), "{pattern:?} {text:?}");
            }
        }
        // The fuzzer's kind of input: many stars before a byte that never comes.
        let pattern = "*0*0*0*0*0*0*0*0*0*0*0*0*0*0*0*0*0*0*0*0x".repeat(4);
        assert!(!wildcard(pattern.as_bytes(), b"2001:db8:0:0:0:0:0:0000000000000000000"));
        assert!(wildcard(b"*0*0*1", b"2001:db8::10:0:1"));
    }

    #[test]
    fn from_patterns_follow_openssh() {
        let f = FromList::parse("10.0.0.0/8,!10.9.0.0/16,192.168.1.*,2001:db8::?").unwrap();
        assert!(f.matches(ip("10.1.2.3")));
        assert!(!f.matches(ip("10.9.0.1")), "negation wins");
        assert!(f.matches(ip("192.168.1.77")));
        assert!(!f.matches(ip("192.168.2.77")));
        assert!(f.matches(ip("2001:db8::5")));
        assert!(!f.matches(ip("203.0.113.9")));
        assert!(f.matches(ip("::ffff:10.1.2.3")), "IPv4-mapped peers are judged as IPv4");
        assert!(FromList::parse("10.0.0.0/33").is_err());
        assert!(FromList::parse("a b").is_err());
    }

    #[test]
    fn expiry_time_formats() {
        assert_eq!(parse_expiry("19700101").unwrap(), 0);
        assert_eq!(parse_expiry("20261231Z").unwrap(), 1_798_675_200);
        assert_eq!(parse_expiry("202612312359").unwrap(), 1_798_675_200 + 86_340);
        assert_eq!(parse_expiry("20240229235959Z").unwrap(), 1_709_251_199);
        for bad in ["2026", "20261301", "20260230", "20261231240000", "2026123a", "202612311"] {
            assert!(parse_expiry(bad).is_err(), "{bad}");
        }
        assert_eq!(format_epoch(1_709_251_199), "2024-02-29 23:59:59");
    }

    #[test]
    fn login_is_refused_after_expiry_and_from_elsewhere() {
        let o = KeyOptions::parse(r#"expiry-time="20261231Z",from="10.0.0.0/8""#).unwrap();
        let before = UNIX_EPOCH + Duration::from_secs(1_798_675_199);
        let after = UNIX_EPOCH + Duration::from_secs(1_798_675_200);
        assert_eq!(o.refuse_login(ip("10.0.0.1"), before), None);
        assert!(o.refuse_login(ip("10.0.0.1"), after).unwrap().contains("expired"));
        assert!(o.refuse_login(ip("192.0.2.1"), before).unwrap().contains("from="));
    }

    #[test]
    fn lines_are_split_into_options_and_key() {
        let key = "ssh-ed25519 AAAA comment";
        assert_eq!(split_line(key), (None, key));
        assert_eq!(
            split_line(r#"restrict,from="a, b" ssh-ed25519 AAAA c"#),
            (Some(r#"restrict,from="a, b""#), "ssh-ed25519 AAAA c")
        );
        assert_eq!(split_line("restrict"), (Some("restrict"), ""));
    }
}
