//! Events as JSON: one object per event, the form `garrison watch --json`
//! prints and plugins receive (`docs/formats.md`, "garrison watch
//! --json"). Objects are maps with sorted keys, so the text of an event is
//! the same on every node.

use garrison_client::events::{EventBody, StreamEvent};
use garrison_client::Value;

/// A field's value: a number, a string, or `{"bytes": HEX}`.
pub fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Int(i) => serde_json::json!(i),
        Value::Str(s) => serde_json::json!(s),
        Value::Bytes(b) => serde_json::json!({ "bytes": hex::encode(b) }),
    }
}

fn json_fields<'a>(fields: impl Iterator<Item = (&'a String, &'a Value)>) -> serde_json::Value {
    serde_json::Value::Object(fields.map(|(k, v)| (k.clone(), json_value(v))).collect())
}

/// An entity as one JSON object, as a plugin's `read` gets it: its key,
/// owner (hex), version and fields.
pub fn entity_json(key: &str, e: &garrison_client::Entity) -> serde_json::Value {
    serde_json::json!({
        "key": key,
        "owner": hex::encode(e.owner),
        "version": e.version,
        "fields": json_fields(e.fields.iter()),
    })
}

/// The event as one JSON object (`docs/formats.md`, "garrison watch --json").
pub fn event_json(e: &StreamEvent) -> serde_json::Value {
    let mut object = serde_json::json!({
        "id": e.id.to_string(),
        "location": e.id.location,
        "index": e.id.index,
        "position": e.id.position,
        "log_time_ms": e.log_time_ms,
        "player": e.player.map(hex::encode),
        "type": e.body.event_type().name(),
    });
    let extra = match &e.body {
        EventBody::Created {
            entity,
            owner,
            version,
            fields,
        } => serde_json::json!({
            "entity": entity, "owner": hex::encode(owner), "version": version,
            "fields": json_fields(fields.iter()),
        }),
        EventBody::Changed {
            entity,
            owner,
            version,
            changes,
        } => serde_json::json!({
            "entity": entity, "owner": hex::encode(owner), "version": version,
            "changes": changes.iter().map(|c| serde_json::json!({
                "field": c.field,
                "old": c.old.as_ref().map(json_value),
                "new": json_value(&c.new),
            })).collect::<Vec<_>>(),
        }),
        EventBody::Deleted {
            entity,
            owner,
            fields,
        } => serde_json::json!({
            "entity": entity, "owner": hex::encode(owner),
            "fields": json_fields(fields.iter()),
        }),
        EventBody::Emitted { kind, fields } => serde_json::json!({
            "kind": kind, "fields": json_fields(fields.iter().map(|(k, v)| (k, v))),
        }),
        EventBody::Committed { sequence } => serde_json::json!({ "sequence": sequence }),
        EventBody::Rejected {
            sequence,
            op,
            reason,
        } => serde_json::json!({
            "sequence": sequence, "op": op, "reason": reason.to_string(),
        }),
        EventBody::Matched {
            rule,
            version,
            kind,
            events,
            window,
            fields,
            depth,
        } => serde_json::json!({
            "rule": rule, "version": version, "kind": kind,
            "events": events.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "window": window.map(|(start, end)| serde_json::json!([start, end])),
            "fields": json_fields(fields.iter().map(|(k, v)| (k, v))),
            "depth": depth,
        }),
        EventBody::Derived {
            plugin,
            version,
            cause,
            kind,
            fields,
        } => serde_json::json!({
            "plugin": plugin, "version": version, "cause": cause, "kind": kind,
            "fields": json_fields(fields.iter().map(|(k, v)| (k, v))),
        }),
        EventBody::PluginFailed {
            plugin,
            version,
            cause,
            failure,
            suspended,
        } => serde_json::json!({
            "plugin": plugin, "version": version, "cause": cause,
            "failure": failure.to_string(), "suspended": suspended,
        }),
        EventBody::Delivered {
            plugin,
            version,
            source,
            seq,
            refused,
        } => serde_json::json!({
            "plugin": plugin, "version": version, "source": source.to_string(), "seq": seq,
            "refused": refused.as_ref().map(|f| f.to_string()),
        }),
    };
    if let (Some(o), serde_json::Value::Object(extra)) = (object.as_object_mut(), extra) {
        o.extend(extra);
    }
    object
}
