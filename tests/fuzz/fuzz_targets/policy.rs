//! The destination policy, for any target host, port, resolved addresses and
//! permit list: it never panics, only allows addresses the name resolved to
//! (as canonical addresses), and with no `--permit-open` (the default) never
//! allows a target any of whose addresses, in any spelling, lies in a denied
//! range (loopback, link-local and the metadata/credentials addresses, ...)
//! or is one of the bastion's own addresses outside those ranges.
#![no_main]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use arbitrary::Arbitrary;
use bastion_sshd::interfaces::LocalAddresses;
use bastion_sshd::policy::{Decision, KeyRights, PermitList, Policy, Resolve, Target, canonical, denied_block};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Addr {
    V4(u32),
    V6(u128),
    Mapped(u32),
}

impl Addr {
    fn ip(&self) -> IpAddr {
        match self {
            Addr::V4(a) => IpAddr::V4(Ipv4Addr::from(*a)),
            Addr::V6(a) => IpAddr::V6(Ipv6Addr::from(*a)),
            Addr::Mapped(a) => IpAddr::V6(Ipv4Addr::from(*a).to_ipv6_mapped()),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    permit: &'a str,
    key_permit: &'a str,
    host: &'a str,
    port: u32,
    resolved: Vec<Addr>,
    own: Vec<Addr>,
}

/// The name resolves to exactly the fuzzed addresses.
struct Fixed(Vec<IpAddr>);

impl Resolve for Fixed {
    async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, String> {
        Ok(self.0.iter().map(|ip| SocketAddr::new(*ip, target.port)).collect())
    }
}

/// The policy never waits on anything but the resolver, which is ready at once.
fn ready<T>(future: impl Future<Output = T>) -> T {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("the policy waited on something other than the resolver"),
    }
}

fuzz_target!(|input: Input<'_>| {
    let Ok(target) = Target::parse(input.host, input.port) else { return };
    let resolved: Vec<IpAddr> = input.resolved.iter().map(Addr::ip).collect();
    let as_resolved: Vec<IpAddr> = match target.literal() {
        Some(ip) => vec![ip],
        None => resolved.clone(),
    };
    let canonical_resolved: Vec<IpAddr> = as_resolved.iter().map(|a| canonical(*a)).collect();
    let resolver = Fixed(resolved);
    let own_list: Vec<IpAddr> = input.own.iter().map(|a| canonical(a.ip())).collect();
    let own = LocalAddresses::new(own_list.iter().copied());

    let global = PermitList::parse_list(input.permit).unwrap_or_default();
    let rights =
        KeyRights { port_forwarding: true, permit_open: PermitList::parse_list(input.key_permit).unwrap_or_default() };
    if let Decision::Allow(addrs) = ready(Policy { global: global.clone() }.decide(&rights, &target, &resolver, &own)) {
        assert!(!addrs.is_empty());
        for a in &addrs {
            assert!(canonical_resolved.contains(&a.ip()), "{a} was not resolved: {canonical_resolved:?}");
            assert_eq!(a.port(), target.port);
        }
    }

    // The default policy: nothing in a denied range, whatever the spelling.
    let decision = ready(Policy::default().decide(&KeyRights::default(), &target, &resolver, &own));
    if let Decision::Allow(addrs) = decision {
        for a in &canonical_resolved {
            assert!(denied_block(*a).is_none(), "{target} -> {a} allowed by the default policy: {addrs:?}");
            assert!(!own_list.contains(a), "{target} -> {a}, an own address, allowed by the default policy: {addrs:?}");
        }
    }
});
