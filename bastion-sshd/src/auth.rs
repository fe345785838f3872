//! Authentication decisions: may this public key, signing with this
//! algorithm, log in? Pure logic over [`AuthorizedKeys`]; the russh glue in
//! `handler` calls it twice, once for the offer (before any signature is
//! checked) and once after russh has verified the signature.

use russh::keys::{Algorithm, HashAlg, PublicKey};

use crate::authorized_keys::{self, AuthorizedKeys};
use crate::policy::KeyRights;

use std::net::IpAddr;
use std::time::SystemTime;

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
}

/// Why a public key was refused. The text goes to the audit log, never to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub fingerprint: String,
    pub reason: String,
}

/// Decides whether `key`, signing with `algorithm`, may log in as `user`.
pub fn check(
    keys: &AuthorizedKeys,
    user: &str,
    key: &PublicKey,
    algorithm: &Algorithm,
    peer: IpAddr,
    now: SystemTime,
) -> Result<Identity, Refusal> {
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let refuse = |reason: String| Refusal { fingerprint: fingerprint.clone(), reason };
    let Some(entry) = keys.find(key) else {
        return Err(refuse("key is not in any authorized_keys source".into()));
    };
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorized_keys::Source;

    const ALICE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMouBJPrRxxk89otV9qDvWqJZIuTKXmkT0BnxZbMGWgy alice@laptop";
    const BOB: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBLNjqFsyl02Py/OK5ObyQ9dPhMKGctzBO+L2/xyVsEX bob";

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));

    fn keys() -> AuthorizedKeys {
        let mut k = AuthorizedKeys::default();
        k.add_text(Source::Env, ALICE.as_bytes());
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
}
