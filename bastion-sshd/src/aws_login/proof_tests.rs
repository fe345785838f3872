//! The local checks of a login proof, one refusal each. The signature itself
//! is STS's to check (`tests/aws_login.rs` covers that with the stand-in).

use super::*;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMouBJPrRxxk89otV9qDvWqJZIuTKXmkT0BnxZbMGWgy";
const HOST_KEY: &str = "SHA256:hostkeyhostkeyhostkeyhostkeyhostkeyhostkey0";
const SIG: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn now() -> SystemTime {
    parse_amz_date("20261202T071500Z").unwrap()
}

fn key_fingerprint() -> String {
    PublicKey::from_openssh(KEY).unwrap().fingerprint(HashAlg::Sha256).to_string()
}

fn binding() -> Binding {
    Binding {
        bastion: "Bastion.Example.com.".into(),
        host_key: HOST_KEY.into(),
        key: key_fingerprint(),
        nonce: "nonce1".into(),
    }
}

/// A proof that passes every check, as JSON, with `edit` applied to it first.
fn proof(edit: impl FnOnce(&mut Proof)) -> Vec<u8> {
    let mut p = Proof {
        version: VERSION,
        public_key: KEY.into(),
        method: "POST".into(),
        headers: vec![
            ("host".into(), "sts.eu-west-1.amazonaws.com".into()),
            ("content-type".into(), bastion_common::login::CONTENT_TYPE.into()),
            (BINDING_HEADER.into(), binding().to_header()),
            ("x-amz-date".into(), "20261202T071300Z".into()),
            ("x-amz-security-token".into(), "token".into()),
            (
                "authorization".into(),
                format!(
                    "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/20261202/eu-west-1/sts/aws4_request, \
                     SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-bastion-login, Signature={SIG}"
                ),
            ),
        ],
        body: STS_BODY.into(),
    };
    edit(&mut p);
    serde_json::to_vec(&p).unwrap()
}

fn set(p: &mut Proof, name: &str, value: &str) {
    match p.headers.iter_mut().find(|(n, _)| n == name) {
        Some(h) => h.1 = value.to_string(),
        None => p.headers.push((name.to_string(), value.to_string())),
    }
}

fn host_keys() -> Vec<String> {
    vec!["SHA256:another".into(), HOST_KEY.into()]
}

fn checked(text: &[u8]) -> Result<Checked, String> {
    let keys = host_keys();
    let expect = Expect {
        name: "bastion.example.com",
        host_keys: &keys,
        nonce: "nonce1",
        sts_host: "sts.eu-west-1.amazonaws.com",
        sts_region: "eu-west-1",
    };
    check(text, &expect, now())
}

fn refused(edit: impl FnOnce(&mut Proof)) -> String {
    checked(&proof(edit)).expect_err("the proof was accepted")
}

#[test]
fn a_good_proof_passes_and_host_is_not_forwarded() {
    let ok = checked(&proof(|_| {})).unwrap();
    assert_eq!(ok.signature, SIG);
    assert_eq!(ok.access_key_id, "ASIAEXAMPLE");
    assert_eq!(ok.signed_at, parse_amz_date("20261202T071300Z").unwrap());
    assert!(ok.headers.iter().all(|(n, _)| n != "host"), "the endpoint gives the host");
    assert_eq!(ok.headers.len(), 5);
}

#[test]
fn only_a_get_caller_identity_is_forwarded() {
    assert!(refused(|p| p.method = "GET".into()).contains("not POST"));
    assert!(refused(|p| p.body = "Action=AssumeRole&Version=2011-06-15".into()).contains("not exactly"));
    assert!(refused(|p| p.version = 2).contains("version 2 is not supported"));
    assert!(checked(b"{\"not\": \"a proof\"}").unwrap_err().contains("not a login proof"));
    assert!(checked(&vec![b' '; bastion_common::login::MAX_PROOF_BYTES + 1]).unwrap_err().contains("bytes, more than"));
}

#[test]
fn headers_outside_the_list_or_with_control_characters_are_refused() {
    assert!(refused(|p| set(p, "x-forwarded-host", "evil")).contains("\"x-forwarded-host\" is not allowed"));
    assert!(refused(|p| set(p, "content-type", "text/plain\r\nX-Evil: 1")).contains("control character"));
    assert!(refused(|p| set(p, "x-amz-security-token", "tök")).contains("outside printable ASCII"));
    assert!(refused(|p| p.headers.push(("host".into(), "sts.eu-west-1.amazonaws.com".into()))).contains("twice"));
    assert!(refused(|p| set(p, "content-type", "application/json")).contains("no content-type"));
}

#[test]
fn the_request_must_be_signed_for_the_bastions_sts_host_and_region() {
    let other = refused(|p| set(p, "host", "sts.us-east-1.amazonaws.com"));
    assert!(other.contains("signed for host \"sts.us-east-1.amazonaws.com\""), "{other}");
    assert!(other.contains("sends proofs only to \"sts.eu-west-1.amazonaws.com\""), "{other}");
    let region = refused(|p| {
        let auth = p.header("authorization").unwrap().replace("/eu-west-1/", "/us-east-1/");
        set(p, "authorization", &auth)
    });
    assert!(region.contains("signed for region \"us-east-1\""), "{region}");
    let service = refused(|p| {
        let auth = p.header("authorization").unwrap().replace("/sts/", "/iam/");
        set(p, "authorization", &auth)
    });
    assert!(service.contains("service \"iam\""), "{service}");
}

