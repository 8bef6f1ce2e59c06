//! Events over HTTP: a long poll (`GET /v1/events`) and Server-Sent Events
//! (`GET /v1/events/stream`), both on `Garrison::read_events`.
//!
//! An SSE message's id is the set of cursors just after its event, one per
//! location (`alpha@12.3,bravo@9.0`): a browser's `EventSource` sends the
//! last one back as `Last-Event-ID` when it reconnects, to this node or
//! another, and the stream goes on after exactly that event. Within one
//! batch a location that has not had an event yet is given the cursor just
//! before its first one, so an id never lets a reconnect skip an event
//! that was not sent.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use garrison_client::api::{ApiError, Garrison, API_VERSION};
use garrison_client::events::{
    Cursor, EventBatch, EventFilter, EventQuery, EventType, StartAt, MAX_EVENT_WAIT_MS,
};
use garrison_client::token::SessionToken;
use serde_json::{json, Value as Json};

use super::{bearer, invalid, json as views, player_key, query_pairs, query_u64, HttpError};
use crate::api::service::ApiService;
use crate::events::json::event_json;

/// Default events per read.
const DEFAULT_MAX_EVENTS: u64 = 100;
/// How long each of a stream's reads waits for an event; a keep-alive
/// comment goes out as often.
const STREAM_WAIT: Duration = Duration::from_secs(15);

