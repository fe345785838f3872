//! What the bastion checks in a login proof before it sends anything to STS.
//! Pure: no network, no clock but the `now` it is given.
//!
//! STS checks the signature; everything STS would not check is checked
//! here: that the request is a GetCallerIdentity and nothing else, that it
//! was signed for this bastion's STS host and region, within the last five
//! minutes, and that the signed binding names this bastion, one of its host
//! keys, this connection's nonce and the key to certify.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bastion_common::login::{
    BINDING_HEADER, Binding, MAX_PROOF_AGE_SECS, MAX_PROOF_AHEAD_SECS, MAX_PROOF_BYTES, Proof, STS_BODY, VERSION,
    normalize_name,
};
use russh::keys::{HashAlg, PublicKey};

use crate::authorized_keys::check_key_type;

/// Headers a proof may carry; each is sent on to STS. Anything else is
/// refused, so that the bastion never sends STS a header it did not expect.
const ALLOWED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
    "authorization",
    BINDING_HEADER,
];

/// Headers that must be covered by the signature.
const MUST_BE_SIGNED: &[&str] = &["host", "x-amz-date", BINDING_HEADER];

/// What this connection expects of a proof.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// The bastion's `--name`, normalized.
    pub name: &'a str,
    /// `SHA256:…` of each host key the server serves with.
    pub host_keys: &'a [String],
    /// This connection's challenge.
    pub nonce: &'a str,
    /// `host[:port]` of the configured STS endpoint.
    pub sts_host: &'a str,
    pub sts_region: &'a str,
}

/// A proof that passed every local check: what to send on, and what it is for.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The key the certificate is for.
    pub public_key: PublicKey,
    /// The headers to send to STS (all but `host`, which the endpoint gives).
    pub headers: Vec<(String, String)>,
    /// The SigV4 signature: what makes the proof single-use.
    pub signature: String,
    /// When the client signed it (`x-amz-date`).
    pub signed_at: SystemTime,
    /// The access key ID, for the audit log (not a secret).
    pub access_key_id: String,
}

/// Checks a proof (the JSON text of the keyboard-interactive answer).
pub fn check(text: &[u8], expect: &Expect<'_>, now: SystemTime) -> Result<Checked, String> {
    if text.len() > MAX_PROOF_BYTES {
        return Err(format!("the proof is {} bytes, more than the {MAX_PROOF_BYTES} allowed", text.len()));
    }
    let proof: Proof =
        serde_json::from_slice(text).map_err(|e| format!("not a login proof ({e}); use `bastion login`"))?;
    if proof.version != VERSION {
        return Err(format!(
            "proof version {} is not supported (this bastion speaks version {VERSION})",
            proof.version
        ));
    }
    if proof.method != "POST" {
        return Err(format!("the signed request is {:?}, not POST", proof.method));
    }
    if proof.body != STS_BODY {
        return Err(format!("the signed request is not exactly {STS_BODY:?}"));
    }
    check_headers(&proof)?;
    let host = proof.header("host").unwrap_or("");
    if !host.eq_ignore_ascii_case(expect.sts_host) {
        return Err(format!(
            "the request is signed for host {host:?}, but this bastion sends proofs only to {:?} (--sts-endpoint)",
            expect.sts_host
        ));
    }
    if !proof.header("content-type").is_some_and(|t| t.starts_with("application/x-www-form-urlencoded")) {
        return Err("the request has no content-type application/x-www-form-urlencoded".into());
    }
    let auth = Authorization::parse(proof.header("authorization").unwrap_or(""))?;
    if auth.service != "sts" {
        return Err(format!("the request is signed for service {:?}, not sts", auth.service));
    }
    if auth.region != expect.sts_region {
        return Err(format!(
            "the request is signed for region {:?}; this bastion's STS endpoint is in {:?}",
            auth.region, expect.sts_region
        ));
    }
    for name in MUST_BE_SIGNED {
        if !auth.signed_headers.iter().any(|h| h == name) {
            return Err(format!("header {name} is not signed (SignedHeaders={})", auth.signed_headers.join(";")));
        }
    }
    for name in &auth.signed_headers {
        if proof.header(name).is_none() {
            return Err(format!("signed header {name} is missing from the request"));
        }
    }
    let date = proof.header("x-amz-date").unwrap_or("");
    let signed_at = parse_amz_date(date).ok_or_else(|| format!("x-amz-date {date:?} is not YYYYMMDDTHHMMSSZ"))?;
    if !date.starts_with(&auth.date) {
        return Err(format!("the credential scope's date {} is not the x-amz-date {date}", auth.date));
    }
    match now.duration_since(signed_at) {
        Ok(age) if age > Duration::from_secs(MAX_PROOF_AGE_SECS) => {
            return Err(format!(
                "the proof was signed {} ago; it must be at most {} old (run `bastion login` again; check the laptop's clock)",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(Duration::from_secs(MAX_PROOF_AGE_SECS))
            ));
        }
        Ok(_) => {}
        Err(ahead) if ahead.duration() > Duration::from_secs(MAX_PROOF_AHEAD_SECS) => {
            return Err(format!(
                "the proof is dated {} in the future (x-amz-date {date}); check the laptop's clock",
                humantime::format_duration(Duration::from_secs(ahead.duration().as_secs()))
            ));
        }
        Err(_) => {}
    }
    let binding = Binding::parse(proof.header(BINDING_HEADER).unwrap_or(""))?;
    if normalize_name(&binding.bastion) != expect.name {
        return Err(format!(
            "the proof is for bastion {:?}; this bastion is {:?} (its --name)",
            binding.bastion, expect.name
        ));
    }
    if !expect.host_keys.contains(&binding.host_key) {
        return Err(format!(
            "the proof is bound to host key {}, which is not this bastion's: it was made for another server",
            binding.host_key
        ));
    }
    if binding.nonce != expect.nonce {
        return Err("the proof answers another connection's challenge: a proof is good for one login only".into());
    }
    let public_key = PublicKey::from_openssh(&proof.public_key)
        .map_err(|e| format!("the proof's public key is not an OpenSSH public key ({e})"))?;
    check_key_type(&public_key).map_err(|e| format!("the proof's public key: {e}"))?;
    let fingerprint = public_key.fingerprint(HashAlg::Sha256).to_string();
    if binding.key != fingerprint {
        return Err(format!("the binding names key {}, but the proof's public key is {fingerprint}", binding.key));
    }
    let headers = proof.headers.iter().filter(|(n, _)| !n.eq_ignore_ascii_case("host")).cloned().collect();
    Ok(Checked { public_key, headers, signature: auth.signature, signed_at, access_key_id: auth.access_key_id })
}

