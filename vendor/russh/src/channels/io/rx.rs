use std::borrow::BorrowMut;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncBufRead, AsyncRead};

use super::{ChannelMsg, ChannelReadHalf};

#[derive(Debug)]
pub struct ChannelRx<R> {
    channel: R,
    buffer: Option<(ChannelMsg, usize)>,

    ext: Option<u32>,
}

impl<R> ChannelRx<R> {
    pub fn new(channel: R, ext: Option<u32>) -> Self {
        Self {
            channel,
            buffer: None,
            ext,
        }
    }
}

impl<R> AsyncRead for ChannelRx<R>
where
    R: BorrowMut<ChannelReadHalf> + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (msg, mut idx) = match self.buffer.take() {
            Some(msg) => msg,
            None => match ready!(self.channel.borrow_mut().receiver.poll_recv(cx)) {
                Some(msg) => {
                    self.channel.borrow_mut().taken(&msg); // PATCH(fargate-bastion)
                    (msg, 0)
                }
                None => return Poll::Ready(Ok(())),
            },
        };

        match (&msg, self.ext) {
            (ChannelMsg::Data { data }, None) => {
                let readable = buf.remaining().min(data.len() - idx);

                // Clamped to maximum `buf.remaining()` and `data.len() - idx` with `.min`
                #[allow(clippy::indexing_slicing)]
                buf.put_slice(&data[idx..idx + readable]);
                idx += readable;

                if idx != data.len() {
                    self.buffer = Some((msg, idx));
                }

                Poll::Ready(Ok(()))
            }
            (ChannelMsg::ExtendedData { data, ext }, Some(target)) if *ext == target => {
                let readable = buf.remaining().min(data.len() - idx);

                // Clamped to maximum `buf.remaining()` and `data.len() - idx` with `.min`
                #[allow(clippy::indexing_slicing)]
                buf.put_slice(&data[idx..idx + readable]);
                idx += readable;

                if idx != data.len() {
                    self.buffer = Some((msg, idx));
                }

                Poll::Ready(Ok(()))
            }
            (ChannelMsg::Eof, _) => {
                self.channel.borrow_mut().receiver.close();

                Poll::Ready(Ok(()))
            }
            _ => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

// PATCH(fargate-bastion): `AsyncBufRead`, so that a consumer can write channel
// data straight out of the packet it arrived in (`tokio::io::copy_buf`) instead
// of copying it into a buffer of its own first. Shares `buffer` with
// `poll_read`; messages other than this reader's data are skipped, as there.
impl<R> AsyncBufRead for ChannelRx<R>
where
    R: BorrowMut<ChannelReadHalf> + Unpin,
{
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.buffer.is_none() {
            let Some(msg) = ready!(this.channel.borrow_mut().receiver.poll_recv(cx)) else {
                return Poll::Ready(Ok(&[]));
            };
            this.channel.borrow_mut().taken(&msg); // PATCH(fargate-bastion)
            match (&msg, this.ext) {
                (ChannelMsg::Data { data }, None) if !data.is_empty() => this.buffer = Some((msg, 0)),
                (ChannelMsg::ExtendedData { data, ext }, Some(target))
                    if *ext == target && !data.is_empty() =>
                {
                    this.buffer = Some((msg, 0))
                }
                (ChannelMsg::Eof, _) => {
                    this.channel.borrow_mut().receiver.close();
                    return Poll::Ready(Ok(&[]));
                }
                _ => {}
            }
        }
        match &this.buffer {
            Some((ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. }, idx)) => {
                Poll::Ready(Ok(data.get(*idx..).unwrap_or_default()))
            }
            _ => Poll::Ready(Ok(&[])),
        }
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        if let Some((ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. }, idx)) =
            &mut this.buffer
        {
            *idx = idx.saturating_add(amt).min(data.len());
            if *idx == data.len() {
                this.buffer = None;
            }
        }
    }
}
