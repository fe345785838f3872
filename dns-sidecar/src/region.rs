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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_follow_the_region() {
        assert_eq!((partition("eu-west-1"), dns_suffix("eu-west-1")), ("aws", "amazonaws.com"));
        assert_eq!((partition("cn-north-1"), dns_suffix("cn-north-1")), ("aws-cn", "amazonaws.com.cn"));
        assert_eq!((partition("us-gov-west-1"), dns_suffix("us-gov-west-1")), ("aws-us-gov", "amazonaws.com"));
    }
}
