//! A location's state fragment and the rules of its operations.
//!
//! Pure and deterministic: ordered maps only, no clock (versions are log
//! indexes), no randomness, no I/O. A transaction's operations run against
//! an overlay of the entities they touch; only if every one succeeds is the
//! overlay written back, so a rejected transaction changes nothing.

use std::collections::BTreeMap;

use garrison_client::api::{Entity, Event, EventKind, Outcome, Rejection};
use garrison_client::events::{EventBody, FieldChange};
use garrison_client::tx::{Op, PlayerKey, Value};
use serde::{Deserialize, Serialize};

/// Most fields one entity may hold.
pub const MAX_FIELDS_PER_ENTITY: usize = 64;
/// Most entities one location may hold.
pub const MAX_ENTITIES_PER_LOCATION: usize = 100_000;

/// Asked before each operation whether the signer may do it to an entity
/// owned by the given player (`None`: the entity does not exist).
pub type Authorize<'a> = &'a dyn Fn(&Op, Option<&PlayerKey>) -> Result<(), Rejection>;

/// The entities of one location, by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fragment {
    /// Every entity, in key order.
    pub entities: BTreeMap<String, Entity>,
}

/// The entities a transaction has touched so far (`None` means deleted),
/// and the game events it has emitted.
struct Overlay<'a> {
    base: &'a BTreeMap<String, Entity>,
    touched: BTreeMap<String, Option<Entity>>,
    emitted: Vec<(String, Vec<(String, Value)>)>,
}

/// What a transaction did: its outcome, and the events it produced (entity
/// events in key order, then emitted events in operation order; none if it
/// was rejected).
pub struct Applied {
    /// The outcome.
    pub outcome: Outcome,
    /// The events, without the outcome event.
    pub events: Vec<EventBody>,
}

/// The change of one entity as events: `before` and `after` are the
/// entity's states (`None`: absent). An entity deleted and created again
/// in one transaction (a new owner, or fields gone) is a deletion then a
/// creation, so that no reader mistakes it for a change of the old one.
fn entity_events(key: &str, before: Option<&Entity>, after: Option<&Entity>) -> Vec<EventBody> {
    let entity = key.to_string();
    let created = |e: &Entity| EventBody::Created {
        entity: entity.clone(),
        owner: e.owner,
        version: e.version,
        fields: e.fields.clone(),
    };
    let deleted = |b: &Entity| EventBody::Deleted {
        entity: entity.clone(),
        owner: b.owner,
        fields: b.fields.clone(),
    };
    match (before, after) {
        (None, None) => vec![],
        (None, Some(e)) => vec![created(e)],
        (Some(b), None) => vec![deleted(b)],
        (Some(b), Some(e))
            if b.owner != e.owner || b.fields.keys().any(|f| !e.fields.contains_key(f)) =>
        {
            vec![deleted(b), created(e)]
        }
        (Some(b), Some(e)) => vec![EventBody::Changed {
            entity,
            owner: e.owner,
            version: e.version,
            changes: e
                .fields
                .iter()
                .filter(|(f, v)| b.fields.get(*f) != Some(*v))
                .map(|(f, v)| FieldChange {
                    field: f.clone(),
                    old: b.fields.get(f).cloned(),
                    new: v.clone(),
                })
                .collect(),
        }],
    }
}

impl Overlay<'_> {
    fn get(&self, key: &str) -> Option<&Entity> {
        match self.touched.get(key) {
            Some(entry) => entry.as_ref(),
            None => self.base.get(key),
        }
    }
}

