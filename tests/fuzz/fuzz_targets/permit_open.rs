//! `--permit-open` / `permitopen=` entries: errors, never panics; an entry
//! that parses prints back as an entry that parses to the same rule.
#![no_main]

use bastion_sshd::policy::{PermitList, PermitRule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = PermitList::parse_list(text);
    if let Ok(rule) = text.parse::<PermitRule>() {
        let shown = rule.to_string();
        let again: PermitRule = shown.parse().unwrap_or_else(|e| panic!("{text:?} shown as {shown:?}: {e}"));
        assert_eq!(again, rule, "{text:?} shown as {shown:?}");
    }
});
