//! Everything the server loads at start, in one place, so that `run` and
//! `check-config` load exactly the same things the same way.

use std::env::VarError;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::aws_login::ca::UserCa;
use crate::aws_login::sts::Sts;
use crate::cli::{ENV_HOST_KEY_TEXT, ENV_USER_CA_KEY_TEXT, ServerArgs};
use crate::hostkey::{self, HostKey, HostKeyError, Source};
use crate::keys::{KeySources, KeyStore, LoadProblems};
use crate::limits::Limits;
use crate::policy::{PermitList, Policy};

use ipnet::IpNet;

/// Port used when no `--listen` is given.
pub const DEFAULT_PORT: u16 = 22;

/// What to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// Nothing configured: `[::]:22` dual-stack, or `0.0.0.0:22` where IPv6 is off.
    Default,
    Explicit(Vec<SocketAddr>),
}

impl Listen {
    pub fn default_dual_stack() -> SocketAddr {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, DEFAULT_PORT))
    }

    pub fn default_ipv4() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_PORT))
    }
}

/// The loaded configuration and every problem found on the way.
pub struct Loaded {
    pub listen: Listen,
    /// Configured host keys (empty if none were configured or one was bad).
    pub host_keys: Vec<HostKey>,
    pub host_key_errors: Vec<HostKeyError>,
    /// Where keys come from (kept for reloads).
    pub key_sources: KeySources,
    /// Authorized keys, trusted CAs, revoked keys.
    pub keys: KeyStore,
    pub key_problems: LoadProblems,
    /// The destination policy (`--permit-open`).
    pub policy: Policy,
    /// Bad `--permit-open` entries.
    pub policy_errors: Vec<String>,
    /// Connection limits and penalties.
    pub limits: Limits,
    /// Bad `--penalty-exempt` entries.
    pub limit_errors: Vec<String>,
    /// `--user-ca-key`: AWS logins are on when it is set.
    pub user_ca: Option<UserCa>,
    /// Where AWS login proofs go (with `user_ca`).
    pub sts: Option<Sts>,
    /// What keeps AWS logins from working: a bad CA key, no STS endpoint.
    pub aws_errors: Vec<String>,
}

/// The user CA key and STS endpoint, and what is wrong with them.
fn load_aws_login(args: &ServerArgs) -> (Option<UserCa>, Option<Sts>, Vec<String>) {
    let mut errors = Vec::new();
    let env_text = match std::env::var(ENV_USER_CA_KEY_TEXT) {
        Ok(text) if text.trim().is_empty() => {
            errors.push(format!("user CA key {ENV_USER_CA_KEY_TEXT}: set but empty"));
            None
        }
        Ok(text) => Some(text),
        Err(VarError::NotPresent) => None,
        Err(VarError::NotUnicode(_)) => {
            errors.push(format!("user CA key {ENV_USER_CA_KEY_TEXT}: the variable is not UTF-8 text"));
            None
        }
    };
    let ca = match UserCa::load(args.user_ca_key.as_deref(), env_text.as_deref()) {
        Ok(ca) => ca,
        Err(e) => {
            errors.push(e);
            None
        }
    };
    if ca.is_none() {
        return (None, None, errors);
    }
    let region_env = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|r| !r.trim().is_empty()));
    let endpoint = match (&args.sts_endpoint, &region_env) {
        (Some(endpoint), _) => endpoint.clone(),
        (None, Some(region)) => bastion_common::region::sts_endpoint(region.trim()),
        (None, None) => {
            errors.push(
                "--user-ca-key is set, so AWS logins are on, but there is no STS endpoint: set AWS_REGION \
                 (ECS sets it) or --sts-endpoint"
                    .into(),
            );
            return (ca, None, errors);
        }
    };
    let host = endpoint.split("://").nth(1).unwrap_or("").split(['/', ':']).next().unwrap_or("");
    let region = args
        .sts_region
        .clone()
        .or_else(|| bastion_common::region::sts_region_of_host(host))
        .or(region_env)
        .unwrap_or_default();
    match Sts::new(&endpoint, region.trim()) {
        Ok(sts) => (ca, Some(sts), errors),
        Err(e) => {
            errors.push(e);
            (ca, None, errors)
        }
    }
}

