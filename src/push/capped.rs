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
