//! Giving up root once the listening sockets are bound.
//!
//! Port 22 is privileged. On ECS (Fargate included) a non-root process cannot
//! bind it: the runtime does not lower `ip_unprivileged_port_start`
//! (aws/containers-roadmap#1721), and a Fargate task can only *add* the
//! SYS_PTRACE capability, so a non-root user with NET_BIND_SERVICE is not on
//! offer. The image therefore starts as root with three capabilities
//! (NET_BIND_SERVICE, SETUID, SETGID), binds, and then becomes `--run-as`
//! for good, before the first connection is accepted and before any thread of
//! the async runtime exists:
//!
//! - supplementary groups cleared, then real, effective and saved gid and uid
//!   set (a uid change from 0 clears every capability);
//! - `PR_SET_NO_NEW_PRIVS`, so nothing can regain privileges through exec;
//! - checked: the ids are what was asked and `setuid(0)` fails.
//!
//! Started as another user (a laptop, a test), nothing changes but
//! `no_new_privs`.

use std::fmt;
use std::str::FromStr;

use nix::unistd::{Gid, Uid, getgroups, getresgid, getresuid, setgroups, setresgid, setresuid};

/// The numeric user and group to run as (`--run-as UID:GID`). Numeric because
/// the image has no /etc/passwd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl FromStr for RunAs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (uid, gid) = s.split_once(':').ok_or_else(|| format!("{s:?} is not UID:GID (example: 65534:65534)"))?;
        let number = |what: &str, v: &str| {
            v.parse::<u32>().map_err(|_| format!("{what} {v:?} in {s:?} is not a number (names need /etc/passwd)"))
        };
        let run_as = RunAs { uid: number("uid", uid)?, gid: number("gid", gid)? };
        if run_as.uid == 0 || run_as.gid == 0 {
            return Err(format!("{s:?}: the server never serves as root (uid or gid 0)"));
        }
        Ok(run_as)
    }
}

impl fmt::Display for RunAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// What [`drop_root`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Started as root; now `run_as`, with no capabilities.
    Dropped(RunAs),
    /// Started as this non-root user; kept it.
    NotRoot { uid: u32, gid: u32 },
}

/// Becomes `run_as` if the process is root, and sets `no_new_privs` in every case.
/// Must run before any other thread is started: `no_new_privs` is per thread
/// and inherited only by threads created afterwards.
pub fn drop_root(run_as: RunAs) -> Result<Outcome, String> {
    let outcome = if Uid::effective().is_root() || Uid::current().is_root() {
        let (uid, gid) = (Uid::from_raw(run_as.uid), Gid::from_raw(run_as.gid));
        setgroups(&[]).map_err(|e| format!("setgroups([]): {e}"))?;
        setresgid(gid, gid, gid).map_err(|e| format!("setresgid({gid}): {e}"))?;
        setresuid(uid, uid, uid).map_err(|e| format!("setresuid({uid}): {e}"))?;
        verify(run_as)?;
        Outcome::Dropped(run_as)
    } else {
        Outcome::NotRoot { uid: Uid::current().as_raw(), gid: Gid::current().as_raw() }
    };
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("prctl(PR_SET_NO_NEW_PRIVS): {e}"))?;
    Ok(outcome)
}

/// Trust, but check: every id is `run_as`, no supplementary group is left, and root cannot be regained.
fn verify(run_as: RunAs) -> Result<(), String> {
    let uids = getresuid().map_err(|e| format!("getresuid: {e}"))?;
    let gids = getresgid().map_err(|e| format!("getresgid: {e}"))?;
    let ids = [uids.real.as_raw(), uids.effective.as_raw(), uids.saved.as_raw()];
    let group_ids = [gids.real.as_raw(), gids.effective.as_raw(), gids.saved.as_raw()];
    if ids.iter().any(|&u| u != run_as.uid) || group_ids.iter().any(|&g| g != run_as.gid) {
        return Err(format!("after the switch the ids are uid {ids:?}, gid {group_ids:?}, not {run_as}"));
    }
    let groups = getgroups().map_err(|e| format!("getgroups: {e}"))?;
    if groups.iter().any(|g| g.as_raw() != run_as.gid) {
        return Err(format!("supplementary groups left after setgroups([]): {groups:?}"));
    }
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err("setuid(0) succeeded after dropping root".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_as_is_numeric_and_never_root() {
        assert_eq!("65534:65534".parse::<RunAs>(), Ok(RunAs { uid: 65534, gid: 65534 }));
        assert_eq!("1000:100".parse::<RunAs>().map(|r| r.to_string()), Ok("1000:100".to_string()));
        for bad in ["0:0", "0:65534", "65534:0", "nobody:nogroup", "65534", "65534:", ":1", "-1:-1", "1:2:3"] {
            let err = bad.parse::<RunAs>().unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
