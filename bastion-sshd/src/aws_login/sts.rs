//! The one AWS API the bastion calls: `sts:GetCallerIdentity`, with a
//! request the client signed, sent to the STS endpoint of the bastion's own
//! configuration. The bastion holds no AWS credentials; the signature is the
//! client's.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use quick_xml::de::from_str;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName};

/// How long STS may take to answer, connection and TLS included.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer that is read. A GetCallerIdentity answer is under 1 KiB.
const MAX_ANSWER: usize = 64 << 10;

/// Where proofs go.
#[derive(Clone)]
pub struct Sts {
    /// For display: `https://sts.REGION.amazonaws.com/` or `--sts-endpoint`.
    url: String,
    /// What to connect to.
    connect_host: String,
    port: u16,
    /// TLS with the roots of SSL_CERT_FILE or the system; None for http:// to loopback.
    tls: Option<Arc<ClientConfig>>,
    /// `host[:port]` of the endpoint: the Host header, and what a proof must be signed for.
    host: String,
    /// The region proofs are signed for.
    region: String,
}

impl std::fmt::Debug for Sts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sts").field("url", &self.url).field("region", &self.region).finish()
    }
}

/// Who signed the proof, as STS says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub arn: String,
    pub account: String,
    pub user_id: String,
}

/// Why STS gave no identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StsError {
    /// STS refused the request: the proof is at fault (bad signature, expired token…).
    Refused { code: String, message: String },
    /// STS could not be asked, or failed: not the user's fault.
    Unavailable(String),
}

impl std::fmt::Display for StsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StsError::Refused { code, message } => write!(f, "STS refused the proof: {code}: {message}"),
            StsError::Unavailable(why) => write!(f, "STS is unavailable: {why}"),
        }
    }
}

impl Sts {
    /// `endpoint` is `https://HOST[:PORT]`, or `http://` to a loopback address (a test stand-in).
    pub fn new(endpoint: &str, region: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("--sts-endpoint {endpoint:?}: {why}");
        let (scheme, rest) = endpoint.split_once("://").ok_or_else(|| bad("not a URL (https://HOST[:PORT])"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(bad("give scheme, host and port only"));
        }
        let (host_name, port) = split_host_port(authority).ok_or_else(|| bad("not HOST[:PORT]"))?;
        let ip = host_name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok();
        let tls = match scheme {
            "https" => Some(Arc::new(tls_config()?)),
            "http" if ip.is_some_and(|ip| ip.is_loopback()) => None,
            scheme => {
                return Err(bad(&format!(
                    "{scheme}:// is not allowed; use https:// (http:// only to a loopback address)"
                )));
            }
        };
        let default_port = if tls.is_some() { 443 } else { 80 };
        let host = match port {
            Some(port) => format!("{host_name}:{port}"),
            None => host_name.to_string(),
        };
        if region.is_empty() {
            return Err("no STS region: set AWS_REGION (ECS sets it) or --sts-region".into());
        }
        Ok(Self {
            url: format!("{scheme}://{host}/"),
            connect_host: host_name.trim_start_matches('[').trim_end_matches(']').to_string(),
            port: port.unwrap_or(default_port),
            tls,
            host,
            region: region.to_string(),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends the client's signed request; the ARN of whoever signed it.
    pub async fn get_caller_identity(&self, headers: &[(String, String)], body: &str) -> Result<Caller, StsError> {
        let (status, text) = tokio::time::timeout(TIMEOUT, self.post(headers, body))
            .await
            .map_err(|_| StsError::Unavailable(format!("{}: no answer within {TIMEOUT:?}", self.url)))?
            .map_err(|e| StsError::Unavailable(format!("{}: {e}", self.url)))?;
        if status.is_success() {
            return parse_caller(&text).map_err(StsError::Unavailable);
        }
        match parse_error(&text) {
            Some((code, message)) if status.is_client_error() => Err(StsError::Refused { code, message }),
            Some((code, message)) => Err(StsError::Unavailable(format!("HTTP {status}: {code}: {message}"))),
            None => Err(StsError::Unavailable(format!("HTTP {status}"))),
        }
    }

    /// One POST on a new connection: no pooling (a login is rare), no redirects.
    async fn post(&self, headers: &[(String, String)], body: &str) -> Result<(hyper::StatusCode, String), String> {
        let tcp = TcpStream::connect((self.connect_host.as_str(), self.port)).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some(config) => {
                let name = ServerName::try_from(self.connect_host.clone()).map_err(|e| e.to_string())?;
                let tls =
                    TlsConnector::from(config.clone()).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
                send(TokioIo::new(tls), &self.host, headers, body).await
            }
            None => send(TokioIo::new(tcp), &self.host, headers, body).await,
        }
    }
}

async fn send<T>(
    io: T,
    host: &str,
    headers: &[(String, String)],
    body: &str,
) -> Result<(hyper::StatusCode, String), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let mut request = hyper::Request::post("/").header(hyper::header::HOST, host);
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(Full::new(Bytes::from(body.to_string()))).map_err(|e| e.to_string())?;
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }
    .await;
    driver.abort();
    result
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        match &authority[end..] {
            "" => (&authority[..end], None),
            rest => (&authority[..end], Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0)?),
        None => None,
    };
    let name_ok = host.starts_with('[')
        || (!host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
    name_ok.then_some((host, port))
}

/// rustls with aws-lc-rs, trusting the roots of SSL_CERT_FILE (the image sets it) or the system's.
fn tls_config() -> Result<ClientConfig, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no CA certificates to verify STS with (set SSL_CERT_FILE to a PEM bundle){}",
            found.errors.first().map(|e| format!(": {e}")).unwrap_or_default()
        ));
    }
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

