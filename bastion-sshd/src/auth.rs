//! Authentication decisions: may this public key, signing with this
//! algorithm, log in? Pure logic over [`AuthorizedKeys`]; the russh glue in
//! `handler` calls it twice, once for the offer (before any signature is
//! checked) and once after russh has verified the signature.

use russh::keys::ssh_key::certificate::CertType;
use russh::keys::{Algorithm, Certificate, HashAlg, PublicKey};
use russh::server::CERTIFICATE_CLOCK_SKEW;

use crate::authorized_keys;
use crate::keys::KeyStore;
use crate::policy::KeyRights;

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

use crate::policy::canonical;

/// Who is on the other end of an authenticated connection. Every audit event
/// after authentication carries it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The SSH user name the client sent. Logged, never trusted: any name is
    /// accepted for a known key.
    pub user: String,
    /// `SHA256:…` of the public key.
    pub fingerprint: String,
    /// `ssh-ed25519`, `rsa-sha2-512`, …: the signature algorithm used.
    pub algorithm: String,
    /// The comment of the authorized_keys line (often `user@host`).
    pub comment: String,
    /// Where the key was listed, `source:line`.
    pub listed_at: String,
    /// What this key may do with tunnels.
    pub rights: KeyRights,
    /// Set when the login used an OpenSSH user certificate.
    pub certificate: Option<CertInfo>,
    /// When this login stops being valid (a certificate's end, an
    /// `expiry-time=`): the session is closed then, not only refused at the next login.
    pub expires: Option<Expiry>,
    /// The AWS identity, for a certificate from `bastion login` (its key id).
    pub arn: Option<String>,
}

/// The moment a login stops being valid, and what says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub at: SystemTime,
    /// `the certificate`, `the key's expiry-time`, …: shown in the log and to the user.
    pub what: &'static str,
}

impl Expiry {
    /// `expiry-time=` seconds since the epoch.
    fn from_option(seconds: Option<u64>, what: &'static str) -> Option<Self> {
        let at = UNIX_EPOCH.checked_add(std::time::Duration::from_secs(seconds?))?;
        Some(Expiry { at, what })
    }

