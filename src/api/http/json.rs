//! The API's types as JSON (`docs/http.md`): keys, hashes and bytes in hex,
//! field values as `garrison watch --json` prints them, enums by a
//! snake-case `code`. Every function here is a pure view of a value the
//! tarpc port sends as it is.

use garrison_client::api::{
    ApiError, AuditEntry, GroupConsistency, LocationInfo, NodeStatus, Outcome, Rejection, TxReceipt,
};
use garrison_client::events::Cursor;
use garrison_client::plugins::{LocationPlugins, PluginLogLine, PluginSet};
use garrison_client::rules::{LocationRules, RuleSet};
use garrison_client::token::{TokenClaims, TokenError};
use garrison_client::tx::TxError;
use garrison_client::Entity;
use serde_json::{json, Map, Value as Json};

use crate::events::json::{entity_json, json_value};

/// `CamelCase` → `camel_case`.
fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// An externally tagged enum's serde JSON as `{"code": variant, fields...}`:
/// a unit variant has no fields, a newtype variant's value is `detail`.
fn coded<T: serde::Serialize>(value: &T) -> Map<String, Json> {
    let mut out = Map::new();
    match serde_json::to_value(value) {
        Ok(Json::String(variant)) => {
            out.insert("code".into(), snake(&variant).into());
        }
        Ok(Json::Object(tagged)) if tagged.len() == 1 => {
            let (variant, inner) = tagged.into_iter().next().expect("one entry");
            out.insert("code".into(), snake(&variant).into());
            match inner {
                Json::Object(fields) => out.extend(fields),
                other => {
                    out.insert("detail".into(), other);
                }
            }
        }
        _ => {
            out.insert("code".into(), "unknown".into());
        }
    }
    out
}

/// A rejection: its code, its text and its fields (values as field values).
pub fn rejection(r: &Rejection) -> Json {
    let mut out = coded(r);
    if let Rejection::FieldMismatch {
        expected, actual, ..
    } = r
    {
        out.insert("expected".into(), expected.as_ref().map(json_value).into());
        out.insert("actual".into(), actual.as_ref().map(json_value).into());
    }
    out.insert("message".into(), r.to_string().into());
    Json::Object(out)
}

/// The outcome's fields of a receipt or an audit entry.
fn outcome(o: &Outcome, out: &mut Map<String, Json>) {
    match o {
        Outcome::Committed { events, emitted } => {
            out.insert("outcome".into(), "committed".into());
            let events: Vec<Json> = events
                .iter()
                .map(|e| json!({"entity": e.entity, "kind": snake(&format!("{:?}", e.kind))}))
                .collect();
            out.insert("events".into(), events.into());
            out.insert("emitted".into(), json!(emitted));
        }
        Outcome::Rejected { op, reason } => {
            out.insert("outcome".into(), "rejected".into());
            out.insert("op".into(), json!(op));
            out.insert("rejection".into(), rejection(reason));
        }
    }
}

/// A transaction's receipt.
pub fn receipt(r: &TxReceipt) -> Json {
    let mut out = Map::new();
    out.insert("location".into(), r.location.clone().into());
    out.insert("index".into(), r.index.into());
    out.insert("sequence".into(), r.sequence.into());
    out.insert("duplicate".into(), r.duplicate.into());
    outcome(&r.outcome, &mut out);
    Json::Object(out)
}

/// An entity, or null.
pub fn entity(key: &str, e: Option<&Entity>) -> Json {
    e.map(|e| entity_json(key, e)).unwrap_or(Json::Null)
}

/// One audit trail entry.
pub fn audit_entry(e: &AuditEntry) -> Json {
    let mut receipt = Map::new();
    outcome(&e.outcome, &mut receipt);
    json!({
        "index": e.index,
        "log_time_ms": e.log_time_ms,
        "player": hex::encode(e.player),
        "sequence": e.sequence,
        "digest": hex::encode(e.digest),
        "transaction": e.transaction.as_ref().map(|t| json!({
            "transaction": hex::encode(&t.transaction),
            "signature": hex::encode(&t.signature),
        })),
        "receipt": receipt,
    })
}

