//! Evaluating a rule's expressions against events: what a step matches,
//! what an attribute of an event is, and the value of an expression.
//!
//! Everything here is a function of its inputs (events from the log and
//! the rule), with integer arithmetic that refuses to overflow, so every
//! replica computes the same values. An expression that cannot be
//! evaluated (a missing field, a type mismatch, an overflow, a division by
//! zero) is an [`EvalError`]; a condition that errs does not hold, and
//! nothing stops.

use std::fmt;

use serde::{Deserialize, Serialize};

use garrison_client::events::{EventBody, LocationEvent};
use garrison_client::policy::pattern_matches;
use garrison_client::Value;

use crate::cep::lang::{AggFunc, Attr, BinOp, EventKind, Expr, Key, Matcher, UnOp};

/// A value during evaluation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Val {
    /// An integer.
    Int(i64),
    /// A string.
    Str(String),
    /// Bytes (a field's `Value::Bytes`).
    Bytes(Vec<u8>),
    /// A boolean.
    Bool(bool),
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Int(n) => write!(f, "{n}"),
            Val::Str(s) => write!(f, "{s:?}"),
            Val::Bytes(b) => write!(f, "0x{}", hex::encode(b)),
            Val::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl From<&Value> for Val {
    fn from(v: &Value) -> Self {
        match v {
            Value::Int(n) => Val::Int(*n),
            Value::Str(s) => Val::Str(s.clone()),
            Value::Bytes(b) => Val::Bytes(b.clone()),
        }
    }
}

impl Val {
    /// The value as a stored field: booleans become 0 and 1.
    pub fn into_value(self) -> Value {
        match self {
            Val::Int(n) => Value::Int(n),
            Val::Str(s) => Value::Str(s),
            Val::Bytes(b) => Value::Bytes(b),
            Val::Bool(b) => Value::Int(i64::from(b)),
        }
    }
}

/// Why an expression has no value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The event has no such attribute or field.
    #[error("{0} has no value here")]
    Missing(String),
    /// An operator got operands it does not take.
    #[error("`{op}` does not take {left} and {right}")]
    Types {
        /// The operator.
        op: &'static str,
        /// The left operand's type.
        left: &'static str,
        /// The right operand's type.
        right: &'static str,
    },
    /// Arithmetic left the 64-bit range, or divided by zero.
    #[error("{0}")]
    Arithmetic(&'static str),
}

fn type_name(v: &Val) -> &'static str {
    match v {
        Val::Int(_) => "an integer",
        Val::Str(_) => "a string",
        Val::Bytes(_) => "bytes",
        Val::Bool(_) => "a boolean",
    }
}

/// Does `matcher` take `event`?
pub fn matches(matcher: &Matcher, event: &LocationEvent) -> bool {
    let subject = match (&matcher.kind, &event.body) {
        (EventKind::Any, _) => return true,
        (EventKind::Of(t), body) if *t != body.event_type() => return false,
        (EventKind::Of(_), EventBody::Emitted { kind, .. }) => Some(kind.as_str()),
        (EventKind::Of(_), EventBody::Matched { rule, .. }) => Some(rule.as_str()),
        (EventKind::Of(_), EventBody::Derived { kind, .. }) => Some(kind.as_str()),
        (EventKind::Of(_), body) => body.entity().map(|(e, _)| e),
    };
    match (&matcher.pattern, subject) {
        (None, _) => true,
        (Some(p), Some(s)) => pattern_matches(p, s),
        (Some(_), None) => false,
    }
}

/// An attribute of one event (`None`: it has none).
pub fn attribute(event: &LocationEvent, attr: &Attr) -> Option<Val> {
    match attr {
        Attr::Player => event.player.map(|p| Val::Str(hex::encode(p))),
        Attr::Entity => event.body.entity().map(|(e, _)| Val::Str(e.to_string())),
        Attr::Kind => match &event.body {
            EventBody::Emitted { kind, .. } => Some(Val::Str(kind.clone())),
            EventBody::Matched { rule, .. } => Some(Val::Str(rule.clone())),
            EventBody::Derived { kind, .. } => Some(Val::Str(kind.clone())),
            _ => None,
        },
        Attr::Time => i64::try_from(event.log_time_ms).ok().map(Val::Int),
        Attr::Index => i64::try_from(event.index).ok().map(Val::Int),
        Attr::Field(name) => match &event.body {
            EventBody::Created { fields, .. } | EventBody::Deleted { fields, .. } => {
                fields.get(name).map(Val::from)
            }
            EventBody::Changed { changes, .. } => changes
                .iter()
                .find(|c| c.field == *name)
                .map(|c| Val::from(&c.new)),
            EventBody::Emitted { fields, .. }
            | EventBody::Matched { fields, .. }
            | EventBody::Derived { fields, .. } => fields
                .iter()
                .find(|(f, _)| f == name)
                .map(|(_, v)| Val::from(v)),
            EventBody::Committed { .. }
            | EventBody::Rejected { .. }
            | EventBody::PluginFailed { .. }
            | EventBody::Delivered { .. } => None,
        },
        Attr::Old(name) => match &event.body {
            EventBody::Changed { changes, .. } => changes
                .iter()
                .find(|c| c.field == *name)
                .and_then(|c| c.old.as_ref())
                .map(Val::from),
            _ => None,
        },
    }
}

