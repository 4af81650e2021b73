//! One request-body deadline for every route of a listener, enforced where connections are
//! served ([`super::serve`]), not per handler.
//!
//! A handler that reads its body with an axum extractor (`Bytes`, `Form`, `Json`) waits for as
//! long as the client trickles it: six connections that declare a 4000-byte body and send ten
//! bytes of it held a route forever, and at `max_connections` locked the whole listener. Every
//! request body is therefore wrapped in a [`DeadlineBody`] the moment its headers are read: once
//! `body_read_timeout_ms` has passed and the body is still incomplete, reading it fails with
//! [`BodyDeadlineExceeded`], and the answer the handler makes of that failure is replaced by a
//! `408` problem with `Connection: close` ([`timed_out`]). It applies alike to HTTP/1.1
//! requests and HTTP/2 streams, whatever the route, so a route added later cannot forget it.
//!
//! The timer is armed only when a read would wait: a body that is already in the socket
//! buffers (nearly every push) costs no timer registration.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::HttpBody;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use super::problem::Problem;

/// Reading a request body failed because it did not arrive within the listener's
/// `body_read_timeout_ms`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive within {} ms", .0.as_millis())]
pub struct BodyDeadlineExceeded(pub Duration);

/// Set once a request's body deadline has fired.
#[derive(Debug, Clone, Default)]
pub struct Expired(Arc<AtomicBool>);

impl Expired {
    /// Whether the deadline fired.
    pub fn fired(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A request body that fails with [`BodyDeadlineExceeded`] when it is still incomplete at its
/// deadline.
pub struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    expired: Expired,
    done: bool,
}

impl DeadlineBody {
    /// Wraps `inner`, whose headers were read just now, with `limit` to arrive whole.
    pub fn new(inner: Incoming, limit: Duration) -> (Self, Expired) {
        let expired = Expired::default();
        let body = DeadlineBody {
            inner,
            deadline: Instant::now() + limit,
            limit,
            timer: None,
            expired: expired.clone(),
            done: false,
        };
        (body, expired)
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.done = frame.is_none();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = (this.timer)
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.done = true;
                this.expired.0.store(true, Ordering::Release);
                Poll::Ready(Some(Err(Box::new(BodyDeadlineExceeded(this.limit)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a request whose body missed its deadline: `408` problem, connection closed.
/// A handler's own `408` (the webhook counts its refusals) is kept as it is.
pub fn timed_out(response: Response, limit: Duration) -> Response {
    if response.status() == StatusCode::REQUEST_TIMEOUT {
        return response;
    }
    Problem::new(
        StatusCode::REQUEST_TIMEOUT,
        BodyDeadlineExceeded(limit).to_string(),
    )
    .close_connection()
    .into_response()
}