/// Names: lower-case tokens from the allowed list, each once. Values:
/// printable ASCII only (all SigV4 headers are), so nothing can be smuggled
/// into the request to STS, and every value makes a valid HTTP header.
fn check_headers(proof: &Proof) -> Result<(), String> {
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in &proof.headers {
        if !ALLOWED_HEADERS.contains(&name.as_str()) {
            return Err(format!(
                "header {:?} is not allowed in a proof (allowed: {})",
                name,
                ALLOWED_HEADERS.join(", ")
            ));
        }
        if seen.contains(&name.as_str()) {
            return Err(format!("header {name} appears twice"));
        }
        seen.push(name);
        if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(format!("header {name} contains a control character or one outside printable ASCII"));
        }
    }
    Ok(())
}

/// `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=hex`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Authorization {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
}

impl Authorization {
    fn parse(value: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("the authorization header is not a SigV4 signature: {why}");
        let rest =
            value.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| bad("it does not start with AWS4-HMAC-SHA256"))?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',').map(str::trim) {
            match part.split_once('=') {
                Some(("Credential", v)) if credential.is_none() => credential = Some(v),
                Some(("SignedHeaders", v)) if signed.is_none() => signed = Some(v),
                Some(("Signature", v)) if signature.is_none() => signature = Some(v),
                _ => return Err(bad(&format!("unexpected part {part:?}"))),
            }
        }
        let credential = credential.ok_or_else(|| bad("no Credential="))?;
        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, "aws4_request"] = scope[..] else {
            return Err(bad("Credential= is not AKID/DATE/REGION/SERVICE/aws4_request"));
        };
        let signature = signature.ok_or_else(|| bad("no Signature="))?;
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("Signature= is not 64 hex digits"));
        }
        let signed_headers: Vec<String> =
            signed.ok_or_else(|| bad("no SignedHeaders="))?.split(';').map(str::to_string).collect();
        if !access_key_id.bytes().all(|b| b.is_ascii_alphanumeric()) || access_key_id.is_empty() {
            return Err(bad("the access key ID is not alphanumeric"));
        }
        Ok(Self {
            access_key_id: access_key_id.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
            signed_headers,
            signature: signature.to_ascii_lowercase(),
        })
    }
}

/// `20261202T071500Z` → a time. None if malformed.
pub fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let digits = text.strip_suffix('Z')?;
    let (date, time) = digits.split_once('T')?;
    if date.len() != 8 || time.len() != 6 || !date.bytes().chain(time.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    // options::parse_expiry reads YYYYMMDDHHMMSS and checks the calendar.
    let secs = crate::options::parse_expiry(&format!("{date}{time}")).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

#[cfg(test)]
#[path = "proof_tests.rs"]
mod tests;
