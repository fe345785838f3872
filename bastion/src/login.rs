//! `bastion login HOST`: AWS credentials in, an SSH certificate out.
//!
//! 1. known_hosts must list HOST, or nothing happens at all;
//! 2. credentials come from the standard AWS chain;
//! 3. the SSH connection starts, and the host key it shows must be the one listed;
//! 4. only then is the challenge answered with a signed proof (`proof`);
//! 5. the certificate for a key made here, which never leaves the laptop,
//!    is written next to it, or both go to ssh-agent.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use aws_config::BehaviorVersion;
use aws_credential_types::provider::ProvideCredentials;
use bastion_common::login::{Binding, Challenge, Outcome, PROMPT_NAME, SUBMETHOD, normalize_name};
use russh::client::{self, KeyboardInteractiveAuthResponse};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, Certificate, PrivateKey, PublicKeyOrCertificate};
use russh::{Disconnect, Preferred};

use crate::files;
use crate::known_hosts::{self, Known, Verdict};

/// How long the whole exchange with the bastion may take.
const TIMEOUT: Duration = Duration::from_secs(30);

pub struct LoginArgs {
    pub host: String,
    pub port: u16,
    pub known_hosts: PathBuf,
    pub identity_file: PathBuf,
    pub agent: bool,
    /// STS hosts the user allows besides AWS's own (`--sts-host`).
    pub sts_hosts: Vec<String>,
    /// `--trust-from-ssm`: the SSM parameter with the bastion's public host key.
    pub trust_from_ssm: Option<String>,
}

/// What the russh client needs: the host keys it may accept, and the one it did.
struct Client {
    known: Known,
    /// The fingerprint of the host key shown, once it was found in known_hosts.
    verified: Arc<Mutex<Option<String>>>,
    /// Why the host key was refused, for the error message.
    refused: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.refused.lock().unwrap_or_else(|e| e.into_inner()) =
                Some("the bastion showed a host certificate; bastion login checks plain host keys only".into());
            return Ok(false);
        };
        match self.known.judge(key) {
            Verdict::Known => {
                *self.verified.lock().unwrap_or_else(|e| e.into_inner()) = Some(known_hosts::fingerprint(key));
                Ok(true)
            }
            Verdict::Changed { lines } => {
                let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                    "HOST KEY MISMATCH: {} shows {} {}, but {} lists another key for {} (line {}). Someone may be \
                     intercepting the connection, or the bastion's host key was replaced. Nothing identifying was \
                     sent. Check with your operator before you change known_hosts",
                    self.known.name,
                    key.algorithm(),
                    known_hosts::fingerprint(key),
                    self.known.file.display(),
                    self.known.name,
                    lines.join(", ")
                ));
                Ok(false)
            }
        }
    }
}

pub async fn run(args: &LoginArgs) -> anyhow::Result<()> {
    let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
    if let Some(name) = &args.trust_from_ssm {
        let key = crate::ssm::host_key(&config, name).await?;
        crate::ssm::record(&args.known_hosts, &args.host, args.port, &key, &format!("SSM parameter {name}"))?;
    }
    let known = Known::load(&args.known_hosts, &args.host, args.port).map_err(anyhow::Error::msg)?;
    if known.keys.is_empty() {
        bail!(known.unknown_message(&args.host));
    }
    let credentials = credentials(&config).await?;
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).context("generating a key")?;
    let public = key.public_key().to_openssh().context("encoding the public key")?;
    let outcome = tokio::time::timeout(TIMEOUT, exchange(args, known, &credentials, &key, &public))
        .await
        .map_err(|_| anyhow::anyhow!("{}:{} did not complete the login within {TIMEOUT:?}", args.host, args.port))??;
    if !outcome.ok {
        let who = outcome.arn.as_deref().map(|a| format!(" for {a}")).unwrap_or_default();
        bail!("refused{who}: {}", outcome.reason.as_deref().unwrap_or("no reason given"));
    }
    let text = outcome.certificate.as_deref().context("the bastion accepted the login but sent no certificate")?;
    let cert = Certificate::from_openssh(text).context("the bastion sent a certificate that cannot be read")?;
    if cert.public_key() != key.public_key().key_data() {
        bail!("the bastion sent a certificate for another key; nothing was written");
    }
    let lifetime = Duration::from_secs(cert.valid_before().saturating_sub(now_secs()));
    let stored = if args.agent {
        files::add_to_agent(&key, text, lifetime)?;
        "added to ssh-agent".to_string()
    } else {
        files::write_identity(&args.identity_file, &key.to_openssh(LineEnding::LF)?, text)?;
        format!(
            "key {} and certificate {}",
            args.identity_file.display(),
            files::cert_path(&args.identity_file).display()
        )
    };
    print_outcome(&outcome, lifetime, &stored);
    Ok(())
}

