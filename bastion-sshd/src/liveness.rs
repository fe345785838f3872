//! Whether a connection still moves. russh's keepalives, and the disconnect
//! we send at the login grace time or on a revoked key, all go through
//! russh's session loop; a peer that stops reading fills the socket's send
//! buffer and leaves that loop waiting in a write, where no timer of its own
//! runs. The connection task therefore watches the socket from outside the
//! loop: [`Watched`] records when a byte last went either way, and a
//! connection with no progress for [`silence_limit`] is dropped.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When bytes last moved on one connection, in either direction.
#[derive(Debug)]
pub struct Activity {
    /// Reference point for `last`, so that it fits an atomic.
    origin: Instant,
    /// Milliseconds after `origin` of the last read or write that moved a byte.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self { origin: Instant::now(), last: AtomicU64::new(0) })
    }

    fn touch(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    /// The last time a byte moved.
    pub fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// The longest a healthy connection can go without a byte either way: russh
/// sends a keepalive after `interval` of silence from the client and a live
/// client answers it, so `keepalive_max + 1` intervals without any progress
/// mean the peer neither reads nor writes. `None` when keepalives are off.
pub fn silence_limit(interval: Duration, keepalive_max: usize) -> Option<Duration> {
    if interval.is_zero() {
        return None;
    }
    Some(interval.saturating_mul(u32::try_from(keepalive_max).unwrap_or(u32::MAX).saturating_add(1)))
}

/// A stream that records its progress in an [`Activity`].
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

/// Wraps `inner`; the returned [`Activity`] says when it last moved a byte.
pub fn watch<S>(inner: S) -> (Watched<S>, Arc<Activity>) {
    let activity = Activity::new();
    (Watched { inner, activity: activity.clone() }, activity)
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
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

    #[test]
    fn the_limit_is_one_interval_more_than_the_unanswered_keepalives() {
        assert_eq!(silence_limit(Duration::from_secs(30), 3), Some(Duration::from_secs(120)));
        assert_eq!(silence_limit(Duration::from_secs(30), 0), Some(Duration::from_secs(30)));
        assert_eq!(silence_limit(Duration::ZERO, 3), None);
        assert!(silence_limit(Duration::from_secs(u64::MAX / 2), usize::MAX).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn reads_and_writes_that_move_bytes_count_as_activity() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let (mut watched, activity) = watch(ours);
        let start = activity.last();

        tokio::time::advance(Duration::from_secs(5)).await;
        watched.write_all(b"ping").await.unwrap();
        assert_eq!(activity.last() - start, Duration::from_secs(5));

        tokio::time::advance(Duration::from_secs(5)).await;
        theirs.write_all(b"pong").await.unwrap();
        let mut buf = [0u8; 4];
        watched.read_exact(&mut buf).await.unwrap();
        assert_eq!(activity.last() - start, Duration::from_secs(10));

        // A write that cannot proceed (the peer does not read) is no progress.
        tokio::time::advance(Duration::from_secs(5)).await;
        let blocked = tokio::time::timeout(Duration::from_secs(1), watched.write_all(&[0u8; 1024])).await;
        assert!(blocked.is_err());
        assert_eq!(activity.last() - start, Duration::from_secs(15), "the bytes that fitted count, once");
    }
}
