//! Is this the bastion's host key? Checked against known_hosts before
//! anything identifying leaves the laptop: the proof is signed only after
//! the key exchange has shown a host key that known_hosts lists for HOST.

use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::{Algorithm, HashAlg, PublicKey};

/// The host keys known_hosts lists for one host and port.
#[derive(Debug, Clone)]
pub struct Known {
    pub file: PathBuf,
    /// `HOST` or `[HOST]:PORT`, as looked up.
    pub name: String,
    /// Each key and its line.
    pub keys: Vec<(usize, PublicKey)>,
}

/// What the server showed, judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Known,
    /// known_hosts lists other keys for this host: possibly an attack.
    Changed {
        lines: Vec<usize>,
    },
}

impl Known {
    /// Reads the keys listed for `host`:`port`, as OpenSSH reads known_hosts:
    /// plain and hashed names, `*`/`?` patterns, `!` negation. A key marked
    /// `@revoked` for the host is never accepted; `@cert-authority` lines
    /// (host certificates) are not used. Lines that cannot be read are
    /// skipped, as ssh skips them. A file that does not exist lists nothing.
    pub fn load(file: &Path, host: &str, port: u16) -> Result<Self, String> {
        let name =
            if port == 22 { host.to_ascii_lowercase() } else { format!("[{}]:{port}", host.to_ascii_lowercase()) };
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("{}: cannot read known hosts: {e}", file.display())),
        };
        let mut keys = Vec::new();
        let mut revoked = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Ok(entry) = line.parse::<Entry>() else { continue };
            if !matches_host(entry.host_patterns(), &name) {
                continue;
            }
            match entry.marker() {
                None => keys.push((index + 1, entry.public_key().clone())),
                Some(Marker::Revoked) => revoked.push(entry.public_key().key_data().clone()),
                Some(_) => {}
            }
        }
        keys.retain(|(_, k)| !revoked.contains(k.key_data()));
        Ok(Self { file: file.to_path_buf(), name, keys })
    }

    /// Key algorithms to ask the server for, those known first, so that a
    /// server with several host keys shows one that can be checked.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let mut algorithms: Vec<Algorithm> = Vec::new();
        for (_, key) in &self.keys {
            if !algorithms.contains(&key.algorithm()) {
                algorithms.push(key.algorithm());
            }
        }
        algorithms
    }

    pub fn judge(&self, shown: &PublicKey) -> Verdict {
        if self.keys.iter().any(|(_, k)| k.key_data() == shown.key_data()) {
            Verdict::Known
        } else {
            Verdict::Changed { lines: self.keys.iter().map(|(line, _)| *line).collect() }
        }
    }

    /// What to tell the user when HOST is not listed at all.
    pub fn unknown_message(&self, host: &str) -> String {
        format!(
            "{} has no host key for {} (nothing was sent to the bastion). Check the key with your operator, then \
             either run `bastion login --trust-from-ssm PARAMETER {host}` (the stack publishes it), or `ssh {host}` \
             once and compare the fingerprint it shows",
            self.file.display(),
            self.name
        )
    }
}

/// OpenSSH's rule for a known_hosts host field: a hashed name matches its
/// hash; in a pattern list, a negated match refuses, any other match accepts.
fn matches_host(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => hmac::Hmac::<sha1::Sha1>::new_from_slice(salt)
            .map(|mac| mac.chain_update(name.as_bytes()).verify_slice(hash).is_ok())
            .unwrap_or(false),
        HostPatterns::Patterns(list) => {
            let mut matched = false;
            for pattern in list {
                let pattern = pattern.to_ascii_lowercase();
                match pattern.strip_prefix('!') {
                    Some(negated) if glob(negated.as_bytes(), name.as_bytes()) => return false,
                    Some(_) => {}
                    None => matched |= glob(pattern.as_bytes(), name.as_bytes()),
                }
            }
            matched
        }
    }
}

/// `*` and `?`, iteratively (no backtracking blow-up).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
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

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMouBJPrRxxk89otV9qDvWqJZIuTKXmkT0BnxZbMGWgy";
    const ED2: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBLNjqFsyl02Py/OK5ObyQ9dPhMKGctzBO+L2/xyVsEX";

    #[test]
    fn hashed_names_match_as_ssh_keygen_writes_them() {
        // The HMAC-SHA1 of `ssh-keygen -H` (tests/aws_login.rs logs in through a file it hashed).
        let salt = [7u8; 20];
        let hash: [u8; 20] = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt)
            .unwrap()
            .chain_update(b"[bastion.example.com]:2222")
            .finalize()
            .into_bytes()
            .into();
        let patterns = HostPatterns::HashedName { salt: salt.to_vec(), hash };
        assert!(matches_host(&patterns, "[bastion.example.com]:2222"));
        assert!(!matches_host(&patterns, "bastion.example.com"));
    }

    #[test]
    fn keys_are_found_by_host_and_port_and_judged() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        std::fs::write(
            &file,
            format!("# c\nother.example.com {ED2}\nbastion.example.com {ED}\n[bastion.example.com]:2222 {ED2}\n"),
        )
        .unwrap();
        let known = Known::load(&file, "bastion.example.com", 22).unwrap();
        assert_eq!(known.keys.len(), 1);
        assert_eq!(known.judge(&PublicKey::from_openssh(ED).unwrap()), Verdict::Known);
        assert_eq!(known.judge(&PublicKey::from_openssh(ED2).unwrap()), Verdict::Changed { lines: vec![3] });
        let other_port = Known::load(&file, "bastion.example.com", 2222).unwrap();
        assert_eq!(other_port.name, "[bastion.example.com]:2222");
        assert_eq!(other_port.judge(&PublicKey::from_openssh(ED2).unwrap()), Verdict::Known);
        let none = Known::load(&dir.path().join("missing"), "bastion.example.com", 22).unwrap();
        // Patterns, negation, revocation.
        std::fs::write(
            &file,
            format!(
                "*.example.com,!evil.example.com {ED}\n@revoked revoked.example.com {ED}\nrevoked.example.com {ED}\n"
            ),
        )
        .unwrap();
        assert_eq!(Known::load(&file, "Bastion.Example.com", 22).unwrap().keys.len(), 1);
        assert!(Known::load(&file, "evil.example.com", 22).unwrap().keys.is_empty());
        assert!(Known::load(&file, "revoked.example.com", 22).unwrap().keys.is_empty());
        assert!(none.keys.is_empty());
        assert!(none.unknown_message("bastion.example.com").contains("nothing was sent"));
    }
}