/// The partition (or group) `event` belongs to under `key` (`None`: it
/// has no value for the key and joins none).
pub fn partition_of(key: &Key, event: &LocationEvent) -> Option<Val> {
    match key {
        // The key's bytes: the same partitions as its hex text, without
        // writing that text for every event.
        Key::Player => event.player.map(|p| Val::Bytes(p.to_vec())),
        Key::Entity => attribute(event, &Attr::Entity),
        Key::Field(name) => attribute(event, &Attr::Field(name.clone())),
    }
}

/// What an expression's names refer to.
pub trait Bindings {
    /// The events the step `step` matched so far, oldest first (an
    /// attribute of a step is its last event's).
    fn events(&self, step: &str) -> &[LocationEvent];

    /// The aggregate `func` of `of` over the step's events (by default
    /// computed from [`Bindings::events`]; `what` names it in errors).
    fn aggregate(
        &self,
        func: AggFunc,
        step: &str,
        of: Option<&Attr>,
        what: &str,
    ) -> Result<Val, EvalError> {
        aggregate(func, self.events(step), of, what)
    }
}

fn attr_text(step: &str, attr: &Attr) -> String {
    format!("{step}.{attr}")
}

/// One attribute's running aggregate over a run of events: what
/// `count`, `sum`, `min`, `max` and `avg` need, kept as events come (an
/// aggregate rule's window keeps one per attribute it aggregates).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accumulator {
    /// Events that had the attribute.
    values: u64,
    sum: i64,
    /// The sum left the 64-bit range.
    overflowed: bool,
    min: Option<i64>,
    max: Option<i64>,
    /// An event had it, but not as an integer.
    mistyped: bool,
}

impl Accumulator {
    /// Takes one event's value of the attribute (`None`: it had none).
    pub fn add(&mut self, v: Option<Val>) {
        match v {
            None => {}
            Some(Val::Int(n)) => {
                self.values += 1;
                match self.sum.checked_add(n) {
                    Some(s) => self.sum = s,
                    None => self.overflowed = true,
                }
                self.min = Some(self.min.map_or(n, |m| m.min(n)));
                self.max = Some(self.max.map_or(n, |m| m.max(n)));
            }
            Some(_) => self.mistyped = true,
        }
    }

    /// The aggregate `func` of what it took (`what` names it in errors).
    pub fn value(&self, func: AggFunc, what: &str) -> Result<Val, EvalError> {
        if self.mistyped {
            return Err(EvalError::Types {
                op: func.name(),
                left: "a value that is not an integer",
                right: "nothing",
            });
        }
        if self.values == 0 {
            return Err(EvalError::Missing(what.to_string()));
        }
        let sum = || {
            if self.overflowed {
                Err(EvalError::Arithmetic("a sum left the 64-bit range"))
            } else {
                Ok(self.sum)
            }
        };
        Ok(Val::Int(match func {
            AggFunc::Count => self.values as i64,
            AggFunc::Sum => sum()?,
            AggFunc::Min => self.min.expect("values > 0"),
            AggFunc::Max => self.max.expect("values > 0"),
            AggFunc::Avg => sum()? / self.values as i64,
        }))
    }
}

/// The aggregate `func` over the `of` attribute of `events` (events
/// without it are left out; `count` counts events).
pub fn aggregate(
    func: AggFunc,
    events: &[LocationEvent],
    of: Option<&Attr>,
    what: &str,
) -> Result<Val, EvalError> {
    let Some(attr) = of else {
        return Ok(Val::Int(events.len() as i64));
    };
    let mut acc = Accumulator::default();
    for e in events {
        acc.add(attribute(e, attr));
    }
    acc.value(func, what)
}

