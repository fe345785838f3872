//! The bastion's own addresses, which no tunnel may reach unless a
//! `--permit-open` entry names the address itself ([`crate::policy`]).
//!
//! A listener bound to `0.0.0.0` in the task's network namespace answers on
//! every address of the task, not only on loopback, and a login that comes
//! back through the bastion to its own address arrives with that address as
//! its source, which `from="10.0.0.0/8"` and a certificate's source-address
//! for internal ranges accept. So the policy needs the set of addresses the
//! host's interfaces carry, and it gets it as data: [`LocalAddresses`].
//!
//! They are read with getifaddrs(3) afresh for every tunnel decision
//! ([`LocalAddresses::read`]), not at start and then kept up to date from a
//! netlink subscription (RTMGRP_IPV4_IFADDR / RTMGRP_IPV6_IFADDR):
//!
//! - always current: an address added a moment ago is refused by the very
//!   next request, where a subscription leaves a window between the change and
//!   its processing, and loses events when its socket buffer overruns
//!   (ENOBUFS), after which it must re-read everything anyway;
//! - nothing to keep: no task, no socket, no shared state that could go stale
//!   or fail on its own after start-up;
//! - cheap: one netlink dump of links and addresses, about 20 µs (measured:
//!   10,000 reads in 0.19 s with 5 addresses, 0.23 s in a namespace with 3
//!   interfaces and 9 addresses), where the same tunnel costs a TCP connect
//!   and often a DNS lookup; short enough to run inline on the runtime.
//!
//! What is "own": every address on an interface of this network namespace,
//! up or down, IPv4 and IPv6. Loopback and link-local addresses are own too,
//! but keep the denied ranges' rule (a range inside the block opens them, as
//! SECURITY.md documents). Not seen: addresses that are local only through a
//! `local` route without being on an interface (`ip route add local
//! 10.9.0.0/16 dev lo`, "AnyIP"); a task has none.
//!
//! A read that fails is not "no addresses": [`LocalAddresses::read`] logs an
//! error and returns [`LocalAddresses::unreadable`], with which the policy
//! refuses every tunnel (fail closed) until a read succeeds again.

use std::collections::BTreeSet;
use std::net::IpAddr;

use tracing::error;

use crate::policy::canonical;

/// The addresses of the host's interfaces (canonical, see [`canonical`]), or
/// why they could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddresses(Result<BTreeSet<IpAddr>, String>);

impl LocalAddresses {
    /// These addresses, as the host's own (tests, and [`LocalAddresses::read`]).
    pub fn new(addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        Self(Ok(addrs.into_iter().map(canonical).collect()))
    }

    /// The addresses could not be read: every tunnel is refused with `why`.
    pub fn unreadable(why: impl Into<String>) -> Self {
        Self(Err(why.into()))
    }

    /// The addresses of every interface of this network namespace, up or down,
    /// now. A failure is logged and fails closed (see the module doc).
    pub fn read() -> Self {
        match nix::ifaddrs::getifaddrs() {
            Ok(interfaces) => Self::new(interfaces.filter_map(|i| i.address).filter_map(|a| {
                a.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            })),
            Err(errno) => {
                let why = format!("cannot list the bastion's own addresses (getifaddrs: {errno})");
                error!(event = "interfaces.unreadable", error = %errno, "{why}; every tunnel is refused until they can be read");
                Self::unreadable(why)
            }
        }
    }

    /// The addresses, or why they are unknown.
    pub fn addresses(&self) -> Result<&BTreeSet<IpAddr>, &str> {
        self.0.as_ref().map_err(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_kept_canonical() {
        let own = LocalAddresses::new(["::ffff:10.0.1.5".parse().unwrap(), "fd12::5".parse().unwrap()]);
        let addrs = own.addresses().unwrap();
        assert!(addrs.contains(&"10.0.1.5".parse::<IpAddr>().unwrap()), "{addrs:?}");
        assert!(addrs.contains(&"fd12::5".parse::<IpAddr>().unwrap()), "{addrs:?}");
        assert_eq!(LocalAddresses::unreadable("no netlink").addresses(), Err("no netlink"));
    }

    #[test]
    fn the_hosts_addresses_are_read() {
        // Whatever namespace the tests run in, reading works; with loopback up
        // (the usual case), 127.0.0.1 is among them.
        let own = LocalAddresses::read();
        let addrs = own.addresses().expect("getifaddrs");
        let lo_up = std::fs::read_to_string("/sys/class/net/lo/operstate").is_ok_and(|s| s.trim() != "down");
        if lo_up && !addrs.is_empty() {
            assert!(addrs.iter().any(|a| a.is_loopback()), "{addrs:?}");
        }
    }
}