    /// The earlier of two.
    fn earliest(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.at < a.at { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

/// What an audit log needs to know about a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub key_id: String,
    pub serial: u64,
    pub principals: Vec<String>,
    /// `SHA256:…` of the CA that signed it.
    pub ca_fingerprint: String,
    /// The session is closed at this time; None for "forever".
    pub valid_before: Option<SystemTime>,
}

/// Why a public key was refused. The text goes to the audit log, never to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub fingerprint: String,
    pub reason: String,
}

/// Decides whether `key`, signing with `algorithm`, may log in as `user`.
pub fn check(
    store: &KeyStore,
    user: &str,
    key: &PublicKey,
    algorithm: &Algorithm,
    peer: IpAddr,
    now: SystemTime,
) -> Result<Identity, Refusal> {
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let refuse = |reason: String| Refusal { fingerprint: fingerprint.clone(), reason };
    let Some(entry) = store.authorized.find(key) else {
        return Err(refuse("key is not in any authorized_keys source".into()));
    };
    if store.revoked.contains(key.key_data()) {
        return Err(refuse("key is revoked (--revoked-keys)".into()));
    }
    authorized_keys::check_signature_algorithm(algorithm).map_err(refuse)?;
    if let Some(reason) = entry.options.refuse_login(peer, now) {
        return Err(refuse(reason));
    }
    Ok(Identity {
        user: user.to_string(),
        fingerprint: entry.fingerprint.clone(),
        algorithm: algorithm.to_string(),
        comment: entry.comment.clone(),
        listed_at: format!("{}:{}", entry.source, entry.line),
        rights: entry.options.rights.clone(),
        certificate: None,
        expires: Expiry::from_option(entry.options.expiry, "the key's expiry-time"),
        arn: None,
    })
}

/// What a session logged in with, kept so that a reload can judge it again.
#[derive(Debug, Clone)]
pub enum Credential {
    Key { user: String, key: PublicKey, algorithm: Algorithm },
    Certificate { user: String, cert: Box<Certificate> },
}

/// Judges a live session's credential against (reloaded) keys.
pub fn recheck(store: &KeyStore, credential: &Credential, peer: IpAddr, now: SystemTime) -> Result<Identity, Refusal> {
    match credential {
        Credential::Key { user, key, algorithm } => check(store, user, key, algorithm, peer, now),
        Credential::Certificate { user, cert } => check_certificate(store, user, cert, peer, now),
    }
}

/// Before the signature check: is this offer worth a signature check? A
/// listed key is judged fully. An unlisted one is only worth it when a CA
/// is trusted (or `--user-ca-key` signs `bastion login` certificates), because russh offers a certificate's inner key here without
/// the certificate; [`check_certificate`] and [`check`] then decide after
/// the signature is verified.
pub fn check_offer(
    store: &KeyStore,
    user: &str,
    key: &PublicKey,
    algorithm: &Algorithm,
    peer: IpAddr,
    now: SystemTime,
) -> Result<(), Refusal> {
    match check(store, user, key, algorithm, peer, now) {
        Ok(_) => Ok(()),
        Err(refusal)
            if store.authorized.find(key).is_none() && (store.authorized.has_cas() || store.login_ca.is_some()) =>
        {
            authorized_keys::check_key_type(key)
                .and_then(|()| authorized_keys::check_signature_algorithm(algorithm))
                .map_err(|reason| Refusal { reason, ..refusal })
        }
        Err(refusal) => Err(refusal),
    }
}

/// Critical options a certificate may carry. `force-command` has no effect:
/// nothing is ever run here. Any other makes the certificate unusable, as in OpenSSH.
const KNOWN_CRITICAL_OPTIONS: &[&str] = &["source-address", "force-command"];

/// Decides whether an OpenSSH user certificate (whose signature and validity
/// window russh has already checked) may log in as `user` from `peer`.
pub fn check_certificate(
    store: &KeyStore,
    user: &str,
    cert: &Certificate,
    peer: IpAddr,
    now: SystemTime,
) -> Result<Identity, Refusal> {
    let fingerprint = cert.public_key().fingerprint(HashAlg::Sha256).to_string();
    let refuse = |reason: String| Refusal { fingerprint: fingerprint.clone(), reason };
    if cert.cert_type() != CertType::User {
        return Err(refuse("not a user certificate".into()));
    }
    if store.login_ca.as_ref() == Some(cert.signature_key()) {
        return check_login_certificate(store, user, cert, peer, now).map_err(refuse);
    }
    let Some(ca) = store.authorized.find_ca(cert.signature_key()) else {
        let ca = cert.signature_key().fingerprint(HashAlg::Sha256);
        return Err(refuse(format!("signed by {ca}, which is not a trusted certificate authority")));
    };
    if store.revoked.contains(cert.public_key()) {
        return Err(refuse("the certificate's key is revoked (--revoked-keys)".into()));
    }
    if store.revoked.contains(cert.signature_key()) {
        return Err(refuse(format!("the certificate authority {} is revoked (--revoked-keys)", ca.fingerprint)));
    }
    check_window_and_key(cert, now).map_err(refuse)?;
    let principals = cert.valid_principals();
    if principals.is_empty() {
        return Err(refuse("the certificate names no principal".into()));
    }
    match &ca.options.principals {
        // principals="…" on the cert-authority line: one of them must be in the certificate.
        Some(allowed) => {
            if !principals.iter().any(|p| allowed.contains(p)) {
                return Err(refuse(format!(
                    "none of the certificate's principals ({}) is in principals=\"{}\" of {}:{}",
                    principals.join(","),
                    allowed.join(","),
                    ca.source,
                    ca.line
                )));
            }
        }
        // Otherwise the login name must be one of the certificate's principals.
        None => {
            if !principals.iter().any(|p| p == user) {
                return Err(refuse(format!(
                    "user {user:?} is not among the certificate's principals ({})",
                    principals.join(",")
                )));
            }
        }
    }
    check_critical_options(cert, peer).map_err(refuse)?;
    if let Some(reason) = ca.options.refuse_login(peer, now) {
        return Err(refuse(format!("{reason} (on the cert-authority line)")));
    }
    let mut rights = ca.options.rights.clone();
    // OpenSSH: a certificate allows forwarding only with this extension (ssh-keygen adds it by default).
    if !cert.extensions().contains_key("permit-port-forwarding") {
        rights.port_forwarding = false;
    }
    Ok(Identity {
        user: user.to_string(),
        fingerprint: fingerprint.clone(),
        algorithm: cert.algorithm().to_certificate_type(),
        comment: cert.key_id().to_string(),
        listed_at: format!("{}:{}", ca.source, ca.line),
        rights,
        certificate: Some(CertInfo {
            key_id: cert.key_id().to_string(),
            serial: cert.serial(),
            principals: principals.to_vec(),
            ca_fingerprint: ca.fingerprint.clone(),
            valid_before: cert.valid_before_time(),
        }),
        expires: Expiry::earliest(
            // None for "forever" (a valid_before past what the clock can hold).
            cert.valid_before_time().map(|at| Expiry { at, what: "the certificate" }),
            Expiry::from_option(ca.options.expiry, "the cert-authority line's expiry-time"),
        ),
        arn: None,
    })
}

/// The validity window (checked by russh already, with the same allowance
/// for a CA clock that runs ahead, see vendor/README.md; checked again so
/// that this module alone is the rule; the end is exact) and the key type.
fn check_window_and_key(cert: &Certificate, now: SystemTime) -> Result<(), String> {
    let unix = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let skew = CERTIFICATE_CLOCK_SKEW.as_secs();
    if unix.saturating_add(skew) < cert.valid_after() {
        return Err("the certificate is not valid yet".into());
    }
    if unix >= cert.valid_before() {
        return Err("the certificate has expired".into());
    }
    authorized_keys::check_key_type(&PublicKey::new(cert.public_key().clone(), ""))
}

/// Unknown critical options refuse the certificate (as in OpenSSH);
/// `source-address` must allow the peer.
fn check_critical_options(cert: &Certificate, peer: IpAddr) -> Result<(), String> {
    for (name, value) in cert.critical_options().iter() {
        if !KNOWN_CRITICAL_OPTIONS.contains(&name.as_str()) {
            return Err(format!("unknown critical option {name:?}"));
        }
        if name == "source-address" {
            let allowed = SourceAddresses::parse(value)?;
            if !allowed.matches(peer) {
                return Err(format!("source-address {value:?} does not allow {}", canonical(peer)));
            }
        }
    }
    Ok(())
}

/// A certificate from this bastion's own `--user-ca-key` (`bastion login`):
/// its key id is the ARN STS returned, and the identity rule that matches
/// it *now* decides, so that a rule removed by a reload ends the session.
/// Any login user name is accepted, as for keys; it is logged, not trusted.
fn check_login_certificate(
    store: &KeyStore,
    user: &str,
    cert: &Certificate,
    peer: IpAddr,
    now: SystemTime,
) -> Result<Identity, String> {
    if store.revoked.contains(cert.public_key()) {
        return Err("the certificate's key is revoked (--revoked-keys)".into());
    }
    if store.revoked.contains(cert.signature_key()) {
        return Err("the user CA (--user-ca-key) is revoked (--revoked-keys)".into());
    }
    check_window_and_key(cert, now)?;
    check_critical_options(cert, peer)?;
    let arn = cert.key_id();
    let Some(rule) = store.rules.find(arn) else {
        return Err(format!("no identity rule matches {arn} (any more)"));
    };
    if let Some(reason) = rule.options.refuse_login(peer, now) {
        return Err(format!("{reason} (identity rule {})", rule.listed_at()));
    }
    let mut rights = rule.options.rights.clone();
    if !cert.extensions().contains_key("permit-port-forwarding") {
        rights.port_forwarding = false;
    }
    let ca_fingerprint = cert.signature_key().fingerprint(HashAlg::Sha256).to_string();
    Ok(Identity {
        user: user.to_string(),
        fingerprint: cert.public_key().fingerprint(HashAlg::Sha256).to_string(),
        algorithm: cert.algorithm().to_certificate_type(),
        comment: arn.to_string(),
        listed_at: rule.listed_at(),
        rights,
        certificate: Some(CertInfo {
            key_id: arn.to_string(),
            serial: cert.serial(),
            principals: cert.valid_principals().to_vec(),
            ca_fingerprint,
            valid_before: cert.valid_before_time(),
        }),
        expires: Expiry::earliest(
            cert.valid_before_time().map(|at| Expiry { at, what: "the certificate" }),
            Expiry::from_option(rule.options.expiry, "the identity rule's expiry-time"),
        ),
        arn: Some(arn.to_string()),
    })
}

/// A certificate's `source-address` critical option, read as sshd's
/// addr_match_cidr_list reads it: a comma-separated list of IPv4/IPv6
/// addresses and CIDR ranges, nothing else. Unlike authorized_keys' `from=`
/// there are no `*`/`?` wildcards, no `!` negation and no names, and any
/// malformed entry refuses the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceAddresses(Vec<IpNet>);

impl SourceAddresses {
    /// sshd's limit on one entry: INET6_ADDRSTRLEN plus a `/128`.
    const MAX_ENTRY: usize = 46 + 3;

