//! `--trust-from-ssm NAME`: the bastion's public host key, as the deployment
//! publishes it in an SSM parameter that IAM guards, recorded into
//! known_hosts before anything is sent to the bastion.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use aws_credential_types::provider::SharedCredentialsProvider;
use bastion_common::signed::{SignedClient, endpoint};
use russh::keys::PublicKey;

use crate::known_hosts::{self, Known, Verdict};

/// Reads the parameter: one OpenSSH public key line.
pub async fn host_key(config: &aws_config::SdkConfig, name: &str) -> anyhow::Result<PublicKey> {
    let region = config.region().map(|r| r.to_string()).context(
        "--trust-from-ssm: no AWS region (set AWS_REGION or a profile's region): SSM parameters live in a region",
    )?;
    let credentials: SharedCredentialsProvider =
        config.credentials_provider().context("--trust-from-ssm: no AWS credentials provider")?;
    let http = reqwest::Client::builder().build().context("building the HTTPS client")?;
    let client = SignedClient::new(http, &region, credentials);
    let url = format!("{}/", endpoint("SSM", "ssm", &region).trim_end_matches('/'));
    let body = serde_json::json!({ "Name": name }).to_string();
    let headers = [("content-type", "application/x-amz-json-1.1"), ("x-amz-target", "AmazonSSM.GetParameter")];
    let what = "ssm:GetParameter";
    let answer =
        client.post(what, "ssm", &url, &headers, &body, Duration::from_secs(10)).await.map_err(anyhow::Error::msg)?;
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
    if !answer.status.is_success() {
        let code = json["__type"].as_str().unwrap_or("").rsplit('#').next().unwrap_or("").to_string();
        let message = json["message"].as_str().or(json["Message"].as_str()).unwrap_or(&answer.body).to_string();
        let hint = match code.as_str() {
            "ParameterNotFound" => format!(" (no parameter {name} in {region}: check the name and AWS_REGION)"),
            "AccessDeniedException" => format!(" (your identity needs ssm:GetParameter on parameter {name})"),
            _ => String::new(),
        };
        bail!("{what} {name}: {code}: {message}{hint}");
    }
    let value =
        json["Parameter"]["Value"].as_str().with_context(|| format!("{what} {name}: no value in the answer"))?;
    let line = value.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    PublicKey::from_openssh(line)
        .map_err(|e| anyhow::anyhow!("SSM parameter {name} is not an OpenSSH public key ({e}): {line:?}"))
}

/// Adds `HOST key` (or `[HOST]:PORT key`) to known_hosts, unless it is there.
/// Refuses when known_hosts lists another key for the host: replacing a key
/// is a decision for the user (`ssh-keygen -R`), not for a login.
pub fn record(file: &Path, host: &str, port: u16, key: &PublicKey, source: &str) -> anyhow::Result<()> {
    let known = Known::load(file, host, port).map_err(anyhow::Error::msg)?;
    if !known.keys.is_empty() {
        match known.judge(key) {
            Verdict::Known => return Ok(()),
            Verdict::Changed { lines } => bail!(
                "{} lists another host key for {} (line {}) than {source} publishes ({}); if the bastion's key \
                 was replaced on purpose, remove the old one with `ssh-keygen -R {} -f {}`; nothing was sent",
                file.display(),
                known.name,
                lines.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", "),
                known_hosts::fingerprint(key),
                known.name,
                file.display()
            ),
        }
    }
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("opening {}", file.display()))?;
    let line = format!("{} {}\n", known.name, key.to_openssh().context("encoding the host key")?);
    out.write_all(line.as_bytes()).with_context(|| format!("writing {}", file.display()))?;
    eprintln!(
        "bastion: recorded {} {} for {} in {} (from {source})",
        key.algorithm(),
        known_hosts::fingerprint(key),
        known.name,
        file.display()
    );
    Ok(())
}