/// A location and its replicas.
pub fn location_info(l: &LocationInfo) -> Json {
    json!({"name": l.name, "group": l.group, "replicas": l.replicas})
}

/// A node's status; `http_addrs` are the members' HTTP addresses.
pub fn status(s: &NodeStatus) -> Json {
    let groups: Vec<Json> = s
        .groups
        .iter()
        .map(|g| {
            json!({
                "group": g.group, "location": g.location, "leader": g.leader, "term": g.term,
                "last_log_index": g.last_log_index, "applied_index": g.applied_index,
                "voters": g.voters, "quiet": g.quiet,
            })
        })
        .collect();
    json!({
        "cluster": s.cluster,
        "node": s.node,
        "api_addrs": s.api_addrs,
        "http_addrs": s.http_addrs,
        "groups": groups,
        "cache": {
            "hits": s.cache.hits, "misses": s.cache.misses, "entries": s.cache.entries,
            "bytes": s.cache.bytes, "capacity_bytes": s.cache.capacity_bytes,
        },
        "events": {
            "observers": s.events.observers, "waiting_polls": s.events.waiting_polls,
            "delivered": s.events.delivered,
        },
    })
}

/// One replica's consistency report.
pub fn consistency(c: &GroupConsistency) -> Json {
    json!({
        "group": c.group, "location": c.location, "applied_index": c.applied_index,
        "index": c.index, "chain": c.chain.map(hex::encode),
        "state_digest": hex::encode(c.state_digest),
    })
}

/// A session token's claims.
pub fn claims(c: &TokenClaims) -> Json {
    json!({
        "cluster": c.cluster, "player": hex::encode(c.player),
        "issued_at_ms": c.issued_at_ms, "issued_at_index": c.issued_at_index,
        "expires_at_ms": c.expires_at_ms,
    })
}

/// The cluster's rules.
pub fn rules(r: &RuleSet) -> Json {
    let rules: Vec<Json> = r
        .rules
        .iter()
        .map(|(name, rule)| json!({"name": name, "version": rule.version, "text": rule.text}))
        .collect();
    json!({"version": r.version, "rules": rules})
}

/// The rules at work in one location.
pub fn location_rules(r: &LocationRules) -> Json {
    json!({
        "index": r.index, "version": r.version,
        "rules": serde_json::to_value(&r.rules).unwrap_or_default(),
        "dropped_matches": r.dropped_matches, "next_deadline_ms": r.next_deadline_ms,
    })
}

/// The cluster's plugins, without their modules.
pub fn plugins(p: &PluginSet) -> Json {
    let plugins: Vec<Json> = p
        .plugins
        .iter()
        .map(|(name, d)| {
            json!({
                "name": name, "version": d.version, "hash": hex::encode(d.spec.hash),
                "module_bytes": d.spec.module.len(), "locations": d.spec.locations,
                "on": d.spec.on, "role": d.spec.role, "fuel": d.spec.fuel,
                "suspend_after": d.spec.suspend_after,
            })
        })
        .collect();
    json!({"version": p.version, "engine": p.engine, "plugins": plugins})
}

/// The plugins at work in one location.
pub fn location_plugins(p: &LocationPlugins) -> Json {
    let plugins: Vec<Json> = p
        .plugins
        .iter()
        .map(|s| {
            json!({
                "name": s.name, "version": s.version, "hash": hex::encode(s.hash),
                "record": serde_json::to_value(&s.record).unwrap_or_default(),
            })
        })
        .collect();
    json!({
        "index": p.index, "version": p.version, "engine": p.engine,
        "plugins": plugins, "outbox": p.outbox,
    })
}

/// A node's plugin log line.
pub fn log_line(l: &PluginLogLine) -> Json {
    json!({"seq": l.seq, "plugin": l.plugin, "event": l.event.to_string(), "line": l.line})
}

fn cursor(c: &Cursor) -> Json {
    c.to_string().into()
}

