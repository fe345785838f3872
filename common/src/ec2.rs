//! The one EC2 call the project makes: `DescribeNetworkInterfaces`, to read
//! the public IP associated with a task's network interface. The sidecar
//! looks its own interface up by the task's private IPv4; `bastion proxy`
//! looks a task's interface up by the id that ECS gives. Several VPCs in one account and region may use
//! the same CIDR, so several interfaces may hold that IP: the answer is
//! matched on the MAC address the task metadata gives. (The `mac-address`
//! filter would do it server-side, but the filter on the answer works
//! everywhere, moto included, which does not implement that filter.) A signed Query request
//! (`bastion_common::signed`: aws-sigv4, the SDK's own signer) parsed with quick-xml:
//! aws-sdk-ec2 would cost ~15 minutes of release build on 2 cores for this single call.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Deserialize;

use crate::signed::SignedClient;

/// EC2 Query API version.
const API_VERSION: &str = "2016-11-15";
/// Attempts for throttling and server errors.
const ATTEMPTS: u32 = 6;

pub struct Ec2 {
    /// Signs with the caller's credentials, for its region.
    client: SignedClient,
    /// `https://ec2.<region>.amazonaws.com` (`.com.cn` in China), or the `AWS_ENDPOINT_URL_EC2` / `AWS_ENDPOINT_URL` override.
    endpoint: String,
    /// Who needs `ec2:DescribeNetworkInterfaces` when it is denied: "the task role", "your AWS identity".
    who: &'static str,
}

#[derive(Debug, Deserialize)]
struct DescribeResponse {
    #[serde(rename = "networkInterfaceSet", default)]
    set: Option<InterfaceSet>,
}

#[derive(Debug, Deserialize)]
struct InterfaceSet {
    #[serde(rename = "item", default)]
    items: Vec<Interface>,
}

#[derive(Debug, Deserialize)]
struct Interface {
    #[serde(rename = "networkInterfaceId", default)]
    id: Option<String>,
    #[serde(rename = "macAddress", default)]
    mac_address: Option<String>,
    #[serde(rename = "vpcId", default)]
    vpc_id: Option<String>,
    #[serde(default)]
    association: Option<Association>,
}

