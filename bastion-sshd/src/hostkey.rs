//! Host keys: loading them from files or environment text, generating an
//! ephemeral one, and describing them the way `ssh-keygen -l` does.

use std::fmt;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::{LineEnding, PublicKey, private::KeypairData};
use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PrivateKey};

/// Where a host key came from; shown in every message about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// The `BASTION_HOST_KEY` environment variable.
    Env,
    /// Generated at start because no host key was configured.
    Ephemeral,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env => f.write_str(crate::cli::ENV_HOST_KEY_TEXT),
            Source::Ephemeral => f.write_str("ephemeral"),
        }
    }
}

/// A host key ready for the server, with where it came from.
pub struct HostKey {
    pub key: PrivateKey,
    pub source: Source,
}

impl HostKey {
    /// `256 SHA256:… (ED25519)`, as `ssh-keygen -l` prints it (without the comment).
    pub fn describe(&self) -> String {
        describe_public(self.key.public_key())
    }

    /// The public key in OpenSSH form, without a comment.
    pub fn public_openssh(&self) -> String {
        public_openssh(self.key.public_key())
    }
}

/// A host key that cannot be used, with a reason that names its source.
#[derive(Debug)]
pub struct HostKeyError {
    pub source: Source,
    pub reason: String,
}

impl fmt::Display for HostKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host key {}: {}", self.source, self.reason)
    }
}

impl std::error::Error for HostKeyError {}

/// Why a `BASTION_HOST_KEY` that is set but blank is refused.
pub const SET_BUT_EMPTY: &str = "the variable is set but empty, which would mean a new ephemeral host key at \
    every start; set it to the private key text (`bastion-sshd keygen`), or unset it";

/// Loads every configured host key. Any unusable key is an error: a server
/// that silently drops one of its host keys changes identity for some clients.
/// `env_text` is `BASTION_HOST_KEY` as set, blank included: blank is an error.
pub fn load(files: &[PathBuf], env_text: Option<&str>) -> Result<Vec<HostKey>, Vec<HostKeyError>> {
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for path in files {
        match read_file(path).and_then(|text| parse(&text)) {
            Ok(key) => keys.push(HostKey { key, source: Source::File(path.clone()) }),
            Err(reason) => errors.push(HostKeyError { source: Source::File(path.clone()), reason }),
        }
    }
    if let Some(text) = env_text {
        // Set but blank is a mistake (an empty secret, a template variable that
        // was not filled in), never "no host key": that would mean a new
        // ephemeral key, a new server identity, at every start.
        let blank = text.trim_start_matches('\u{feff}').trim().is_empty();
        match if blank { Err(SET_BUT_EMPTY.to_string()) } else { parse(text) } {
            Ok(key) => keys.push(HostKey { key, source: Source::Env }),
            Err(reason) => errors.push(HostKeyError { source: Source::Env, reason }),
        }
    }
    if errors.is_empty() { Ok(keys) } else { Err(errors) }
}

fn read_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))
}

/// Parses an OpenSSH private key and checks that the server can use it.
pub fn parse(text: &str) -> Result<PrivateKey, String> {
    // Editors on Windows write a byte order mark; authorized_keys files get the same allowance.
    let text = text.trim_start_matches('\u{feff}').trim();
    const EXPECTED: &str = "expected the text of a key written by `ssh-keygen` or `bastion-sshd keygen`";
    if text.is_empty() {
        return Err(format!("empty; {EXPECTED}"));
    }
    if text.starts_with("ssh-") || text.starts_with("ecdsa-") || text.starts_with("sk-") {
        return Err(format!("this is a public key (a .pub file); the server needs the private key: {EXPECTED}"));
    }
    let key = PrivateKey::from_openssh(text.as_bytes())
        .map_err(|e| format!("not an OpenSSH private key ({e}); {EXPECTED}"))?;
    if key.is_encrypted() {
        return Err("the key is encrypted with a passphrase, which a server cannot type; \
                    remove it with `ssh-keygen -p -N '' -f FILE`"
            .into());
    }
    match key.key_data() {
        KeypairData::Ed25519(_) | KeypairData::Ecdsa(_) => Ok(key),
        // Signing with an RSA private key would put the `rsa` crate's
        // non-constant-time private-key code (RUSTSEC-2023-0071) on the
        // server's hot path; Ed25519 is faster and accepted by every client.
        KeypairData::Rsa(_) => Err("RSA host keys are not supported (RUSTSEC-2023-0071); \
                                    use an Ed25519 key: `bastion-sshd keygen --out FILE`"
            .into()),
        _ => Err(format!(
            "{} host keys are not supported; use Ed25519 (`bastion-sshd keygen`) or ECDSA",
            key.algorithm()
        )),
    }
}