    /// The error names the option, the list and the first bad entry.
    pub fn parse(list: &str) -> Result<Self, String> {
        let bad = |entry: &str, why: &str| format!("invalid source-address {list:?}: entry {entry:?} {why}");
        let mut nets = Vec::new();
        for entry in list.split(',') {
            if entry.is_empty() {
                return Err(bad(entry, "is empty (stray comma)"));
            }
            if entry.len() > Self::MAX_ENTRY {
                return Err(bad(entry, "is too long"));
            }
            if !entry.chars().all(|c| c.is_ascii_hexdigit() || ".:/".contains(c)) {
                return Err(bad(entry, "is not an address or CIDR range (no wildcards, negation or names)"));
            }
            let (addr, prefix) = match entry.split_once('/') {
                Some((addr, prefix)) => (addr, Some(prefix)),
                None => (entry, None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| bad(entry, "is not an IPv4 or IPv6 address"))?;
            let net = match prefix {
                None => IpNet::from(addr),
                Some(p) => {
                    let len = p
                        .parse::<u8>()
                        .ok()
                        .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| bad(entry, "has an invalid prefix length"))?;
                    IpNet::new(addr, len).map_err(|_| bad(entry, "has a prefix length out of range"))?
                }
            };
            // sshd refuses "10.0.0.1/8" ("Inconsistent mask length") rather than guess.
            if net.trunc() != net {
                return Err(bad(entry, &format!("has host bits set (the network is {})", net.trunc())));
            }
            nets.push(net);
        }
        Ok(Self(nets))
    }

