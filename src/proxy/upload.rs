//! A request body on its way to a backend: whole bytes (almost every request:
//! they are read, checked and rewritten before anything is sent), or an upload
//! streamed through — the bytes llmvisor had to read to find the `model` field of
//! a `multipart/form-data` body, then the rest of the client's body as it comes,
//! never held whole. A streamed body can be sent once only: it goes on a fresh
//! connection (a reused one could turn out closed after bytes went) and is never
//! sent again to another target.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// What a body's read can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A backend request's body.
pub enum ReqBody {
    /// All of it (taken by the first poll).
    Full(Option<Bytes>),
    /// The bytes read so far (rewritten), then the rest of the client's body.
    Upload {
        /// Not yet sent.
        head: Option<Bytes>,
        /// The client's body, from where llmvisor stopped reading it (in a
        /// mutex only to be `Sync`, as the futures that hold it must be; only
        /// `get_mut` reaches it).
        rest: Mutex<axum::body::Body>,
        /// Bytes still to come (head and rest), when the client said its length.
        left: Option<u64>,
    },
}

impl ReqBody {
    /// A whole body.
    pub fn full(b: Bytes) -> Self {
        Self::Full(Some(b))
    }

    /// `head`, then `rest` streamed; `rest_len`: its length, when known.
    pub fn upload(head: Bytes, rest: axum::body::Body, rest_len: Option<u64>) -> Self {
        let left = rest_len.map(|n| n + head.len() as u64);
        Self::Upload {
            head: Some(head),
            rest: Mutex::new(rest),
            left,
        }
    }

    /// The bytes of a whole body, to send it again (None for an upload).
    pub fn bytes(&self) -> Option<Bytes> {
        match self {
            Self::Full(b) => Some(b.clone().unwrap_or_default()),
            Self::Upload { .. } => None,
        }
    }
}

impl From<Bytes> for ReqBody {
    fn from(b: Bytes) -> Self {
        Self::full(b)
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Self::Upload { head, rest, left } => {
                if let Some(h) = head.take().filter(|h| !h.is_empty()) {
                    if let Some(n) = left {
                        *n = n.saturating_sub(h.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(h))));
                }
                let rest = rest.get_mut().unwrap_or_else(|p| p.into_inner());
                match Pin::new(rest).poll_frame(cx) {
                    Poll::Ready(Some(Ok(f))) => {
                        if let (Some(n), Some(d)) = (left.as_mut(), f.data_ref()) {
                            *n = n.saturating_sub(d.len() as u64);
                        }
                        Poll::Ready(Some(Ok(f)))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            Self::Upload { head, rest, .. } => {
                head.as_ref().is_none_or(Bytes::is_empty)
                    && rest.try_lock().is_ok_and(|r| r.is_end_stream())
            }
        }
    }

    /// Exact when the length is known: hyper then sends `Content-Length`
    /// (the client's, adjusted for the rewritten `model`), else chunked.
    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Upload { left: Some(n), .. } => SizeHint::with_exact(*n),
            Self::Upload { head, .. } => {
                let mut h = SizeHint::new();
                h.set_lower(head.as_ref().map_or(0, |b| b.len() as u64));
                h
            }
        }
    }
}