/// A new random Ed25519 key.
pub fn generate() -> PrivateKey {
    // `PrivateKey::random` only fails for algorithms it cannot generate;
    // Ed25519 with the OS RNG always works.
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).expect("Ed25519 key generation")
}

/// `ssh-keygen -l` style: bits, SHA256 fingerprint, type.
pub fn describe_public(key: &PublicKey) -> String {
    let (bits, kind) = match key.algorithm() {
        Algorithm::Ed25519 => (256, "ED25519"),
        Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 } => (256, "ECDSA"),
        Algorithm::Ecdsa { curve: EcdsaCurve::NistP384 } => (384, "ECDSA"),
        Algorithm::Ecdsa { curve: EcdsaCurve::NistP521 } => (521, "ECDSA"),
        Algorithm::Rsa { .. } => (key.key_data().rsa().map(|k| k.key_size()).unwrap_or(0), "RSA"),
        _ => (0, "OTHER"),
    };
    format!("{bits} {} ({kind})", key.fingerprint(HashAlg::Sha256))
}

/// `ssh-ed25519 AAAA…`, without the comment.
pub fn public_openssh(key: &PublicKey) -> String {
    let bare = PublicKey::new(key.key_data().clone(), "");
    bare.to_openssh().unwrap_or_default()
}

/// The private key as OpenSSH text.
pub fn private_openssh(key: &PrivateKey) -> anyhow::Result<String> {
    Ok(key.to_openssh(LineEnding::LF)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_and_is_described_like_ssh_keygen() {
        let key = generate();
        let text = private_openssh(&key).unwrap();
        let back = parse(&text).unwrap();
        assert_eq!(back.public_key().key_data(), key.public_key().key_data());
        let d = describe_public(key.public_key());
        assert!(d.starts_with("256 SHA256:"), "{d}");
        assert!(d.ends_with(" (ED25519)"), "{d}");
        assert!(public_openssh(key.public_key()).starts_with("ssh-ed25519 AAAA"));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let err = parse("hello").unwrap_err();
        assert!(err.contains("not an OpenSSH private key"), "{err}");
    }

    #[test]
    fn the_usual_mistakes_are_named() {
        assert!(parse("").unwrap_err().starts_with("empty;"));
        assert!(parse(" \n").unwrap_err().starts_with("empty;"));
        let public = public_openssh(generate().public_key());
        assert!(parse(&public).unwrap_err().contains("this is a public key"));
        let private = private_openssh(&generate()).unwrap();
        assert!(parse(&format!("\u{feff}{private}")).is_ok(), "a byte order mark is allowed");
    }

    #[test]
    fn errors_name_their_source() {
        let errs = load(&[PathBuf::from("/nonexistent/key")], Some("junk")).err().unwrap();
        assert_eq!(errs.len(), 2);
        assert!(errs[0].to_string().starts_with("host key /nonexistent/key: cannot read"));
        assert!(errs[1].to_string().starts_with("host key BASTION_HOST_KEY: not an OpenSSH"));
    }

    #[test]
    fn a_blank_env_text_is_an_error_not_no_key() {
        for blank in ["", " ", "  \n", "\r\n\t", "\u{feff}\n"] {
            let errs = load(&[], Some(blank)).err().unwrap_or_else(|| panic!("{blank:?} accepted"));
            assert_eq!(errs.len(), 1, "{blank:?}");
            assert_eq!(errs[0].to_string(), format!("host key BASTION_HOST_KEY: {SET_BUT_EMPTY}"), "{blank:?}");
        }
        assert!(load(&[], None).is_ok_and(|keys| keys.is_empty()), "nothing configured: no key, no error");
    }
}
