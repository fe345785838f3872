//! `bastion-sshd healthcheck`: is the server answering SSH? For container
//! health checks in an image that has no shell, nc or ssh.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest identification line allowed by RFC 4253 (255 bytes with CR LF).
const MAX_ID_LINE: usize = 255;

/// Connects and reads the server's identification line. `Ok(line)` if it is SSH-2.0.
pub fn check(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_ID_LINE {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("{addr} sent no SSH identification within {timeout:?}"));
        }
        stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(format!("reading from {addr}: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&line).trim_end().to_string();
    if text.starts_with("SSH-2.0-") {
        Ok(text)
    } else {
        Err(format!("{addr} did not answer with an SSH-2.0 identification (got {text:?})"))
    }
}
