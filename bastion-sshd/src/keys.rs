//! Everything that decides who may log in — authorized keys, trusted CAs,
//! revoked keys — loaded together, so that start-up, `check-config` and a
//! reload (SIGHUP, a changed file) all see the same thing.

use std::path::PathBuf;

use russh::keys::PublicKey;
use russh::keys::ssh_key::public::KeyData;

use crate::authorized_keys::{AuthorizedKeys, Problem};
use crate::cli::{ENV_AUTHORIZED_KEYS_TEXT, ENV_AWS_IDENTITY_RULES_TEXT, ENV_TRUSTED_CA_TEXT, ServerArgs};
use crate::identity_rules::IdentityRules;

/// Where keys come from; read again on every reload.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    pub authorized_files: Vec<PathBuf>,
    /// `BASTION_AUTHORIZED_KEYS`, read once at start (the environment cannot change).
    pub authorized_env: Option<String>,
    pub ca_files: Vec<PathBuf>,
    /// `BASTION_TRUSTED_USER_CA_KEYS`.
    pub ca_env: Option<String>,
    pub revoked_files: Vec<PathBuf>,
    /// `--aws-identity-rules` files.
    pub rules_files: Vec<PathBuf>,
    /// `BASTION_AWS_IDENTITY_RULES`.
    pub rules_env: Option<String>,
    /// The public key of `--user-ca-key`, when AWS logins are on: its
    /// certificates are judged by the identity rules. Fixed at start.
    pub login_ca: Option<KeyData>,
}

/// The keys in force.
#[derive(Debug, Default)]
pub struct KeyStore {
    /// Login keys and `cert-authority` entries (from authorized_keys and CA files).
    pub authorized: AuthorizedKeys,
    pub revoked: RevokedKeys,
    /// Who may log in by AWS identity (`--aws-identity-rules`).
    pub rules: IdentityRules,
    /// The CA of `bastion login` certificates ([`KeySources::login_ca`]).
    pub login_ca: Option<KeyData>,
}

/// What loading found wrong.
#[derive(Debug, Default)]
pub struct LoadProblems {
    /// Lines skipped; everything else still works.
    pub skipped: Vec<Problem>,
    /// Problems that make this set of keys unusable: an unreadable source, a
    /// bad revocation list, or no key that could log in.
    pub fatal: Vec<String>,
}

impl LoadProblems {
    /// Warns about each skipped line; the other keys work.
    pub fn log_skipped(&self) {
        for problem in &self.skipped {
            tracing::warn!(event = "config.problem", source = %problem.source, line = problem.line,
                reason = %problem.reason, "{} {problem} (line skipped)", problem.source.what());
        }
    }
}

impl KeySources {
    pub fn from_args(args: &ServerArgs) -> Self {
        Self {
            authorized_files: args.authorized_keys.clone(),
            authorized_env: non_empty_env(ENV_AUTHORIZED_KEYS_TEXT),
            ca_files: args.trusted_user_ca_keys.clone(),
            ca_env: non_empty_env(ENV_TRUSTED_CA_TEXT),
            revoked_files: args.revoked_keys.clone(),
            rules_files: args.aws_identity_rules.clone(),
            rules_env: non_empty_env(ENV_AWS_IDENTITY_RULES_TEXT),
            login_ca: None,
        }
    }

    /// Every file this set of keys is read from (watched for changes).
    pub fn files(&self) -> Vec<PathBuf> {
        self.authorized_files
            .iter()
            .chain(&self.ca_files)
            .chain(&self.revoked_files)
            .chain(&self.rules_files)
            .cloned()
            .collect()
    }

    pub fn load(&self) -> (KeyStore, LoadProblems) {
        let mut authorized = AuthorizedKeys::load(&self.authorized_files, self.authorized_env.as_deref());
        authorized.load_cas(&self.ca_files, self.ca_env.as_deref());
        let mut rules = IdentityRules::load(&self.rules_files, self.rules_env.as_deref());
        let mut problems = LoadProblems { skipped: std::mem::take(&mut authorized.skipped), fatal: Vec::new() };
        problems.skipped.append(&mut rules.skipped);
        problems.fatal.extend(authorized.unreadable.drain(..).map(|p| format!("keys {p}")));
        problems.fatal.extend(rules.unreadable.drain(..).map(|p| format!("identity rules {p}")));
        let revoked = match RevokedKeys::load(&self.revoked_files) {
            Ok(revoked) => revoked,
            Err(errors) => {
                problems.fatal.extend(errors);
                RevokedKeys::default()
            }
        };
        let rules_configured = !self.rules_files.is_empty() || self.rules_env.is_some();
        if rules_configured && self.login_ca.is_none() {
            problems.fatal.push(
                "--aws-identity-rules is set but --user-ca-key (or BASTION_USER_CA_KEY) is not: \
                 AWS logins need a CA to sign their certificates"
                    .into(),
            );
        }
        if authorized.is_empty() && (rules.is_empty() || self.login_ca.is_none()) {
            problems.fatal.push(format!(
                "no usable authorized key, certificate authority or AWS identity rule: give --authorized-keys PATH \
                 (or BASTION_AUTHORIZED_KEYS_FILE), the keys themselves in {ENV_AUTHORIZED_KEYS_TEXT}, \
                 --trusted-user-ca-keys, or --aws-identity-rules with --user-ca-key"
            ));
        }
        (KeyStore { authorized, revoked, rules, login_ca: self.login_ca.clone() }, problems)
    }
}

/// The key store in force, replaced whole by a reload. Readers take an
/// `Arc` and never hold the lock across an await.
#[derive(Debug)]
pub struct LiveKeys {
    current: std::sync::RwLock<std::sync::Arc<KeyStore>>,
}

impl LiveKeys {
    pub fn new(store: KeyStore) -> Self {
        Self { current: std::sync::RwLock::new(std::sync::Arc::new(store)) }
    }

    pub fn get(&self) -> std::sync::Arc<KeyStore> {
        self.current.read().map(|k| k.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }

    pub fn replace(&self, store: KeyStore) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        *current = std::sync::Arc::new(store);
    }
}

/// Revoked keys (OpenSSH RevokedKeys, plain public keys).
#[derive(Debug, Default)]
pub struct RevokedKeys {
    keys: Vec<KeyData>,
}

impl RevokedKeys {
    /// Strict: a revocation list that cannot be read completely is an error,
    /// never a shorter list.
    pub fn load(files: &[PathBuf]) -> Result<Self, Vec<String>> {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for path in files {
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(e) => {
                    errors.push(format!("revoked keys {}: cannot read: {e}", path.display()));
                    continue;
                }
            };
            for (index, line) in text.lines().enumerate() {
                let line = line.trim().trim_start_matches('\u{feff}');
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                match PublicKey::from_openssh(line) {
                    Ok(key) => keys.push(key.key_data().clone()),
                    Err(e) => errors.push(format!(
                        "revoked keys {} line {}: not a public key ({e}); a revocation list must be read completely",
                        path.display(),
                        index + 1
                    )),
                }
            }
        }
        if errors.is_empty() { Ok(Self { keys }) } else { Err(errors) }
    }

    pub fn contains(&self, key: &KeyData) -> bool {
        self.keys.iter().any(|k| k == key)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// An environment variable's value, treating empty as unset (ECS writes empty strings).
pub fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}
