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
//! - the ambient capability set cleared explicitly (`PR_CAP_AMBIENT_CLEAR_ALL`);
//! - `PR_SET_NO_NEW_PRIVS`, so nothing can regain privileges through exec;
//! - checked: the ids are what was asked, the permitted, effective and ambient
//!   capability sets in `/proc/thread-self/status` are empty, and `setuid(0)`
//!   fails. The kernel clears the capabilities only without
//!   `SECBIT_NO_SETUID_FIXUP`, which a parent can set and exec preserves, so
//!   the server reads what is left rather than assuming it.
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
        clear_ambient_capabilities()?;
        verify(run_as)?;
        Outcome::Dropped(run_as)
    } else {
        Outcome::NotRoot { uid: Uid::current().as_raw(), gid: Gid::current().as_raw() }
    };
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("prctl(PR_SET_NO_NEW_PRIVS): {e}"))?;
    Ok(outcome)
}

/// Empties the ambient set, the capabilities a thread would pass to a program
/// it executes. The uid change clears it too, unless `SECBIT_NO_SETUID_FIXUP`.
fn clear_ambient_capabilities() -> Result<(), String> {
    use nix::libc::{PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, c_ulong, prctl};
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL reads no memory; the kernel requires the unused arguments to be 0.
    let rc =
        unsafe { prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL as c_ulong, 0 as c_ulong, 0 as c_ulong, 0 as c_ulong) };
    nix::errno::Errno::result(rc).map(drop).map_err(|e| format!("prctl(PR_CAP_AMBIENT_CLEAR_ALL): {e}"))
}

/// Capabilities are per thread: this thread's, which is the only one (see [`drop_root`]).
const STATUS: &str = "/proc/thread-self/status";

/// The capability sets of [`STATUS`] that must be empty once root is given up.
/// CapInh is not among them: the uid change does not clear it, container
/// runtimes before the fix for CVE-2022-24769 filled it, and it grants nothing
/// without an exec, which `no_new_privs` keeps from gaining capabilities. CapBnd
/// only limits what could be gained.
const MUST_BE_EMPTY: [&str; 3] = ["CapPrm", "CapEff", "CapAmb"];

/// Judges a `/proc/…/status` text: every set in [`MUST_BE_EMPTY`] is there and
/// empty. A set that is missing or unreadable is refused too: what cannot be
/// checked is not assumed empty.
fn no_capabilities_left(status: &str) -> Result<(), String> {
    let mut left = Vec::new();
    for field in MUST_BE_EMPTY {
        let value = status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or_else(|| format!("{field} is missing from {STATUS}, so the capabilities cannot be checked"))?;
        let set = u64::from_str_radix(value, 16)
            .map_err(|_| format!("{field} {value:?} in {STATUS} is not a hexadecimal capability set"))?;
        if set != 0 {
            left.push(format!("{field} {value}"));
        }
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("capabilities left after the uid change: {} (is SECBIT_NO_SETUID_FIXUP set?)", left.join(", ")))
    }
}

/// Trust, but check: every id is `run_as`, no supplementary group or
/// capability is left, and root cannot be regained.
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
    let status = std::fs::read_to_string(STATUS).map_err(|e| format!("cannot read {STATUS}: {e}"))?;
    no_capabilities_left(&status)?;
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

    /// The capability lines of a /proc status, the other lines around them as the kernel writes them.
    fn status(inh: &str, prm: &str, eff: &str, amb: &str) -> String {
        format!(
            "Name:\tbastion-sshd\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\n\
             Groups:\t\nCapInh:\t{inh}\nCapPrm:\t{prm}\nCapEff:\t{eff}\nCapBnd:\t000001ffffffffff\n\
             CapAmb:\t{amb}\nNoNewPrivs:\t0\nSeccomp:\t0\n"
        )
    }

    const ZERO: &str = "0000000000000000";

    #[test]
    fn no_capability_left_passes_whatever_the_bounding_and_inheritable_sets() {
        assert_eq!(no_capabilities_left(&status(ZERO, ZERO, ZERO, ZERO)), Ok(()));
        assert_eq!(no_capabilities_left(&status("000001ffffffffff", ZERO, ZERO, ZERO)), Ok(()));
    }

    #[test]
    fn any_capability_left_is_refused_naming_the_set_and_its_value() {
        let err = no_capabilities_left(&status(ZERO, ZERO, "0000000000000400", ZERO)).unwrap_err();
        assert!(err.contains("CapEff 0000000000000400"), "{err}");
        assert!(!err.contains("CapPrm") && !err.contains("CapAmb"), "{err}");
        let err = no_capabilities_left(&status(ZERO, "0000000000000400", ZERO, ZERO)).unwrap_err();
        assert!(err.contains("CapPrm 0000000000000400"), "{err}");
        let err = no_capabilities_left(&status(ZERO, ZERO, ZERO, "0000000000000400")).unwrap_err();
        assert!(err.contains("CapAmb 0000000000000400"), "{err}");
        // Every set left is named, not only the first.
        let kept = "0000000000000440";
        let err = no_capabilities_left(&status(ZERO, kept, kept, ZERO)).unwrap_err();
        assert!(err.contains("CapPrm 0000000000000440, CapEff 0000000000000440"), "{err}");
    }

    #[test]
    fn a_set_that_cannot_be_read_is_refused() {
        let full = status(ZERO, ZERO, ZERO, ZERO);
        for field in MUST_BE_EMPTY {
            let without: String = full.lines().filter(|l| !l.starts_with(field)).map(|l| format!("{l}\n")).collect();
            let err = no_capabilities_left(&without).unwrap_err();
            assert!(err.starts_with(&format!("{field} is missing from")), "{field}: {err}");
        }
        let err = no_capabilities_left("").unwrap_err();
        assert!(err.contains("missing"), "{err}");
        // Not mistaken for a field whose name it starts with, nor read from a malformed value.
        let err = no_capabilities_left(&full.replace("CapAmb:", "CapAmbient:")).unwrap_err();
        assert!(err.starts_with("CapAmb is missing"), "{err}");
        for bad in ["", "zz", "-1", "10000000000000000"] {
            let err = no_capabilities_left(&status(ZERO, ZERO, bad, ZERO)).unwrap_err();
            assert!(err.starts_with("CapEff ") && err.contains("not a hexadecimal"), "{bad:?}: {err}");
        }
    }
}