#[test]
fn the_binding_host_and_date_must_be_signed() {
    for name in ["host", "x-amz-date", BINDING_HEADER] {
        let why = refused(|p| {
            let auth =
                p.header("authorization").unwrap().replace(&format!(";{name}"), "").replace(&format!("{name};"), "");
            set(p, "authorization", &auth)
        });
        assert!(why.contains(&format!("header {name} is not signed")), "{name}: {why}");
    }
    let missing = refused(|p| p.headers.retain(|(n, _)| n != "x-amz-security-token"));
    assert!(missing.contains("signed header x-amz-security-token is missing"), "{missing}");
    for bad in ["AWS4-HMAC-SHA1 Credential=a/b/c/d/aws4_request", "AWS4-HMAC-SHA256 Signature=zz"] {
        let why = refused(|p| set(p, "authorization", bad));
        assert!(why.contains("is not a SigV4 signature"), "{bad}: {why}");
    }
}

#[test]
fn proofs_older_than_five_minutes_or_from_the_future_are_refused() {
    let old = refused(|p| set(p, "x-amz-date", "20261202T070900Z"));
    assert!(old.contains("signed 6m ago; it must be at most 5m old"), "{old}");
    // Exactly 5 minutes is still fresh.
    assert!(checked(&proof(|p| set(p, "x-amz-date", "20261202T071000Z"))).is_ok());
    let ahead = refused(|p| set(p, "x-amz-date", "20261202T071700Z"));
    assert!(ahead.contains("2m in the future"), "{ahead}");
    assert!(checked(&proof(|p| set(p, "x-amz-date", "20261202T071545Z"))).is_ok(), "45 s of clock skew");
    assert!(refused(|p| set(p, "x-amz-date", "2026-12-02T07:13:00Z")).contains("is not YYYYMMDDTHHMMSSZ"));
    let scope = refused(|p| set(p, "x-amz-date", "20261201T071300Z"));
    assert!(scope.contains("credential scope's date 20261202"), "{scope}");
}

#[test]
fn a_proof_bound_to_another_bastion_key_or_connection_is_refused() {
    let with = |b: Binding| move |p: &mut Proof| set(p, BINDING_HEADER, &b.to_header());
    let name = refused(with(Binding { bastion: "other.example.com".into(), ..binding() }));
    assert!(name.contains("the proof is for bastion \"other.example.com\"; this bastion is \"bastion.example.com\""));
    let host = refused(with(Binding { host_key: "SHA256:elsewhere".into(), ..binding() }));
    assert!(host.contains("bound to host key SHA256:elsewhere, which is not this bastion's"), "{host}");
    let nonce = refused(with(Binding { nonce: "nonce2".into(), ..binding() }));
    assert!(nonce.contains("another connection's challenge"), "{nonce}");
    let key = refused(with(Binding { key: "SHA256:somebody-else".into(), ..binding() }));
    assert!(key.contains("the binding names key SHA256:somebody-else"), "{key}");
    assert!(refused(|p| set(p, BINDING_HEADER, "v1 whatever")).contains("expected bastion="));
}

#[test]
fn the_public_key_must_be_one_the_bastion_accepts() {
    let dsa = "ssh-dss AAAAB3NzaC1kc3MAAACBAP1/U4EddRIpUt9KnC7s5Of2EbdSPO9EAMMeP4C2USZpRV1AIlH7WT2NWPq/xfW6MPbLm1Vs14E7gB00b/JmYLdrmVClpJ+f6AR7ECLCT7up1/63xhv4O1fnxqimFQ8E+4P208UewwI1VBNaFpEy9nXzrith1yrv8iIDGZ3RSAHHAAAAFQCXYFCPFSMLzLKSuYKi64QL8Fgc9QAAAIEA9+GghdabPd7LvKtcNrhXuXmUr7v6OuqC+VdMCz0HgmdRWVeOutRZT+ZxBxCBgLRJFnEj6EwoFhO3zwkyjMim4TwWeotUfI0o4KOuHiuzpnWRbqN/C/ohNWLx+2J6ASQ7zKTxvqhRkImog9/hWuWfBpKLZl6Ae1UlZAFMO/7PSSoAAACBAKKSU2PFl/qOLxIwmBZPPIcJshVe7bVUpFvyl3BbJDow8rXfskl8wO63OzP/qLmcJM0+JbcRU/53JjTuyk31drV2qxhIOsLDC9dGCWj47Y7TyhPdXh/0dthTRBy6bqGtRPxGa7gJov1xm/UuYYXPIUR/3x9MAZvZ5xvE0kYXO+rx";
    assert!(refused(|p| p.public_key = dsa.into()).contains("DSA keys are not accepted"));
    assert!(refused(|p| p.public_key = "not a key".into()).contains("not an OpenSSH public key"));
}
