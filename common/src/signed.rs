//! One signed AWS request: POST a body to a service endpoint with SigV4,
//! using the SDK's own signer, without the service's SDK crate (aws-sdk-ec2
//! alone costs ~15 minutes of release build on 2 cores). dns-sidecar calls
//! EC2 with it, `bastion` calls SSM.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

/// Signs requests for one region with one set of credentials.
#[derive(Debug, Clone)]
pub struct SignedClient {
    pub http: reqwest::Client,
    pub region: String,
    credentials: SharedCredentialsProvider,
}

/// What came back: the HTTP status and the body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: reqwest::StatusCode,
    pub body: String,
}

impl SignedClient {
    pub fn new(http: reqwest::Client, region: &str, credentials: SharedCredentialsProvider) -> Self {
        Self { http, region: region.to_string(), credentials }
    }

    /// POSTs `body` to `url` for `service` (the signing name: `ec2`, `ssm`), with
    /// `headers` signed too. `what` names the call in errors (`ec2:DescribeNetworkInterfaces`).
    pub async fn post(
        &self,
        what: &str,
        service: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| format!("cannot get AWS credentials for {what}: {e}"))?;
        let identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("signing parameters for {what}: {e}"))?
            .into();
        let signable = SignableRequest::new("POST", url, headers.iter().copied(), SignableBody::Bytes(body.as_bytes()))
            .map_err(|e| format!("cannot sign {what}: {e}"))?;
        let (instructions, _) = sign(signable, &params).map_err(|e| format!("cannot sign {what}: {e}"))?.into_parts();
        let mut request = self.http.post(url).body(body.to_string());
        for (name, value) in headers.iter().copied().chain(instructions.headers()) {
            request = request.header(name, value);
        }
        let response = request.timeout(timeout).send().await.map_err(|e| format!("{what} at {url}: {e}"))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| format!("{what} answer: {e}"))?;
        Ok(Answer { status, body })
    }
}

/// The endpoint of `service` in `region`: `AWS_ENDPOINT_URL_<SERVICE>`, else
/// `AWS_ENDPOINT_URL`, else `https://<prefix>.<region>.<partition suffix>`
/// (the standard variables, as the SDKs read them).
pub fn endpoint(env_service: &str, prefix: &str, region: &str) -> String {
    std::env::var(format!("AWS_ENDPOINT_URL_{env_service}"))
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| format!("https://{prefix}.{region}.{}", crate::region::dns_suffix(region)))
}
