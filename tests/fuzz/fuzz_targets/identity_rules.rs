//! Any bytes as an --aws-identity-rules file: every line is a rule or a
//! problem naming its line; nothing panics; a rule never has a wildcard
//! in its partition, service or account, and matching any ARN is safe.
#![no_main]

use bastion_sshd::authorized_keys::Source;
use bastion_sshd::identity_rules::IdentityRules;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rules = IdentityRules::default();
    rules.add_text(Source::RulesEnv, data);
    let lines = data.split(|b| *b == b'\n').count();
    for problem in &rules.skipped {
        let line = problem.line.expect("a skipped line names its line number");
        assert!(line >= 1 && line <= lines, "line {line} of {lines}");
        let _ = problem.to_string();
    }
    assert!(rules.len() + rules.skipped.len() <= lines);
    for rule in rules.rules() {
        let fields: Vec<&str> = rule.pattern.as_str().splitn(6, ':').collect();
        assert!(fields[1..5].iter().all(|f| !f.contains(['*', '?'])), "{fields:?}");
        assert_eq!(fields[4].len(), 12);
        let _ = rule.describe(std::time::Duration::from_secs(8 * 3600));
        // The text itself as an ARN, and a long one: matching must stay linear.
        let _ = rules.find(&String::from_utf8_lossy(data));
    }
});
