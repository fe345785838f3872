//! dns-sidecar's ECS task metadata parser: errors, never panics; a task that
//! parses answers consistently (the address is one of those listed, the
//! cluster name and task id have no '/', the owner is `<cluster>/<family>`).
//!
//! The parser is included by path: depending on the dns-sidecar crate would
//! build the AWS SDK under the sanitizer. Each input is used twice: as the
//! JSON itself, and as the recipe of a well-formed document with odd address
//! strings in it ("010.0.0.1", "10.0.0.1/24", " 10.0.0.1", "[::1]", ...),
//! none of which may be taken for an address.
#![no_main]

#[path = "../../../dns-sidecar/src/metadata.rs"]
mod metadata;

use std::fmt::Debug;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use metadata::Task;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = std::str::from_utf8(data) {
        raw(json);
    }
    if let Ok(doc) = Doc::arbitrary_take_rest(Unstructured::new(data)) {
        structured(&doc);
    }
});

fn raw(json: &str) {
    let task = match Task::parse(json) {
        Ok(task) => task,
        Err(e) => return assert!(e.starts_with("task metadata is not the expected JSON: "), "{e}"),
    };
    check(&task);
    // The same document read generically gives the same fields. A struct is
    // also read from a JSON array, field by field; and unknown fields are
    // skipped without serde_json's nesting limit (nor its check of lone
    // surrogates), so some documents that parse are no `Value`.
    if let Ok(value) = serde_json::from_str::<Value>(json) {
        let text = |i, name| field(&value, i, name).and_then(Value::as_str);
        assert_eq!(task.cluster.as_deref(), text(0, "Cluster"));
        assert_eq!(task.task_arn.as_deref(), text(1, "TaskARN"));
        assert_eq!(task.family.as_deref(), text(2, "Family"));
        let containers = items(field(&value, 3, "Containers"));
        assert_eq!(task.containers.len(), containers.len());
        for (container, c) in task.containers.iter().zip(containers) {
            let networks = items(field(c, 0, "Networks"));
            assert_eq!(container.networks.len(), networks.len());
            for (network, n) in container.networks.iter().zip(networks) {
                assert_eq!(network.ipv4_addresses, strings(field(n, 0, "IPv4Addresses")));
                assert_eq!(network.ipv6_addresses, strings(field(n, 1, "IPv6Addresses")));
            }
        }
    }
}

/// What holds for any task that parses.
fn check(task: &Task) {
    let v4 = task.containers.iter().flat_map(|c| &c.networks).flat_map(|n| &n.ipv4_addresses);
    let v6 = task.containers.iter().flat_map(|c| &c.networks).flat_map(|n| &n.ipv6_addresses);
    check_address(task.private_ipv4(), v4);
    check_address(task.ipv6(), v6);

    assert_eq!(task.cluster_name().is_some(), task.cluster.is_some());
    if let (Some(cluster), Some(name)) = (&task.cluster, task.cluster_name()) {
        check_last_part(cluster, name);
    }
    assert_eq!(task.task_id().is_some(), task.task_arn.is_some());
    if let (Some(arn), Some(id)) = (&task.task_arn, task.task_id()) {
        check_last_part(arn, id);
    }
    match (task.default_owner(), task.cluster_name(), &task.family) {
        // The cluster name has no '/': the owner splits back at the first one.
        (Some(owner), Some(cluster), Some(family)) => {
            assert_eq!(owner.split_once('/'), Some((cluster, family.as_str())), "{owner}")
        }
        (None, cluster, family) => assert!(cluster.is_none() || family.is_none()),
        (Some(owner), ..) => panic!("owner {owner:?} without a cluster and a family"),
    }
}

/// The address is the first of the listed strings that is one, and reads back from its string form.
fn check_address<'a, A: FromStr + ToString + PartialEq + Debug + Copy>(
    found: Option<A>,
    mut listed: impl Iterator<Item = &'a String>,
) {
    assert_eq!(found, listed.find_map(|s| s.parse().ok()));
    if let Some(a) = found {
        assert!(a.to_string().parse::<A>().ok() == Some(a), "{a:?}");
    }
}

/// `part` is what follows the last '/' of `whole` (all of it without one).
fn check_last_part(whole: &str, part: &str) {
    assert!(!part.contains('/'), "{whole:?} -> {part:?}");
    assert!(whole.ends_with(part), "{whole:?} -> {part:?}");
    if let Some(slash) = whole.len().checked_sub(part.len() + 1) {
        assert_eq!(&whole[slash..slash + 1], "/", "{whole:?} -> {part:?}");
    } else {
        assert_eq!(whole, part);
    }
}

/// A struct's field in a JSON object (by name) or array (by position).
fn field<'a>(value: &'a Value, index: usize, name: &str) -> Option<&'a Value> {
    match value {
        Value::Array(a) => a.get(index),
        v => v.get(name),
    }
}

