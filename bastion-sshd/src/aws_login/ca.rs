//! `--user-ca-key`: the certificate authority that signs the user
//! certificates `bastion login` gets. The bastion trusts it for logins;
//! nothing else does, unless an operator lists its public key elsewhere.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::{Certificate, HashAlg, PrivateKey, PublicKey};

use crate::hostkey;

/// The OpenSSH extension that lets a certificate forward ports; the only one set.
pub const PERMIT_PORT_FORWARDING: &str = "permit-port-forwarding";

/// Where the CA key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    File(PathBuf),
    /// `BASTION_USER_CA_KEY`.
    Env,
}

impl std::fmt::Display for CaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaSource::File(p) => write!(f, "{}", p.display()),
            CaSource::Env => f.write_str(crate::cli::ENV_USER_CA_KEY_TEXT),
        }
    }
}

pub struct UserCa {
    key: PrivateKey,
    pub source: CaSource,
    /// `SHA256:…` of the CA's public key.
    pub fingerprint: String,
}

impl std::fmt::Debug for UserCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCa").field("source", &self.source).field("fingerprint", &self.fingerprint).finish()
    }
}

/// What a certificate says.
#[derive(Debug, Clone)]
pub struct Issue<'a> {
    pub public_key: &'a PublicKey,
    /// The ARN: the audit log's name for the user.
    pub key_id: &'a str,
    pub principal: &'a str,
    pub valid_after: SystemTime,
    pub valid_before: SystemTime,
    /// The rule's `from=`, as the `source-address` critical option.
    pub source_address: Option<&'a str>,
    /// Whether the rule allows tunnels at all.
    pub port_forwarding: bool,
}

impl UserCa {
    /// Reads the CA key from a file or the environment text; None when neither is given.
    pub fn load(file: Option<&Path>, env_text: Option<&str>) -> Result<Option<Self>, String> {
        let (text, source) = match (file, env_text) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(format!(
                    "--user-ca-key and {} are both set: give the user CA key once",
                    crate::cli::ENV_USER_CA_KEY_TEXT
                ));
            }
            (Some(path), None) => (
                std::fs::read_to_string(path)
                    .map_err(|e| format!("user CA key {}: cannot read: {e}", path.display()))?,
                CaSource::File(path.to_path_buf()),
            ),
            (None, Some(text)) => (text.to_string(), CaSource::Env),
        };
        let key = hostkey::parse(&text).map_err(|e| format!("user CA key {source}: {e}"))?;
        let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
        Ok(Some(Self { key, source, fingerprint }))
    }

    /// A CA from a key in memory (tests).
    pub fn from_key(key: PrivateKey) -> Self {
        let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
        Self { key, source: CaSource::Env, fingerprint }
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public_key().clone()
    }

    /// Signs a user certificate.
    pub fn issue(&self, issue: &Issue<'_>) -> Result<Certificate, String> {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
        let fail = |e: russh::keys::ssh_key::Error| format!("cannot sign the certificate: {e}");
        let mut builder = Builder::new_with_random_nonce(
            &mut rand::rng(),
            issue.public_key.key_data().clone(),
            secs(issue.valid_after),
            secs(issue.valid_before),
        )
        .map_err(fail)?;
        builder
            .serial(rand::random())
            .map_err(fail)?
            .cert_type(CertType::User)
            .map_err(fail)?
            .key_id(issue.key_id)
            .map_err(fail)?
            .valid_principal(issue.principal)
            .map_err(fail)?
            .comment(issue.key_id)
            .map_err(fail)?;
        if let Some(list) = issue.source_address {
            builder.critical_option("source-address", list).map_err(fail)?;
        }
        if issue.port_forwarding {
            builder.extension(PERMIT_PORT_FORWARDING, "").map_err(fail)?;
        }
        builder.sign(&self.key).map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_say_what_the_rule_allows() {
        let ca = UserCa::from_key(hostkey::generate());
        let user = hostkey::generate();
        let now = SystemTime::now();
        let cert = ca
            .issue(&Issue {
                public_key: user.public_key(),
                key_id: "arn:aws:iam::111122223333:user/alice",
                principal: "alice",
                valid_after: now,
                valid_before: now + Duration::from_secs(3600),
                source_address: Some("203.0.113.0/24"),
                port_forwarding: true,
            })
            .unwrap();
        assert_eq!(cert.key_id(), "arn:aws:iam::111122223333:user/alice");
        assert_eq!(cert.valid_principals(), ["alice".to_string()]);
        assert_eq!(cert.cert_type(), CertType::User);
        assert_eq!(cert.critical_options().get("source-address").map(String::as_str), Some("203.0.113.0/24"));
        let extensions: Vec<&String> = cert.extensions().keys().collect();
        assert_eq!(extensions, [PERMIT_PORT_FORWARDING]);
        assert_eq!(cert.valid_before() - cert.valid_after(), 3600);
        assert_eq!(cert.signature_key(), ca.public_key().key_data());
        assert_eq!(cert.public_key(), user.public_key().key_data());
    }

    #[test]
    fn the_key_comes_from_one_place_only() {
        assert!(UserCa::load(None, None).unwrap().is_none());
        let both = UserCa::load(Some(Path::new("/x")), Some("y")).unwrap_err();
        assert!(both.contains("both set"), "{both}");
        let missing = UserCa::load(Some(Path::new("/nonexistent/ca")), None).unwrap_err();
        assert!(missing.starts_with("user CA key /nonexistent/ca: cannot read"), "{missing}");
        let garbage = UserCa::load(None, Some("not a key")).unwrap_err();
        assert!(garbage.starts_with("user CA key BASTION_USER_CA_KEY: not an OpenSSH private key"), "{garbage}");
    }
}
