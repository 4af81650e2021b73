//! One event by its key: `GET <path>(<sequence>)`, an OData single entity, read and rendered
//! under the log's read limits ([`super::Reads`]).

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::{parse_query, query_page, query_problem, render_event, Replay, ReplayQuery};
use crate::http::problem::Problem;

impl Replay {
    /// `GET <path>(<sequence>)`: one event by its key (the log position), `$select` allowed.
    pub(super) async fn serve_entity(
        self: &std::sync::Arc<Self>,
        headers: &HeaderMap,
        key: &str,
        query: Option<&str>,
    ) -> Result<Response, Problem> {
        let no_metadata = self.check(headers)?;
        let options = parse_query(query).map_err(query_problem)?;
        if options.filter.is_some() || options.top.is_some() || options.skip > 0 || options.count {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "only `$select` applies to a single event",
            ));
        }
        let position = key
            .strip_suffix(')')
            .and_then(|k| k.parse::<i64>().ok())
            .filter(|k| *k > 0)
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::NOT_FOUND,
                    "the key must be an EntityEventSequence, e.g. /EntityEvent(1101)",
                )
            })?;
        let q = ReplayQuery {
            after: position - 1,
            until: position,
            top: Some(1),
            select: options.select,
            ..ReplayQuery::default()
        };
        let me = self.clone();
        let body = (self.reads)
            .run(move |conn| {
                let page = query_page(conn, &q, me.page_limits(&q))?;
                Ok(page.events.first().map(|event| {
                    let mut rendered = Vec::with_capacity(event.payload.len() + 128);
                    let url = me.record_url(event);
                    render_event(&mut rendered, event, q.select.as_deref(), url.as_deref());
                    let mut body = Vec::with_capacity(rendered.len() + 64);
                    body.push(b'{');
                    if !no_metadata {
                        body.extend_from_slice(
                            b"\"@odata.context\":\"$metadata#EntityEvent/$entity\"",
                        );
                        if rendered.len() > 2 {
                            body.push(b',');
                        }
                    }
                    body.extend_from_slice(&rendered[1..]);
                    body
                }))
            })
            .await?;
        let Some(body) = body else {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                format!("no event {position} in this log (never written, or removed by retention)"),
            ));
        };
        self.metrics.replay_events(&self.connector, 1);
        Ok(crate::embedded::metadata::odata_json(body, no_metadata))
    }
}
