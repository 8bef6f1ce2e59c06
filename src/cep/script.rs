//! Event scripts: a location's entries written by hand, to try rules on
//! (`garrison rules test`) and to pin down what the engine does (the
//! golden scripts under `tests/golden/cep/`).
//!
//! One entry per line, its events after its log time; `+` continues the
//! entry above with another event; `#` starts a comment:
//!
//! ```text
//! 1000 emitted attack target="hill" damage=5 by red
//! +    emitted attack target="fort" damage=1 by red
//! 1500 changed unit/7 hp=10->7 by blue
//! 1800 created unit/9 hp=10 by blue
//! 2000 committed by blue
//! 4000 tick
//! ```
//!
//! An event is a type (`created`, `changed`, `deleted`, `emitted`,
//! `committed`, `rejected`), then for entity events the entity's key and
//! for `emitted` the kind, then fields `name=value` (an integer or a
//! double-quoted string; for `changed`, `name=old->new`, or `name=->new`
//! for a field that had no value), then `by NAME`, the player (the name's
//! bytes, zero-padded to a key; `player` attributes print it in hex). The
//! player is the entry's: the first line's `by` counts. `tick` is an
//! entry without events: log time passes. Entries get log indexes 1, 2,
//! 3...; log times must not go back.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use garrison_client::events::{EventBody, FieldChange};
use garrison_client::rules::{DeployedRule, RuleSet};
use garrison_client::tx::PlayerKey;
use garrison_client::Value;

use crate::cep::engine::CepState;
use crate::cep::lang::Rule;

/// One entry of a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptEntry {
    /// Its log index.
    pub index: u64,
    /// Its log time.
    pub log_time_ms: u64,
    /// Its player.
    pub player: Option<PlayerKey>,
    /// Its events.
    pub events: Vec<EventBody>,
}

/// The key a script's player name stands for.
pub fn player_key(name: &str) -> PlayerKey {
    let mut key = [0u8; 32];
    let n = name.len().min(32);
    key[..n].copy_from_slice(&name.as_bytes()[..n]);
    key
}

fn value(text: &str) -> Result<Value, String> {
    if let Some(s) = text.strip_prefix('"') {
        return s
            .strip_suffix('"')
            .map(|s| Value::Str(s.to_string()))
            .ok_or_else(|| format!("{text:?} is not a string: a string is \"double-quoted\""));
    }
    text.parse::<i64>()
        .map(Value::Int)
        .map_err(|_| format!("{text:?} is neither an integer nor a \"string\""))
}

