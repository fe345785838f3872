//! Which address to publish: the public IP of the task's interface (EC2),
//! an IP echo service, the private IPv4, or one given on the command line.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::cli::AddressSource;
use bastion_common::ec2::{Ec2, Lookup};

/// Asks EC2 for the public IP of the interface holding `private` (with
/// the MAC address `mac`, when known), retrying while the association is not
/// there yet (right after the task starts).
pub async fn from_eni(ec2: &Ec2, private: Ipv4Addr, mac: Option<&str>, wait: Duration) -> Result<IpAddr, String> {
    let deadline = Instant::now() + wait;
    let mut delay = Duration::from_secs(1);
    loop {
        let answer = ec2.lookup(private, mac).await?;
        let why = match answer {
            Lookup::Public { interface, ip } => {
                info!(event = "address.found", source = "eni", interface = %interface, address = %ip,
                    "public IP {ip} of {interface}");
                return Ok(IpAddr::V4(ip));
            }
            Lookup::NoPublicIp { interface } => format!("{interface} has no public IP yet"),
            Lookup::NotFound => format!("no network interface has the private IP {private}"),
            Lookup::OtherInterfaces(others) => format!(
                "no network interface has the private IP {private} and the task's MAC address {}; other \
                 interfaces have that IP: {}",
                mac.unwrap_or("?"),
                others.join(", ")
            ),
        };
        if Instant::now() + delay > deadline {
            return Err(format!(
                "{why} after {wait:?}; is the task in a public subnet with assignPublicIp ENABLED? \
                 (--address-source private publishes the private IP instead)"
            ));
        }
        warn!(event = "address.retry", source = "eni", "{why}; asking again in {delay:?}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Asks an IP echo URL (plain text, one address).
pub async fn from_checkip(http: &reqwest::Client, url: &str) -> Result<IpAddr, String> {
    let response =
        http.get(url).timeout(Duration::from_secs(10)).send().await.map_err(|e| format!("checkip {url}: {e}"))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| format!("checkip {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("checkip {url}: HTTP {status}"));
    }
    parse_checkip(&body).map_err(|shown| format!("checkip {url} answered {shown}, which is not an IP address"))
}

/// The body of an IP echo answer: one address, maybe with a newline.
pub fn parse_checkip(body: &str) -> Result<IpAddr, String> {
    let text = body.trim();
    text.parse::<IpAddr>().map_err(|_| {
        let shown: String = text.chars().take(60).collect();
        format!("{shown:?}")
    })
}

pub fn describe(source: AddressSource) -> &'static str {
    match source {
        AddressSource::Eni => "eni",
        AddressSource::Checkip => "checkip",
        AddressSource::Private => "private",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkip_answers_are_validated() {
        assert_eq!(parse_checkip("203.0.113.7\n").unwrap(), "203.0.113.7".parse::<IpAddr>().unwrap());
        assert!(parse_checkip("<html>oops</html>").unwrap_err().contains("<html>"));
        assert!(parse_checkip("").is_err());
        assert!(parse_checkip("203.0.113.7, 10.0.0.1").is_err());
    }
}
