//! `bastion-sshd keygen`: a new Ed25519 host key in OpenSSH format.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

use crate::hostkey;

/// Writes the key (0600, never overwriting) and `PATH.pub`, or prints the
/// private key to stdout when `out` is None. Returns what to show the user.
pub fn run(out: Option<&Path>) -> anyhow::Result<()> {
    let key = hostkey::generate();
    let private = hostkey::private_openssh(&key)?;
    let public = hostkey::public_openssh(key.public_key());
    let described = hostkey::describe_public(key.public_key());
    match out {
        Some(path) => {
            write_new(path, &private, 0o600)?;
            let pub_path = format!("{}.pub", path.display());
            write_new(Path::new(&pub_path), &format!("{public}\n"), 0o644)?;
            println!("{public}");
            println!("{described}");
            eprintln!("wrote {} and {pub_path}", path.display());
        }
        None => {
            print!("{private}");
            eprintln!("{public}");
            eprintln!("{described}");
        }
    }
    Ok(())
}

fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {} (an existing key is never overwritten)", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
