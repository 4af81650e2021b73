//! Unit tests of [`super`].

use super::*;
use flate2::write::GzEncoder;
use flate2::Compression;

const LIMITS: BodyLimits = BodyLimits {
    max_bytes: 1024,
    max_ratio: 100,
};

async fn read_all(
    pool: &Arc<BodyPool>,
    body: impl Into<Body>,
    limits: BodyLimits,
) -> Result<Bytes, BodyError> {
    let budget = ByteBudget::new(1 << 20);
    pool.read(body.into(), Coding::Identity, limits, &budget)
        .await
        .map(|(bytes, _)| bytes)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// A body that arrives in frames, as from a socket (no exact size hint).
fn streamed(chunks: Vec<Vec<u8>>) -> Body {
    let stream = futures::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
    );
    Body::from_stream(stream)
}

#[tokio::test]
async fn a_buffer_is_reused_once_every_slice_is_dropped() {
    let pool = BodyPool::new();
    let first = read_all(&pool, "{\"value\":[]}", LIMITS).await.unwrap();
    let slice = first.slice(1..8);
    drop(first);
    assert_eq!(pool.retained(), 0, "a slice still holds the buffer");
    assert_eq!(&slice[..], b"\"value\"");
    drop(slice);
    let capacity = pool.retained();
    assert!(capacity >= 12);

    let second = read_all(&pool, "[1,2]", LIMITS).await.unwrap();
    assert_eq!(&second[..], b"[1,2]", "no bytes of the earlier push remain");
    assert_eq!(pool.retained(), 0, "the kept buffer was taken");
}

#[tokio::test]
async fn over_the_limit_is_too_large_and_keeps_the_buffer() {
    let pool = BodyPool::new();
    let limits = BodyLimits {
        max_bytes: 10,
        ..LIMITS
    };
    let err = read_all(&pool, vec![b'x'; 100], limits).await;
    assert!(matches!(err, Err(BodyError::TooLarge { limit: 10 })));
    let err = read_all(&pool, streamed(vec![vec![b'x'; 6]; 2]), limits).await;
    assert!(matches!(err, Err(BodyError::TooLarge { limit: 10 })));
    let ok = read_all(&pool, "abc", limits).await.unwrap();
    assert_eq!(&ok[..], b"abc");
}

#[tokio::test]
async fn the_budget_is_taken_while_reading_and_given_back() {
    let pool = BodyPool::new();
    let gauge = prometheus::IntGauge::new("bytes", "bytes").unwrap();
    let budget = ByteBudget::new(200 * 1024).with_gauge(gauge.clone());
    let limits = BodyLimits {
        max_bytes: 1 << 20,
        max_ratio: 100,
    };
    // A declared length beyond what is left is refused before a byte is read.
    let err = pool
        .read(
            Body::from(vec![b'x'; 300 * 1024]),
            Coding::Identity,
            limits,
            &budget,
        )
        .await;
    assert!(matches!(err, Err(BodyError::OverBudget)), "{err:?}");
    // A streamed body takes the budget as it grows: the first holds it, the second fails
    // once its bytes would pass what is left.
    let (first, share) = pool
        .read(
            streamed(vec![vec![b'a'; 150 * 1024]]),
            Coding::Identity,
            limits,
            &budget,
        )
        .await
        .unwrap();
    assert!(share.bytes() >= first.len());
    // The gauge follows the budget (it used to count a body only once read whole).
    assert_eq!(gauge.get(), share.bytes() as i64);
    let err = pool
        .read(
            streamed(vec![vec![b'b'; 40 * 1024], vec![b'b'; 40 * 1024]]),
            Coding::Identity,
            limits,
            &budget,
        )
        .await;
    assert!(matches!(err, Err(BodyError::OverBudget)), "{err:?}");
    // Gzip takes the budget for the decompressed bytes.
    let packed = gzip(&vec![b'c'; 100 * 1024]);
    let err = pool
        .read(
            streamed(vec![packed.clone()]),
            Coding::Gzip,
            limits,
            &budget,
        )
        .await;
    assert!(matches!(err, Err(BodyError::OverBudget)), "{err:?}");
    drop(share);
    assert_eq!(
        gauge.get(),
        0,
        "failed reads and dropped shares give everything back"
    );
    let (body, _) = pool
        .read(
            streamed(vec![packed]),
            Coding::Gzip,
            BodyLimits {
                max_ratio: 100_000,
                ..limits
            },
            &budget,
        )
        .await
        .unwrap();
    assert_eq!(body.len(), 100 * 1024);
}

#[tokio::test]
async fn gzip_members_are_all_read_and_bombs_stop_at_the_ratio() {
    let pool = BodyPool::new();
    let budget = ByteBudget::new(1 << 30);
    let limits = BodyLimits {
        max_bytes: 64 << 20,
        max_ratio: 100,
    };
    // RFC 1952: a gzip file may hold several members; all of them are the body.
    let mut two = gzip(b"{\"value\":");
    two.extend(gzip(b"[]}"));
    let (body, _) = pool
        .read(streamed(vec![two]), Coding::Gzip, limits, &budget)
        .await
        .unwrap();
    assert_eq!(&body[..], b"{\"value\":[]}");
    // 32 MiB of zeros compress ~1000:1: refused at the ratio, not read to the limit.
    let bomb = gzip(&vec![0u8; 32 << 20]);
    let err = pool
        .read(streamed(vec![bomb]), Coding::Gzip, limits, &budget)
        .await;
    assert!(
        matches!(err, Err(BodyError::RatioExceeded { ratio: 100 })),
        "{err:?}"
    );
    // Corrupt and truncated data are unreadable, not accepted.
    let mut cut = gzip(&vec![b'x'; 10_000]);
    cut.truncate(cut.len() - 10);
    let err = pool
        .read(streamed(vec![cut]), Coding::Gzip, limits, &budget)
        .await;
    assert!(matches!(err, Err(BodyError::Unreadable(_))), "{err:?}");
    let err = pool
        .read(
            streamed(vec![b"not gzip".to_vec()]),
            Coding::Gzip,
            limits,
            &budget,
        )
        .await;
    assert!(matches!(err, Err(BodyError::Unreadable(_))), "{err:?}");
}

#[test]
fn codings_are_case_insensitive_and_unknown_ones_named() {
    let coding = |values: &[&str]| {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::CONTENT_ENCODING, v.parse().unwrap());
        }
        content_coding(&h)
    };
    assert_eq!(coding(&[]), Ok(Coding::Identity));
    assert_eq!(coding(&["identity"]), Ok(Coding::Identity));
    assert_eq!(coding(&["GZIP"]), Ok(Coding::Gzip));
    assert_eq!(coding(&["x-gzip"]), Ok(Coding::Gzip));
    assert_eq!(coding(&["Identity, gzip"]), Ok(Coding::Gzip));
    assert_eq!(coding(&["br"]), Err("br".into()));
    assert_eq!(coding(&["gzip", "zstd"]), Err("zstd".into()));
    assert_eq!(coding(&["gzip, gzip"]), Err("gzip".into()));
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
