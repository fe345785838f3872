//! Where the key and certificate go: two files that `ssh -i PATH` and
//! `IdentityFile PATH` find (PATH and PATH-cert.pub), or ssh-agent.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use russh::keys::PrivateKey;
use russh::keys::ssh_key::LineEnding;

/// `PATH-cert.pub`, where OpenSSH looks for the certificate of `PATH`.
pub fn cert_path(identity: &Path) -> PathBuf {
    let mut name = identity.as_os_str().to_os_string();
    name.push("-cert.pub");
    PathBuf::from(name)
}

/// Writes a file in one step (a new file in the same directory, then
/// renamed over the old one), so that ssh never reads half a key.
fn replace(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().context("the path has no file name")?.to_string_lossy();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .with_context(|| format!("creating {}", temp.display()))?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&temp, path).with_context(|| format!("writing {}", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// The key (mode 0600) at `identity`, the certificate next to it.
pub fn write_identity(identity: &Path, private_key: &str, certificate: &str) -> anyhow::Result<()> {
    replace(identity, private_key.as_bytes(), 0o600)?;
    replace(&cert_path(identity), format!("{}\n", certificate.trim_end()).as_bytes(), 0o644)
}

/// Adds key and certificate to ssh-agent for `lifetime` (`ssh-add -t`), through
/// a private temporary directory that is removed at once.
pub fn add_to_agent(key: &PrivateKey, certificate: &str, lifetime: Duration) -> anyhow::Result<()> {
    if std::env::var_os("SSH_AUTH_SOCK").is_none() {
        bail!("--agent: no ssh-agent (SSH_AUTH_SOCK is not set); nothing was written");
    }
    let dir = tempfile::Builder::new().prefix("bastion-login-").tempdir().context("creating a temporary directory")?;
    let path = dir.path().join("key");
    write_identity(&path, &key.to_openssh(LineEnding::LF)?, certificate)?;
    let secs = lifetime.as_secs().max(1);
    let out = Command::new("ssh-add")
        .arg("-t")
        .arg(secs.to_string())
        .arg(&path)
        .output()
        .context("running ssh-add (OpenSSH's client tools must be installed)")?;
    if !out.status.success() {
        bail!("ssh-add failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
