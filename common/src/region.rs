//! What the region says about the AWS partition: the ARN prefix and the
//! endpoints' DNS suffix (China and GovCloud differ from the rest).

/// `aws`, `aws-cn` or `aws-us-gov`.
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// The DNS suffix of the partition's regional endpoints.
pub fn dns_suffix(region: &str) -> &'static str {
    if region.starts_with("cn-") { "amazonaws.com.cn" } else { "amazonaws.com" }
}

/// STS's regional endpoint: where `bastion-sshd` sends a login proof unless
/// `--sts-endpoint` says otherwise.
pub fn sts_endpoint(region: &str) -> String {
    format!("https://sts.{region}.{}", dns_suffix(region))
}

/// The region a request to this STS host is signed for: `sts.REGION.amazonaws.com`
/// (or `.com.cn`) names it; the global `sts.amazonaws.com` signs for us-east-1.
/// None for any other host (a stand-in, a VPC endpoint name): give the region.
pub fn sts_region_of_host(host: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "sts.amazonaws.com" {
        return Some("us-east-1".into());
    }
    let rest = host.strip_prefix("sts.")?;
    let region = rest.strip_suffix(".amazonaws.com").or_else(|| rest.strip_suffix(".amazonaws.com.cn"))?;
    let valid = !region.is_empty() && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then(|| region.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_follow_the_region() {
        assert_eq!((partition("eu-west-1"), dns_suffix("eu-west-1")), ("aws", "amazonaws.com"));
        assert_eq!((partition("cn-north-1"), dns_suffix("cn-north-1")), ("aws-cn", "amazonaws.com.cn"));
        assert_eq!((partition("us-gov-west-1"), dns_suffix("us-gov-west-1")), ("aws-us-gov", "amazonaws.com"));
    }

    #[test]
    fn sts_endpoints_and_their_regions() {
        assert_eq!(sts_endpoint("eu-west-1"), "https://sts.eu-west-1.amazonaws.com");
        assert_eq!(sts_endpoint("cn-north-1"), "https://sts.cn-north-1.amazonaws.com.cn");
        assert_eq!(sts_region_of_host("sts.eu-west-1.amazonaws.com").as_deref(), Some("eu-west-1"));
        assert_eq!(sts_region_of_host("STS.cn-north-1.amazonaws.com.cn.").as_deref(), Some("cn-north-1"));
        assert_eq!(sts_region_of_host("sts.amazonaws.com").as_deref(), Some("us-east-1"));
        assert_eq!(sts_region_of_host("127.0.0.1:8080"), None);
        assert_eq!(sts_region_of_host("sts.evil.example.com"), None);
    }
}