#[derive(Debug, Deserialize)]
struct Association {
    #[serde(rename = "publicIp", default)]
    public_ip: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorResponse {
    #[serde(rename = "Errors")]
    errors: ErrorList,
}

#[derive(Debug, Deserialize)]
struct ErrorList {
    #[serde(rename = "Error", default)]
    error: Vec<ErrorItem>,
}

#[derive(Debug, Deserialize)]
struct ErrorItem {
    #[serde(rename = "Code", default)]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

/// What DescribeNetworkInterfaces said about the task's interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The interface and its public IP.
    Public { interface: String, ip: Ipv4Addr },
    /// The interface exists but has no public IP (yet).
    NoPublicIp { interface: String },
    /// No interface has that private IP (and MAC address).
    NotFound,
    /// Interfaces have that private IP, but none the task's MAC address.
    OtherInterfaces(Vec<String>),
}

/// Parses a DescribeNetworkInterfaces answer and picks the task's interface:
/// the one with `mac` (lower case), or with no MAC known, the only one.
fn parse(xml: &str, mac: Option<&str>) -> Result<Lookup, String> {
    let response: DescribeResponse =
        quick_xml::de::from_str(xml).map_err(|e| format!("unexpected DescribeNetworkInterfaces answer: {e}"))?;
    let items = response.set.map(|s| s.items).unwrap_or_default();
    let describe = |i: &Interface| {
        format!(
            "{} (MAC {}, {})",
            i.id.as_deref().unwrap_or("?"),
            i.mac_address.as_deref().unwrap_or("?"),
            i.vpc_id.as_deref().unwrap_or("VPC ?")
        )
    };
    let shown: Vec<String> = items.iter().map(describe).collect();
    let interface = match mac {
        Some(mac) => {
            let same_mac = |i: &Interface| i.mac_address.as_deref().map(|m| m.trim().eq_ignore_ascii_case(mac));
            match items.into_iter().find(|i| same_mac(i) == Some(true)) {
                Some(interface) => interface,
                None if shown.is_empty() => return Ok(Lookup::NotFound),
                None => return Ok(Lookup::OtherInterfaces(shown)),
            }
        }
        None if items.len() > 1 => {
            return Err(format!(
                "{} network interfaces have the task's private IP ({}) and the task metadata gives no MAC address \
                 to tell them apart; refusing to guess",
                items.len(),
                shown.join(", ")
            ));
        }
        None => match items.into_iter().next() {
            Some(interface) => interface,
            None => return Ok(Lookup::NotFound),
        },
    };
    let id = interface.id.unwrap_or_else(|| "?".into());
    match interface.association.and_then(|a| a.public_ip) {
        Some(ip) => {
            let ip = ip.trim().parse().map_err(|_| format!("EC2 returned {ip:?} as the public IP of {id}"))?;
            Ok(Lookup::Public { interface: id, ip })
        }
        None => Ok(Lookup::NoPublicIp { interface: id }),
    }
}

/// The code and message of an EC2 error answer.
fn parse_error(xml: &str) -> Option<(String, String)> {
    let response: ErrorResponse = quick_xml::de::from_str(xml).ok()?;
    response.errors.error.into_iter().next().map(|e| (e.code, e.message))
}

impl Ec2 {
    pub fn new(client: SignedClient, who: &'static str) -> Self {
        let endpoint = crate::signed::endpoint("EC2", "ec2", &client.region);
        Self { client, endpoint, who }
    }

    /// The public IPv4 of the interface holding `private_ip`, with the MAC
    /// address `mac` when the task metadata gives it.
    pub async fn lookup(&self, private_ip: Ipv4Addr, mac: Option<&str>) -> Result<Lookup, String> {
        let body = format!(
            "Action=DescribeNetworkInterfaces&Version={API_VERSION}\
             &Filter.1.Name=addresses.private-ip-address&Filter.1.Value.1={private_ip}"
        );
        let text = self.describe(&body).await?;
        parse(&text, mac)
    }

