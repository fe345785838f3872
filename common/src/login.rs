//! The AWS-identity login protocol between `bastion login` and `bastion-sshd`,
//! version 1. It rides on SSH keyboard-interactive authentication (RFC 4256),
//! after the client has verified the server's host key:
//!
//! 1. The client asks for keyboard-interactive with the submethod
//!    [`SUBMETHOD`]. (The server never advertises keyboard-interactive, so
//!    stock `ssh` never prompts for it.)
//! 2. The server answers with one prompt whose instructions are a
//!    [`Challenge`]: its name, a fresh nonce, and the STS host and region it
//!    will send the proof to.
//! 3. The client answers with a [`Proof`]: a fresh public key and an
//!    `sts:GetCallerIdentity` request signed with SigV4 for that host. A signed
//!    [`BINDING_HEADER`] ([`Binding`]) ties the request to the bastion the user
//!    named, the host key the client verified, the public key and the nonce.
//! 4. The server checks the binding and the age, sends the request to *its own*
//!    configured STS endpoint, reads the ARN, matches it against its identity
//!    rules and answers with an info request without prompts whose
//!    instructions are the [`Outcome`]: a certificate, or why not.
//! 5. The client answers with no responses; the server ends the
//!    authentication with a failure, and the client disconnects and uses the
//!    certificate with plain `ssh`.

use serde::{Deserialize, Serialize};

/// The keyboard-interactive submethod that asks for an AWS login.
pub const SUBMETHOD: &str = "aws-sts-v1";
/// The keyboard-interactive `name` field of both info requests.
pub const PROMPT_NAME: &str = "bastion AWS login";
/// The one prompt of the challenge.
pub const PROMPT: &str = "proof: ";
/// The signed header that binds a proof to one bastion, host key, public key
/// and connection. Not an `x-amz-` header: STS ignores it, but the signature covers it.
pub const BINDING_HEADER: &str = "x-bastion-login";
/// The only request a proof may carry.
pub const STS_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
/// The content type of that request.
pub const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
/// The largest proof the server reads. A proof with a session token from IAM
/// Identity Center is about 2.5 KB; a role-chained token can be longer.
pub const MAX_PROOF_BYTES: usize = 16 * 1024;
/// How old a proof may be (its `x-amz-date`), and how far ahead of the
/// server's clock it may run: the window is 5 minutes back, 1 minute forward.
pub const MAX_PROOF_AGE_SECS: u64 = 5 * 60;
pub const MAX_PROOF_AHEAD_SECS: u64 = 60;
/// Protocol version of every message.
pub const VERSION: u32 = 1;

/// Server → client: what to sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub version: u32,
    /// The server's `--name`. Shown to the user; the binding carries the name
    /// the *user* connected to, which the server compares with this.
    pub bastion: String,
    /// Fresh for each connection: a proof answers one challenge only.
    pub nonce: String,
    /// The `host` the request must be signed for: the server's STS endpoint.
    pub sts_host: String,
    pub sts_region: String,
}

/// Client → server: a signed `sts:GetCallerIdentity` and the key to certify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub version: u32,
    /// OpenSSH public key line of the fresh key the certificate is for.
    pub public_key: String,
    pub method: String,
    /// Every header of the signed request, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Proof {
    /// The value of a header (names compare case-insensitively); None if absent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Server → client: the end of the login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Outcome {
    pub version: u32,
    pub ok: bool,
    /// The ARN STS returned, when the proof got that far.
    #[serde(default)]
    pub arn: Option<String>,
    /// Why the login was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The OpenSSH user certificate (a `…-cert-v01@openssh.com` line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Seconds since the epoch at which the certificate expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_before: Option<u64>,
    /// Where tunnels may go, as the rule and the server's `--permit-open` say
    /// (`any` for no restriction); empty when the rule forbids tunnels.
    #[serde(default)]
    pub tunnels: Vec<String>,
}

impl Outcome {
    pub fn refused(arn: Option<String>, reason: impl Into<String>) -> Self {
        Self { version: VERSION, ok: false, arn, reason: Some(reason.into()), ..Self::default() }
    }
}

/// What the [`BINDING_HEADER`] says:
/// `v1 bastion=NAME; host-key=SHA256:…; key=SHA256:…; nonce=NONCE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The bastion's name as the user gave it ([`normalize_name`]).
    pub bastion: String,
    /// `SHA256:…` of the host key the client verified before signing.
    pub host_key: String,
    /// `SHA256:…` of the public key the certificate is for.
    pub key: String,
    /// The challenge's nonce.
    pub nonce: String,
}

impl Binding {
    pub fn to_header(&self) -> String {
        format!("v1 bastion={}; host-key={}; key={}; nonce={}", self.bastion, self.host_key, self.key, self.nonce)
    }