/// The value of `expr` under `bindings`.
pub fn eval(expr: &Expr, bindings: &dyn Bindings) -> Result<Val, EvalError> {
    Ok(match expr {
        Expr::Int(n) => Val::Int(*n),
        Expr::Str(s) => Val::Str(s.clone()),
        Expr::Bool(b) => Val::Bool(*b),
        Expr::Ref { step, attr } => bindings
            .events(step)
            .last()
            .and_then(|e| attribute(e, attr))
            .ok_or_else(|| EvalError::Missing(attr_text(step, attr)))?,
        Expr::Agg { func, step, of } => {
            let what = match of {
                Some(a) => format!("{}({})", func.name(), attr_text(step, a)),
                None => format!("count({step})"),
            };
            bindings.aggregate(*func, step, of.as_ref(), &what)?
        }
        Expr::Unary(UnOp::Not, e) => match eval(e, bindings)? {
            Val::Bool(b) => Val::Bool(!b),
            v => {
                return Err(EvalError::Types {
                    op: "not",
                    left: "nothing",
                    right: type_name(&v),
                })
            }
        },
        Expr::Unary(UnOp::Neg, e) => match eval(e, bindings)? {
            Val::Int(n) => Val::Int(
                n.checked_neg()
                    .ok_or(EvalError::Arithmetic("a negation left the 64-bit range"))?,
            ),
            v => {
                return Err(EvalError::Types {
                    op: "-",
                    left: "nothing",
                    right: type_name(&v),
                })
            }
        },
        Expr::Binary(BinOp::And, a, b) => {
            Val::Bool(truth(eval(a, bindings)?, "and")? && truth(eval(b, bindings)?, "and")?)
        }
        Expr::Binary(BinOp::Or, a, b) => {
            Val::Bool(truth(eval(a, bindings)?, "or")? || truth(eval(b, bindings)?, "or")?)
        }
        Expr::Binary(op, a, b) => binary(*op, eval(a, bindings)?, eval(b, bindings)?)?,
    })
}

fn truth(v: Val, op: &'static str) -> Result<bool, EvalError> {
    match v {
        Val::Bool(b) => Ok(b),
        v => Err(EvalError::Types {
            op,
            left: type_name(&v),
            right: "a boolean",
        }),
    }
}

fn binary(op: BinOp, a: Val, b: Val) -> Result<Val, EvalError> {
    use std::cmp::Ordering;
    let mismatch = |a: &Val, b: &Val| EvalError::Types {
        op: op.symbol(),
        left: type_name(a),
        right: type_name(b),
    };
    let order = |a: &Val, b: &Val| -> Result<Ordering, EvalError> {
        match (a, b) {
            (Val::Int(x), Val::Int(y)) => Ok(x.cmp(y)),
            (Val::Str(x), Val::Str(y)) => Ok(x.cmp(y)),
            (Val::Bytes(x), Val::Bytes(y)) => Ok(x.cmp(y)),
            (Val::Bool(x), Val::Bool(y)) if matches!(op, BinOp::Eq | BinOp::Ne) => Ok(x.cmp(y)),
            _ => Err(mismatch(a, b)),
        }
    };
    let int = |a: &Val, b: &Val| match (a, b) {
        (Val::Int(x), Val::Int(y)) => Ok((*x, *y)),
        _ => Err(mismatch(a, b)),
    };
    let overflow = EvalError::Arithmetic("arithmetic left the 64-bit range");
    Ok(match op {
        BinOp::Eq => Val::Bool(order(&a, &b)? == Ordering::Equal),
        BinOp::Ne => Val::Bool(order(&a, &b)? != Ordering::Equal),
        BinOp::Lt => Val::Bool(order(&a, &b)? == Ordering::Less),
        BinOp::Le => Val::Bool(order(&a, &b)? != Ordering::Greater),
        BinOp::Gt => Val::Bool(order(&a, &b)? == Ordering::Greater),
        BinOp::Ge => Val::Bool(order(&a, &b)? != Ordering::Less),
        BinOp::Add => {
            let (x, y) = int(&a, &b)?;
            Val::Int(x.checked_add(y).ok_or(overflow)?)
        }
        BinOp::Sub => {
            let (x, y) = int(&a, &b)?;
            Val::Int(x.checked_sub(y).ok_or(overflow)?)
        }
        BinOp::Mul => {
            let (x, y) = int(&a, &b)?;
            Val::Int(x.checked_mul(y).ok_or(overflow)?)
        }
        BinOp::Div | BinOp::Rem => {
            let (x, y) = int(&a, &b)?;
            if y == 0 {
                return Err(EvalError::Arithmetic("division by zero"));
            }
            let r = if op == BinOp::Div {
                x.checked_div(y)
            } else {
                x.checked_rem(y)
            };
            Val::Int(r.ok_or(overflow)?)
        }
        BinOp::And | BinOp::Or => unreachable!("evaluated with short circuit"),
    })
}

