use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use super::WindowSizeRef;
use crate::{ChannelId, ChannelMsg};

/// PATCH(fargate-bastion): channel requests (not data, end-of-file or close)
/// that may wait behind a channel's reader; a peer that sends more ends the
/// connection. Requests use no window, so nothing else bounds them.
pub(crate) const BACKLOG_REQUESTS: usize = 1024;

/// PATCH(fargate-bastion): data waiting behind the reader is gathered into
/// buffers of up to this size, so that its memory is its length, whatever the
/// size of the packets it came in.
const BACKLOG_CHUNK: usize = 32 * 1024;

/// PATCH(fargate-bastion): messages for a channel whose queue is full. The
/// session used to wait for room in the queue, which stopped every channel of
/// the connection behind one reader that does not read (a tunnel whose target
/// stopped reading): a peer that sends small packets or requests fills the 100
/// places long before the window. Now the session never waits: what does not
/// fit waits here, in order, and moves into the queue as the reader takes
/// messages off it. Data is bounded by the window (it is only re-opened as the
/// reader consumes, see `Consumed`) and stored by bytes; requests by
/// [`BACKLOG_REQUESTS`].
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    items: VecDeque<Item>,
    requests: usize,
}

#[derive(Debug)]
enum Item {
    Data(BytesMut),
    Other(ChannelMsg),
}

impl Backlog {
    fn push(&mut self, id: ChannelId, msg: ChannelMsg) -> Result<(), crate::Error> {
        match msg {
            ChannelMsg::Data { data } => match self.items.back_mut() {
                Some(Item::Data(last)) if last.len() + data.len() <= BACKLOG_CHUNK => last.extend_from_slice(&data),
                _ => self.items.push_back(Item::Data(BytesMut::from(&data[..]))),
            },
            msg => {
                if !matches!(msg, ChannelMsg::Eof | ChannelMsg::Close) {
                    self.requests += 1;
                    if self.requests > BACKLOG_REQUESTS {
                        return Err(crate::Error::ChannelFlowControl {
                            channel: id.0,
                            detail: format!(
                                "more than {BACKLOG_REQUESTS} channel requests waiting for a reader that does not read"
                            ),
                        });
                    }
                }
                self.items.push_back(Item::Other(msg));
            }
        }
        Ok(())
    }

    fn pop(&mut self) -> Option<ChannelMsg> {
        Some(match self.items.pop_front()? {
            Item::Data(data) => ChannelMsg::Data { data: data.freeze() },
            Item::Other(msg) => {
                if !matches!(msg, ChannelMsg::Eof | ChannelMsg::Close) {
                    self.requests -= 1;
                }
                msg
            }
        })
    }
}

/// A handle to the [`super::Channel`]'s to be able to transmit messages
/// to it and update it's `window_size`.
#[derive(Debug)]
pub struct ChannelRef {
    pub(super) sender: Sender<ChannelMsg>,
    pub(super) window_size: WindowSizeRef,
    /// PATCH(fargate-bastion): set when the window is re-opened as the reader takes data.
    pub(crate) consumed: Option<std::sync::Arc<super::Consumed>>,
    /// PATCH(fargate-bastion): what did not fit the queue yet (channels with `consumed`).
    pub(crate) backlog: Backlog,
    /// PATCH(fargate-bastion): the server's window budget, and what this
    /// channel holds of it (its open window and what arrived but was not taken
    /// yet), given back when the channel goes away.
    pub(crate) budget: Option<std::sync::Arc<super::WindowBudget>>,
    pub(crate) reserved: usize,
    /// PATCH(fargate-bastion): it got less window than it wanted from the budget.
    pub(crate) starved: bool,
}

impl ChannelRef {
    pub fn new(sender: Sender<ChannelMsg>) -> Self {
        Self {
            sender,
            window_size: WindowSizeRef::new(0),
            consumed: None,             // PATCH(fargate-bastion)
            backlog: Backlog::default(), // PATCH(fargate-bastion)
            budget: None,               // PATCH(fargate-bastion)
            reserved: 0,
            starved: false,
        }
    }

    /// PATCH(fargate-bastion): the reader took `released` bytes (they left the
    /// server's memory, and go back to the budget); takes up to `want` of
    /// window to grant again. Returns what may be granted.
    pub(crate) fn regrant(&mut self, released: usize, want: usize) -> usize {
        let Some(budget) = self.budget.clone() else { return want.min(released) };
        self.reserved = self.reserved.saturating_sub(released);
        budget.give(released);
        let got = budget.take(want);
        self.reserved += got;
        self.set_starved(got < want);
        got
    }

    /// PATCH(fargate-bastion): a channel opened with less window than asked
    /// (`set_starved(true)`) is offered more as the budget frees up.
    pub(crate) fn set_starved(&mut self, starved: bool) {
        if let Some(budget) = &self.budget
            && self.starved != starved
        {
            budget.starve(starved);
            self.starved = starved;
        }
    }

    /// PATCH(fargate-bastion): hands `msg` to the channel's reader without
    /// waiting for room in its queue (see [`Backlog`]). Channels without
    /// `consumed` (opened by the server) keep upstream's behaviour and wait.
    pub(crate) async fn deliver(&mut self, id: ChannelId, msg: ChannelMsg) -> Result<(), crate::Error> {
        let Some(consumed) = self.consumed.clone() else {
            let _ = self.sender.send(msg).await;
            return Ok(());
        };
        if self.backlog.items.is_empty() {
            match self.sender.try_send(msg) {
                Ok(()) | Err(TrySendError::Closed(_)) => return Ok(()),
                Err(TrySendError::Full(msg)) => {
                    // The reader wakes the session as it takes messages from now on.
                    consumed.backlogged.store(true, Ordering::Relaxed);
                    return self.backlog.push(id, msg);
                }
            }
        }
        self.backlog.push(id, msg)?;
        self.flush_backlog();
        Ok(())
    }

    /// PATCH(fargate-bastion): moves what waits in the backlog into the
    /// queue, as far as there is room.
    pub(crate) fn flush_backlog(&mut self) {
        while !self.backlog.items.is_empty() {
            match self.sender.try_reserve() {
                Ok(permit) => {
                    if let Some(msg) = self.backlog.pop() {
                        permit.send(msg);
                    }
                }
                Err(TrySendError::Full(())) => return,
                Err(TrySendError::Closed(())) => self.backlog = Backlog::default(),
            }
        }
        if let Some(consumed) = &self.consumed {
            consumed.backlogged.store(false, Ordering::Relaxed);
        }
    }

    /// PATCH(fargate-bastion): the channel is gone from the session; what still
    /// waits in its backlog reaches the reader in a task of its own.
    pub(crate) fn finish(mut self) {
        self.flush_backlog();
        if self.backlog.items.is_empty() {
            return;
        }
        let (sender, mut backlog) = (self.sender.clone(), std::mem::take(&mut self.backlog));
        tokio::spawn(async move {
            while let Some(msg) = backlog.pop() {
                if sender.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }

    pub(crate) fn window_size(&self) -> &WindowSizeRef {
        &self.window_size
    }
}

/// PATCH(fargate-bastion): what a channel held of the window budget goes back with it.
impl Drop for ChannelRef {
    fn drop(&mut self) {
        self.set_starved(false);
        if let Some(budget) = &self.budget {
            budget.give(std::mem::take(&mut self.reserved));
        }
    }
}

impl std::ops::Deref for ChannelRef {
    type Target = Sender<ChannelMsg>;

    fn deref(&self) -> &Self::Target {
        &self.sender
    }
}
