//! `--aws-identity-rules`: which AWS identities may log in with `bastion
//! login`, and with what rights. One rule a line:
//!
//! ```text
//! # pattern                                                                options (authorized_keys syntax)
//! arn:aws:iam::111122223333:user/alice                                     permitopen="db.internal:5432"
//! arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_DBAccess_*/*      permitopen="db.internal:5432",valid-for=2h
//! ```
//!
//! The pattern is matched against the ARN that STS returns, with `*` (any
//! run of characters, `/` included) and `?` (one character), as IAM's
//! `StringLike`; case matters. The partition, service and account must be
//! written out: a wildcard there would admit identities from any AWS account
//! in the world, since anyone can create one and sign a GetCallerIdentity.
//!
//! The first rule that matches decides. Parsing follows `authorized_keys`: a
//! bad line is skipped and reported with its source, line and reason; the
//! other rules still work.

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::SourceAddresses;
use crate::authorized_keys::{MAX_LINE_BYTES, Problem, Source};
use crate::options::{self, KeyOptions};

/// The options an identity rule may carry. The others of `authorized_keys`
/// mean nothing here (`cert-authority`, `principals=`) or are refused to
/// keep rules plain (`command=`, `pty`, …).
const RULE_OPTIONS: &[&str] =
    &["permitopen", "from", "expiry-time", "restrict", "port-forwarding", "no-port-forwarding", "valid-for"];

/// Partitions whose ARNs STS returns.
const PARTITIONS: &[&str] = &["aws", "aws-cn", "aws-us-gov"];

/// An ARN pattern, checked when the rule is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArnPattern(String);