/// A cursor set as an SSE id and a `Last-Event-ID` carry it.
pub fn cursor_set_text(cursors: &BTreeMap<String, Cursor>) -> String {
    cursors
        .iter()
        .map(|(location, c)| format!("{location}@{c}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `LOCATION@CURSOR[,LOCATION@CURSOR...]`.
pub fn parse_cursor_set(text: &str) -> Result<BTreeMap<String, Cursor>, String> {
    let mut set = BTreeMap::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (location, cursor) = part
            .rsplit_once('@')
            .ok_or_else(|| format!("{part:?} is not LOCATION@INDEX.POSITION"))?;
        set.insert(location.to_string(), cursor.parse()?);
    }
    Ok(set)
}

/// The cursor just before `c`'s event.
fn just_before(c: Cursor) -> Cursor {
    if c.position > 0 {
        Cursor {
            index: c.index,
            position: c.position - 1,
        }
    } else {
        Cursor::end_of(c.index.saturating_sub(1))
    }
}

/// The event read the query string asks for; `resume` (from
/// `Last-Event-ID`) overrides its `after=` cursors.
pub fn event_query(
    pairs: &[(String, String)],
    resume: Option<BTreeMap<String, Cursor>>,
) -> Result<EventQuery, HttpError> {
    let mut after = BTreeMap::new();
    let mut filter = EventFilter::default();
    let mut locations = Vec::new();
    let mut default = StartAt::Oldest;
    for (key, value) in pairs {
        match key.as_str() {
            "location" => locations.push(value.clone()),
            "after" => after.extend(parse_cursor_set(value).map_err(invalid)?),
            "from" => {
                default = match value.as_str() {
                    "oldest" => StartAt::Oldest,
                    "latest" => StartAt::Latest,
                    other => return Err(invalid(format!("from={other:?}: use oldest or latest"))),
                }
            }
            "type" => filter
                .types
                .push(value.parse::<EventType>().map_err(invalid)?),
            "entity" => filter.entities.push(value.clone()),
            "emitted" => filter.emitted.push(value.clone()),
            "player" => filter.players.push(player_key("player", value)?),
            "max" | "wait_ms" | "linger_ms" => {}
            other => return Err(invalid(format!("unknown parameter {other:?}"))),
        }
    }
    after.extend(resume.unwrap_or_default());
    if let Some(stray) = after.keys().find(|l| !locations.contains(l)) {
        return Err(invalid(format!(
            "a cursor names {stray:?}, which is not one of the location= parameters"
        )));
    }
    let max = query_u64(pairs, "max", DEFAULT_MAX_EVENTS)?;
    Ok(EventQuery {
        locations: locations
            .into_iter()
            .map(|l| {
                let start = after
                    .get(&l)
                    .map_or(default.clone(), |c| StartAt::After(*c));
                (l, start)
            })
            .collect(),
        filter,
        max_events: u32::try_from(max).map_err(|_| invalid(format!("max {max} is too large")))?,
        wait_ms: query_u64(pairs, "wait_ms", 0)?,
        linger_ms: query_u64(pairs, "linger_ms", 0)?,
    })
}

async fn read(
    service: &ApiService,
    token: SessionToken,
    query: EventQuery,
) -> Result<EventBatch, ApiError> {
    let packed = service
        .clone()
        .read_events(tarpc::context::current(), API_VERSION, token, query)
        .await?;
    packed.unpack().map_err(ApiError::Internal)
}

/// `GET /v1/events`: one long poll.
pub async fn poll(
    State(service): State<ApiService>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<axum::Json<Json>, HttpError> {
    let pairs = query_pairs(&query);
    let query = event_query(&pairs, None)?;
    let batch = read(&service, bearer(&headers)?, query).await?;
    let events: Vec<Json> = batch.events.iter().map(event_json).collect();
    let cursors: serde_json::Map<String, Json> = batch
        .cursors
        .iter()
        .map(|(l, c)| (l.clone(), c.to_string().into()))
        .collect();
    Ok(axum::Json(json!({"events": events, "cursors": cursors})))
}

/// `GET /v1/events/stream`: Server-Sent Events until the client leaves.
pub async fn stream(
    State(service): State<ApiService>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let start = async {
        let resume = match headers.get("last-event-id") {
            None => None,
            Some(v) => {
                let text = v
                    .to_str()
                    .map_err(|_| invalid("Last-Event-ID is not text"))?;
                Some(parse_cursor_set(text).map_err(|e| invalid(format!("Last-Event-ID: {e}")))?)
            }
        };
        let mut query = event_query(&query_pairs(&query), resume)?;
        query.wait_ms = STREAM_WAIT.as_millis() as u64;
        debug_assert!(query.wait_ms <= MAX_EVENT_WAIT_MS);
        let token = bearer(&headers)?;
        // The first read answers here, so that a refused stream is an
        // HTTP error rather than a 200 with an error inside.
        let first = read(&service, token.clone(), query.clone()).await?;
        Ok::<_, HttpError>((query, token, first))
    };
    let (query, token, first) = match start.await {
        Ok(started) => started,
        Err(e) => return e.into_response(),
    };
    let keep_alive = KeepAlive::new().interval(STREAM_WAIT).text("keep-alive");
    Sse::new(messages(service, token, query, first))
        .keep_alive(keep_alive)
        .into_response()
}

/// What a stream is at between reads.
struct Streaming {
    service: ApiService,
    token: SessionToken,
    query: EventQuery,
    /// The cursor of every location after the last message sent (absent:
    /// no cursor known yet).
    sent: BTreeMap<String, Cursor>,
    /// A batch read but not yet sent, or None to read the next.
    batch: Option<Result<EventBatch, ApiError>>,
    done: bool,
}

fn messages(
    service: ApiService,
    token: SessionToken,
    query: EventQuery,
    first: EventBatch,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let state = Streaming {
        service,
        token,
        sent: query
            .locations
            .iter()
            .filter_map(|(l, s)| match s {
                StartAt::After(c) => Some((l.clone(), *c)),
                _ => None,
            })
            .collect(),
        query,
        batch: Some(Ok(first)),
        done: false,
    };
    stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let batch = match s.batch.take() {
            Some(batch) => batch,
            None => read(&s.service, s.token.clone(), s.query.clone()).await,
        };
        let out = match batch {
            Ok(batch) => s.send(batch),
            Err(e) => {
                s.done = true;
                let body = views::error(&e);
                vec![SseEvent::default().event("error").data(body.to_string())]
            }
        };
        Some((stream::iter(out.into_iter().map(Ok)), s))
    })
    .flatten()
}

impl Streaming {
    /// The messages of one batch; moves the query past it.
    fn send(&mut self, batch: EventBatch) -> Vec<SseEvent> {
        for event in &batch.events {
            self.sent
                .entry(event.id.location.clone())
                .or_insert_with(|| just_before(event.id.cursor()));
        }
        let mut out = Vec::with_capacity(batch.events.len());
        for event in &batch.events {
            self.sent
                .insert(event.id.location.clone(), event.id.cursor());
            out.push(
                SseEvent::default()
                    .event("garrison")
                    .id(cursor_set_text(&self.sent))
                    .data(event_json(event).to_string()),
            );
        }
        // Past every event examined, for the next read (and, with the
        // next message, for its id).
        for (location, cursor) in &batch.cursors {
            self.sent.insert(location.clone(), *cursor);
        }
        for (location, start) in &mut self.query.locations {
            if let Some(c) = self.sent.get(location) {
                *start = StartAt::After(*c);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_sets_round_trip() {
        let text = "@cluster@3.end,alpha@12.3,bravo@9.0";
        let set = parse_cursor_set(text).unwrap();
        assert_eq!(
            set["alpha"],
            Cursor {
                index: 12,
                position: 3
            }
        );
        assert_eq!(cursor_set_text(&set), text);
        assert!(parse_cursor_set("alpha").is_err());
        assert!(parse_cursor_set("alpha@x").is_err());
    }

    #[test]
    fn just_before_is_the_previous_position() {
        let c = Cursor {
            index: 7,
            position: 0,
        };
        assert_eq!(just_before(c), Cursor::end_of(6));
        let c = Cursor {
            index: 7,
            position: 2,
        };
        assert_eq!(
            just_before(c),
            Cursor {
                index: 7,
                position: 1
            }
        );
    }

    #[test]
    fn queries_name_what_is_wrong() {
        let pairs = |q: &str| query_pairs(&Some(q.to_string()));
        let q = event_query(
            &pairs("location=a&location=b&after=a@3.1&type=emitted&max=5"),
            None,
        )
        .unwrap();
        assert_eq!(
            q.locations[0].1,
            StartAt::After(Cursor {
                index: 3,
                position: 1
            })
        );
        assert_eq!(q.locations[1].1, StartAt::Oldest);
        assert_eq!(q.max_events, 5);
        let resumed = event_query(
            &pairs("location=a&after=a@3.1"),
            Some(parse_cursor_set("a@9.0").unwrap()),
        )
        .unwrap();
        assert_eq!(
            resumed.locations[0].1,
            StartAt::After(Cursor {
                index: 9,
                position: 0
            })
        );
        for bad in [
            "location=a&type=nope",
            "location=a&after=b@1.0",
            "location=a&bogus=1",
            "location=a&max=x",
        ] {
            assert!(event_query(&pairs(bad), None).is_err(), "{bad}");
        }
    }
}
