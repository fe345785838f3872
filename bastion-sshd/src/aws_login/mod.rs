//! Login by AWS identity (`bastion login`): a signed `sts:GetCallerIdentity`
//! in, a short-lived OpenSSH user certificate out. The protocol is in
//! `bastion_common::login`; this module owns the decisions:
//!
//! - [`proof`] checks everything STS would not (pure);
//! - [`sts`] sends the proof to the configured STS endpoint, the only AWS
//!   API this process ever calls, with the client's signature;
//! - the identity rules (`identity_rules`) decide who may log in and with
//!   what rights;
//! - [`ca`] signs the certificate.
//!
//! The russh glue is `handler::aws_login`.

pub mod ca;
pub mod proof;
pub mod sts;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bastion_common::login::{Challenge, MAX_PROOF_AGE_SECS, MAX_PROOF_AHEAD_SECS, Outcome, VERSION, principal_of};
use russh::keys::HashAlg;
use tokio::sync::Semaphore;

use crate::keys::KeyStore;
use crate::policy::{PermitList, Policy};
use ca::{Issue, UserCa};
use sts::{Sts, StsError};

/// How far back a certificate's validity starts, for clocks a little behind the bastion's.
const BACKDATE: Duration = Duration::from_secs(60);
/// Proofs STS is asked about at once; more wait (within the login grace time).
const STS_IN_FLIGHT: usize = 16;
/// Signatures remembered as used. Only proofs STS accepted stay in it, for
/// the proof window, so a full table means ten thousand logins in minutes.
const REPLAY_CAPACITY: usize = 10_000;

/// Everything the server needs for AWS logins; None when they are off.
pub struct AwsLogin {
    pub sts: Sts,
    pub ca: UserCa,
    /// The bastion's `--name`, normalized: what a proof must be bound to.
    name: String,
    /// `SHA256:…` of each host key served: a proof must be bound to one of them.
    host_keys: Vec<String>,
    /// `--max-certificate-validity`: no certificate lives longer.
    pub max_validity: Duration,
    /// Signatures already used.
    replay: ReplayCache,
    /// Bounds the STS calls in flight.
    in_flight: Semaphore,
}

/// One connection's challenge, kept until its proof arrives.
#[derive(Debug, Clone)]
pub struct Pending {
    nonce: String,
}

/// How a login attempt ended: what the client is told, and what the audit log says.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub outcome: Outcome,
    /// Set when a certificate was issued.
    pub issued: Option<Issued>,
    /// The access key ID that signed the proof, when it could be read.
    pub access_key_id: Option<String>,
    /// STS could not be asked: not the user's fault, and not penalized like a bad proof.
    pub unavailable: bool,
}

/// A certificate that was issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub arn: String,
    pub principal: String,
    pub serial: u64,
    /// `SHA256:…` of the certified key.
    pub fingerprint: String,
    pub valid_before: u64,
    /// The rule that admitted it, `source:line`.
    pub rule: String,
}

impl AwsLogin {
    pub fn new(sts: Sts, ca: UserCa, name: &str, host_keys: Vec<String>, max_validity: Duration) -> Self {
        Self {
            sts,
            ca,
            name: bastion_common::login::normalize_name(name),
            host_keys,
            max_validity,
            replay: ReplayCache::default(),
            in_flight: Semaphore::new(STS_IN_FLIGHT),
        }
    }

    /// A fresh challenge for one connection.
    pub fn challenge(&self) -> (Challenge, Pending) {
        let nonce: [u8; 24] = rand::random();
        let nonce = base64url(&nonce);
        let challenge = Challenge {
            version: VERSION,
            bastion: self.name.clone(),
            nonce: nonce.clone(),
            sts_host: self.sts.host().to_string(),
            sts_region: self.sts.region().to_string(),
        };
        (challenge, Pending { nonce })
    }

