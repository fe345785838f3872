//! The russh glue of AWS logins: keyboard-interactive with the submethod
//! `aws-sts-v1` (the protocol is in `bastion_common::login`). Three rounds:
//! the request gets the challenge; the answer gets the outcome (a
//! certificate, or why not); the empty answer to that gets a failure, since
//! this connection logs in to nothing: the client reconnects with the
//! certificate. Decisions are `aws_login`'s; this writes the audit events.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bastion_common::login::{Outcome, PROMPT, PROMPT_NAME};
use russh::server::{Auth, Response};
use russh::{MethodKind, MethodSet};
use tracing::info;

use super::ConnectionHandler;
use crate::aws_login::{AwsLogin, Pending};

/// Where the AWS login of a connection stands.
#[derive(Debug, Default)]
pub(super) enum Step {
    #[default]
    NotStarted,
    /// The challenge was sent; its proof is awaited.
    Challenged(Pending),
    /// The outcome was sent: the connection has had its one login.
    Done,
}

/// The failure that ends the exchange: publickey is what may follow.
fn reject() -> Auth {
    Auth::Reject { proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])), partial_success: false }
}

fn info_request(instructions: String, prompts: &[(&'static str, bool)]) -> Auth {
    let prompts: Vec<(Cow<'static, str>, bool)> = prompts.iter().map(|(p, echo)| (Cow::Borrowed(*p), *echo)).collect();
    Auth::Partial {
        name: Cow::Borrowed(PROMPT_NAME),
        instructions: Cow::Owned(instructions),
        prompts: Cow::Owned(prompts),
    }
}

impl ConnectionHandler {
    pub(super) async fn aws_login_step(
        &mut self,
        login: &Arc<AwsLogin>,
        user: &str,
        response: Option<Response<'_>>,
    ) -> Auth {
        match (std::mem::take(&mut self.aws_login), response) {
            (Step::NotStarted, None) => {
                self.signals.tried_to_authenticate();
                let (challenge, pending) = login.challenge();
                self.aws_login = Step::Challenged(pending);
                let text = serde_json::to_string(&challenge).unwrap_or_default();
                info_request(text, &[(PROMPT, false)])
            }
            (Step::Challenged(pending), Some(mut answers)) => {
                self.aws_login = Step::Done;
                let proof = answers.next();
                let outcome = match (proof, answers.next()) {
                    (Some(proof), None) => self.judge(login, &pending, user, &proof).await,
                    _ => {
                        self.aws_login_refused(user, None, None, "expected exactly one answer: the proof");
                        Outcome::refused(None, "expected exactly one answer: the proof")
                    }
                };
                info_request(serde_json::to_string(&outcome).unwrap_or_default(), &[])
            }
            (Step::Challenged(_), None) | (Step::Done, None) => {
                self.aws_login = Step::Done;
                self.aws_login_refused(user, None, None, "one AWS login per connection");
                reject()
            }
            (step, _) => {
                // The acknowledgement of the outcome, or an answer nobody asked for.
                self.aws_login = if matches!(step, Step::NotStarted) { Step::NotStarted } else { Step::Done };
                reject()
            }
        }
    }

    async fn judge(&self, login: &AwsLogin, pending: &Pending, user: &str, proof: &[u8]) -> Outcome {
        let store = self.shared.keys.get();
        let attempt = login.complete(pending, proof, &store, &self.shared.policy, self.conn.peer.ip()).await;
        match &attempt.issued {
            Some(issued) => {
                // A login that worked: this connection ends in a failure by
                // design, which must not penalize its source.
                self.signals.tried_auth.store(false, Ordering::Relaxed);
                info!(
                    target: "audit",
                    event = "auth.certificate_issued",
                    conn = %self.conn.id,
                    peer = %self.conn.peer,
                    user,
                    method = "aws-sts",
                    arn = %issued.arn,
                    access_key_id = attempt.access_key_id.as_deref(),
                    principal = %issued.principal,
                    cert_serial = issued.serial,
                    fingerprint = %issued.fingerprint,
                    valid_before = issued.valid_before,
                    rule = %issued.rule,
                    tunnels = %attempt.outcome.tunnels.join(","),
                    "certificate {} issued to {} (rule {}), valid until {}",
                    issued.serial, issued.arn, issued.rule, crate::options::format_epoch(issued.valid_before)
                );
            }
            None => {
                let reason = attempt.outcome.reason.as_deref().unwrap_or("refused");
                self.aws_login_refused(user, attempt.outcome.arn.as_deref(), attempt.access_key_id.as_deref(), reason);
                if attempt.unavailable {
                    // STS was down, not the proof wrong: no penalty.
                    self.signals.tried_auth.store(false, Ordering::Relaxed);
                }
            }
        }
        attempt.outcome
    }

    fn aws_login_refused(&self, user: &str, arn: Option<&str>, access_key_id: Option<&str>, reason: &str) {
        info!(
            target: "audit",
            event = "auth.refused",
            conn = %self.conn.id,
            peer = %self.conn.peer,
            user,
            method = "aws-sts",
            arn,
            access_key_id,
            reason,
            "AWS login refused{}: {reason}", arn.map(|a| format!(" for {a}")).unwrap_or_default()
        );
    }
}
