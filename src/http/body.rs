//! Reading a push body into one contiguous buffer, reusing buffers across requests.
//!
//! The parser and the sinks need a push as one contiguous slice (each event is forwarded as a
//! sub-slice of it), so the body's frames are copied once into a buffer. A fresh buffer for
//! every push of ~1 MB costs a page fault per 4 KiB on every request, because the allocator
//! hands large freed blocks back to the kernel; profiling `bench ingress-kafka` put those
//! faults at about 5 % of the bridge's CPU. [`BodyPool`] keeps a few buffers warm instead. A
//! buffer returns to the pool when the last `Bytes` slice of its push is dropped (after the
//! sink has answered), so the sinks see ordinary `Bytes` and nothing is copied twice.

use std::sync::{Arc, Mutex};

use axum::body::{Body, HttpBody};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

/// Total capacity the pool keeps between requests. Pushes beyond it still work; their buffers
/// are simply freed afterwards.
pub const POOL_RETAINED_BYTES: usize = 16 * 1024 * 1024;
/// Largest buffer the pool keeps: one rare giant push must not pin its memory for good.
pub const POOL_MAX_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body (after decompression) is larger than the connector accepts.
    #[error("request body exceeds {limit} bytes (after decompression)")]
    TooLarge {
        /// The connector's `max_body_bytes`.
        limit: usize,
    },
    /// The connection failed or the compressed body was corrupt.
    #[error("cannot read request body: {0}")]
    Unreadable(String),
}

/// Buffers kept between requests (see the module docs).
#[derive(Default)]
pub struct BodyPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BodyPool {
    /// An empty pool.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Reads all of `body` (at most `limit` bytes) into a pooled buffer.
    pub async fn read(self: &Arc<Self>, body: Body, limit: usize) -> Result<Bytes, BodyError> {
        let hint = usize::try_from(body.size_hint().lower()).unwrap_or(0);
        let mut buf = self.take();
        buf.reserve(hint.min(limit));
        let mut body = Limited::new(body, limit);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| match e.downcast_ref::<LengthLimitError>() {
                Some(_) => BodyError::TooLarge { limit },
                None => BodyError::Unreadable(e.to_string()),
            });
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        buf.extend_from_slice(data);
                    }
                }
                Err(e) => {
                    self.put(buf);
                    return Err(e);
                }
            }
        }
        Ok(Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        }))
    }

    fn take(&self) -> Vec<u8> {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn put(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > POOL_MAX_BUFFER_BYTES {
            return;
        }
        buf.clear();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let kept: usize = free.iter().map(Vec::capacity).sum();
        if kept + buf.capacity() <= POOL_RETAINED_BYTES {
            free.push(buf);
        }
    }

    /// Bytes of capacity the pool holds right now.
    #[cfg(test)]
    fn retained(&self) -> usize {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.iter().map(Vec::capacity).sum()
    }
}

/// A body's buffer; goes back to its pool when the last `Bytes` of the push is dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BodyPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_buffer_is_reused_once_every_slice_is_dropped() {
        let pool = BodyPool::new();
        let first = pool.read(Body::from("{\"value\":[]}"), 1024).await.unwrap();
        let slice = first.slice(1..8);
        drop(first);
        assert_eq!(pool.retained(), 0, "a slice still holds the buffer");
        assert_eq!(&slice[..], b"\"value\"");
        drop(slice);
        let capacity = pool.retained();
        assert!(capacity >= 12);

        let second = pool.read(Body::from("[1,2]"), 1024).await.unwrap();
        assert_eq!(&second[..], b"[1,2]", "no bytes of the earlier push remain");
        assert_eq!(pool.retained(), 0, "the kept buffer was taken");
    }

    #[tokio::test]
    async fn over_the_limit_is_too_large_and_keeps_the_buffer() {
        let pool = BodyPool::new();
        let err = pool.read(Body::from(vec![b'x'; 100]), 10).await;
        assert!(matches!(err, Err(BodyError::TooLarge { limit: 10 })));
        let ok = pool.read(Body::from("abc"), 10).await.unwrap();
        assert_eq!(&ok[..], b"abc");
    }

    #[test]
    fn giant_buffers_and_overflow_are_not_kept() {
        let pool = BodyPool::new();
        pool.put(Vec::with_capacity(POOL_MAX_BUFFER_BYTES + 1));
        assert_eq!(pool.retained(), 0);
        for _ in 0..(POOL_RETAINED_BYTES / POOL_MAX_BUFFER_BYTES + 2) {
            pool.put(Vec::with_capacity(POOL_MAX_BUFFER_BYTES));
        }
        assert!(pool.retained() <= POOL_RETAINED_BYTES);
    }
}
