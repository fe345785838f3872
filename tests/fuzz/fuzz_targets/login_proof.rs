//! Any bytes as the answer to an AWS login challenge (what an
//! unauthenticated client sends): refused with a reason or accepted, never
//! a panic; an accepted proof forwards no `host` header and no control character.
#![no_main]

use bastion_sshd::aws_login::proof::{Expect, check, parse_amz_date};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let host_keys = vec!["SHA256:hostkeyhostkeyhostkeyhostkeyhostkeyhostkey0".to_string()];
    let expect = Expect {
        name: "bastion.example.com",
        host_keys: &host_keys,
        nonce: "nonce1",
        sts_host: "sts.eu-west-1.amazonaws.com",
        sts_region: "eu-west-1",
    };
    let Some(now) = parse_amz_date("20261202T071500Z") else { return };
    if let Ok(checked) = check(data, &expect, now) {
        assert!(checked.headers.iter().all(|(n, v)| n != "host" && !v.chars().any(char::is_control)));
        assert_eq!(checked.signature.len(), 64);
    }
});