    /// Strict: exactly the four fields, in order, each a plain token.
    pub fn parse(value: &str) -> Result<Self, String> {
        let rest =
            value.trim().strip_prefix("v1 ").ok_or_else(|| format!("{BINDING_HEADER} is not version 1 ({value:?})"))?;
        let mut fields = rest.split("; ");
        let mut field = |name: &str| -> Result<String, String> {
            let part = fields.next().ok_or_else(|| format!("{BINDING_HEADER} has no {name}="))?;
            let v = part
                .strip_prefix(name)
                .and_then(|p| p.strip_prefix('='))
                .ok_or_else(|| format!("{BINDING_HEADER}: expected {name}=…, found {part:?}"))?;
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
                return Err(format!("{BINDING_HEADER}: {name} {v:?} is not a plain token"));
            }
            Ok(v.to_string())
        };
        let binding = Self {
            bastion: field("bastion")?,
            host_key: field("host-key")?,
            key: field("key")?,
            nonce: field("nonce")?,
        };
        if fields.next().is_some() {
            return Err(format!("{BINDING_HEADER} has fields after nonce="));
        }
        Ok(binding)
    }
}

/// A bastion name as compared in a binding: lower case, no trailing dot, no port.
pub fn normalize_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The user name in an ARN from `sts:GetCallerIdentity`, for the
/// certificate's principal: the session name of an assumed role (for IAM
/// Identity Center, the user's), the last part of an IAM user's path, the
/// name of a federated user, `root` for the account. None if the ARN is not
/// one of those shapes.
pub fn principal_of(arn: &str) -> Option<&str> {
    let resource = arn.splitn(6, ':').nth(5)?;
    let name = if let Some(rest) = resource.strip_prefix("assumed-role/") {
        rest.split_once('/')?.1
    } else if let Some(rest) = resource.strip_prefix("user/") {
        rest.rsplit('/').next()?
    } else if let Some(rest) = resource.strip_prefix("federated-user/") {
        rest
    } else if resource == "root" {
        "root"
    } else {
        return None;
    };
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> Binding {
        Binding {
            bastion: "bastion.eu-west-1.example.com".into(),
            host_key: "SHA256:abc+/def".into(),
            key: "SHA256:xyz".into(),
            nonce: "n0nce_-".into(),
        }
    }

    #[test]
    fn a_binding_reads_back_what_was_written() {
        let b = binding();
        assert_eq!(
            b.to_header(),
            "v1 bastion=bastion.eu-west-1.example.com; host-key=SHA256:abc+/def; key=SHA256:xyz; nonce=n0nce_-"
        );
        assert_eq!(Binding::parse(&b.to_header()).unwrap(), b);
    }

    #[test]
    fn a_malformed_binding_is_refused_with_its_reason() {
        let h = binding().to_header();
        assert!(Binding::parse(&h.replace("v1 ", "v2 ")).unwrap_err().contains("not version 1"));
        assert!(Binding::parse(&h.replace("; nonce=n0nce_-", "")).unwrap_err().contains("no nonce="));
        assert!(Binding::parse(&format!("{h}; extra=1")).unwrap_err().contains("after nonce"));
        assert!(Binding::parse(&h.replace("key=SHA256:xyz", "key=")).unwrap_err().contains("plain token"));
        let swapped = "v1 host-key=SHA256:a; bastion=b; key=c; nonce=d";
        assert!(Binding::parse(swapped).unwrap_err().contains("expected bastion="));
    }

    #[test]
    fn principals_come_from_the_arn() {
        let sso = "arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_DBAccess_0a1b2c3d/alice@example.com";
        assert_eq!(principal_of(sso), Some("alice@example.com"));
        assert_eq!(principal_of("arn:aws:iam::111122223333:user/alice"), Some("alice"));
        assert_eq!(principal_of("arn:aws:iam::111122223333:user/team/db/bob"), Some("bob"));
        assert_eq!(principal_of("arn:aws:sts::111122223333:federated-user/carol"), Some("carol"));
        assert_eq!(principal_of("arn:aws:iam::111122223333:root"), Some("root"));
        assert_eq!(principal_of("arn:aws:iam::111122223333:role/x"), None);
        assert_eq!(principal_of("arn:aws:sts::111122223333:assumed-role/no-session"), None);
        assert_eq!(principal_of("not an arn"), None);
    }

    #[test]
    fn outcomes_round_trip_as_json() {
        let refused = Outcome::refused(Some("arn:aws:iam::1:user/a".into()), "no rule");
        let text = serde_json::to_string(&refused).unwrap();
        assert_eq!(text, r#"{"version":1,"ok":false,"arn":"arn:aws:iam::1:user/a","reason":"no rule","tunnels":[]}"#);
        assert_eq!(serde_json::from_str::<Outcome>(&text).unwrap(), refused);
    }
}
