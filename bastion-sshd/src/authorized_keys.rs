//! OpenSSH `authorized_keys` text: which public keys may log in.
//!
//! Parsing is line by line so that every problem names its source and line.
//! A bad line is skipped (and reported); it never stops the server.

use std::fmt;
use std::path::PathBuf;

use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Algorithm, HashAlg, PublicKey};

use crate::options::{self, KeyOptions};

/// Smallest RSA modulus accepted, in bits (OpenSSH's RequiredRSASize default is 1024; NIST says 2048).
pub const MIN_RSA_BITS: u32 = 2048;

/// Longest line accepted. A 16384-bit RSA key is about 2.8 KB of base64.
pub(crate) const MAX_LINE_BYTES: usize = 32 * 1024;

/// Where authorized_keys text came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// The `BASTION_AUTHORIZED_KEYS` environment variable.
    Env,
    /// A `--trusted-user-ca-keys` file (OpenSSH TrustedUserCAKeys).
    CaFile(PathBuf),
    /// The `BASTION_TRUSTED_USER_CA_KEYS` environment variable.
    CaEnv,
    /// An `--aws-identity-rules` file.
    RulesFile(PathBuf),
    /// The `BASTION_AWS_IDENTITY_RULES` environment variable.
    RulesEnv,
}

impl Source {
    /// What the source holds, for messages: `keys` or `identity rules`.
    pub fn what(&self) -> &'static str {
        match self {
            Source::RulesFile(_) | Source::RulesEnv => "identity rules",
            _ => "keys",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env => f.write_str(crate::cli::ENV_AUTHORIZED_KEYS_TEXT),
            Source::CaFile(p) => write!(f, "{}", p.display()),
            Source::CaEnv => f.write_str(crate::cli::ENV_TRUSTED_CA_TEXT),
            Source::RulesFile(p) => write!(f, "{}", p.display()),
            Source::RulesEnv => f.write_str(crate::cli::ENV_AWS_IDENTITY_RULES_TEXT),
        }
    }
}

/// The two kinds of key file.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// OpenSSH authorized_keys: keys with options, `cert-authority` lines.
    AuthorizedKeys,
    /// OpenSSH TrustedUserCAKeys: bare CA public keys.
    TrustedCas,
}

impl Kind {
    fn file(self, path: &std::path::Path) -> Source {
        match self {
            Kind::AuthorizedKeys => Source::File(path.to_path_buf()),
            Kind::TrustedCas => Source::CaFile(path.to_path_buf()),
        }
    }

    fn env(self) -> Source {
        match self {
            Kind::AuthorizedKeys => Source::Env,
            Kind::TrustedCas => Source::CaEnv,
        }
    }
}

/// One key allowed to log in.
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    pub key: PublicKey,
    /// `SHA256:…`, the identity written to every audit event.
    pub fingerprint: String,
    pub comment: String,
    pub source: Source,
    pub line: usize,
    /// The line's options (`restrict`, `permitopen=`, `from=`, `cert-authority`, …).
    pub options: KeyOptions,
}

impl AuthorizedKey {
    /// Short type name for logs: `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`.
    pub fn key_type(&self) -> String {
        self.key.algorithm().to_string()
    }
}

/// A line that was skipped, or a source that could not be read (`line` = None).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub source: Source,
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(f, "{} line {}: {}", self.source, n, self.reason),
            None => write!(f, "{}: {}", self.source, self.reason),
        }
    }
}

/// The keys that may log in, and what was wrong with the rest.
#[derive(Debug, Default)]
pub struct AuthorizedKeys {
    keys: Vec<AuthorizedKey>,
    /// Lines skipped; the keys on other lines still work.
    pub skipped: Vec<Problem>,
    /// Sources that could not be read at all.
    pub unreadable: Vec<Problem>,
}

impl AuthorizedKeys {
    /// Reads every authorized_keys file, then the environment text.
    pub fn load(files: &[PathBuf], env_text: Option<&str>) -> Self {
        let mut this = Self::default();
        this.read(Kind::AuthorizedKeys, files, env_text);
        this
    }

    /// Reads trusted CA keys (OpenSSH TrustedUserCAKeys: one public key per
    /// line, no options). Each becomes a `cert-authority` entry.
    pub fn load_cas(&mut self, files: &[PathBuf], env_text: Option<&str>) {
        self.read(Kind::TrustedCas, files, env_text);
    }

    fn read(&mut self, kind: Kind, files: &[PathBuf], env_text: Option<&str>) {
        for path in files {
            let source = kind.file(path);
            match std::fs::read(path) {
                Ok(bytes) => self.add(kind, source, &bytes),
                Err(e) => self.unreadable.push(Problem { source, line: None, reason: format!("cannot read: {e}") }),
            }
        }
        if let Some(text) = env_text {
            self.add(kind, kind.env(), text.as_bytes());
        }
    }

    /// Parses one source's authorized_keys text and adds its keys (tests and fuzzing).
    pub fn add_text(&mut self, source: Source, bytes: &[u8]) {
        self.add(Kind::AuthorizedKeys, source, bytes);
    }

