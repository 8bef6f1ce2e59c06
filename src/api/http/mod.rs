//! The client API over HTTP/JSON, for programs that cannot speak tarpc.
//!
//! tarpc's envelope is its own serde types in bincode: reachable from
//! Rust, and from little else. The HTTP port serves the same API to any
//! language with an HTTP client and an ed25519 library: a transaction
//! travels as its canonical bytes and signature in hex (or base64), the
//! same bytes `docs/formats.md` defines, so the node verifies exactly what
//! the player signed; everything else is plain JSON (`docs/http.md`, and
//! `docs/openapi.json` for tools).
//!
//! There is one implementation behind both ports. Every route decodes its
//! request, then calls the [`Garrison`] method of the same
//! [`ApiService`] the tarpc port calls, with a service made for its TCP
//! connection ([`ApiService::for_connection`]): the ingress checks, the
//! per-connection and per-player rate limits, the event-poll limits and
//! the idle timeout are the tarpc port's own, and so are the errors, which
//! [`json::error`] renders with an HTTP status. What is HTTP's alone is
//! small: the body limit ([`MAX_HTTP_BODY_BYTES`]), the bearer token, the
//! query strings, and Server-Sent Events ([`events`]), whose ids are
//! cursors so that a reconnecting `EventSource` resumes exactly.
//!
//! A handler that panics answers 500 instead of taking its connection
//! down (a bug must not turn into a retry storm).

pub mod events;
pub mod json;

use std::panic::AssertUnwindSafe;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put, MethodRouter};
use axum::Router;
use base64::Engine as _;
use futures::FutureExt as _;
use garrison_client::api::{ApiError, AuditQuery, Garrison, ReadMode, API_VERSION};
use garrison_client::events::Cursor;
use garrison_client::token::{Challenge, SessionToken};
use garrison_client::tx::{PlayerKey, SignedTransaction};
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tarpc::context;

use crate::api::service::ApiService;

/// Largest request body: a hex-encoded transaction of the largest size,
/// its signature and the JSON around them fit.
pub const MAX_HTTP_BODY_BYTES: usize = 64 * 1024;

/// Default and most entries of one audit read.
const DEFAULT_AUDIT_ENTRIES: u32 = 100;

/// An error on its way out: the API's error with its HTTP status.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(json::status_code(&self.0)).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = (status, axum::Json(json::error(&self.0))).into_response();
        if let ApiError::RateLimited { retry_after_ms, .. } = &self.0 {
            let seconds = retry_after_ms.div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// A request error with a status of HTTP's own (404, 405, 413...).
fn http_refusal(status: StatusCode, why: String) -> Response {
    let mut body = json::error(&ApiError::InvalidRequest(why));
    body["error"]["status"] = status.as_u16().into();
    (status, axum::Json(body)).into_response()
}

type Reply = Result<axum::Json<Json>, HttpError>;

fn invalid(why: impl Into<String>) -> HttpError {
    HttpError(ApiError::InvalidRequest(why.into()))
}

/// Every route: method, path and handler. The router and the route list
/// that `tests/http.rs` compares with `docs/openapi.json` both come from it.
fn table() -> Vec<(&'static str, &'static str, MethodRouter<ApiService>)> {
    vec![
        ("POST", "/v1/transactions", post(submit)),
        ("POST", "/v1/challenge", post(challenge)),
        ("POST", "/v1/login", post(login)),
        ("GET", "/v1/token", get(token)),
        ("GET", "/v1/locations", get(locations)),
        ("GET", "/v1/locations/{location}", get(location)),
        (
            "GET",
            "/v1/locations/{location}/entities/{*key}",
            get(entity),
        ),
        ("GET", "/v1/locations/{location}/audit", get(audit)),
        (
            "GET",
            "/v1/locations/{location}/consumers/{consumer}",
            get(load_cursor),
        ),
        (
            "PUT",
            "/v1/locations/{location}/consumers/{consumer}",
            put(save_cursor),
        ),
        (
            "GET",
            "/v1/locations/{location}/players/{player}/next_sequence",
            get(next_sequence),
        ),
        ("GET", "/v1/locations/{location}/rules", get(location_rules)),
        (
            "GET",
            "/v1/locations/{location}/plugins",
            get(location_plugins),
        ),
        ("GET", "/v1/status", get(status)),
        ("GET", "/v1/consistency", get(consistency)),
        ("GET", "/v1/rules", get(rules)),
        ("GET", "/v1/plugins", get(plugins)),
        ("GET", "/v1/plugins/logs", get(plugin_logs)),
        ("GET", "/v1/events", get(events::poll)),
        ("GET", "/v1/events/stream", get(events::stream)),
    ]
}

/// Every route the HTTP port serves, as (method, path).
pub fn routes() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The router of the HTTP port, before it is given a connection's service.
pub fn router() -> Router<ApiService> {
    let mut by_path: Vec<(&'static str, MethodRouter<ApiService>)> = Vec::new();
    for (_, path, handler) in table() {
        match by_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, routes)) => *routes = std::mem::take(routes).merge(handler),
            None => by_path.push((path, handler)),
        }
    }
    let mut router = Router::new();
    for (path, routes) in by_path {
        router = router.route(path, routes);
    }
    router
        .fallback(|| async { http_refusal(StatusCode::NOT_FOUND, "no such route".into()) })
        .method_not_allowed_fallback(|| async {
            http_refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_HTTP_BODY_BYTES))
}