impl Loaded {
    pub fn load(args: &ServerArgs) -> Self {
        // Read here, not through clap nor `non_empty_env`, which take blank for
        // unset: a blank BASTION_HOST_KEY must be refused, not mean an ephemeral key.
        let env_text = std::env::var(ENV_HOST_KEY_TEXT);
        let (mut host_keys, mut host_key_errors) = match hostkey::load(&args.host_keys, env_text.as_deref().ok()) {
            Ok(keys) => (keys, Vec::new()),
            Err(errors) => (Vec::new(), errors),
        };
        if let Err(VarError::NotUnicode(_)) = env_text {
            host_keys.clear();
            host_key_errors.push(HostKeyError { source: Source::Env, reason: "the variable is not UTF-8 text".into() });
        }
        let (user_ca, sts, mut aws_errors) = load_aws_login(args);
        let mut key_sources = KeySources::from_args(args);
        key_sources.login_ca = user_ca.as_ref().map(|ca| ca.public_key().key_data().clone());
        if let Some(ca) = &user_ca
            && host_keys.iter().any(|k| k.key.public_key().key_data() == ca.public_key().key_data())
        {
            aws_errors
                .push(format!("the user CA key ({}) is also a host key: give the CA a key of its own", ca.source));
        }
        let (keys, key_problems) = key_sources.load();
        let listen = if args.listen.is_empty() { Listen::Default } else { Listen::Explicit(args.listen.clone()) };
        let (policy, policy_errors) = match PermitList::parse_list(&args.permit_open.join(",")) {
            Ok(global) => (Policy { global }, Vec::new()),
            Err(e) => (Policy::default(), vec![format!("--permit-open / BASTION_PERMIT_OPEN: {e}")]),
        };
        let mut limit_errors = Vec::new();
        let mut ranges = |values: &[String], option: &str| -> Vec<IpNet> {
            values
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty() && *s != "none")
                .filter_map(|s| match s.parse::<IpNet>() {
                    Ok(net) => Some(net),
                    Err(_) => {
                        limit_errors.push(format!("{option}: {s:?} is not a CIDR range"));
                        None
                    }
                })
                .collect()
        };
        let penalty_exempt = ranges(&args.penalty_exempt, "--penalty-exempt / BASTION_PENALTY_EXEMPT");
        let health_check_sources =
            ranges(&args.health_check_sources, "--health-check-sources / BASTION_HEALTH_CHECK_SOURCES");
        let limits = Limits {
            max_connections: args.max_connections,
            max_startups: args.max_startups,
            per_source_max_startups: args.per_source_max_startups,
            penalty: args.penalty,
            penalty_max: args.penalty_max,
            penalty_exempt,
            health_check_sources,
        };
        Self {
            listen,
            host_keys,
            host_key_errors,
            key_sources,
            keys,
            key_problems,
            policy,
            policy_errors,
            limits,
            limit_errors,
            user_ca,
            sts,
            aws_errors,
        }
    }

    /// Problems that stop the server from starting: a bad host key (the
    /// server's identity would change), a bad `--permit-open`, an unreadable
    /// key source (a key that should work would not, a revocation that should
    /// apply would not), or no usable key at all (nobody could log in).
    pub fn fatal_errors(&self) -> Vec<String> {
        let mut errors: Vec<String> = self.host_key_errors.iter().map(|e| e.to_string()).collect();
        errors.extend(self.policy_errors.iter().cloned());
        errors.extend(self.limit_errors.iter().cloned());
        errors.extend(self.key_problems.fatal.iter().cloned());
        errors.extend(self.aws_errors.iter().cloned());
        errors
    }

    /// Host keys to serve with: the configured ones, or a new ephemeral key.
    pub fn host_keys_or_ephemeral(&mut self) -> (Vec<HostKey>, bool) {
        if self.host_keys.is_empty() {
            (vec![HostKey { key: hostkey::generate(), source: Source::Ephemeral }], true)
        } else {
            (std::mem::take(&mut self.host_keys), false)
        }
    }
}
