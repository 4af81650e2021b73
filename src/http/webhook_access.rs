//! Who pushes: the webhook's bearer check (fixed tokens, tokens of the connector's token
//! endpoint, tokens of an external identity provider) names the producer, whose quota then
//! admits or refuses the push (429 with the producer's own `Retry-After`).

use axum::http::{header, HeaderMap, StatusCode};

use super::WebhookConnector;
use crate::http::jwks::Refusal;
use crate::http::problem::Problem;

impl WebhookConnector {
    /// A bearer token that is not a fixed one: an access token of the connector's token endpoint
    /// or of the external issuer. Its producer, or why it is refused.
    pub(super) async fn check_token(&self, token: &str) -> Result<String, Refusal> {
        use crate::http::jwt::InvalidToken;
        let mut why = InvalidToken::Invalid;
        if let Some(issuer) = &self.issuer {
            match issuer.verify(token) {
                // A client removed from the configuration is cut off at once, not when its
                // last token expires.
                Ok(claims) if self.clients.contains(&claims.sub) => return Ok(claims.sub),
                Ok(_) => why = InvalidToken::Invalid,
                Err(e) => why = e,
            }
        }
        if let Some(external) = &self.external {
            match external.verify(token).await {
                Ok(_) => return Ok(crate::http::quota::EXTERNAL_PRODUCER.to_owned()),
                // The IdP's keys could not be fetched: the token may be good, retry later.
                Err(unverifiable @ Refusal::Unverifiable { .. }) => return Err(unverifiable),
                // The token endpoint's specific answer wins over "not one of the IdP's".
                Err(Refusal::Invalid(e)) if why == InvalidToken::Invalid => why = e,
                Err(Refusal::Invalid(_)) => {}
            }
        }
        Err(Refusal::Invalid(why))
    }

    /// A producer over its quota: 429 with the `Retry-After` of its own quota.
    pub(super) fn over_quota(
        &self,
        producer: &str,
        over: crate::http::quota::OverQuota,
    ) -> Problem {
        self.metrics.request_rejected(&self.name, "overloaded");
        self.metrics.quota_refusal(&self.name, producer, over.what);
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "producer `{producer}` is over its {} quota; retry later",
                over.what
            ),
        )
        .retry_after(over.retry_after_seconds)
    }

    /// The bearer token check: a configured token, or an access token of the connector's token
    /// endpoint. A refusal says why in `WWW-Authenticate` (RFC 6750 §3): no error code without
    /// a token, `invalid_token` for a token that is not (or no longer) valid.
    pub(super) async fn authorize(&self, headers: &HeaderMap) -> Result<String, Problem> {
        let authorization = headers.get(header::AUTHORIZATION);
        if let Some(index) = self.tokens.position(authorization) {
            return Ok(crate::http::quota::token_producer(index));
        }
        // A JWT is ASCII; a token that is not UTF-8 can only have been a fixed one.
        let presented = crate::http::auth::bearer(authorization)
            .map(|t| std::str::from_utf8(t).unwrap_or_default());
        let why = match presented {
            None => None,
            Some(token) => match self.check_token(token).await {
                Ok(producer) => return Ok(producer),
                Err(Refusal::Invalid(e)) => Some(e.to_string()),
                Err(Refusal::Unverifiable {
                    retry_after_seconds,
                }) => {
                    self.metrics.request_rejected(&self.name, "unavailable");
                    return Err(Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the identity provider's signing keys cannot be fetched right now; retry later",
                    )
                    .retry_after(retry_after_seconds)
                    .close_connection());
                }
            },
        };
        self.metrics.request_rejected(&self.name, "unauthorized");
        let challenge = match &why {
            None => "Bearer realm=\"entity-bridge\"".to_owned(),
            Some(description) => format!(
                "Bearer realm=\"entity-bridge\", error=\"invalid_token\", error_description=\"{description}\""
            ),
        };
        let problem = Problem::new(
            StatusCode::UNAUTHORIZED,
            why.unwrap_or_else(|| {
                "a valid `Authorization: Bearer <token>` header is required".to_owned()
            }),
        )
        .close_connection();
        Err(match header::HeaderValue::from_str(&challenge) {
            Ok(value) => problem.header(header::WWW_AUTHENTICATE, value),
            Err(_) => problem,
        })
    }
}
