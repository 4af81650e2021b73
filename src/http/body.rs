//! Reading a push body into one contiguous buffer, reusing buffers across requests.
//!
//! The parser and the sinks need a push as one contiguous slice (each event is forwarded as a
//! sub-slice of it), so the body's frames are copied once into a buffer. A fresh buffer for
//! every push of ~1 MB costs a page fault per 4 KiB on every request, because the allocator
//! hands large freed blocks back to the kernel; profiling `bench ingress-kafka` put those
//! faults at about 5 % of the bridge's CPU. [`BodyPool`] keeps a few buffers warm instead. A
//! buffer returns to the pool when the last `Bytes` slice of its push is dropped (after the
//! sink has answered), so the sinks see ordinary `Bytes` and nothing is copied twice.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::{Body, HttpBody};
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use flate2::write::MultiGzDecoder;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Total capacity the pool keeps between requests. Pushes beyond it still work; their buffers
/// are simply freed afterwards.
pub const POOL_RETAINED_BYTES: usize = 16 * 1024 * 1024;
/// Largest buffer the pool keeps: one rare giant push must not pin its memory for good.
pub const POOL_MAX_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// The byte budget is taken in steps of at least this much, so a streamed body does not touch
/// the shared semaphore for every frame.
const BUDGET_STEP_BYTES: usize = 64 * 1024;
/// Decompressed bytes always allowed before the ratio limit applies (a tiny gzip body of a
/// small push may legitimately expand more than the ratio).
const RATIO_FLOOR_BYTES: usize = 64 * 1024;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body (after decompression) is larger than the connector accepts.
    #[error("request body exceeds {limit} bytes (after decompression)")]
    TooLarge {
        /// The connector's `max_body_bytes`.
        limit: usize,
    },
    /// The compressed body expands more than the connector accepts.
    #[error("gzip body expands more than {ratio} times its compressed size")]
    RatioExceeded {
        /// The connector's `max_decompression_ratio`.
        ratio: usize,
    },
    /// The connector's in-flight byte budget is used up by other requests.
    #[error("too many request bytes in flight; retry later")]
    OverBudget,
    /// The connection failed or the compressed body was corrupt.
    #[error("cannot read request body: {0}")]
    Unreadable(String),
    /// The body did not arrive within the listener's `body_read_timeout_ms`.
    #[error("{0}")]
    Timeout(super::deadline::BodyDeadlineExceeded),
}

impl BodyError {
    /// A failed read of the request body's frames.
    fn read(error: axum::Error) -> BodyError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = cause {
            if let Some(deadline) = e.downcast_ref::<super::deadline::BodyDeadlineExceeded>() {
                return BodyError::Timeout(*deadline);
            }
            cause = e.source();
        }
        BodyError::Unreadable(error.to_string())
    }
}

/// Buffers kept between requests (see the module docs).
#[derive(Default)]
pub struct BodyPool {
    free: Mutex<Vec<Vec<u8>>>,
}

/// A request body's content coding (RFC 9110 §8.4). Codings are matched case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// No coding (absent header or `identity`).
    Identity,
    /// `gzip` (or its alias `x-gzip`); several members are read as one stream (RFC 1952).
    Gzip,
}

/// The body's coding, or the first coding this bridge cannot decode (for the 415).
pub fn content_coding(headers: &HeaderMap) -> Result<Coding, String> {
    let mut coding = Coding::Identity;
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| String::from_utf8_lossy(value.as_bytes()).into_owned())?;
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name.eq_ignore_ascii_case("identity") {
                continue;
            }
            let gzip = name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip");
            if !gzip || coding == Coding::Gzip {
                // Unknown, or gzip applied twice (never sent by a real producer).
                return Err(name.chars().take(64).collect());
            }
            coding = Coding::Gzip;
        }
    }
    Ok(coding)
}

/// How much a body may be, and how much it may expand.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body after decompression.
    pub max_bytes: usize,
    /// Largest ratio of decompressed to compressed bytes.
    pub max_ratio: usize,
}

/// The connector's in-flight byte budget: bytes of request bodies held in memory at once.
pub struct ByteBudget {
    semaphore: Arc<Semaphore>,
    /// Follows the bytes taken (`entity_bridge_request_bytes_in_flight`), as they are taken.
    gauge: Option<prometheus::IntGauge>,
}

/// A share of the [`ByteBudget`], returned when dropped.
#[derive(Debug, Default)]
pub struct BudgetShare {
    permit: Option<OwnedSemaphorePermit>,
    gauge: Option<prometheus::IntGauge>,
}