fn print_outcome(outcome: &Outcome, lifetime: Duration, stored: &str) {
    println!("logged in as {}", outcome.arn.as_deref().unwrap_or("?"));
    let until = UNIX_EPOCH + Duration::from_secs(outcome.valid_before.unwrap_or(0));
    let tunnels = match outcome.tunnels.as_slice() {
        [] => "none (the rule forbids port forwarding)".to_string(),
        [any] if any == "any" => "any destination the bastion allows".to_string(),
        list => list.join(", "),
    };
    // Whole minutes, unless it is that short.
    let secs = lifetime.as_secs();
    let hours = humantime::format_duration(Duration::from_secs(if secs >= 120 { (secs + 30) / 60 * 60 } else { secs }));
    println!("certificate valid until {} ({hours}); tunnels: {tunnels}", humantime::format_rfc3339_seconds(until));
    println!("{stored}");
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The standard AWS chain: environment, profile (AWS_PROFILE), SSO cache, credential_process, roles.
async fn credentials(config: &aws_config::SdkConfig) -> anyhow::Result<aws_credential_types::Credentials> {
    let provider = config
        .credentials_provider()
        .context("no AWS credentials provider: set AWS_PROFILE, run `aws sso login`, or set AWS_ACCESS_KEY_ID")?;
    provider.provide_credentials().await.map_err(|e| {
        anyhow::anyhow!(
            "no AWS credentials ({e}): run `aws sso login --profile NAME` and set AWS_PROFILE, or set \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; nothing was sent to the bastion"
        )
    })
}

/// The SSH part: host key check, challenge, proof, outcome.
async fn exchange(
    args: &LoginArgs,
    known: Known,
    credentials: &aws_credential_types::Credentials,
    key: &PrivateKey,
    public: &str,
) -> anyhow::Result<Outcome> {
    let verified = Arc::new(Mutex::new(None));
    let refused = Arc::new(Mutex::new(None));
    let algorithms = known.algorithms();
    let config = client::Config {
        preferred: Preferred { key: algorithms.into(), ..Preferred::DEFAULT },
        ..client::Config::default()
    };
    let handler = Client { known, verified: verified.clone(), refused: refused.clone() };
    let connected = client::connect(Arc::new(config), (args.host.as_str(), args.port), handler).await;
    let mut session = match connected {
        Ok(session) => session,
        Err(e) => {
            if let Some(why) = refused.lock().unwrap_or_else(|e| e.into_inner()).take() {
                bail!(why);
            }
            bail!("cannot connect to {}:{}: {e}", args.host, args.port);
        }
    };
    let Some(host_key) = verified.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
        bail!("the host key was not verified; nothing was sent");
    };
    let user = std::env::var("USER").unwrap_or_else(|_| "aws".into());
    let first = session.authenticate_keyboard_interactive_start(user, Some(SUBMETHOD.to_string())).await?;
    let challenge: Challenge = match first {
        KeyboardInteractiveAuthResponse::InfoRequest { name, instructions, prompts }
            if name == PROMPT_NAME && prompts.len() == 1 =>
        {
            serde_json::from_str(&instructions).context("the bastion's challenge cannot be read")?
        }
        _ => bail!(
            "{}:{} does not offer AWS logins (it needs --user-ca-key and --aws-identity-rules)",
            args.host,
            args.port
        ),
    };
    if !crate::proof::is_aws_sts_host(&challenge.sts_host) && !args.sts_hosts.contains(&challenge.sts_host) {
        bail!(
            "the bastion asks for a proof signed for {:?}, which is not an AWS STS endpoint; nothing was sent. \
             If you trust it (a VPC endpoint, a test), allow it with --sts-host {}",
            challenge.sts_host,
            challenge.sts_host
        );
    }
    let binding = Binding {
        bastion: normalize_name(&args.host),
        host_key,
        key: known_hosts::fingerprint(key.public_key()),
        nonce: challenge.nonce.clone(),
    };
    let proof = crate::proof::sign_proof(credentials, &challenge, &binding, public, SystemTime::now())
        .map_err(anyhow::Error::msg)?;
    let answer = serde_json::to_string(&proof)?;
    let outcome = match session.authenticate_keyboard_interactive_respond(vec![answer]).await? {
        KeyboardInteractiveAuthResponse::InfoRequest { instructions, prompts, .. } if prompts.is_empty() => {
            serde_json::from_str::<Outcome>(&instructions).context("the bastion's answer cannot be read")?
        }
        _ => bail!("the bastion ended the login without an answer"),
    };
    // This connection logs in to nothing: the certificate is for the next one. Leaving
    // now, rather than acknowledging the answer, saves the server's 1 s failure delay.
    let _ = session.disconnect(Disconnect::ByApplication, "", "en").await;
    Ok(outcome)
}

/// `~/.ssh/bastion-HOST` (`-PORT` when not 22).
pub fn default_identity_file(home: &Path, host: &str, port: u16) -> PathBuf {
    let name = normalize_name(host).replace(['/', ':', '[', ']'], "_");
    let file = if port == 22 { format!("bastion-{name}") } else { format!("bastion-{name}-{port}") };
    home.join(".ssh").join(file)
}
