//! Reloading keys without dropping live tunnels: on SIGHUP, and when a key
//! file changes. A reload that fails keeps the keys in force. After a good
//! reload, every authenticated connection re-checks its credential and is
//! closed if its key was removed or revoked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::Signal;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::keys::{KeySources, KeyStore, LiveKeys};

/// What identifies a file's content cheaply: modification time, size, inode.
type Stamp = Vec<(PathBuf, Option<(SystemTime, u64, u64)>)>;

fn stamp(files: &[PathBuf]) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|p| {
            let meta =
                std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()));
            (p.clone(), meta)
        })
        .collect()
}

/// Loads `sources` and, if the result is usable, puts it in force. Returns whether it did.
pub fn reload(sources: &KeySources, live: &LiveKeys, why: &str) -> bool {
    let (store, problems): (KeyStore, _) = sources.load();
    problems.log_skipped();
    if !problems.fatal.is_empty() {
        for e in &problems.fatal {
            error!(event = "keys.reload_failed", trigger = why, error = %e, "reload ({why}) failed, keeping the keys in force: {e}");
        }
        return false;
    }
    let cas = store.authorized.keys().iter().filter(|k| k.options.cert_authority).count();
    let (keys, revoked) = (store.authorized.len() - cas, store.revoked.len());
    live.replace(store);
    info!(
        event = "keys.reloaded",
        trigger = why,
        keys,
        certificate_authorities = cas,
        revoked,
        "keys reloaded ({why}): {keys} key(s), {cas} CA(s), {revoked} revoked"
    );
    true
}

/// Reloads on SIGHUP (`hup`, installed by the caller before the server
/// accepts anything) and when a key file changes (checked every `poll`).
/// Each successful reload bumps `generation`, which connections watch.
pub async fn run(
    sources: KeySources,
    live: Arc<LiveKeys>,
    poll: Duration,
    mut hup: Option<Signal>,
    generation: watch::Sender<u64>,
) {
    let files = sources.files();
    // After giving up root (`privileges`), a key file the server could read at
    // start may be out of its reach: say so now, not silently at the next edit.
    for file in &files {
        if let Err(e) = std::fs::File::open(file) {
            warn!(event = "keys.reload_unavailable", file = %file.display(), error = %e,
                "{} cannot be read now ({e}): changes to it will not be loaded until it is readable by this process \
                 (see --run-as)", file.display());
        }
    }
    let mut last = stamp(&files);
    loop {
        let why = tokio::select! {
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = tokio::time::sleep(poll), if !files.is_empty() => {
                let now = stamp(&files);
                if now == last {
                    continue;
                }
                last = now;
                "a key file changed"
            }
        };
        if reload(&sources, &live, why) {
            generation.send_modify(|g| *g += 1);
        }
    }
}