impl ByteBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        ByteBudget {
            semaphore: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
            gauge: None,
        }
    }

    /// The same budget, reporting the bytes taken to `gauge` while bodies are read.
    pub fn with_gauge(mut self, gauge: prometheus::IntGauge) -> Self {
        self.gauge = Some(gauge);
        self
    }

    /// Grows `share` to at least `bytes` (in steps, never past `cap`), or fails at once when the
    /// budget does not have them: a request never waits for another's bytes.
    fn grow(&self, share: &mut BudgetShare, bytes: usize, cap: usize) -> Result<(), BodyError> {
        let held = share.bytes();
        if bytes <= held {
            return Ok(());
        }
        // Take a step ahead when the budget has it, else exactly what is needed.
        let stepped = bytes.max(held + BUDGET_STEP_BYTES).min(cap.max(bytes)) - held;
        let exact = bytes - held;
        let take = |n: usize| {
            let n = u32::try_from(n).ok()?;
            self.semaphore.clone().try_acquire_many_owned(n).ok()
        };
        let permit = take(stepped)
            .or_else(|| take(exact))
            .ok_or(BodyError::OverBudget)?;
        if let Some(gauge) = &self.gauge {
            gauge.add(permit.num_permits() as i64);
            share.gauge.get_or_insert_with(|| gauge.clone());
        }
        match &mut share.permit {
            Some(held) => held.merge(permit),
            None => share.permit = Some(permit),
        }
        Ok(())
    }
}

impl BudgetShare {
    /// Bytes of the budget this share holds.
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        if let Some(gauge) = &self.gauge {
            gauge.sub(self.bytes() as i64);
        }
    }
}

/// Where decompressed (or plain) bytes go: the pooled buffer, checked against the limits and the
/// budget as they arrive, so memory never runs ahead of what was allowed.
struct Collector<'a> {
    buf: &'a mut Vec<u8>,
    limits: BodyLimits,
    budget: &'a ByteBudget,
    share: &'a mut BudgetShare,
    /// Compressed bytes fed so far (for the ratio; 0 for identity).
    compressed: usize,
    /// Why the last write failed (the decoder only passes an `io::Error` on).
    failed: Option<BodyError>,
}

impl Collector<'_> {
    fn accept(&mut self, data: &[u8]) -> Result<(), BodyError> {
        let len = self.buf.len().saturating_add(data.len());
        if len > self.limits.max_bytes {
            return Err(BodyError::TooLarge {
                limit: self.limits.max_bytes,
            });
        }
        if self.compressed > 0
            && len > RATIO_FLOOR_BYTES
            && len > self.compressed.saturating_mul(self.limits.max_ratio)
        {
            return Err(BodyError::RatioExceeded {
                ratio: self.limits.max_ratio,
            });
        }
        self.budget.grow(self.share, len, self.limits.max_bytes)?;
        self.buf.extend_from_slice(data);
        Ok(())
    }
}

impl Write for Collector<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self.accept(data) {
            Ok(()) => Ok(data.len()),
            Err(e) => {
                let text = e.to_string();
                self.failed = Some(e);
                Err(std::io::Error::other(text))
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BodyPool {
    /// An empty pool.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Reads all of `body` into a pooled buffer, decoding `coding`, within `limits` and taking
    /// `budget` as the bytes arrive (a declared `Content-Length` is taken, or refused, up front).
    /// The returned share holds the body's bytes of the budget; drop it with the body.
    pub async fn read(
        self: &Arc<Self>,
        body: Body,
        coding: Coding,
        limits: BodyLimits,
        budget: &ByteBudget,
    ) -> Result<(Bytes, BudgetShare), BodyError> {
        let declared = usize::try_from(body.size_hint().exact().unwrap_or(0)).unwrap_or(usize::MAX);
        if declared > limits.max_bytes {
            return Err(BodyError::TooLarge {
                limit: limits.max_bytes,
            });
        }
        let mut share = BudgetShare::default();
        if coding == Coding::Identity {
            budget.grow(&mut share, declared, limits.max_bytes)?;
        }
        let mut buf = self.take();
        buf.reserve(if coding == Coding::Identity {
            declared
        } else {
            0
        });
        let collector = Collector {
            buf: &mut buf,
            limits,
            budget,
            share: &mut share,
            compressed: 0,
            failed: None,
        };
        let result = match coding {
            Coding::Identity => read_plain(body, collector).await,
            Coding::Gzip => read_gzip(body, collector).await,
        };
        match result {
            Ok(()) => Ok((
                Bytes::from_owner(Pooled {
                    buf,
                    pool: self.clone(),
                }),
                share,
            )),
            Err(e) => {
                self.put(buf);
                Err(e)
            }
        }
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

async fn read_plain(mut body: Body, mut out: Collector<'_>) -> Result<(), BodyError> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::read)?;
        if let Some(data) = frame.data_ref() {
            out.accept(data)?;
        }
    }
    Ok(())
}

async fn read_gzip(mut body: Body, mut out: Collector<'_>) -> Result<(), BodyError> {
    let mut decoder = MultiGzDecoder::new(&mut out);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::read)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        decoder.get_mut().compressed = decoder.get_mut().compressed.saturating_add(data.len());
        if let Err(e) = decoder.write_all(&data) {
            return Err(gzip_failure(decoder.get_mut(), e));
        }
    }
    if let Err(e) = decoder.try_finish() {
        return Err(gzip_failure(decoder.get_mut(), e));
    }
    Ok(())
}

/// The cause of a failed gzip write: the collector's own refusal, or corrupt compressed data.
fn gzip_failure(out: &mut Collector<'_>, error: std::io::Error) -> BodyError {
    out.failed
        .take()
        .unwrap_or_else(|| BodyError::Unreadable(format!("invalid gzip data: {error}")))
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
#[path = "body_tests.rs"]
mod tests;
