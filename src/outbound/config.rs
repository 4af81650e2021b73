//! Configuration of an outbound HTTP peer: how the bridge authenticates to it and how politely
//! it calls it. Used by the webhook sink's `[sink.auth]` and `[sink.limits]` tables.

use serde::{Deserialize, Serialize};

use crate::secret::SecretRef;

/// The bearer token's origin, chosen by `type`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// A fixed, long-lived token handed over by the consumer.
    Token {
        /// The token, by reference (`{ env = "…" }` or `{ file = "…" }`).
        token: SecretRef,
    },
    /// OAuth2 client credentials: the bridge fetches and caches tokens from `token_url`.
    Oauth2 {
        /// The consumer's token endpoint (AccessTokenURL).
        token_url: String,
        /// The client id (ClientId).
        client_id: String,
        /// The client secret (ClientSecret), by reference.
        client_secret: SecretRef,
        /// OAuth2 grant type (GrantType); only `client_credentials` applies to a producer.
        #[serde(default = "default_grant_type")]
        grant_type: String,
        /// Optional space-separated scopes requested with the token.
        #[serde(default)]
        scope: Option<String>,
        /// Optional `audience` parameter (Auth0, Okta and similar require one).
        #[serde(default)]
        audience: Option<String>,
        /// How the client authenticates to the token endpoint: `basic` (HTTP Basic, RFC 6749's
        /// default) or `request_body` (client_id / client_secret form fields).
        #[serde(default)]
        client_auth: ClientAuth,
    },
}

/// Client authentication at the OAuth2 token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `Authorization: Basic` with client id and secret.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    RequestBody,
}

/// Rate and concurrency limits of one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most POSTs per second (spaced evenly to the millisecond: above 1000/s, what one
    /// millisecond allows may go at once); unset = unlimited.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Most events per second summed over POSTs (a full batch may go at once); unset = unlimited.
    #[serde(default)]
    pub events_per_second: Option<f64>,
    /// Most POSTs in flight at once across all partitions.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            requests_per_second: None,
            events_per_second: None,
            max_concurrent_requests: default_max_concurrent_requests(),
        }
    }
}

fn default_grant_type() -> String {
    "client_credentials".into()
}
fn default_max_concurrent_requests() -> usize {
    4
}

/// Whether `host` (as in a URL, IPv6 in brackets) names this machine: plain HTTP to it never
/// crosses a network.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let d = host.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
    }
}

/// Checks an outbound URL. Never echoes it: it may hold credentials.
pub fn check_url(key: &str, url: &str, allow_insecure_http: bool) -> Result<(), (String, String)> {
    let u = match reqwest::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return Err((key.into(), format!("is not a URL: {e}"))),
    };
    let Some(host) = u.host_str() else {
        return Err((key.into(), "must be an http:// or https:// URL".into()));
    };
    if !u.username().is_empty() || u.password().is_some() {
        return Err((
            key.into(),
            "must not carry credentials (user:password@); put them in `auth`".into(),
        ));
    }
    match u.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback(host) => Ok(()),
        "http" => Err((
            key.into(),
            "plain http:// sends the bearer token and client secret in clear text: use \
             https://, or set allow_insecure_http = true for a private network"
                .into(),
        )),
        _ => Err((key.into(), "must be an http:// or https:// URL".into())),
    }
}
