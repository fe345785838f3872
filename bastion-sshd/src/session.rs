//! Session channels, the friendly way: `ssh -L …` without `-N` opens a
//! session and asks for a shell. We answer, run nothing, print a banner, and
//! keep the connection (and its tunnels) open until the user closes it.
//! Commands and subsystems get a one-line explanation and exit status 1.

/// Exit status sent for a refused command or subsystem.
pub const REFUSED_EXIT_STATUS: u32 = 1;

/// Ctrl-C and Ctrl-D, as a terminal in raw mode sends them.
const CTRL_C: u8 = 0x03;
const CTRL_D: u8 = 0x04;

/// Written when the client asks for a shell. `crlf` when a pty was requested
/// (the client's terminal is in raw mode and will not translate `\n`).
pub fn banner(name: &str, local: &str, crlf: bool) -> String {
    let text = format!(
        "bastion-sshd on {name} ({local}): this bastion only forwards ports.\n\
         Your -L/-D forwards stay open while this session is open; no shell or command runs here.\n\
         Press Ctrl-C or Ctrl-D to close (next time, `ssh -N` skips this session).\n"
    );
    if crlf { text.replace('\n', "\r\n") } else { text }
}

/// Written on open sessions when the server starts draining.
pub fn shutdown_notice(left: std::time::Duration) -> String {
    format!(
        "\r\nbastion-sshd: this bastion is shutting down. Open tunnels may finish within {}s, then the connection \
         closes; reconnect to continue.\r\n",
        left.as_secs()
    )
}

/// The stderr line for `ssh host COMMAND`.
pub fn exec_refused() -> &'static str {
    "bastion-sshd: commands are not run here; this bastion only forwards ports (ssh -N -L ...)\n"
}

/// The stderr line for `ssh -s host NAME`, `sftp`, `scp`.
pub fn subsystem_refused(name: &str) -> String {
    format!("bastion-sshd: subsystem {name:?} is not available; this bastion only forwards ports (ssh -N -L ...)\n")
}

/// Does this input (from a session channel) ask to close it?
pub fn wants_close(data: &[u8]) -> bool {
    data.iter().any(|b| *b == CTRL_C || *b == CTRL_D)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_names_the_bastion_and_how_to_leave() {
        let b = banner("bastion.example.com", "10.0.0.5:22", false);
        assert!(b.contains("bastion.example.com"));
        assert!(b.contains("only forwards ports"));
        assert!(b.contains("Ctrl-C or Ctrl-D"));
        assert!(!b.contains('\r'));
        let raw = banner("b", "l", true);
        assert!(raw.contains("\r\n") && !raw.replace("\r\n", "").contains('\n'), "{raw:?}");
    }

    #[test]
    fn only_ctrl_c_and_ctrl_d_close() {
        assert!(wants_close(b"\x03"));
        assert!(wants_close(b"abc\x04"));
        assert!(!wants_close(b"ls -la\r"));
        assert!(!wants_close(b""));
    }
}
