//! Remote answers read up to a cap: a consumer or token endpoint that streams an endless body
//! costs a bounded buffer and a closed connection, never the lane's memory or time.

use bytes::Bytes;

/// Most bytes read from a consumer's answer (only read so the connection can be reused).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Most bytes of a token endpoint's answer (an OAuth2 token response is well under 8 KiB).
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// A body read up to a cap.
#[derive(Debug)]
pub struct Capped {
    /// At most the cap's bytes.
    pub bytes: Bytes,
    /// Whether the body went on beyond the cap (the rest was not read).
    pub truncated: bool,
}

/// Reads `response`'s body, stopping at `cap` bytes (the connection is then dropped, not
/// reused).
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Capped, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok(Capped {
                bytes: Bytes::from(out),
                truncated: true,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Capped {
        bytes: Bytes::from(out),
        truncated: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real server on loopback whose answer never ends (until the client hangs up).
    async fn endless() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(|| async {
            let chunks = futures::stream::repeat_with(|| {
                Ok::<_, std::io::Error>(Bytes::from_static(&[b'x'; 8192]))
            });
            axum::body::Body::from_stream(chunks)
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn an_endless_answer_is_read_up_to_the_cap() {
        let url = endless().await;
        let response = reqwest::get(&url).await.unwrap();
        let capped = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            read_capped(response, MAX_RESPONSE_BYTES),
        )
        .await
        .expect("reading stops at the cap")
        .unwrap();
        assert!(capped.truncated);
        assert_eq!(capped.bytes.len(), MAX_RESPONSE_BYTES);
    }
}