/// Serves one request with `router`, answering 500 if a handler panics.
pub async fn call(router: Router, request: Request<hyper::body::Incoming>) -> Response {
    use tower::ServiceExt as _;
    let request = request.map(Body::new);
    match AssertUnwindSafe(router.oneshot(request))
        .catch_unwind()
        .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => {
            tracing::error!("an HTTP handler panicked");
            HttpError(ApiError::Internal("the request's handler failed".into())).into_response()
        }
    }
}

/// The query string's pairs, in order (a key may repeat).
pub fn query_pairs(query: &Option<String>) -> Vec<(String, String)> {
    query
        .as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn query_one<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// An unsigned integer parameter, or its default.
pub fn query_u64(pairs: &[(String, String)], key: &str, default: u64) -> Result<u64, HttpError> {
    match query_one(pairs, key) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| invalid(format!("parameter {key}={v:?} is not an unsigned integer"))),
    }
}

/// `consistency=linearizable` (default) or `consistency=stale&min_index=N`.
pub fn read_mode(pairs: &[(String, String)]) -> Result<ReadMode, HttpError> {
    match query_one(pairs, "consistency") {
        None | Some("linearizable") => Ok(ReadMode::Linearizable),
        Some("stale") => Ok(ReadMode::Stale {
            min_index: query_u64(pairs, "min_index", 0)?,
        }),
        Some(other) => Err(invalid(format!(
            "consistency={other:?}: use linearizable or stale"
        ))),
    }
}

/// Bytes in hex.
pub fn hex_bytes(what: &str, text: &str) -> Result<Vec<u8>, HttpError> {
    hex::decode(text).map_err(|e| invalid(format!("{what} is not hex: {e}")))
}

/// A public key: 64 hex digits.
pub fn player_key(what: &str, text: &str) -> Result<PlayerKey, HttpError> {
    hex_bytes(what, text)?.try_into().map_err(|_| {
        invalid(format!(
            "{what} is not 64 hex digits (a 32-byte public key)"
        ))
    })
}

/// The session token of `Authorization: Bearer HEX.HEX`.
pub fn bearer(headers: &HeaderMap) -> Result<SessionToken, HttpError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(HttpError(ApiError::Token(
            garrison_client::token::TokenError::Missing,
        )));
    };
    let malformed = |why: &str| {
        HttpError(ApiError::Token(
            garrison_client::token::TokenError::Malformed(format!(
                "the Authorization header {why}; send `Bearer TOKEN` as /v1/login returned it"
            )),
        ))
    };
    let text = value.to_str().map_err(|_| malformed("is not text"))?;
    let token = text
        .strip_prefix("Bearer ")
        .ok_or_else(|| malformed("is not a bearer token"))?;
    let (claims, signature) = token
        .trim()
        .split_once('.')
        .ok_or_else(|| malformed("holds no '.'"))?;
    let (Ok(claims), Ok(signature)) = (hex::decode(claims), hex::decode(signature)) else {
        return Err(malformed("is not HEX.HEX"));
    };
    Ok(SessionToken { claims, signature })
}

/// A token as the HTTP port writes it.
pub fn token_text(t: &SessionToken) -> String {
    format!("{}.{}", hex::encode(&t.claims), hex::encode(&t.signature))
}

/// A JSON body of type `T`, or what is wrong with it.
#[allow(clippy::result_large_err)] // the refusal, built once per refused request
pub fn body_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Response> {
    let bytes = body.map_err(|e| http_refusal(e.status(), e.body_text()))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        HttpError(ApiError::InvalidRequest(format!(
            "the body is not the JSON this route takes: {e}"
        )))
        .into_response()
    })
}

