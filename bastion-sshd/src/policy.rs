//! Destination policy: may this identity open a tunnel to this target?
//!
//! [`Policy::decide`] is the single place where that question is answered.
//! For now every syntactically valid target is allowed; the destination
//! policy (permit lists, denied address ranges, per-key `permitopen`) grows
//! here without touching the SSH glue.

use std::fmt;

use crate::auth::Identity;

/// Longest host name accepted in a direct-tcpip request (DNS limit is 253).
const MAX_HOST_LEN: usize = 255;

/// A tunnel target as the client asked for it (`ssh -L local:HOST:PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Validates the raw fields of a direct-tcpip request.
    pub fn parse(host: &str, port: u32) -> Result<Self, String> {
        if host.is_empty() {
            return Err("empty target host".into());
        }
        if host.len() > MAX_HOST_LEN {
            return Err(format!(
                "target host is {} bytes long; at most {MAX_HOST_LEN} allowed",
                host.len()
            ));
        }
        if host.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("target host contains whitespace or control characters".into());
        }
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("target port {port} is not in 1-65535"))?;
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The answer to "may this key open this target?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused; the reason is sent to the client and written to the audit log.
    /// (Nothing denies yet: the destination policy is the next step.)
    #[allow(dead_code)]
    Deny(String),
}

/// The destination policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {}

impl Policy {
    /// Allows every target for now.
    pub fn decide(&self, _who: &Identity, _target: &Target) -> Decision {
        Decision::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_validated() {
        assert_eq!(
            Target::parse("db.internal", 5432).unwrap().to_string(),
            "db.internal:5432"
        );
        assert_eq!(Target::parse("::1", 22).unwrap().to_string(), "[::1]:22");
        assert!(Target::parse("", 22).unwrap_err().contains("empty"));
        assert!(
            Target::parse("db", 0)
                .unwrap_err()
                .contains("not in 1-65535")
        );
        assert!(
            Target::parse("db", 70000)
                .unwrap_err()
                .contains("not in 1-65535")
        );
        assert!(Target::parse("db\nx", 22).is_err());
        assert!(Target::parse(&"a".repeat(300), 22).is_err());
    }
}
