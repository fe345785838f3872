//! The data path of one tunnel: connect to the target, then copy bytes both
//! ways (with half-close) and count them. Independent of SSH: the client
//! side is any `AsyncRead + AsyncWrite`, so it is tested with plain sockets.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::policy::Target;

/// Copy buffer per direction. Matches russh's 32 KiB maximum packet size
/// with room to spare, so one read fills a couple of SSH packets.
const COPY_BUFFER: usize = 64 * 1024;

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
/// half-close from either side to the other, and counts into `transfer`.
/// Returns the error that ended the copy, if any (a reset, the SSH
/// connection dropping).
pub async fn relay<C, T>(client: C, target: T, transfer: &Transfer) -> Option<io::Error>
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = Counted { inner: client, read: &transfer.up };
    let mut target = Counted { inner: target, read: &transfer.down };
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut target, COPY_BUFFER, COPY_BUFFER).await.err()
}

/// Counts the bytes read through it.
struct Counted<'a, S> {
    inner: S,
    read: &'a AtomicU64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
        let relay = tokio::spawn(async move { relay(relay_side, target_stream, &counted).await });
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