impl Fragment {
    /// Applies `ops` for `player` at log `index`, all or nothing. Before
    /// each operation, `authorize` is asked whether the player may do it to
    /// the entity's current owner (`None`: the entity does not exist), as
    /// the transaction's earlier operations left it.
    pub fn apply(
        &mut self,
        location: &str,
        player: &PlayerKey,
        ops: &[Op],
        index: u64,
        authorize: Authorize<'_>,
    ) -> Applied {
        let rejected = |outcome| Applied {
            outcome,
            events: Vec::new(),
        };
        let mut overlay = Overlay {
            base: &self.entities,
            touched: BTreeMap::new(),
            emitted: Vec::new(),
        };
        for (i, op) in ops.iter().enumerate() {
            let owner = op
                .entity()
                .and_then(|key| overlay.get(key))
                .map(|e| &e.owner);
            let done =
                authorize(op, owner).and_then(|()| apply_op(&mut overlay, player, op, index));
            if let Err(reason) = done {
                return rejected(Outcome::Rejected {
                    op: Some(i as u32),
                    reason,
                });
            }
        }
        let created = overlay
            .touched
            .iter()
            .filter(|(k, v)| v.is_some() && !self.entities.contains_key(*k))
            .count();
        let deleted = overlay
            .touched
            .iter()
            .filter(|(k, v)| v.is_none() && self.entities.contains_key(*k))
            .count();
        if self.entities.len() + created - deleted > MAX_ENTITIES_PER_LOCATION {
            return rejected(Outcome::Rejected {
                op: None,
                reason: Rejection::TooManyEntities {
                    max: MAX_ENTITIES_PER_LOCATION as u64,
                },
            });
        }
        let Overlay {
            touched, emitted, ..
        } = overlay;
        let mut summary = Vec::new();
        let mut events = Vec::new();
        for (key, after) in touched {
            for event in entity_events(&key, self.entities.get(&key), after.as_ref()) {
                let kind = match event {
                    EventBody::Created { .. } => EventKind::Created,
                    EventBody::Deleted { .. } => EventKind::Deleted,
                    _ => EventKind::Changed,
                };
                events.push(event);
                summary.push(Event {
                    location: location.to_string(),
                    index,
                    entity: key.clone(),
                    kind,
                });
            }
            match after {
                Some(entity) => self.entities.insert(key, entity),
                None => self.entities.remove(&key),
            };
        }
        let kinds = emitted.iter().map(|(kind, _)| kind.clone()).collect();
        events.extend(
            emitted
                .into_iter()
                .map(|(kind, fields)| EventBody::Emitted { kind, fields }),
        );
        Applied {
            outcome: Outcome::Committed {
                events: summary,
                emitted: kinds,
            },
            events,
        }
    }
}