    /// The public IPv4 of the interface `id` (`eni-…`, as DescribeTasks gives it).
    pub async fn by_id(&self, id: &str) -> Result<Lookup, String> {
        if !id.starts_with("eni-") || !id[4..].chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("{id:?} is not a network interface id"));
        }
        let body = format!("Action=DescribeNetworkInterfaces&Version={API_VERSION}&NetworkInterfaceId.1={id}");
        let text = self.describe(&body).await?;
        parse(&text, None)
    }

    /// Sends one DescribeNetworkInterfaces; the answer's XML. Retries throttling and server errors.
    async fn describe(&self, body: &str) -> Result<String, String> {
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            let (status, text) = self.send(body).await?;
            if status.is_success() {
                return Ok(text);
            }
            let (code, message) = parse_error(&text).unwrap_or_else(|| (status.to_string(), text.clone()));
            let transient = status.is_server_error() || matches!(code.as_str(), "RequestLimitExceeded" | "Throttling");
            if !transient || attempt == ATTEMPTS {
                let hint = match code.as_str() {
                    "UnauthorizedOperation" | "AccessDenied" | "AuthFailure" => {
                        format!(" ({} needs ec2:DescribeNetworkInterfaces)", self.who)
                    }
                    _ => String::new(),
                };
                return Err(format!("ec2:DescribeNetworkInterfaces failed: {code}: {message}{hint}"));
            }
            let jitter = Duration::from_millis(rand::random_range(0..250));
            tokio::time::sleep(delay + jitter).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        unreachable!("the loop returns on the last attempt")
    }

    async fn send(&self, body: &str) -> Result<(reqwest::StatusCode, String), String> {
        let url = format!("{}/", self.endpoint.trim_end_matches('/'));
        let headers = [("content-type", "application/x-www-form-urlencoded; charset=utf-8")];
        let what = "ec2:DescribeNetworkInterfaces";
        let answer = self.client.post(what, "ec2", &url, &headers, body, Duration::from_secs(10)).await?;
        Ok((answer.status, answer.body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed() {
        let with_ip = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeNetworkInterfacesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r-1</requestId>
  <networkInterfaceSet>
    <item>
      <networkInterfaceId>eni-0abc</networkInterfaceId>
      <subnetId>subnet-1</subnetId>
      <association><publicIp>203.0.113.7</publicIp><ipOwnerId>amazon</ipOwnerId></association>
      <privateIpAddressesSet><item><privateIpAddress>10.0.0.5</privateIpAddress></item></privateIpAddressesSet>
    </item>
  </networkInterfaceSet>
</DescribeNetworkInterfacesResponse>"#;
        let public = Lookup::Public { interface: "eni-0abc".into(), ip: Ipv4Addr::new(203, 0, 113, 7) };
        assert_eq!(parse(with_ip, None).unwrap(), public);
        let without = with_ip
            .replace("<association><publicIp>203.0.113.7</publicIp><ipOwnerId>amazon</ipOwnerId></association>", "");
        assert_eq!(parse(&without, None).unwrap(), Lookup::NoPublicIp { interface: "eni-0abc".into() });
        let empty = r#"<DescribeNetworkInterfacesResponse><requestId>r</requestId><networkInterfaceSet/></DescribeNetworkInterfacesResponse>"#;
        assert_eq!(parse(empty, None).unwrap(), Lookup::NotFound);
        assert_eq!(parse(empty, Some("02:00:00:00:00:01")).unwrap(), Lookup::NotFound);
        assert!(parse(&with_ip.replace("203.0.113.7", "not-an-ip"), None).unwrap_err().contains("not-an-ip"));
    }

    /// Two VPCs with the same CIDR: two interfaces hold 10.0.0.5.
    const TWO: &str = r#"<DescribeNetworkInterfacesResponse><networkInterfaceSet>
      <item><networkInterfaceId>eni-1</networkInterfaceId><vpcId>vpc-1</vpcId><macAddress>02:00:00:00:00:01</macAddress>
        <association><publicIp>198.51.100.1</publicIp></association></item>
      <item><networkInterfaceId>eni-2</networkInterfaceId><vpcId>vpc-2</vpcId><macAddress>02:00:00:00:00:02</macAddress>
        <association><publicIp>203.0.113.2</publicIp></association></item>
    </networkInterfaceSet></DescribeNetworkInterfacesResponse>"#;

    #[test]
    fn the_interface_is_matched_on_its_mac_address() {
        assert_eq!(
            parse(TWO, Some("02:00:00:00:00:02")).unwrap(),
            Lookup::Public { interface: "eni-2".into(), ip: Ipv4Addr::new(203, 0, 113, 2) }
        );
        assert_eq!(
            parse(TWO, Some("02:00:00:00:00:09")).unwrap(),
            Lookup::OtherInterfaces(vec![
                "eni-1 (MAC 02:00:00:00:00:01, vpc-1)".into(),
                "eni-2 (MAC 02:00:00:00:00:02, vpc-2)".into()
            ])
        );
        let guess = parse(TWO, None).unwrap_err();
        assert!(guess.contains("2 network interfaces") && guess.contains("refusing to guess"), "{guess}");
    }

    #[test]
    fn errors_are_parsed() {
        let xml = r#"<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized</Message></Error></Errors><RequestID>x</RequestID></Response>"#;
        assert_eq!(parse_error(xml), Some(("UnauthorizedOperation".into(), "You are not authorized".into())));
    }
}
