//! PATCH(fargate-bastion): a budget for the channel windows of a whole server.
//!
//! What a server holds for its clients' channels is bounded by the windows it
//! has granted them: data that arrived within a window waits in the channel
//! until the reader takes it, and the window is re-opened only then (patch
//! 0004). One connection can hold `channels × window`, a server of many
//! connections many times that. A [`WindowBudget`] bounds the sum: a channel's
//! initial window and every re-opening are taken from it, and what a reader
//! takes, or a channel that goes away held, is given back. Channels keep
//! flowing on what they give back and take again at once; when the budget is
//! spent, the channels opened last get less, or no window, until some comes
//! back, so the newest streams are slowed and nothing is refused.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;

#[derive(Debug)]
pub struct WindowBudget {
    total: usize,
    available: Mutex<usize>,
    /// Channels that got less window than they wanted.
    starving: AtomicUsize,
    /// Bumped when window comes back while channels starve (a watch, so
    /// that a session busy elsewhere at that moment still sees it).
    freed: watch::Sender<u64>,
}

impl WindowBudget {
    /// A budget of `bytes` of channel window for the whole server.
    pub fn new(bytes: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            total: bytes,
            available: Mutex::new(bytes),
            starving: AtomicUsize::new(0),
            freed: watch::Sender::new(0),
        })
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Window not granted to any channel now.
    pub fn available(&self) -> usize {
        *self.available.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes up to `want`; returns what it took.
    pub(crate) fn take(&self, want: usize) -> usize {
        let mut available = self.available.lock().unwrap_or_else(|e| e.into_inner());
        let got = want.min(*available);
        *available -= got;
        got
    }

    pub(crate) fn give(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        {
            let mut available = self.available.lock().unwrap_or_else(|e| e.into_inner());
            *available = (*available + bytes).min(self.total);
        }
        if self.starving.load(Ordering::Relaxed) > 0 {
            self.freed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    pub(crate) fn starve(&self, starving: bool) {
        if starving {
            self.starving.fetch_add(1, Ordering::Relaxed);
        } else {
            self.starving.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Changes when window comes back while some channel starves.
    pub(crate) fn freed(&self) -> watch::Receiver<u64> {
        self.freed.subscribe()
    }
}