fn apply_op(
    overlay: &mut Overlay<'_>,
    player: &PlayerKey,
    op: &Op,
    index: u64,
) -> Result<(), Rejection> {
    match op {
        Op::Put { entity, fields } => {
            let mut e = overlay.get(entity).cloned().unwrap_or_else(|| Entity {
                owner: *player,
                version: 0,
                fields: BTreeMap::new(),
            });
            for (field, value) in fields {
                e.fields.insert(field.clone(), value.clone());
            }
            if e.fields.len() > MAX_FIELDS_PER_ENTITY {
                return Err(Rejection::TooManyFields {
                    entity: entity.clone(),
                    max: MAX_FIELDS_PER_ENTITY as u64,
                });
            }
            e.version = index;
            overlay.touched.insert(entity.clone(), Some(e));
        }
        Op::Delete { entity } => {
            if overlay.get(entity).is_none() {
                return Err(Rejection::NotFound {
                    entity: entity.clone(),
                });
            }
            overlay.touched.insert(entity.clone(), None);
        }
        Op::Increment {
            entity,
            field,
            by,
            min,
            max,
        } => {
            let mut e = overlay
                .get(entity)
                .cloned()
                .ok_or_else(|| Rejection::NotFound {
                    entity: entity.clone(),
                })?;
            let current = match e.fields.get(field) {
                None => 0,
                Some(Value::Int(v)) => *v,
                Some(_) => {
                    return Err(Rejection::NotAnInteger {
                        entity: entity.clone(),
                        field: field.clone(),
                    })
                }
            };
            let result = current as i128 + *by as i128;
            let below = min.is_some_and(|m| result < m as i128) || result < i64::MIN as i128;
            let above = max.is_some_and(|m| result > m as i128) || result > i64::MAX as i128;
            if below || above {
                return Err(Rejection::OutOfBounds {
                    entity: entity.clone(),
                    field: field.clone(),
                    result,
                    min: *min,
                    max: *max,
                });
            }
            if !e.fields.contains_key(field) && e.fields.len() == MAX_FIELDS_PER_ENTITY {
                return Err(Rejection::TooManyFields {
                    entity: entity.clone(),
                    max: MAX_FIELDS_PER_ENTITY as u64,
                });
            }
            e.fields.insert(field.clone(), Value::Int(result as i64));
            e.version = index;
            overlay.touched.insert(entity.clone(), Some(e));
        }
        Op::ExpectVersion { entity, version } => {
            let actual = overlay.get(entity).map(|e| e.version).unwrap_or(0);
            if actual != *version {
                return Err(Rejection::VersionMismatch {
                    entity: entity.clone(),
                    expected: *version,
                    actual,
                });
            }
        }
        Op::ExpectField {
            entity,
            field,
            value,
        } => {
            let actual = overlay
                .get(entity)
                .and_then(|e| e.fields.get(field))
                .cloned();
            if actual != *value {
                return Err(Rejection::FieldMismatch {
                    entity: entity.clone(),
                    field: field.clone(),
                    expected: value.clone(),
                    actual,
                });
            }
        }
        Op::Emit { kind, fields } => {
            overlay.emitted.push((kind.clone(), fields.clone()));
        }
        Op::Admin(_) => {
            return Err(Rejection::Malformed(
                "an administrative operation in a location's transaction".into(),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    fn apply(f: &mut Fragment, l: &str, p: &PlayerKey, ops: &[Op], index: u64) -> Outcome {
        f.apply(l, p, ops, index, &|_, _| Ok(())).outcome
    }

    use super::*;

    const P: PlayerKey = [7; 32];

    fn put(entity: &str, field: &str, value: i64) -> Op {
        Op::Put {
            entity: entity.into(),
            fields: vec![(field.into(), Value::Int(value))],
        }
    }

    fn incr(entity: &str, field: &str, by: i64, min: Option<i64>, max: Option<i64>) -> Op {
        Op::Increment {
            entity: entity.into(),
            field: field.into(),
            by,
            min,
            max,
        }
    }

    fn committed(outcome: &Outcome) -> &Vec<Event> {
        match outcome {
            Outcome::Committed { events, .. } => events,
            other => panic!("expected a commit, got {other:?}"),
        }
    }

    #[test]
    fn put_creates_then_changes_and_versions_follow_the_log() {
        let mut f = Fragment::default();
        let events = committed(&apply(&mut f, "l", &P, &[put("unit/1", "hp", 10)], 5)).clone();
        assert_eq!(events[0].kind, EventKind::Created);
        assert_eq!(f.entities["unit/1"].version, 5);
        assert_eq!(f.entities["unit/1"].owner, P);
        let events = committed(&apply(&mut f, "l", &[9; 32], &[put("unit/1", "hp", 9)], 8)).clone();
        assert_eq!(events[0].kind, EventKind::Changed);
        assert_eq!(f.entities["unit/1"].version, 8);
        assert_eq!(f.entities["unit/1"].owner, P, "the creator stays the owner");
    }

    #[test]
    fn a_failing_operation_rejects_the_whole_transaction() {
        let mut f = Fragment::default();
        apply(&mut f, "l", &P, &[put("depot/3", "ammo", 5)], 1);
        let before = f.clone();
        let ops = [
            put("unit/1", "hp", 1),
            incr("depot/3", "ammo", -6, Some(0), None),
        ];
        match apply(&mut f, "l", &P, &ops, 2) {
            Outcome::Rejected {
                op: Some(1),
                reason: Rejection::OutOfBounds { result: -1, .. },
            } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(f, before);
    }

    #[test]
    fn every_rule_is_checked() {
        let mut f = Fragment::default();
        apply(
            &mut f,
            "l",
            &P,
            &[Op::Put {
                entity: "e".into(),
                fields: vec![
                    ("n".into(), Value::Int(1)),
                    ("s".into(), Value::Str("x".into())),
                ],
            }],
            3,
        );
        type Case = (Op, fn(&Rejection) -> bool);
        let cases: Vec<Case> = vec![
            (
                Op::Delete {
                    entity: "nope".into(),
                },
                |r| matches!(r, Rejection::NotFound { .. }),
            ),
            (incr("nope", "n", 1, None, None), |r| {
                matches!(r, Rejection::NotFound { .. })
            }),
            (incr("e", "s", 1, None, None), |r| {
                matches!(r, Rejection::NotAnInteger { .. })
            }),
            (incr("e", "n", 5, None, Some(5)), |r| {
                matches!(r, Rejection::OutOfBounds { result: 6, .. })
            }),
            (incr("e", "n", i64::MAX, None, None), |r| {
                matches!(r, Rejection::OutOfBounds { .. })
            }),
            (
                Op::ExpectVersion {
                    entity: "e".into(),
                    version: 2,
                },
                |r| matches!(r, Rejection::VersionMismatch { actual: 3, .. }),
            ),
            (
                Op::ExpectVersion {
                    entity: "e".into(),
                    version: 0,
                },
                |r| matches!(r, Rejection::VersionMismatch { .. }),
            ),
            (
                Op::ExpectField {
                    entity: "e".into(),
                    field: "n".into(),
                    value: Some(Value::Int(2)),
                },
                |r| matches!(r, Rejection::FieldMismatch { .. }),
            ),
            (
                Op::ExpectField {
                    entity: "e".into(),
                    field: "n".into(),
                    value: None,
                },
                |r| matches!(r, Rejection::FieldMismatch { .. }),
            ),
        ];
        for (op, expected) in cases {
            let before = f.clone();
            match apply(&mut f, "l", &P, std::slice::from_ref(&op), 4) {
                Outcome::Rejected {
                    op: Some(0),
                    reason,
                } => assert!(expected(&reason), "{op:?} gave {reason:?}"),
                other => panic!("{op:?} gave {other:?}"),
            }
            assert_eq!(f, before);
        }
        // The passing forms of the same checks.
        let ops = [
            Op::ExpectVersion {
                entity: "e".into(),
                version: 3,
            },
            Op::ExpectVersion {
                entity: "new".into(),
                version: 0,
            },
            Op::ExpectField {
                entity: "e".into(),
                field: "n".into(),
                value: Some(Value::Int(1)),
            },
            Op::ExpectField {
                entity: "e".into(),
                field: "missing".into(),
                value: None,
            },
            incr("e", "n", 4, Some(0), Some(5)),
            incr("e", "fresh", -2, None, None),
        ];
        committed(&apply(&mut f, "l", &P, &ops, 9));
        assert_eq!(f.entities["e"].fields["n"], Value::Int(5));
        assert_eq!(f.entities["e"].fields["fresh"], Value::Int(-2));
    }

    #[test]
    fn an_entity_cannot_grow_past_max_fields() {
        let mut f = Fragment::default();
        let fields: Vec<(String, Value)> = (0..MAX_FIELDS_PER_ENTITY)
            .map(|i| (format!("f{i}"), Value::Int(0)))
            .collect();
        committed(&apply(
            &mut f,
            "l",
            &P,
            &[Op::Put {
                entity: "e".into(),
                fields,
            }],
            1,
        ));
        let before = f.clone();
        assert!(matches!(
            apply(&mut f, "l", &P, &[put("e", "one-more", 1)], 2),
            Outcome::Rejected {
                reason: Rejection::TooManyFields { .. },
                ..
            }
        ));
        assert!(matches!(
            apply(&mut f, "l", &P, &[incr("e", "one-more", 1, None, None)], 2),
            Outcome::Rejected {
                reason: Rejection::TooManyFields { .. },
                ..
            }
        ));
        assert_eq!(f, before);
    }

    #[test]
    fn create_then_delete_in_one_transaction_leaves_no_trace() {
        let mut f = Fragment::default();
        let events = committed(&apply(
            &mut f,
            "l",
            &P,
            &[
                put("tmp", "x", 1),
                Op::Delete {
                    entity: "tmp".into(),
                },
            ],
            1,
        ))
        .clone();
        assert!(events.is_empty());
        assert!(f.entities.is_empty());
    }

    #[test]
    fn events_carry_values_and_emits_follow_entity_events() {
        let mut f = Fragment::default();
        let ok = |_: &Op, _: Option<&PlayerKey>| Ok(());
        let first = f.apply("l", &P, &[put("unit/1", "hp", 10)], 2, &ok);
        match &first.events[..] {
            [EventBody::Created {
                entity,
                owner,
                version: 2,
                fields,
            }] => {
                assert_eq!((entity.as_str(), owner), ("unit/1", &P));
                assert_eq!(fields["hp"], Value::Int(10));
            }
            other => panic!("{other:?}"),
        }
        let ops = [
            Op::Emit {
                kind: "attack".into(),
                fields: vec![("target".into(), Value::Str("unit/1".into()))],
            },
            incr("unit/1", "hp", -3, Some(0), None),
            Op::Put {
                entity: "unit/1".into(),
                fields: vec![("name".into(), Value::Str("scout".into()))],
            },
        ];
        let applied = f.apply("l", &P, &ops, 3, &ok);
        match &applied.outcome {
            Outcome::Committed { emitted, .. } => assert_eq!(emitted, &["attack"]),
            other => panic!("{other:?}"),
        }
        match &applied.events[..] {
            [EventBody::Changed {
                changes,
                version: 3,
                ..
            }, EventBody::Emitted { kind, fields }] => {
                let hp = FieldChange {
                    field: "hp".into(),
                    old: Some(Value::Int(10)),
                    new: Value::Int(7),
                };
                let name = FieldChange {
                    field: "name".into(),
                    old: None,
                    new: Value::Str("scout".into()),
                };
                assert_eq!(changes, &[hp, name]);
                assert_eq!(kind, "attack");
                assert_eq!(fields[0].1, Value::Str("unit/1".into()));
            }
            other => panic!("{other:?}"),
        }
        let gone = f.apply(
            "l",
            &P,
            &[Op::Delete {
                entity: "unit/1".into(),
            }],
            4,
            &ok,
        );
        match &gone.events[..] {
            [EventBody::Deleted { fields, .. }] => {
                assert_eq!(fields["hp"], Value::Int(7));
                assert_eq!(fields.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        // Deleted and made again in one transaction, by another player:
        // a deletion and a creation, not a change of the old entity.
        f.apply(
            "l",
            &P,
            &[put("unit/2", "hp", 1), put("unit/2", "ammo", 2)],
            5,
            &ok,
        );
        let other = [9; 32];
        let remade = f.apply(
            "l",
            &other,
            &[
                Op::Delete {
                    entity: "unit/2".into(),
                },
                put("unit/2", "hp", 5),
            ],
            6,
            &ok,
        );
        match &remade.events[..] {
            [EventBody::Deleted {
                owner: old,
                fields: gone,
                ..
            }, EventBody::Created {
                owner: new, fields, ..
            }] => {
                assert_eq!((old, new), (&P, &other));
                assert_eq!(gone.len(), 2);
                assert_eq!(fields.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        // A rejected transaction has no events of its own (only its
        // outcome, which the location adds), and an emit alone changes
        // nothing.
        let denied = f.apply("l", &P, &ops[..1], 7, &|_, _| Err(Rejection::PolicyPending));
        assert!(denied.events.is_empty());
        let before = f.clone();
        let alone = f.apply("l", &P, &ops[..1], 8, &ok);
        assert_eq!(alone.events.len(), 1);
        assert_eq!(f, before);
    }
}