    /// Whether the (canonical: IPv4-mapped as IPv4) peer is in any entry.
    pub fn matches(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.0.iter().any(|net| net.contains(&peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorized_keys::Source;

    const ALICE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMouBJPrRxxk89otV9qDvWqJZIuTKXmkT0BnxZbMGWgy alice@laptop";
    const BOB: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBLNjqFsyl02Py/OK5ObyQ9dPhMKGctzBO+L2/xyVsEX bob";

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));

    fn keys() -> KeyStore {
        let mut k = KeyStore::default();
        k.authorized.add_text(Source::Env, ALICE.as_bytes());
        k
    }

    #[test]
    fn listed_key_logs_in_under_any_user_name() {
        let alice = PublicKey::from_openssh(ALICE).unwrap();
        let id = check(&keys(), "postgres", &alice, &Algorithm::Ed25519, PEER, SystemTime::now()).unwrap();
        assert_eq!(id.user, "postgres");
        assert_eq!(id.comment, "alice@laptop");
        assert_eq!(id.listed_at, "BASTION_AUTHORIZED_KEYS:1");
        assert_eq!(id.algorithm, "ssh-ed25519");
    }

    #[test]
    fn unknown_key_is_refused_with_its_fingerprint() {
        let bob = PublicKey::from_openssh(BOB).unwrap();
        let refusal = check(&keys(), "alice", &bob, &Algorithm::Ed25519, PEER, SystemTime::now()).unwrap_err();
        assert_eq!(refusal.fingerprint, bob.fingerprint(HashAlg::Sha256).to_string());
        assert!(refusal.reason.contains("not in any authorized_keys"));
    }

    #[test]
    fn comment_does_not_identify_a_key() {
        // Same comment as alice's line, different key material.
        let mallory = PublicKey::from_openssh(&BOB.replace(" bob", " alice@laptop")).unwrap();
        assert!(check(&keys(), "alice", &mallory, &Algorithm::Ed25519, PEER, SystemTime::now()).is_err());
    }

    #[test]
    fn source_address_lists_addresses_and_cidr_ranges() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let list = SourceAddresses::parse("10.0.0.0/8,192.0.2.1,2001:db8::/32,::1").unwrap();
        assert!(list.matches(ip("10.200.0.1")));
        assert!(list.matches(ip("192.0.2.1")));
        assert!(!list.matches(ip("192.0.2.2")));
        assert!(list.matches(ip("2001:db8:1::7")));
        assert!(list.matches(ip("::1")));
        assert!(list.matches(ip("::ffff:10.1.2.3")), "IPv4-mapped peers are judged as IPv4");
        assert!(!list.matches(ip("203.0.113.9")));
        assert!(SourceAddresses::parse("0.0.0.0/0,::/0").unwrap().matches(PEER));
        assert!(SourceAddresses::parse("203.0.113.9/32").unwrap().matches(PEER));
    }

