//! The identity proof: an `sts:GetCallerIdentity` request signed with the
//! laptop's AWS credentials (SigV4, the SDK's own signer), bound to one
//! bastion, host key, public key and challenge by a signed header. The
//! laptop never sends it to AWS; the bastion does, to its own STS endpoint.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bastion_common::login::{BINDING_HEADER, Binding, CONTENT_TYPE, Challenge, Proof, STS_BODY, VERSION};

/// Is `host` AWS's STS? The bastion names the host to sign for; a proof
/// signed for any other host could be shown to whatever answers there, so
/// only AWS's own names are signed for unless the user allows another
/// (`--sts-host`, a test stand-in or a VPC endpoint).
pub fn is_aws_sts_host(host: &str) -> bool {
    bastion_common::region::sts_region_of_host(host).is_some() && !host.contains(':')
}

/// Signs the proof for `challenge`.
pub fn sign_proof(
    credentials: &Credentials,
    challenge: &Challenge,
    binding: &Binding,
    public_key: &str,
    now: SystemTime,
) -> Result<Proof, String> {
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&challenge.sts_region)
        .name("sts")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("signing parameters: {e}"))?
        .into();
    let url = format!("https://{}/", challenge.sts_host);
    let binding = binding.to_header();
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), challenge.sts_host.clone()),
        ("content-type".into(), CONTENT_TYPE.into()),
        (BINDING_HEADER.into(), binding),
    ];
    let signable = SignableRequest::new(
        "POST",
        &url,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(STS_BODY.as_bytes()),
    )
    .map_err(|e| format!("cannot sign the proof: {e}"))?;
    let (instructions, _) = sign(signable, &params).map_err(|e| format!("cannot sign the proof: {e}"))?.into_parts();
    for (name, value) in instructions.headers() {
        headers.push((name.to_ascii_lowercase(), value.to_string()));
    }
    Ok(Proof {
        version: VERSION,
        public_key: public_key.to_string(),
        method: "POST".into(),
        headers,
        body: STS_BODY.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binding_and_the_host_are_signed() {
        let credentials = Credentials::new("AKIDEXAMPLE", "secret", Some("token".into()), None, "test");
        let challenge = Challenge {
            version: 1,
            bastion: "b".into(),
            nonce: "n".into(),
            sts_host: "sts.eu-west-1.amazonaws.com".into(),
            sts_region: "eu-west-1".into(),
        };
        let binding =
            Binding { bastion: "b".into(), host_key: "SHA256:h".into(), key: "SHA256:k".into(), nonce: "n".into() };
        let proof = sign_proof(&credentials, &challenge, &binding, "ssh-ed25519 AAAA", SystemTime::now()).unwrap();
        let auth = proof.header("authorization").unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"), "{auth}");
        assert!(auth.contains("/eu-west-1/sts/aws4_request"), "{auth}");
        let signed = auth.split("SignedHeaders=").nth(1).unwrap().split(',').next().unwrap();
        for name in ["host", "x-amz-date", BINDING_HEADER, "x-amz-security-token"] {
            assert!(signed.split(';').any(|h| h == name), "{name} not in {signed}");
        }
        assert_eq!(proof.header("x-amz-security-token"), Some("token"));
        assert_eq!(proof.header(BINDING_HEADER), Some("v1 bastion=b; host-key=SHA256:h; key=SHA256:k; nonce=n"));
    }

    #[test]
    fn only_aws_sts_hosts_are_signed_for_by_default() {
        assert!(is_aws_sts_host("sts.eu-west-1.amazonaws.com"));
        assert!(is_aws_sts_host("sts.amazonaws.com"));
        assert!(!is_aws_sts_host("127.0.0.1:4566"));
        assert!(!is_aws_sts_host("sts.eu-west-1.amazonaws.com.evil.example"));
        assert!(!is_aws_sts_host("vault.example.com"));
    }
}