/// Does `condition` hold? One that errs does not.
pub fn holds(condition: &Expr, bindings: &dyn Bindings) -> bool {
    matches!(eval(condition, bindings), Ok(Val::Bool(true)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cep::lang::{parse, Body};
    use garrison_client::events::FieldChange;
    use std::collections::BTreeMap;

    struct Steps(Vec<(&'static str, Vec<LocationEvent>)>);

    impl Bindings for Steps {
        fn events(&self, step: &str) -> &[LocationEvent] {
            self.0
                .iter()
                .find(|(s, _)| *s == step)
                .map_or(&[], |(_, e)| e.as_slice())
        }
    }

    fn emitted(index: u64, kind: &str, fields: &[(&str, Value)]) -> LocationEvent {
        LocationEvent {
            index,
            position: 0,
            log_time_ms: 1_000 * index,
            player: Some([index as u8; 32]),
            body: EventBody::Emitted {
                kind: kind.into(),
                fields: fields
                    .iter()
                    .map(|(f, v)| (f.to_string(), v.clone()))
                    .collect(),
            },
        }
    }

    fn changed(index: u64, entity: &str, field: &str, old: i64, new: i64) -> LocationEvent {
        LocationEvent {
            index,
            position: 0,
            log_time_ms: 1_000 * index,
            player: Some([1; 32]),
            body: EventBody::Changed {
                entity: entity.into(),
                owner: [1; 32],
                version: index,
                changes: vec![FieldChange {
                    field: field.into(),
                    old: Some(Value::Int(old)),
                    new: Value::Int(new),
                }],
            },
        }
    }

    /// The first step's condition of a one-step rule.
    fn condition(text: &str) -> Expr {
        let rule = parse(&format!(
            "rule r pattern a: changed followed by b: changed where {text} emit \"k\""
        ))
        .unwrap_or_else(|e| panic!("{text}: {e}"));
        let Body::Pattern { steps, .. } = rule.body else {
            unreachable!()
        };
        steps[1].condition.clone().unwrap()
    }

    #[test]
    fn matchers_take_events_by_type_and_pattern() {
        let attack = emitted(1, "attack", &[]);
        let hit = changed(2, "unit/7", "hp", 10, 7);
        let m = |text: &str| {
            let rule = parse(&format!("rule r pattern a: {text} emit \"k\"")).unwrap();
            let Body::Pattern { steps, .. } = rule.body else {
                unreachable!()
            };
            steps[0].matcher.clone()
        };
        assert!(matches(&m("any"), &attack));
        assert!(matches(&m("emitted \"att*\""), &attack));
        assert!(!matches(&m("emitted \"capture\""), &attack));
        assert!(!matches(&m("changed"), &attack));
        assert!(matches(&m("changed \"unit/*\""), &hit));
        assert!(!matches(&m("changed \"base/*\""), &hit));
        assert!(!matches(&m("matched"), &hit));
        let flank = LocationEvent {
            body: EventBody::Matched {
                rule: "flank".into(),
                version: 3,
                kind: "flanked".into(),
                events: Vec::new(),
                window: None,
                fields: vec![("target".into(), Value::Str("hill".into()))],
                depth: 1,
            },
            ..attack.clone()
        };
        assert!(matches(&m("matched"), &flank));
        assert!(matches(&m("matched \"fl*\""), &flank), "by the rule's name");
        assert!(!matches(&m("matched \"flanked\""), &flank));
        assert!(!matches(&m("emitted"), &flank));
        let target = attribute(&flank, &Attr::Field("target".into()));
        assert_eq!(target, Some(Val::Str("hill".into())));
    }

    #[test]
    fn attributes_read_fields_old_values_and_the_event_itself() {
        let hit = changed(2, "unit/7", "hp", 10, 7);
        let attack = emitted(3, "attack", &[("target", Value::Str("hill".into()))]);
        let steps = Steps(vec![("a", vec![hit]), ("b", vec![attack])]);
        let value = |text: &str| eval(&condition(text), &steps);
        assert_eq!(value("a.hp < a.old.hp"), Ok(Val::Bool(true)));
        assert_eq!(value("a.old.hp - a.hp == 3"), Ok(Val::Bool(true)));
        assert_eq!(value("a.entity == \"unit/7\""), Ok(Val::Bool(true)));
        assert_eq!(
            value("b.kind == \"attack\" and b.target == \"hill\""),
            Ok(Val::Bool(true))
        );
        assert_eq!(value("b.time - a.time == 1000"), Ok(Val::Bool(true)));
        assert_eq!(value("b.index > a.index"), Ok(Val::Bool(true)));
        assert_eq!(
            value(
                "a.player == \"0101010101010101010101010101010101010101010101010101010101010101\""
            ),
            Ok(Val::Bool(true))
        );
        assert_eq!(value("b.hp > 0"), Err(EvalError::Missing("b.hp".into())));
        assert!(
            !holds(&condition("b.hp > 0"), &steps),
            "a missing field does not hold"
        );
    }

    #[test]
    fn arithmetic_is_checked_and_types_are_not_mixed() {
        let steps = Steps(vec![]);
        let value = |text: &str| eval(&condition(text), &steps);
        assert_eq!(
            value("7 / 2 == 3 and -7 / 2 == -3 and 7 % 3 == 1"),
            Ok(Val::Bool(true))
        );
        assert_eq!(
            value("9223372036854775807 + 1 > 0"),
            Err(EvalError::Arithmetic("arithmetic left the 64-bit range"))
        );
        assert_eq!(
            value("1 / 0 == 0"),
            Err(EvalError::Arithmetic("division by zero"))
        );
        assert!(matches!(
            value("1 == \"1\""),
            Err(EvalError::Types { op: "==", .. })
        ));
        assert!(matches!(
            value("1 and true"),
            Err(EvalError::Types { op: "and", .. })
        ));
        assert!(matches!(
            value("true < false"),
            Err(EvalError::Types { op: "<", .. })
        ));
        assert_eq!(
            value("\"a\" < \"b\" and not (1 > 2) or false"),
            Ok(Val::Bool(true))
        );
        // `and` stops at a false left side, so its right side may err.
        assert_eq!(value("false and 1 / 0 == 0"), Ok(Val::Bool(false)));
    }

    #[test]
    fn aggregates_run_over_a_steps_events() {
        let hits: Vec<LocationEvent> = [(10, 7), (7, 3), (3, -2)]
            .iter()
            .enumerate()
            .map(|(i, (old, new))| changed(i as u64 + 1, "unit/1", "hp", *old, *new))
            .collect();
        let steps = Steps(vec![("b", hits)]);
        let value = |text: &str| eval(&condition(text), &steps);
        assert_eq!(
            value("count(b) == 3 and sum(b.hp) == 8 and min(b.hp) == -2 and max(b.old.hp) == 10"),
            Ok(Val::Bool(true))
        );
        // Rounded toward zero: (7 + 3 - 2) / 3.
        assert_eq!(value("avg(b.hp) == 2"), Ok(Val::Bool(true)));
        assert_eq!(
            value("b.hp == -2"),
            Ok(Val::Bool(true)),
            "a quantified step's last event"
        );
        assert_eq!(
            value("sum(b.armor) > 0"),
            Err(EvalError::Missing("sum(b.armor)".into()))
        );
    }

    #[test]
    fn partitions_are_keyed_by_player_entity_or_field() {
        let attack = emitted(4, "attack", &[("target", Value::Str("hill".into()))]);
        let rule = parse("rule r partition by field target pattern a: any emit \"k\"").unwrap();
        let key = rule.partition.unwrap();
        assert_eq!(partition_of(&key, &attack), Some(Val::Str("hill".into())));
        assert_eq!(partition_of(&Key::Entity, &attack), None);
        assert_eq!(
            partition_of(&Key::Player, &attack),
            Some(Val::Bytes([4u8; 32].to_vec()))
        );
        let mut fields = BTreeMap::new();
        fields.insert("target".to_string(), Value::Int(3));
        let created = LocationEvent {
            body: EventBody::Created {
                entity: "unit/1".into(),
                owner: [4; 32],
                version: 1,
                fields,
            },
            ..attack
        };
        assert_eq!(partition_of(&key, &created), Some(Val::Int(3)));
    }
}