#[derive(Debug, Deserialize)]
struct Response {
    #[serde(rename = "GetCallerIdentityResult")]
    result: ResultFields,
}

#[derive(Debug, Deserialize)]
struct ResultFields {
    #[serde(rename = "Arn")]
    arn: String,
    #[serde(rename = "Account", default)]
    account: String,
    #[serde(rename = "UserId", default)]
    user_id: String,
}

#[derive(Debug, Deserialize)]
struct ErrorResponse {
    #[serde(rename = "Error")]
    error: ErrorFields,
}

#[derive(Debug, Deserialize)]
struct ErrorFields {
    #[serde(rename = "Code", default)]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

/// A GetCallerIdentity answer. The ARN must look like one.
fn parse_caller(xml: &str) -> Result<Caller, String> {
    let response: Response = from_str(xml).map_err(|e| format!("unexpected GetCallerIdentity answer: {e}"))?;
    let ResultFields { arn, account, user_id } = response.result;
    let arn = arn.trim().to_string();
    if !arn.starts_with("arn:") || arn.len() > 2048 || arn.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("STS returned {arn:?} as the ARN"));
    }
    Ok(Caller { arn, account: account.trim().to_string(), user_id: user_id.trim().to_string() })
}

/// The code and message of an STS error answer, trimmed for one log line.
fn parse_error(xml: &str) -> Option<(String, String)> {
    let response: ErrorResponse = from_str(xml).ok()?;
    let clip = |s: String| s.trim().chars().take(300).collect::<String>();
    Some((clip(response.error.code), clip(response.error.message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_like_sts_writes_them() {
        let xml = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_DBAccess_0a1b/alice@example.com</Arn>
    <UserId>AROAEXAMPLE:alice@example.com</UserId>
    <Account>111122223333</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata><RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>"#;
        let caller = parse_caller(xml).unwrap();
        assert_eq!(caller.arn, "arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_DBAccess_0a1b/alice@example.com");
        assert_eq!(caller.account, "111122223333");
        assert!(parse_caller(&xml.replace("<Arn>arn:", "<Arn>nonsense ")).is_err());
        assert!(parse_caller("<html>captive portal</html>").is_err());
        let error = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error>
  <RequestId>x</RequestId></ErrorResponse>"#;
        assert_eq!(
            parse_error(error),
            Some(("SignatureDoesNotMatch".into(), "The request signature we calculated does not match".into()))
        );
    }

    /// A one-shot HTTP server on loopback that answers `response` and reports what it got.
    async fn answer_once(response: String) -> (u16, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 8192];
            let n = stream.read(&mut request).await.unwrap();
            stream.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request[..n]).into_owned()
        });
        (port, task)
    }

    #[tokio::test]
    async fn the_request_goes_to_the_endpoint_only_and_redirects_are_not_followed() {
        // Where a redirect would lead: nothing must arrive there.
        let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        elsewhere.set_nonblocking(true).unwrap();
        let location = format!("http://127.0.0.1:{}/", elsewhere.local_addr().unwrap().port());
        let (port, seen) = answer_once(format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
        ))
        .await;
        let sts = Sts::new(&format!("http://127.0.0.1:{port}"), "us-east-1").unwrap();
        let headers = vec![("x-amz-date".to_string(), "20261202T071300Z".to_string())];
        let result = sts.get_caller_identity(&headers, bastion_common::login::STS_BODY).await;
        assert_eq!(result, Err(StsError::Unavailable("HTTP 307 Temporary Redirect".into())));
        let request = seen.await.unwrap();
        assert!(request.starts_with("POST / HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("x-amz-date: 20261202T071300Z\r\n"), "{request}");
        assert!(request.ends_with(bastion_common::login::STS_BODY), "{request}");
        assert!(elsewhere.accept().is_err(), "the redirect was followed");
    }

    #[tokio::test]
    async fn a_refusal_names_the_code_and_a_server_error_is_not_the_users_fault() {
        let body = "<ErrorResponse><Error><Type>Sender</Type><Code>ExpiredToken</Code><Message>The security token included in the request is expired</Message></Error></ErrorResponse>";
        let (port, _) =
            answer_once(format!("HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\n\r\n{body}", body.len())).await;
        let sts = Sts::new(&format!("http://127.0.0.1:{port}"), "us-east-1").unwrap();
        let refused = sts.get_caller_identity(&[], "").await.unwrap_err();
        assert_eq!(
            refused.to_string(),
            "STS refused the proof: ExpiredToken: The security token included in the request is expired"
        );
        let (port, _) = answer_once("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".into()).await;
        let sts = Sts::new(&format!("http://127.0.0.1:{port}"), "us-east-1").unwrap();
        assert!(matches!(sts.get_caller_identity(&[], "").await, Err(StsError::Unavailable(_))));
    }

    #[test]
    fn endpoints_must_be_https_except_to_loopback() {
        let sts = Sts::new("https://sts.eu-west-1.amazonaws.com", "eu-west-1").unwrap();
        assert_eq!((sts.host(), sts.url()), ("sts.eu-west-1.amazonaws.com", "https://sts.eu-west-1.amazonaws.com/"));
        assert_eq!(Sts::new("http://127.0.0.1:4566", "us-east-1").unwrap().host(), "127.0.0.1:4566");
        assert!(Sts::new("http://[::1]:4566/", "us-east-1").is_ok());
        let plain = Sts::new("http://sts.eu-west-1.amazonaws.com", "eu-west-1").unwrap_err();
        assert!(plain.contains("http:// only to a loopback address"), "{plain}");
        assert!(
            Sts::new("https://sts.amazonaws.com/some/path", "us-east-1").unwrap_err().contains("host and port only")
        );
        assert!(Sts::new("https://sts.amazonaws.com", "").unwrap_err().contains("no STS region"));
    }
}