fn ctx() -> context::Context {
    context::current()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    transaction: String,
    signature: String,
    #[serde(default)]
    encoding: Option<String>,
}

async fn submit(
    State(service): State<ApiService>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body: SubmitBody = match body_json(body) {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let decode = |what: &str, text: &str| -> Result<Vec<u8>, HttpError> {
        match body.encoding.as_deref() {
            None | Some("hex") => hex_bytes(what, text),
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| invalid(format!("{what} is not base64: {e}"))),
            Some(other) => Err(invalid(format!("encoding {other:?}: use hex or base64"))),
        }
    };
    let signed = match (
        decode("transaction", &body.transaction),
        decode("signature", &body.signature),
    ) {
        (Ok(transaction), Ok(signature)) => SignedTransaction {
            transaction,
            signature,
        },
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    match service.submit(ctx(), API_VERSION, signed).await {
        Ok(receipt) => axum::Json(json::receipt(&receipt)).into_response(),
        Err(e) => HttpError(e).into_response(),
    }
}

async fn challenge(State(service): State<ApiService>) -> Reply {
    let c = service.challenge(ctx(), API_VERSION).await?;
    Ok(axum::Json(challenge_json(&c)))
}

fn challenge_json(c: &Challenge) -> Json {
    json!({"body": hex::encode(&c.body), "signature": hex::encode(&c.signature)})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChallengeBody {
    body: String,
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    player: String,
    challenge: ChallengeBody,
    answer: String,
}

async fn login(State(service): State<ApiService>, body: Result<Bytes, BytesRejection>) -> Response {
    let body: LoginBody = match body_json(body) {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let login = async {
        let player = player_key("player", &body.player)?;
        let challenge = Challenge {
            body: hex_bytes("challenge.body", &body.challenge.body)?,
            signature: hex_bytes("challenge.signature", &body.challenge.signature)?,
        };
        let answer = hex_bytes("answer", &body.answer)?;
        let token = service
            .clone()
            .login(ctx(), API_VERSION, player, challenge, answer)
            .await?;
        let claims = service
            .verify_token(ctx(), API_VERSION, token.clone())
            .await?;
        Ok::<_, HttpError>(json!({"token": token_text(&token), "claims": json::claims(&claims)}))
    };
    match login.await {
        Ok(reply) => axum::Json(reply).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn token(State(service): State<ApiService>, headers: HeaderMap) -> Reply {
    let claims = service
        .verify_token(ctx(), API_VERSION, bearer(&headers)?)
        .await?;
    Ok(axum::Json(json::claims(&claims)))
}

async fn locations(State(service): State<ApiService>) -> Reply {
    let list = service.locations(ctx(), API_VERSION).await?;
    Ok(axum::Json(list.iter().map(json::location_info).collect()))
}

async fn location(
    State(service): State<ApiService>,
    Path(location): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Reply {
    let pairs = query_pairs(&query);
    let max = query_u64(
        &pairs,
        "max_entities",
        u64::from(garrison_client::api::MAX_ENTITIES_PER_READ),
    )?;
    let max =
        u32::try_from(max).map_err(|_| invalid(format!("max_entities {max} is too large")))?;
    let read = service
        .get_location(
            ctx(),
            API_VERSION,
            bearer(&headers)?,
            location,
            read_mode(&pairs)?,
            max,
        )
        .await?;
    let entities: Vec<Json> = read
        .entities
        .iter()
        .map(|(key, e)| json::entity(key, Some(e)))
        .collect();
    Ok(axum::Json(
        json!({"index": read.index, "entities": entities, "truncated": read.truncated}),
    ))
}

async fn entity(
    State(service): State<ApiService>,
    Path((location, key)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Reply {
    let pairs = query_pairs(&query);
    let read = service
        .get_entity(
            ctx(),
            API_VERSION,
            bearer(&headers)?,
            location,
            key.clone(),
            read_mode(&pairs)?,
        )
        .await?;
    Ok(axum::Json(
        json!({"index": read.index, "entity": json::entity(&key, read.entity.as_ref())}),
    ))
}

async fn audit(
    State(service): State<ApiService>,
    Path(location): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Reply {
    let pairs = query_pairs(&query);
    let player = query_one(&pairs, "player")
        .map(|p| player_key("player", p))
        .transpose()?;
    let max = query_u64(&pairs, "max_entries", u64::from(DEFAULT_AUDIT_ENTRIES))?;
    let query = AuditQuery {
        location,
        player,
        from_index: query_u64(&pairs, "from_index", 0)?,
        max_entries: u32::try_from(max)
            .map_err(|_| invalid(format!("max_entries {max} is too large")))?,
    };
    let read = service
        .audit(ctx(), API_VERSION, bearer(&headers)?, query)
        .await?;
    let entries: Vec<Json> = read.entries.iter().map(json::audit_entry).collect();
    Ok(axum::Json(json!({
        "index": read.index, "entries": entries, "more": read.more,
        "rolled_off_through": read.rolled_off_through,
    })))
}

async fn load_cursor(
    State(service): State<ApiService>,
    Path((location, consumer)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Reply {
    let pairs = query_pairs(&query);
    let cursor = service
        .load_cursor(
            ctx(),
            API_VERSION,
            bearer(&headers)?,
            location,
            consumer,
            read_mode(&pairs)?,
        )
        .await?;
    Ok(axum::Json(json!({"cursor": cursor.map(|c| c.to_string())})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorBody {
    cursor: String,
}

async fn save_cursor(
    State(service): State<ApiService>,
    Path((location, consumer)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body: CursorBody = match body_json(body) {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let save = async {
        let cursor: Cursor = body
            .cursor
            .parse()
            .map_err(|e| invalid(format!("cursor {:?}: {e}", body.cursor)))?;
        let index = service
            .save_cursor(
                ctx(),
                API_VERSION,
                bearer(&headers)?,
                location,
                consumer,
                cursor,
            )
            .await?;
        Ok::<_, HttpError>(json!({ "index": index }))
    };
    match save.await {
        Ok(reply) => axum::Json(reply).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn next_sequence(
    State(service): State<ApiService>,
    Path((location, player)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Reply {
    let pairs = query_pairs(&query);
    let next = service
        .next_sequence(
            ctx(),
            API_VERSION,
            location,
            player_key("player", &player)?,
            read_mode(&pairs)?,
        )
        .await?;
    Ok(axum::Json(json!({ "next_sequence": next })))
}

async fn location_rules(
    State(service): State<ApiService>,
    Path(location): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let mode = read_mode(&query_pairs(&query))?;
    let rules = service
        .location_rules(ctx(), API_VERSION, location, mode)
        .await?;
    Ok(axum::Json(json::location_rules(&rules)))
}

async fn location_plugins(
    State(service): State<ApiService>,
    Path(location): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let mode = read_mode(&query_pairs(&query))?;
    let plugins = service
        .location_plugins(ctx(), API_VERSION, location, mode)
        .await?;
    Ok(axum::Json(json::location_plugins(&plugins)))
}

async fn status(State(service): State<ApiService>) -> Reply {
    let status = service.status(ctx(), API_VERSION).await?;
    Ok(axum::Json(json::status(&status)))
}

async fn consistency(State(service): State<ApiService>, RawQuery(query): RawQuery) -> Reply {
    let pairs = query_pairs(&query);
    let optional = |key: &str| -> Result<Option<u64>, HttpError> {
        query_one(&pairs, key)
            .map(|_| query_u64(&pairs, key, 0))
            .transpose()
    };
    let reports = service
        .consistency(ctx(), API_VERSION, optional("group")?, optional("at")?)
        .await?;
    Ok(axum::Json(reports.iter().map(json::consistency).collect()))
}

async fn rules(State(service): State<ApiService>, RawQuery(query): RawQuery) -> Reply {
    let mode = read_mode(&query_pairs(&query))?;
    let rules = service.rules(ctx(), API_VERSION, mode).await?;
    Ok(axum::Json(json::rules(&rules)))
}

async fn plugins(State(service): State<ApiService>, RawQuery(query): RawQuery) -> Reply {
    let mode = read_mode(&query_pairs(&query))?;
    let plugins = service.plugins(ctx(), API_VERSION, mode).await?;
    Ok(axum::Json(json::plugins(&plugins)))
}

async fn plugin_logs(State(service): State<ApiService>, RawQuery(query): RawQuery) -> Reply {
    let pairs = query_pairs(&query);
    let plugin = query_one(&pairs, "plugin").map(str::to_string);
    let after = query_u64(&pairs, "after", 0)?;
    let max = query_u64(&pairs, "max", 100)?.min(u64::from(u32::MAX)) as u32;
    let lines = service
        .plugin_logs(ctx(), API_VERSION, plugin, after, max)
        .await?;
    Ok(axum::Json(lines.iter().map(json::log_line).collect()))
}