/// The HTTP status of an error.
pub fn status_code(e: &ApiError) -> u16 {
    match e {
        ApiError::Transaction(TxError::TooLarge { .. }) => 413,
        ApiError::Version { .. }
        | ApiError::Transaction(_)
        | ApiError::WrongCluster { .. }
        | ApiError::InvalidRequest(_) => 400,
        ApiError::UnknownLocation(_) => 404,
        ApiError::Unavailable(_) => 503,
        ApiError::Timeout => 504,
        ApiError::Internal(_) => 500,
        ApiError::Token(_) => 401,
        ApiError::Forbidden(_) => 403,
        ApiError::EventsTrimmed { .. } => 410,
        ApiError::RateLimited { .. } => 429,
    }
}

/// An error's body: `{"error": {"kind", "code", "message", more...}}`.
pub fn error(e: &ApiError) -> Json {
    let mut out = coded(e);
    let kind = out.remove("code").unwrap_or_else(|| "internal".into());
    out.remove("detail");
    let code: Json = match e {
        ApiError::Transaction(t) => {
            let inner = coded(t);
            if let TxError::TooLarge { bytes, max } = t {
                out.insert("bytes".into(), (*bytes).into());
                out.insert("max".into(), (*max).into());
            }
            inner.get("code").cloned().unwrap_or_default()
        }
        ApiError::Token(t) => token_code(t).into(),
        ApiError::Forbidden(r) => {
            let r = rejection(r);
            let code = r["code"].clone();
            out.insert("rejection".into(), r);
            code
        }
        ApiError::UnknownLocation(location) => {
            out.insert("location".into(), location.clone().into());
            kind.clone()
        }
        ApiError::EventsTrimmed {
            after,
            oldest,
            resume_after,
            ..
        } => {
            out.insert("after".into(), cursor(after));
            out.insert("oldest".into(), oldest.as_ref().map(cursor).into());
            out.insert("resume_after".into(), cursor(resume_after));
            kind.clone()
        }
        _ => kind.clone(),
    };
    out.insert("kind".into(), kind);
    out.insert("code".into(), code);
    out.insert("message".into(), e.to_string().into());
    json!({ "error": out })
}

fn token_code(t: &TokenError) -> String {
    coded(t)
        .get("code")
        .and_then(|c| c.as_str())
        .unwrap_or("malformed")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_kind_and_code() {
        let e = ApiError::Transaction(TxError::BadSignature);
        assert_eq!(status_code(&e), 400);
        let body = error(&e);
        assert_eq!(body["error"]["kind"], "transaction");
        assert_eq!(body["error"]["code"], "bad_signature");
        let e = ApiError::RateLimited {
            what: "player_transactions_per_s".into(),
            retry_after_ms: 250,
        };
        let body = error(&e);
        assert_eq!(body["error"]["kind"], "rate_limited");
        assert_eq!(body["error"]["retry_after_ms"], 250);
        let e = ApiError::Token(TokenError::Missing);
        assert_eq!(error(&e)["error"]["code"], "missing");
        assert_eq!(status_code(&e), 401);
        let e = ApiError::Transaction(TxError::TooLarge { bytes: 20, max: 10 });
        assert_eq!(status_code(&e), 413);
        assert_eq!(error(&e)["error"]["max"], 10);
    }

    #[test]
    fn rejections_carry_their_fields() {
        let r = Rejection::VersionMismatch {
            entity: "unit/1".into(),
            expected: 7,
            actual: 41,
        };
        let j = rejection(&r);
        assert_eq!(j["code"], "version_mismatch");
        assert_eq!(j["actual"], 41);
        let r = Rejection::FieldMismatch {
            entity: "u".into(),
            field: "hp".into(),
            expected: Some(garrison_client::Value::Int(3)),
            actual: None,
        };
        let j = rejection(&r);
        assert_eq!(j["expected"], 3);
        assert!(j["actual"].is_null());
        assert_eq!(
            rejection(&Rejection::PolicyPending)["code"],
            "policy_pending"
        );
    }
}
