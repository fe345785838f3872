//! Any bytes as an authorized_keys file: every line is a key or a problem
//! naming its line; nothing panics.
#![no_main]

use bastion_sshd::authorized_keys::{AuthorizedKeys, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut keys = AuthorizedKeys::default();
    keys.add_text(Source::Env, data);
    let lines = data.split(|b| *b == b'\n').count();
    for problem in &keys.skipped {
        let line = problem.line.expect("a skipped line names its line number");
        assert!(line >= 1 && line <= lines, "line {line} of {lines}");
        let _ = problem.to_string();
    }
    assert!(keys.len() + keys.skipped.len() <= lines);
});
