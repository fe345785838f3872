//! The data path of one tunnel: connect to the target, then copy bytes both
//! ways (with half-close) and count them. Independent of SSH: the client
//! side is any `AsyncBufRead + AsyncWrite`, so it is tested with plain sockets.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;

use crate::policy::Target;

/// Read buffer for the target side: a read fills two of russh's 32 KiB SSH
/// packets. The client side needs none: its data is written to the target
/// straight from the packet it arrived in (`AsyncBufRead`, russh patch 0003).
const TARGET_READ_BUFFER: usize = 64 * 1024;

/// Connects to the first of `addrs` that answers, before `deadline`
/// (`timeout` after the request arrived, which the message names).
/// Returns the socket (TCP_NODELAY set) and the address used. The error
/// text is sent to the client, so it says what failed.
pub async fn connect(
    target: &Target,
    addrs: &[SocketAddr],
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), String> {
    let attempt = async {
        let mut last_error = format!("{target}: no address to connect to");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Interactive protocols (psql, ssh -J) pay for Nagle on every round trip.
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, *addr));
                }
                Err(e) => last_error = format!("connect to {addr}: {e}"),
            }
        }
        Err(last_error)
    };
    match tokio::time::timeout_at(deadline, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("connect to {target} timed out after {}", humantime::format_duration(timeout))),
    }
}

/// Bytes moved by a tunnel so far; shared, so that a tunnel ended from
/// outside (the client closed the channel, the connection dropped) still
/// reports what it carried.
#[derive(Debug, Default)]
pub struct Transfer {
    /// Client to target.
    pub up: AtomicU64,
    /// Target to client.
    pub down: AtomicU64,
}

impl Transfer {
    pub fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }

    pub fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}

/// Copies both ways until both directions have seen end-of-file, passing a
/// half-close from either side to the other, and counts into `transfer`
/// what each side accepted. Returns the error that ended the copy, if any (a
/// reset, the SSH connection dropping).
pub async fn relay<C, T>(mut client: C, target: T, transfer: &Transfer) -> Option<io::Error>
where
    C: AsyncBufRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut target = BufReader::with_capacity(TARGET_READ_BUFFER, target);
    let (mut up, mut down) = (Direction::default(), Direction::default());
    poll_fn(|cx| {
        let up = up.poll(cx, &mut client, &mut target, &transfer.up)?;
        let down = down.poll(cx, &mut target, &mut client, &transfer.down)?;
        if up.is_ready() && down.is_ready() { Poll::Ready(Ok(())) } else { Poll::Pending }
    })
    .await
    .err()
}

/// One direction of a relay: like `tokio::io::copy_buf`, then a half-close.
#[derive(Default)]
struct Direction {
    /// The reader has reached end-of-file; the writer is being shut down.
    eof: bool,
    /// Written since the last flush (flushed before waiting for more to read).
    unflushed: bool,
    /// The writer is shut down: nothing more to do.
    done: bool,
}

impl Direction {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, from: &mut R, to: &mut W, moved: &AtomicU64) -> Poll<io::Result<()>>
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        while !self.eof {
            let data = match Pin::new(&mut *from).poll_fill_buf(cx) {
                Poll::Ready(data) => data?,
                Poll::Pending => {
                    if self.unflushed {
                        ready!(Pin::new(&mut *to).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            };
            if data.is_empty() {
                self.eof = true;
                break;
            }
            let n = ready!(Pin::new(&mut *to).poll_write(cx, data))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            Pin::new(&mut *from).consume(n);
            moved.fetch_add(n as u64, Ordering::Relaxed);
            self.unflushed = true;
        }
        if !self.done {
            ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
            self.done = true;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn refused_connection_says_so() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let target = Target::parse("127.0.0.1", port as u32).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let err =
            connect(&target, &[addr], tokio::time::Instant::now() + Duration::from_secs(5), Duration::from_secs(5))
                .await
                .unwrap_err();
        assert!(err.contains(&format!("connect to 127.0.0.1:{port}")), "{err}");
        assert!(err.to_lowercase().contains("refused"), "{err}");
    }

    #[tokio::test]
    async fn relay_counts_bytes_and_passes_half_close_both_ways() {
        // target: reads everything until EOF, then answers with the byte count and closes.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            s.write_all(format!("got {}", all.len()).as_bytes()).await.unwrap();
        });
        let target = Target::parse("127.0.0.1", addr.port() as u32).unwrap();
        let (target_stream, used) =
            connect(&target, &[addr], tokio::time::Instant::now() + Duration::from_secs(5), Duration::from_secs(5))
                .await
                .unwrap();
        assert_eq!(used, addr);

        let (client_side, relay_side) = tokio::io::duplex(1024);
        let transfer = std::sync::Arc::new(Transfer::default());
        let counted = transfer.clone();
        let relay = tokio::spawn(async move { relay(BufReader::new(relay_side), target_stream, &counted).await });
        let (mut rd, mut wr) = tokio::io::split(client_side);
        wr.write_all(&[7u8; 100_000]).await.unwrap();
        wr.shutdown().await.unwrap(); // half-close: the target must see EOF
        let mut answer = String::new();
        rd.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "got 100000");
        let error = relay.await.unwrap();
        assert!(error.is_none(), "{error:?}");
        assert_eq!((transfer.up(), transfer.down()), (100_000, 10));
    }
}