    fn add(&mut self, kind: Kind, source: Source, bytes: &[u8]) {
        for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
            let line = index + 1;
            let parsed = parse_line(raw, index == 0).and_then(|entry| match (kind, entry) {
                (Kind::TrustedCas, Some((_, options))) if options != KeyOptions::default() => {
                    Err("options are not allowed in a trusted CA keys file".to_string())
                }
                (Kind::TrustedCas, Some((key, _))) => {
                    Ok(Some((key, KeyOptions { cert_authority: true, ..KeyOptions::default() })))
                }
                (_, other) => Ok(other),
            });
            match parsed {
                Ok(None) => {}
                Ok(Some((key, options))) => self.push(source.clone(), line, key, options),
                Err(reason) => self.skipped.push(Problem { source: source.clone(), line: Some(line), reason }),
            }
        }
    }

    /// Adds a key unless the same key is already listed in the same role.
    fn push(&mut self, source: Source, line: usize, key: PublicKey, options: KeyOptions) {
        if let Some(first) = self
            .keys
            .iter()
            .find(|k| k.key.key_data() == key.key_data() && k.options.cert_authority == options.cert_authority)
        {
            let reason = format!("duplicate of {} line {}; ignored", first.source, first.line);
            self.skipped.push(Problem { source, line: Some(line), reason });
            return;
        }
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let comment = key.comment().as_str_lossy().to_string();
        self.keys.push(AuthorizedKey { key, fingerprint, comment, source, line, options });
    }

    /// The trusted CA that signed a certificate: a `cert-authority` entry with that key.
    pub fn find_ca(&self, ca: &KeyData) -> Option<&AuthorizedKey> {
        self.keys.iter().find(|k| k.options.cert_authority && k.key.key_data() == ca)
    }

    /// Whether any certificate authority is trusted.
    pub fn has_cas(&self) -> bool {
        self.keys.iter().any(|k| k.options.cert_authority)
    }

    /// The login entry for this key, compared by key material (never by
    /// comment). A `cert-authority` line never logs in with its own key.
    pub fn find(&self, key: &PublicKey) -> Option<&AuthorizedKey> {
        self.keys.iter().find(|k| !k.options.cert_authority && k.key.key_data() == key.key_data())
    }

    pub fn keys(&self) -> &[AuthorizedKey] {
        &self.keys
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

const CERTIFICATE_LINE: &str =
    "certificates do not belong in authorized_keys; list the CA's public key with the cert-authority option instead";

/// One line: `Ok(None)` for blanks and comments, `Err(reason)` for anything unusable.
fn parse_line(raw: &[u8], first: bool) -> Result<Option<(PublicKey, KeyOptions)>, String> {
    if raw.len() > MAX_LINE_BYTES {
        return Err(format!("line is {} bytes, longer than the {MAX_LINE_BYTES} allowed", raw.len()));
    }
    let text = std::str::from_utf8(raw).map_err(|_| "not valid UTF-8 text".to_string())?;
    let text = if first { text.trim_start_matches('\u{feff}') } else { text };
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let (field, key_text) = options::split_line(text);
    // The key first: if there is none, the line is not what the operator
    // thinks it is, whatever its first word looks like.
    let key = PublicKey::from_openssh(key_text).map_err(|e| {
        let key_type = key_text.split_whitespace().next().unwrap_or("");
        if key_type.ends_with("-cert-v01@openssh.com") {
            CERTIFICATE_LINE.to_string()
        } else if field.is_some_and(options::has_unclosed_quote) {
            "unterminated quote in the options (a '\"' is missing)".to_string()
        } else {
            format!("not an authorized_keys line ({e}); expected `[options] key-type base64-key [comment]`")
        }
    })?;
    let options = match field {
        Some(field) => KeyOptions::parse(field)?,
        None => KeyOptions::default(),
    };
    check_key_type(&key)?;
    Ok(Some((key, options)))
}

/// Accepts Ed25519, ECDSA (P-256/384/521) and RSA of at least [`MIN_RSA_BITS`].
pub fn check_key_type(key: &PublicKey) -> Result<(), String> {
    match key.key_data() {
        KeyData::Ed25519(_) | KeyData::Ecdsa(_) => Ok(()),
        KeyData::Rsa(rsa) if rsa.key_size() >= MIN_RSA_BITS => Ok(()),
        KeyData::Rsa(rsa) => {
            Err(format!("RSA key of {} bits is too small; at least {MIN_RSA_BITS} bits are required", rsa.key_size()))
        }
        KeyData::Dsa(_) => Err("DSA keys are not accepted (broken, removed from OpenSSH)".into()),
        KeyData::Certificate(_) => Err(CERTIFICATE_LINE.into()),
        other => Err(format!(
            "{} keys are not supported; use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or RSA >= {MIN_RSA_BITS} bits",
            other.algorithm()
        )),
    }
}

/// Signature algorithms accepted for a user key: refuses `ssh-rsa` (SHA-1).
pub fn check_signature_algorithm(algorithm: &Algorithm) -> Result<(), String> {
    match algorithm {
        Algorithm::Rsa { hash: None } => Err("ssh-rsa (SHA-1) signatures are refused; \
                                              the client must sign with rsa-sha2-256 or rsa-sha2-512"
            .into()),
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } | Algorithm::Rsa { hash: Some(_) } => Ok(()),
        other => Err(format!("signature algorithm {other} is not accepted")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMouBJPrRxxk89otV9qDvWqJZIuTKXmkT0BnxZbMGWgy alice@laptop";
    const ED2: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBLNjqFsyl02Py/OK5ObyQ9dPhMKGctzBO+L2/xyVsEX";

    fn parse(text: &str) -> AuthorizedKeys {
        let mut k = AuthorizedKeys::default();
        k.add_text(Source::Env, text.as_bytes());
        k
    }

    #[test]
    fn reads_keys_and_skips_comments_blanks_bom_and_crlf() {
        let k = parse(&format!("\u{feff}# team\r\n\r\n{ED}\r\n   {ED2}  \n"));
        assert_eq!(k.len(), 2, "{:?}", k.skipped);
        assert!(k.skipped.is_empty());
        assert_eq!(k.keys()[0].comment, "alice@laptop");
        assert_eq!(k.keys()[0].line, 3);
        assert!(k.keys()[0].fingerprint.starts_with("SHA256:"));
    }

    #[test]
    fn bad_lines_are_skipped_with_source_line_and_reason() {
        let k = parse(&format!("{ED}\nnot a key\n\u{0}\u{1}\nssh-ed25519 AAAA!!!\n{ED}\n"));
        assert_eq!(k.len(), 1);
        let lines: Vec<_> = k.skipped.iter().map(|p| p.line.unwrap()).collect();
        assert_eq!(lines, vec![2, 3, 4, 5]);
        let shown = k.skipped[0].to_string();
        assert!(shown.starts_with("BASTION_AUTHORIZED_KEYS line 2: not an authorized_keys line"), "{shown}");
        assert!(k.skipped[3].reason.contains("duplicate of BASTION_AUTHORIZED_KEYS line 1"));
    }

    #[test]
    fn non_utf8_and_huge_lines_are_refused() {
        let mut k = AuthorizedKeys::default();
        let mut bytes = b"\xff\xfe garbage\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'A', MAX_LINE_BYTES + 1));
        k.add_text(Source::Env, &bytes);
        assert_eq!(k.skipped.len(), 2);
        assert!(k.skipped[0].reason.contains("UTF-8"));
        assert!(k.skipped[1].reason.contains("longer than"));
    }

    #[test]
    fn options_are_parsed_and_bad_options_skip_the_line() {
        let k = parse(&format!("restrict,port-forwarding,permitopen=\"db:5432\" {ED}\nfrobnicate {ED2}\n"));
        assert_eq!(k.len(), 1);
        assert!(k.keys()[0].options.rights.port_forwarding);
        assert_eq!(k.keys()[0].comment, "alice@laptop");
        assert_eq!(k.skipped[0].line, Some(2));
        assert!(k.skipped[0].reason.contains("unknown option \"frobnicate\""), "{}", k.skipped[0].reason);
    }

    #[test]
    fn cert_authority_keys_do_not_log_in_themselves() {
        let k = parse(&format!("cert-authority,principals=\"ops\" {ED}"));
        assert_eq!(k.len(), 1);
        let key = PublicKey::from_openssh(ED).unwrap();
        assert!(k.find(&key).is_none());
    }

    #[test]
    fn small_rsa_keys_are_refused() {
        // 1024-bit RSA key.
        let rsa1024 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDUIG9lERphchKK97dCU8ew5ZDS+AR293mVO+mCMkvXlQgHjbWRT0StJgozIvHhW/C/UUPJMFyVyGjd0DwWEYqdLvMSIP02mkjGwZrewtEJlZf5NLipzd+rq3GRTU4pg1AD84w0lP8bqelo4BrbJ9Xj+98PRWbAnl7Ln9txRC0e7w== small";
        let k = parse(rsa1024);
        assert!(k.is_empty());
        assert!(k.skipped[0].reason.contains("1024 bits is too small"), "{}", k.skipped[0].reason);
    }

    #[test]
    fn unreadable_file_is_reported() {
        let k = AuthorizedKeys::load(&[PathBuf::from("/nonexistent/authorized_keys")], None);
        assert_eq!(k.unreadable.len(), 1);
        assert!(k.unreadable[0].to_string().starts_with("/nonexistent/authorized_keys: cannot read"));
    }

    #[test]
    fn sha1_rsa_signatures_are_refused() {
        assert!(check_signature_algorithm(&Algorithm::Rsa { hash: None }).is_err());
        assert!(check_signature_algorithm(&Algorithm::Rsa { hash: Some(HashAlg::Sha256) }).is_ok());
        assert!(check_signature_algorithm(&Algorithm::Rsa { hash: Some(HashAlg::Sha512) }).is_ok());
        assert!(check_signature_algorithm(&Algorithm::Ed25519).is_ok());
    }
}