fn items(value: Option<&Value>) -> &[Value] {
    value.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn strings(value: Option<&Value>) -> Vec<String> {
    items(value).iter().map(|s| s.as_str().expect("a parsed address list holds strings").to_string()).collect()
}

/// A well-formed task document: `containers` of networks of IPv4 and IPv6 addresses.
#[derive(Arbitrary, Debug)]
struct Doc {
    cluster: Option<String>,
    task_arn: Option<String>,
    family: Option<String>,
    containers: Vec<Vec<(Vec<Addr>, Vec<Addr>)>>,
}

#[derive(Arbitrary, Debug)]
enum Addr {
    /// An address as it prints.
    Canonical(u128),
    /// An address written in a way that is not one (`ODD_V4`, `ODD_V6`).
    Odd(u8, u128),
    Any(String),
}

/// IPv4 addresses as they must not be read: Rust rejects leading zeros (no octal), and nothing is trimmed.
const ODD_V4: &[fn(Ipv4Addr) -> String] = &[
    |a| format!("0{a}"),
    |a| format!("{a}/24"),
    |a| format!(" {a}"),
    |a| format!("{a} "),
    |a| format!("{a}\n"),
    |a| format!("{a}:80"),
    |a| format!("[{a}]"),
    |a| format!("::ffff:{a}"),
    |a| format!("{a}."),
    |a| format!("{a}.0"),
    |a| format!("{}", u32::from(a)),
    |a| format!("{:#x}", u32::from(a)),
    |_| String::new(),
];

/// IPv6 addresses as they must not be read.
const ODD_V6: &[fn(Ipv6Addr) -> String] = &[
    |a| format!("[{a}]"),
    |a| format!("{a}/64"),
    |a| format!("{a}%eth0"),
    |a| format!(" {a}"),
    |a| format!("{a}\t"),
    |a| format!("{a}."),
    |a| Ipv4Addr::from(a.to_bits() as u32).to_string(),
    |_| String::new(),
];

impl Addr {
    fn v4(&self) -> (String, Option<Ipv4Addr>) {
        match self {
            Addr::Canonical(n) => {
                let a = Ipv4Addr::from(*n as u32);
                (a.to_string(), Some(a))
            }
            Addr::Odd(k, n) => (ODD_V4[usize::from(*k) % ODD_V4.len()](Ipv4Addr::from(*n as u32)), None),
            Addr::Any(s) => (s.clone(), s.parse().ok()),
        }
    }

    fn v6(&self) -> (String, Option<Ipv6Addr>) {
        match self {
            Addr::Canonical(n) => {
                let a = Ipv6Addr::from(*n);
                (a.to_string(), Some(a))
            }
            Addr::Odd(k, n) => (ODD_V6[usize::from(*k) % ODD_V6.len()](Ipv6Addr::from(*n)), None),
            Addr::Any(s) => (s.clone(), s.parse().ok()),
        }
    }
}

fn structured(doc: &Doc) {
    let render = |addrs: &[Addr], one: fn(&Addr) -> String| addrs.iter().map(one).collect::<Vec<_>>();
    let containers: Vec<Value> = doc
        .containers
        .iter()
        .map(|networks| {
            let networks: Vec<Value> = networks
                .iter()
                .map(|(v4, v6)| {
                    json!({"NetworkMode": "awsvpc", "IPv4Addresses": render(v4, |a| a.v4().0),
                        "IPv6Addresses": render(v6, |a| a.v6().0)})
                })
                .collect();
            json!({"Name": "app", "Networks": networks})
        })
        .collect();
    let json = json!({"Cluster": doc.cluster, "TaskARN": doc.task_arn, "Family": doc.family,
        "LaunchType": "FARGATE", "Containers": containers})
    .to_string();

    let task = Task::parse(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    check(&task);
    assert_eq!(task.cluster, doc.cluster);
    assert_eq!(task.task_arn, doc.task_arn);
    assert_eq!(task.family, doc.family);
    assert_eq!(task.containers.len(), doc.containers.len());
    for (container, networks) in task.containers.iter().zip(&doc.containers) {
        assert_eq!(container.networks.len(), networks.len());
        for (network, (v4, v6)) in container.networks.iter().zip(networks) {
            assert_eq!(network.ipv4_addresses, render(v4, |a| a.v4().0));
            assert_eq!(network.ipv6_addresses, render(v6, |a| a.v6().0));
        }
    }

    // An odd form is never taken for an address; the first real one is.
    let all = || doc.containers.iter().flatten();
    for addr in all().flat_map(|(v4, v6)| v4.iter().chain(v6)) {
        if let Addr::Odd(..) = addr {
            let (v4, v6) = (addr.v4().0, addr.v6().0);
            assert!(v4.parse::<Ipv4Addr>().is_err(), "{v4:?} read as an IPv4 address");
            assert!(v6.parse::<Ipv6Addr>().is_err(), "{v6:?} read as an IPv6 address");
        }
    }
    assert_eq!(task.private_ipv4(), all().flat_map(|(v4, _)| v4).find_map(|a| a.v4().1));
    assert_eq!(task.ipv6(), all().flat_map(|(_, v6)| v6).find_map(|a| a.v6().1));
}