    /// Judges a proof: local checks, STS, the rules; then the certificate.
    pub async fn complete(
        &self,
        pending: &Pending,
        proof: &[u8],
        store: &KeyStore,
        policy: &Policy,
        peer: IpAddr,
    ) -> Attempt {
        let refused = |arn: Option<&str>, reason: String| Attempt {
            outcome: Outcome::refused(arn.map(str::to_string), reason),
            issued: None,
            access_key_id: None,
            unavailable: false,
        };
        let expect = proof::Expect {
            name: &self.name,
            host_keys: &self.host_keys,
            nonce: &pending.nonce,
            sts_host: self.sts.host(),
            sts_region: self.sts.region(),
        };
        let checked = match proof::check(proof, &expect, SystemTime::now()) {
            Ok(checked) => checked,
            Err(reason) => return refused(None, reason),
        };
        let with_key = |mut a: Attempt| {
            a.access_key_id = Some(checked.access_key_id.clone());
            a
        };
        let forget_at = checked.signed_at + Duration::from_secs(MAX_PROOF_AGE_SECS + MAX_PROOF_AHEAD_SECS);
        if let Err(reason) = self.replay.claim(&checked.signature, forget_at, SystemTime::now()) {
            return with_key(refused(None, reason));
        }
        let caller = {
            let _permit = self.in_flight.acquire().await;
            self.sts.get_caller_identity(&checked.headers, bastion_common::login::STS_BODY).await
        };
        let caller = match caller {
            Ok(caller) => caller,
            Err(e) => {
                // Only proofs STS accepted stay in the table: junk cannot fill it.
                self.replay.release(&checked.signature);
                let unavailable = matches!(e, StsError::Unavailable(_));
                return with_key(Attempt { unavailable, ..refused(None, e.to_string()) });
            }
        };
        let arn = caller.arn.as_str();
        let Some(rule) = store.rules.find(arn) else {
            return with_key(refused(Some(arn), "no identity rule of this bastion matches this ARN".into()));
        };
        let now = SystemTime::now();
        if let Some(reason) = rule.options.refuse_login(peer, now) {
            return with_key(refused(Some(arn), format!("{reason} (identity rule {})", rule.listed_at())));
        }
        let Some(principal) = principal_of(arn) else {
            return with_key(refused(Some(arn), "no user or session name in this ARN".into()));
        };
        let lifetime = rule.valid_for.unwrap_or(self.max_validity).min(self.max_validity);
        let mut valid_before = now + lifetime;
        if let Some(expiry) = rule.options.expiry.and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s))) {
            valid_before = valid_before.min(expiry);
        }
        let issue = Issue {
            public_key: &checked.public_key,
            key_id: arn,
            principal,
            valid_after: now - BACKDATE,
            valid_before,
            source_address: rule.options.from.as_ref().map(|f| f.text()),
            port_forwarding: rule.options.rights.port_forwarding,
        };
        let cert = match self.ca.issue(&issue).and_then(|c| c.to_openssh().map_err(|e| e.to_string()).map(|t| (c, t))) {
            Ok(cert) => cert,
            Err(reason) => return with_key(refused(Some(arn), reason)),
        };
        let (cert, text) = cert;
        let issued = Issued {
            arn: arn.to_string(),
            principal: principal.to_string(),
            serial: cert.serial(),
            fingerprint: checked.public_key.fingerprint(HashAlg::Sha256).to_string(),
            valid_before: cert.valid_before(),
            rule: rule.listed_at(),
        };
        let outcome = Outcome {
            version: VERSION,
            ok: true,
            arn: Some(arn.to_string()),
            reason: None,
            certificate: Some(text),
            principal: Some(principal.to_string()),
            valid_before: Some(cert.valid_before()),
            tunnels: tunnels(&rule.options.rights, policy),
        };
        Attempt {
            outcome,
            issued: Some(issued),
            access_key_id: Some(checked.access_key_id.clone()),
            unavailable: false,
        }
    }
}

/// Where the certificate's tunnels may go, for the user: the rule's
/// `permitopen=`, else the server's `--permit-open`, else `any`.
fn tunnels(rights: &crate::policy::KeyRights, policy: &Policy) -> Vec<String> {
    if !rights.port_forwarding {
        return Vec::new();
    }
    match (&rights.permit_open, &policy.global) {
        (PermitList::Only(rules), _) | (PermitList::Any, PermitList::Only(rules)) => {
            rules.iter().map(|r| r.to_string()).collect()
        }
        (PermitList::Any, PermitList::Any) => vec!["any".into()],
    }
}

/// Signatures of proofs in use or used, until they are too old to be accepted anyway.
#[derive(Debug, Default)]
struct ReplayCache {
    seen: Mutex<HashMap<String, SystemTime>>,
}

impl ReplayCache {
    /// Takes the signature for this login; refuses one already taken.
    fn claim(&self, signature: &str, forget_at: SystemTime, now: SystemTime) -> Result<(), String> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains_key(signature) {
            return Err("this proof was already used: each proof logs in once".into());
        }
        if seen.len() >= REPLAY_CAPACITY {
            seen.retain(|_, at| *at > now);
        }
        if seen.len() >= REPLAY_CAPACITY {
            return Err("too many logins in the last few minutes; try again shortly".into());
        }
        seen.insert(signature.to_string(), forget_at);
        Ok(())
    }

    fn release(&self, signature: &str) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).remove(signature);
    }
}

/// Base64url without padding.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_logs_in_once_and_is_forgotten_when_too_old() {
        let cache = ReplayCache::default();
        let now = SystemTime::now();
        let later = now + Duration::from_secs(360);
        cache.claim("sig", later, now).unwrap();
        assert!(cache.claim("sig", later, now).unwrap_err().contains("already used"));
        cache.release("sig");
        cache.claim("sig", later, now).unwrap();
        // A full table drops what has expired before it refuses.
        for i in 0..REPLAY_CAPACITY - 1 {
            cache.claim(&format!("s{i}"), later, now).unwrap();
        }
        assert!(cache.claim("one more", later, now).unwrap_err().contains("too many logins"));
        cache.claim("one more", later, later + Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn nonces_are_base64url() {
        assert_eq!(base64url(b"\xfb\xff\xfe"), "-__-");
        assert_eq!(base64url(b"ab"), "YWI");
        assert_eq!(base64url(&[0u8; 24]).len(), 32);
    }
}