/// Splits a line into words; a double-quoted string (without spaces
/// escaped) stays one word with its field.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                word.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Parses one event (the words after the time or `+`); its player name.
fn event(words: &[String]) -> Result<(EventBody, Option<String>), String> {
    let (body, by) = match words.iter().position(|w| w == "by") {
        Some(i) => {
            let name = words.get(i + 1).ok_or("`by` needs a player name")?;
            if words.len() > i + 2 {
                return Err("nothing may follow `by NAME`".into());
            }
            (&words[..i], Some(name.clone()))
        }
        None => (words, None),
    };
    let (kind, rest) = body.split_first().ok_or("an event needs a type")?;
    let owner = player_key(by.as_deref().unwrap_or(""));
    let subject = |what: &str| -> Result<(String, &[String]), String> {
        rest.split_first()
            .map(|(s, r)| (s.clone(), r))
            .ok_or(format!("`{kind}` needs {what}"))
    };
    let fields = |words: &[String]| -> Result<Vec<(String, Value)>, String> {
        words
            .iter()
            .map(|w| {
                let (name, v) = w
                    .split_once('=')
                    .ok_or(format!("{w:?} is not a field: write name=value"))?;
                Ok((name.to_string(), value(v)?))
            })
            .collect()
    };
    let body = match kind.as_str() {
        "emitted" => {
            let (kind, rest) = subject("a kind")?;
            EventBody::Emitted {
                kind,
                fields: fields(rest)?,
            }
        }
        "created" | "deleted" => {
            let (entity, rest) = subject("an entity key")?;
            let fields: BTreeMap<String, Value> = fields(rest)?.into_iter().collect();
            if kind == "created" {
                EventBody::Created {
                    entity,
                    owner,
                    version: 0,
                    fields,
                }
            } else {
                EventBody::Deleted {
                    entity,
                    owner,
                    fields,
                }
            }
        }
        "changed" => {
            let (entity, rest) = subject("an entity key")?;
            let changes = rest
                .iter()
                .map(|w| {
                    let (field, v) = w
                        .split_once('=')
                        .ok_or(format!("{w:?} is not a change: write name=old->new"))?;
                    let (old, new) = v
                        .split_once("->")
                        .ok_or(format!("{w:?} is not a change: write name=old->new"))?;
                    let old = if old.is_empty() {
                        None
                    } else {
                        Some(value(old)?)
                    };
                    Ok(FieldChange {
                        field: field.to_string(),
                        old,
                        new: value(new)?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            EventBody::Changed {
                entity,
                owner,
                version: 0,
                changes,
            }
        }
        "committed" => EventBody::Committed { sequence: 0 },
        "rejected" => EventBody::Rejected {
            sequence: 0,
            op: None,
            reason: garrison_client::api::Rejection::PolicyPending,
        },
        other => {
            return Err(format!(
                "{other:?} is not an event type: use created, changed, deleted, emitted, committed or rejected"
            ))
        }
    };
    if !matches!(
        body,
        EventBody::Emitted { .. }
            | EventBody::Created { .. }
            | EventBody::Deleted { .. }
            | EventBody::Changed { .. }
    ) && !rest.is_empty()
    {
        return Err(format!("`{kind}` takes no subject or fields"));
    }
    Ok((body, by))
}

/// Parses a script; an error names the line.
pub fn parse_script(text: &str) -> Result<Vec<ScriptEntry>, String> {
    let mut entries: Vec<ScriptEntry> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}", n + 1);
        let line = line.split_once('#').map_or(line, |(code, _)| code);
        let words = words(line);
        let Some((first, rest)) = words.split_first() else {
            continue;
        };
        if first == "+" {
            let entry = entries
                .last_mut()
                .ok_or_else(|| at("`+` continues an entry, but none came before".into()))?;
            let (body, _) = event(rest).map_err(at)?;
            entry.events.push(body);
            continue;
        }
        let log_time_ms: u64 = first
            .parse()
            .map_err(|_| at(format!("{first:?} is not a log time in ms (or `+`)")))?;
        if entries.last().is_some_and(|e| e.log_time_ms > log_time_ms) {
            return Err(at("log time goes back".into()));
        }
        let index = entries.len() as u64 + 1;
        let entry = match rest {
            [tick] if tick == "tick" => ScriptEntry {
                index,
                log_time_ms,
                player: None,
                events: Vec::new(),
            },
            _ => {
                let (body, by) = event(rest).map_err(at)?;
                ScriptEntry {
                    index,
                    log_time_ms,
                    player: by.as_deref().map(player_key),
                    events: vec![body],
                }
            }
        };
        entries.push(entry);
    }
    Ok(entries)
}

/// A rule set holding `rules`, each as version `version`.
pub fn rule_set(rules: &[Rule], version: u64) -> RuleSet {
    RuleSet {
        version,
        rules: rules
            .iter()
            .map(|r| {
                let deployed = DeployedRule {
                    version,
                    text: r.to_string(),
                };
                (r.name.clone(), deployed)
            })
            .collect(),
    }
}

/// One line describing a match (an [`EventBody::Matched`]) found at
/// `id`; other events give `None`.
pub fn match_line(id: &str, body: &EventBody) -> Option<String> {
    let EventBody::Matched {
        rule,
        kind,
        events,
        window,
        fields,
        depth,
        ..
    } = body
    else {
        return None;
    };
    let mut line = format!("{id} {rule} {kind}:");
    match window {
        Some((start, end)) => write!(line, " window [{start}, {end})").unwrap(),
        None => {
            line.push_str(" events");
            for c in events {
                write!(line, " {c}").unwrap();
            }
        }
    }
    let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    write!(line, " {{{}}}", fields.join(", ")).unwrap();
    if *depth > 1 {
        write!(line, " depth {depth}").unwrap();
    }
    Some(line)
}

/// Runs `rules` over `entries` as apply would (deployed before the first
/// entry); the report `garrison rules test` prints: one line per match,
/// then what is left pending.
pub fn run_script(rules: &[Rule], entries: &[ScriptEntry]) -> String {
    let mut cep = CepState::default();
    cep.set_rules(&rule_set(rules, 1), "script");
    let mut out = String::new();
    let mut matches = 0;
    for entry in entries {
        let mut events = entry.events.clone();
        let own = events.len();
        matches += cep.entry(entry.index, entry.log_time_ms, entry.player, &mut events);
        for (position, body) in events.iter().enumerate().skip(own) {
            let id = format!("{}.{position}", entry.index);
            if let Some(line) = match_line(&id, body) {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    let pending: usize = cep.rules.values().map(|r| r.pending()).sum();
    write!(out, "{matches} matches; {pending} pending").unwrap();
    if let Some(t) = cep.next_deadline() {
        write!(out, ", next deadline at {t}").unwrap();
    }
    let dropped: u64 = cep.rules.values().map(|r| r.dropped()).sum::<u64>() + cep.dropped_matches;
    if dropped > 0 {
        write!(out, "; {dropped} dropped at a limit").unwrap();
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cep::lang::parse;

    #[test]
    fn a_script_reads_as_entries() {
        let entries = parse_script(
            "# a comment\n\
             1000 emitted attack target=\"the hill\" damage=5 by red\n\
             + emitted attack damage=1\n\
             1500 changed unit/7 hp=10->7 mp=->3 by blue\n\
             2000 tick\n",
        )
        .unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].events.len(), 2);
        assert_eq!(entries[0].player, Some(player_key("red")));
        assert_eq!(
            entries[0].events[0],
            EventBody::Emitted {
                kind: "attack".into(),
                fields: vec![
                    ("target".into(), Value::Str("the hill".into())),
                    ("damage".into(), Value::Int(5)),
                ],
            }
        );
        let EventBody::Changed { changes, .. } = &entries[1].events[0] else {
            panic!()
        };
        assert_eq!(changes[1].old, None);
        assert!(entries[2].events.is_empty());
    }

    #[test]
    fn a_bad_script_says_which_line_and_why() {
        let bad = |text: &str| parse_script(text).unwrap_err();
        assert!(bad("10 exploded x").starts_with("line 1: \"exploded\" is not an event type"));
        assert!(bad("10 tick\n5 tick").starts_with("line 2: log time goes back"));
        assert!(bad("+ emitted x").contains("none came before"));
        assert!(bad("10 emitted x hp=abc").contains("neither an integer"));
        assert!(bad("10 committed x").contains("takes no subject"));
    }

    #[test]
    fn a_script_run_lists_each_match() {
        let rule = parse(
            "rule pair pattern a: emitted \"hit\" followed by b: emitted \"hit\" \
             emit \"pair\" { gap = b.time - a.time }",
        )
        .unwrap();
        let entries = parse_script("10 emitted hit\n25 emitted hit\n30 emitted miss").unwrap();
        assert_eq!(
            run_script(&[rule], &entries),
            "2.1 pair pair: events 1.0 2.0 {gap=15}\n1 matches; 1 pending\n"
        );
    }
}