impl ArnPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("ARN pattern {text:?} {why}");
        let fields: Vec<&str> = text.splitn(6, ':').collect();
        let [arn, partition, service, region, account, resource] = fields[..] else {
            return Err(bad(
                "is not an ARN (arn:aws:iam::ACCOUNT:user/NAME or arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION)",
            ));
        };
        if arn != "arn" {
            return Err(bad("does not start with arn:"));
        }
        if !PARTITIONS.contains(&partition) {
            return Err(bad(&format!(
                "has partition {partition:?}; write one of {} (no wildcard)",
                PARTITIONS.join(", ")
            )));
        }
        if service != "iam" && service != "sts" {
            return Err(bad(&format!(
                "has service {service:?}: STS returns arn:…:iam::… for users and arn:…:sts::… for assumed roles"
            )));
        }
        if !region.is_empty() {
            return Err(bad("has a region; IAM and STS ARNs have none (arn:aws:iam::ACCOUNT:…)"));
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(&format!(
                "has account {account:?}; write the 12-digit account ID (a wildcard would admit every AWS account)"
            )));
        }
        if resource.is_empty() {
            return Err(bad("has no resource (user/NAME, assumed-role/ROLE/SESSION, …)"));
        }
        if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(&format!("contains {c:?}")));
        }
        Ok(Self(text.to_string()))
    }

    pub fn matches(&self, arn: &str) -> bool {
        options::wildcard(self.0.as_bytes(), arn.as_bytes())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One rule: who, and what the certificate issued to them allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRule {
    pub pattern: ArnPattern,
    /// `permitopen=`, `from=`, `expiry-time=`, `restrict`, `[no-]port-forwarding`.
    pub options: KeyOptions,
    /// `valid-for=`: the certificate's lifetime, before `--max-certificate-validity` caps it.
    pub valid_for: Option<Duration>,
    pub source: Source,
    pub line: usize,
}

impl IdentityRule {
    /// `source:line`, as events and messages show it.
    pub fn listed_at(&self) -> String {
        format!("{}:{}", self.source, self.line)
    }

    /// What the rule allows, one line each, for `check-config`.
    pub fn describe(&self, max_validity: Duration) -> Vec<String> {
        let mut lines = self.options.describe();
        let shown = |d: Duration| humantime::format_duration(d).to_string();
        lines.push(match self.valid_for {
            Some(v) if v > max_validity => {
                format!(
                    "certificates valid for {} (valid-for={}, capped by --max-certificate-validity)",
                    shown(max_validity),
                    shown(v)
                )
            }
            Some(v) => format!("certificates valid for {}", shown(v)),
            None => format!("certificates valid for {} (--max-certificate-validity)", shown(max_validity)),
        });
        lines
    }
}

/// The rules in force, and what was wrong with the rest.
#[derive(Debug, Default)]
pub struct IdentityRules {
    rules: Vec<IdentityRule>,
    /// Lines skipped; the rules on other lines still work.
    pub skipped: Vec<Problem>,
    /// Sources that could not be read at all.
    pub unreadable: Vec<Problem>,
}

impl IdentityRules {
    /// Reads every rules file, then the environment text.
    pub fn load(files: &[PathBuf], env_text: Option<&str>) -> Self {
        let mut this = Self::default();
        for path in files {
            let source = Source::RulesFile(path.clone());
            match std::fs::read(path) {
                Ok(bytes) => this.add_text(source, &bytes),
                Err(e) => this.unreadable.push(Problem { source, line: None, reason: format!("cannot read: {e}") }),
            }
        }
        if let Some(text) = env_text {
            this.add_text(Source::RulesEnv, text.as_bytes());
        }
        this
    }

    /// Parses one source's text and adds its rules (tests and fuzzing too).
    pub fn add_text(&mut self, source: Source, bytes: &[u8]) {
        for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
            let line = index + 1;
            match parse_line(raw, index == 0) {
                Ok(None) => {}
                Ok(Some((pattern, options, valid_for))) => {
                    if let Some(first) = self.rules.iter().find(|r| r.pattern == pattern) {
                        let reason =
                            format!("duplicate of {} line {}, which matches first; ignored", first.source, first.line);
                        self.skipped.push(Problem { source: source.clone(), line: Some(line), reason });
                        continue;
                    }
                    self.rules.push(IdentityRule { pattern, options, valid_for, source: source.clone(), line });
                }
                Err(reason) => self.skipped.push(Problem { source: source.clone(), line: Some(line), reason }),
            }
        }
    }

    /// The first rule whose pattern matches `arn`.
    pub fn find(&self, arn: &str) -> Option<&IdentityRule> {
        self.rules.iter().find(|r| r.pattern.matches(arn))
    }

    pub fn rules(&self) -> &[IdentityRule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

type Parsed = (ArnPattern, KeyOptions, Option<Duration>);

/// One line: `Ok(None)` for blanks and comments, `Err(reason)` for anything unusable.
fn parse_line(raw: &[u8], first: bool) -> Result<Option<Parsed>, String> {
    if raw.len() > MAX_LINE_BYTES {
        return Err(format!("line is {} bytes, longer than the {MAX_LINE_BYTES} allowed", raw.len()));
    }
    let text = std::str::from_utf8(raw).map_err(|_| "not valid UTF-8 text".to_string())?;
    let text = if first { text.trim_start_matches('\u{feff}') } else { text };
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let (pattern, field) = match text.split_once(char::is_whitespace) {
        Some((pattern, rest)) => (pattern, Some(rest.trim())),
        None => (text, None),
    };
    let pattern = ArnPattern::parse(pattern)?;
    let Some(field) = field else { return Ok(Some((pattern, KeyOptions::default(), None))) };
    if options::has_unclosed_quote(field) {
        return Err("unterminated quote in the options (a '\"' is missing)".into());
    }
    if let Some((i, _)) = options::outside_quotes(field).0.into_iter().find(|(_, c)| c.is_whitespace()) {
        return Err(format!(
            "unexpected text after the options: {:?} (options are one comma-separated field, as in authorized_keys)",
            field[i..].trim()
        ));
    }
    let mut valid_for = None;
    let mut rest = Vec::new();
    for option in options::split_options(field)? {
        let name = option.split('=').next().unwrap_or("").to_ascii_lowercase();
        if !RULE_OPTIONS.contains(&name.as_str()) {
            return Err(format!(
                "option {name:?} is not allowed in an identity rule (allowed: {})",
                RULE_OPTIONS.join(", ")
            ));
        }
        if name == "valid-for" {
            if valid_for.is_some() {
                return Err("valid-for= given twice".into());
            }
            valid_for = Some(parse_valid_for(option)?);
        } else {
            rest.push(option);
        }
    }
    let options = if rest.is_empty() { KeyOptions::default() } else { KeyOptions::parse(&rest.join(","))? };
    if let Some(from) = &options.from {
        SourceAddresses::parse(from.text()).map_err(|e| {
            format!(
                "from=\"{}\": an identity rule's from= becomes the certificate's source-address, which takes \
                 addresses and CIDR ranges only ({e})",
                from.text()
            )
        })?;
    }
    Ok(Some((pattern, options, valid_for)))
}

/// `valid-for="8h"` (quotes optional here: a duration has no comma).
fn parse_valid_for(option: &str) -> Result<Duration, String> {
    let value = option.split_once('=').map(|(_, v)| v).ok_or("option valid-for needs a value: valid-for=\"2h\"")?;
    let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
    let duration =
        humantime::parse_duration(value).map_err(|e| format!("valid-for={value:?}: {e} (examples: 30m, 2h, 8h)"))?;
    if duration < Duration::from_secs(60) {
        return Err(format!("valid-for={value:?}: at least 1 minute"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PermitList;

    const SSO: &str = "arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_DBAccess_0a1b2c3d/alice@example.com";

    fn parse(text: &str) -> IdentityRules {
        let mut rules = IdentityRules::default();
        rules.add_text(Source::RulesEnv, text.as_bytes());
        rules
    }

    #[test]
    fn the_issues_examples_match_what_sts_returns() {
        let rules = parse(
            "# team\n\
             arn:aws:iam::111122223333:user/alice permitopen=\"db.internal:5432\"\n\
             arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_DBAccess_*/* permitopen=\"db.internal:5432\",permitopen=\"cache.internal:6379\",valid-for=2h\n",
        );
        assert!(rules.skipped.is_empty(), "{:?}", rules.skipped);
        assert_eq!(rules.find("arn:aws:iam::111122223333:user/alice").unwrap().line, 2);
        let sso = rules.find(SSO).unwrap();
        assert_eq!(sso.line, 3);
        assert_eq!(sso.valid_for, Some(Duration::from_secs(7200)));
        let PermitList::Only(permits) = &sso.options.rights.permit_open else { panic!("no permitopen") };
        assert_eq!(permits.len(), 2);
        assert!(rules.find("arn:aws:iam::111122223333:user/bob").is_none());
        assert!(rules.find("arn:aws:iam::444455556666:user/alice").is_none(), "another account");
        assert!(rules.find("arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_Admin_1/alice").is_none());
    }

    #[test]
    fn patterns_match_exactly_and_case_matters() {
        let p = ArnPattern::parse("arn:aws:iam::111122223333:user/alice").unwrap();
        assert!(p.matches("arn:aws:iam::111122223333:user/alice"));
        assert!(!p.matches("arn:aws:iam::111122223333:user/alice2"));
        assert!(!p.matches("arn:aws:iam::111122223333:user/Alice"));
        assert!(!p.matches("xarn:aws:iam::111122223333:user/alice"));
    }

    #[test]
    fn a_wildcard_account_partition_or_service_is_refused() {
        for (pattern, why) in [
            ("arn:aws:iam::*:user/alice", "12-digit account ID"),
            ("arn:aws:iam::11112222333:user/alice", "12-digit account ID"),
            ("arn:*:iam::111122223333:user/alice", "partition"),
            ("arn:aws:*::111122223333:user/alice", "service"),
            ("arn:aws:iam:eu-west-1:111122223333:user/alice", "region"),
            ("arn:aws:iam::111122223333:", "no resource"),
            ("alice", "not an ARN"),
            ("urn:aws:iam::111122223333:user/alice", "arn:"),
        ] {
            let rules = parse(pattern);
            assert!(rules.is_empty(), "{pattern} was accepted");
            assert!(rules.skipped[0].reason.contains(why), "{pattern}: {}", rules.skipped[0].reason);
        }
    }

    #[test]
    fn bad_options_skip_the_line_with_source_line_and_reason() {
        let rules = parse(
            "arn:aws:iam::111122223333:user/a frobnicate\n\
             arn:aws:iam::111122223333:user/b cert-authority\n\
             arn:aws:iam::111122223333:user/c permitopen=\"db:5432\n\
             arn:aws:iam::111122223333:user/d valid-for=forever\n\
             arn:aws:iam::111122223333:user/e from=\"*.example.com\"\n\
             arn:aws:iam::111122223333:user/f permitopen=\"db:5432\" extra words\n\
             arn:aws:iam::111122223333:user/g valid-for=10s\n\
             arn:aws:iam::111122223333:user/h from=\"10.0.0.0/8\",valid-for=\"1h\"\n\
             arn:aws:iam::111122223333:user/h\n",
        );
        let shown: Vec<String> = rules.skipped.iter().map(|p| p.to_string()).collect();
        assert_eq!(rules.len(), 1, "{shown:?}");
        assert_eq!(rules.rules()[0].line, 8);
        assert!(
            shown[0].starts_with("BASTION_AWS_IDENTITY_RULES line 1: option \"frobnicate\" is not allowed"),
            "{}",
            shown[0]
        );
        assert!(shown[1].contains("line 2: option \"cert-authority\" is not allowed"), "{}", shown[1]);
        assert!(shown[2].contains("line 3: unterminated quote"), "{}", shown[2]);
        assert!(shown[3].contains("line 4: valid-for=\"forever\""), "{}", shown[3]);
        assert!(shown[4].contains("line 5: from=\"*.example.com\": an identity rule's from="), "{}", shown[4]);
        assert!(shown[5].contains("line 6: unexpected text after the options: \"extra words\""), "{}", shown[5]);
        assert!(shown[6].contains("line 7: valid-for=\"10s\": at least 1 minute"), "{}", shown[6]);
        assert!(shown[7].contains("line 9: duplicate of BASTION_AWS_IDENTITY_RULES line 8"), "{}", shown[7]);
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let rules = parse(
            "arn:aws:iam::111122223333:user/alice restrict\n\
             arn:aws:iam::111122223333:user/* permitopen=\"db:5432\"\n",
        );
        assert!(!rules.find("arn:aws:iam::111122223333:user/alice").unwrap().options.rights.port_forwarding);
        assert_eq!(rules.find("arn:aws:iam::111122223333:user/bob").unwrap().line, 2);
    }

    #[test]
    fn validity_is_shown_with_the_cap() {
        let rules = parse("arn:aws:iam::111122223333:user/a valid-for=12h\narn:aws:iam::111122223333:user/b\n");
        let eight = Duration::from_secs(8 * 3600);
        assert!(rules.rules()[0].describe(eight).last().unwrap().contains("valid for 8h (valid-for=12h, capped"));
        assert!(rules.rules()[1].describe(eight).last().unwrap().contains("valid for 8h (--max-certificate-validity)"));
    }

    #[test]
    fn unreadable_files_are_reported() {
        let rules = IdentityRules::load(&[PathBuf::from("/nonexistent/rules")], None);
        assert!(rules.unreadable[0].to_string().starts_with("/nonexistent/rules: cannot read"));
    }
}
