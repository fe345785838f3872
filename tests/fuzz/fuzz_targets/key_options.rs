//! The options field of an authorized_keys line, and `from=` patterns matched
//! against addresses: errors, never panics; a `from=` list that parses
//! answers for every address.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use bastion_sshd::options::{FromList, KeyOptions, parse_expiry};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    options: &'a str,
    from: &'a str,
    v4: u32,
    v6: u128,
}

fuzz_target!(|input: Input<'_>| {
    let _ = KeyOptions::parse(input.options);
    let _ = parse_expiry(input.options);
    if let Ok(list) = FromList::parse(input.from) {
        for peer in [
            IpAddr::V4(Ipv4Addr::from(input.v4)),
            IpAddr::V6(Ipv6Addr::from(input.v6)),
            IpAddr::V6(Ipv4Addr::from(input.v4).to_ipv6_mapped()),
        ] {
            let _ = list.matches(peer);
        }
    }
});