    #[test]
    fn source_address_refuses_what_sshd_refuses() {
        for (list, entry) in [
            ("*", "*"),
            ("127.0.0.*", "127.0.0.*"),
            ("10.0.0.?", "10.0.0.?"),
            ("!10.0.0.0/8", "!10.0.0.0/8"),
            ("10.0.0.0/8,!10.9.0.0/16", "!10.9.0.0/16"),
            ("localhost", "localhost"),
            ("bastion.example.com", "bastion.example.com"),
            ("", ""),
            ("10.0.0.1,", ""),
            (",10.0.0.1", ""),
            ("10.0.0.1,,10.0.0.2", ""),
            ("10.0.0.1, 10.0.0.2", " 10.0.0.2"),
            ("10.0.0.0/33", "10.0.0.0/33"),
            ("2001:db8::/129", "2001:db8::/129"),
            ("10.0.0.0/", "10.0.0.0/"),
            ("10.0.0.0/8/8", "10.0.0.0/8/8"),
            ("10.0.0.0/999", "10.0.0.0/999"),
            ("10.0.0.1/8", "10.0.0.1/8"),
            ("2001:db8::1/32", "2001:db8::1/32"),
            ("10.0.0", "10.0.0"),
            ("abc", "abc"),
            ("fe80::1%eth0", "fe80::1%eth0"),
            ("1111:2222:3333:4444:5555:6666:7777:8888:9999/128", "1111:2222:3333:4444:5555:6666:7777:8888:9999/128"),
        ] {
            let err = SourceAddresses::parse(list).unwrap_err();
            assert!(err.starts_with(&format!("invalid source-address {list:?}: entry {entry:?} ")), "{list:?}: {err}");
        }
        assert!(SourceAddresses::parse("10.0.0.1/8").unwrap_err().contains("the network is 10.0.0.0/8"));
        let long = format!("{}1", "0".repeat(49));
        assert!(SourceAddresses::parse(&long).unwrap_err().ends_with("is too long"));
    }
}
