//! The rule language: text in, a checked [`Rule`] out, and back to its
//! canonical text.
//!
//! [`parse`] lexes and parses a rule, then checks it: names
//! are defined before use, negations and quantifiers are used where they
//! mean something, and every limit holds. An error carries the line and
//! column it is about. [`Rule`]'s `Display` is its canonical text: one
//! clause per line, single spaces, durations in their largest exact unit.
//! Parsing the canonical text gives the same rule back, so two rules are
//! the same rule exactly when their canonical texts are equal.

use std::fmt;

use garrison_client::events::{EventType, MAX_EMIT_KIND_BYTES, MAX_FIELDS_PER_EMIT};

/// Most bytes of rule text (a deploy carries it in one transaction).
pub use garrison_client::rules::MAX_RULE_TEXT_BYTES;
/// Most steps in a pattern.
pub const MAX_PATTERN_STEPS: usize = 16;
/// Largest bound a quantifier may name (`{n}`, `{n,m}`).
pub const MAX_QUANTIFIER_BOUND: u32 = 1_000;
/// Longest `within` span, in milliseconds of log time (one day).
pub const MAX_WITHIN_MS: u64 = 24 * 60 * 60 * 1000;
/// Longest window, in milliseconds of log time (one day).
pub const MAX_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;
/// Shortest window and slide, in milliseconds of log time.
pub const MIN_WINDOW_MS: u64 = 100;
/// Most windows a sliding window overlaps (size ÷ slide).
pub const MAX_WINDOWS_PER_EVENT: u64 = 100;
/// Most bytes of a rule's, a step's or a field's name.
pub const MAX_NAME_BYTES: usize = 64;
/// Most locations a rule names.
pub const MAX_RULE_LOCATIONS: usize = 64;
/// Deepest nesting of an expression.
pub const MAX_EXPR_DEPTH: usize = 32;

/// A checked rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Its name.
    pub name: String,
    /// The locations it applies to (empty: all).
    pub locations: Vec<String>,
    /// Each value of this key matches on its own (`None`: one partition).
    pub partition: Option<Key>,
    /// What it detects.
    pub body: Body,
    /// What a match emits.
    pub emit: Emit,
}

/// A partition or grouping key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// The event's player.
    Player,
    /// The event's entity key.
    Entity,
    /// The value of a field of the event.
    Field(String),
}

/// A pattern or an aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A sequence of steps.
    Pattern {
        /// The steps, the first with [`Contiguity::Start`].
        steps: Vec<Step>,
        /// The whole match spans at most this much log time.
        within_ms: Option<u64>,
        /// Where matching goes on after a match.
        skip: Skip,
    },
    /// An aggregate over windows.
    Aggregate {
        /// The events aggregated, under this name.
        step: Step,
        /// The windows.
        window: Window,
        /// A window's group fires when this holds.
        having: Expr,
    },
}

/// One step of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// How it follows the step before.
    pub contiguity: Contiguity,
    /// True for `not then` and `not followed by`: no such event.
    pub negated: bool,
    /// The name conditions and fields refer to it by.
    pub name: String,
    /// Which events it may match.
    pub matcher: Matcher,
    /// How many events it matches.
    pub quantifier: Quantifier,
    /// What each of them must satisfy.
    pub condition: Option<Expr>,
}

/// How a step follows the one before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contiguity {
    /// The first step.
    Start,
    /// `then`: the very next event of the partition.
    Strict,
    /// `followed by`: a later event, others skipped.
    Relaxed,
    /// `followed by any`: every later matching event starts its own branch.
    RelaxedAny,
}

/// Which events a step may match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    /// The event's type.
    pub kind: EventKind,
    /// A pattern (`*` any run) over the entity key, the emitted kind or
    /// the matching rule's name (`None`: any).
    pub pattern: Option<String>,
}

/// The events a matcher names by type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Any event.
    Any,
    /// Events of one type of the stream (`matched`: a rule's match, a
    /// derived event).
    Of(EventType),
}

impl EventKind {
    /// Every kind, in the order errors list them.
    fn all() -> Vec<EventKind> {
        let mut all = vec![EventKind::Any];
        all.extend(EventType::ALL.map(EventKind::Of));
        all
    }

    fn name(self) -> &'static str {
        match self {
            EventKind::Any => "any",
            EventKind::Of(t) => t.name(),
        }
    }

    /// Whether a pattern after the type means something.
    fn takes_pattern(self) -> bool {
        !matches!(
            self,
            EventKind::Any | EventKind::Of(EventType::Committed | EventType::Rejected)
        )
    }
}

/// How many events a step matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantifier {
    /// At least.
    pub min: u32,
    /// At most (`None`: no bound).
    pub max: Option<u32>,
    /// Take as many as possible before the next step (else as few).
    pub greedy: bool,
}

impl Quantifier {
    /// Exactly one event.
    pub const ONE: Quantifier = Quantifier {
        min: 1,
        max: Some(1),
        greedy: false,
    };
}

/// Where matching goes on after a match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Every partial match goes on.
    NoSkip,
    /// Partial matches that began with the match's first event are dropped.
    ToNext,
    /// Partial matches that began at or before the match's last event are
    /// dropped.
    PastLast,
    /// Partial matches that began before the first event of this step are dropped.
    ToFirst(String),
    /// Partial matches that began before the last event of this step are dropped.
    ToLast(String),
}

/// Windows of log time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Back to back: `[k·size, (k+1)·size)`.
    Tumbling {
        /// Length.
        size_ms: u64,
    },
    /// Overlapping: `[k·every, k·every + size)`.
    Sliding {
        /// Length.
        size_ms: u64,
        /// Distance between starts.
        every_ms: u64,
    },
}

/// What a match emits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emit {
    /// The derived event's kind.
    pub kind: String,
    /// Its fields, computed at the match.
    pub fields: Vec<(String, Expr)>,
}

/// An expression over matched events. Values are integers, strings or
/// booleans; arithmetic is on 64-bit integers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// An integer.
    Int(i64),
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// An attribute of a step's event (its last, if quantified).
    Ref {
        /// The step.
        step: String,
        /// What of it.
        attr: Attr,
    },
    /// An aggregate of a step's events (for a pattern: a named step; for
    /// an aggregate rule: the window's group).
    Agg {
        /// Which.
        func: AggFunc,
        /// The step it runs over.
        step: String,
        /// What it sums or compares (`None` for `count`).
        of: Option<Attr>,
    },
    /// `not`, or `-`.
    Unary(UnOp, Box<Expr>),
    /// Two operands.
    Binary(BinOp, Box<Expr>, Box<Expr>),
}

/// What of an event an expression reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attr {
    /// A field's value (new value, for a change).
    Field(String),
    /// A changed field's value before (`old.NAME`).
    Old(String),
    /// The player (hex).
    Player,
    /// The entity key.
    Entity,
    /// The emitted kind, or the matching rule.
    Kind,
    /// The entry's log time, in milliseconds.
    Time,
    /// The entry's log index.
    Index,
}

/// Aggregate functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggFunc {
    /// How many.
    Count,
    /// The sum.
    Sum,
    /// The least.
    Min,
    /// The greatest.
    Max,
    /// The sum divided by the count, rounded toward zero.
    Avg,
}

impl AggFunc {
    const ALL: [AggFunc; 5] = [
        AggFunc::Count,
        AggFunc::Sum,
        AggFunc::Min,
        AggFunc::Max,
        AggFunc::Avg,
    ];

    /// How it is written.
    pub fn name(self) -> &'static str {
        match self {
            AggFunc::Count => "count",
            AggFunc::Sum => "sum",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::Avg => "avg",
        }
    }
}

/// Unary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    /// Boolean negation.
    Not,
    /// Integer negation.
    Neg,
}

/// Binary operators, loosest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `or`
    Or,
    /// `and`
    And,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/` (toward zero; by zero is an evaluation error)
    Div,
    /// `%`
    Rem,
}

impl BinOp {
    /// How it is written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }

    /// Binding strength: higher binds tighter.
    fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div | BinOp::Rem => 5,
        }
    }
}

/// Where in the text something is: 1-based line and column (in
/// characters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    /// Line.
    pub line: u32,
    /// Column.
    pub column: u32,
}

/// A rule that did not parse or check: what is wrong, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {}, column {}: {message}", pos.line, pos.column)]
pub struct RuleError {
    /// Where.
    pub pos: Pos,
    /// What.
    pub message: String,
}

fn error<T>(pos: Pos, message: impl Into<String>) -> Result<T, RuleError> {
    Err(RuleError {
        pos,
        message: message.into(),
    })
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Int(i64),
    Str(String),
    Duration(u64),
    Sym(&'static str),
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "`{w}`"),
            Tok::Int(i) => write!(f, "the number {i}"),
            Tok::Str(s) => write!(f, "the string {s:?}"),
            Tok::Duration(ms) => write!(f, "the duration {}", Duration(*ms)),
            Tok::Sym(s) => write!(f, "`{s}`"),
            Tok::End => f.write_str("the end of the rule"),
        }
    }
}

const SYMBOLS: [&str; 18] = [
    "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "(", ")", "{", "}", ",", ":", ".",
];
// `=` and `?` are symbols too; listed apart because `==` must lex first.
const SHORT_SYMBOLS: [&str; 2] = ["=", "?"];

fn lex(text: &str) -> Result<Vec<(Tok, Pos)>, RuleError> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let (mut i, mut line, mut column) = (0, 1u32, 1u32);
    let advance = |i: &mut usize, line: &mut u32, column: &mut u32, n: usize| {
        for _ in 0..n {
            if chars[*i] == '\n' {
                *line += 1;
                *column = 1;
            } else {
                *column += 1;
            }
            *i += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let pos = Pos { line, column };
        if c.is_whitespace() {
            advance(&mut i, &mut line, &mut column, 1);
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                advance(&mut i, &mut line, &mut column, 1);
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                advance(&mut i, &mut line, &mut column, 1);
            }
            out.push((Tok::Word(chars[start..i].iter().collect()), pos));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                advance(&mut i, &mut line, &mut column, 1);
            }
            let digits: String = chars[start..i].iter().collect();
            let n: i64 = digits.parse().map_err(|_| RuleError {
                pos,
                message: format!("{digits} is too large for a 64-bit integer"),
            })?;
            let unit_start = i;
            while i < chars.len() && chars[i].is_ascii_alphabetic() {
                advance(&mut i, &mut line, &mut column, 1);
            }
            let unit: String = chars[unit_start..i].iter().collect();
            let tok = match unit.as_str() {
                "" => Tok::Int(n),
                unit => {
                    let scale = match unit {
                        "ms" => 1,
                        "s" => 1_000,
                        "m" => 60_000,
                        "h" => 3_600_000,
                        other => {
                            return error(
                                pos,
                                format!("{other:?} is not a unit of time: use ms, s, m or h"),
                            )
                        }
                    };
                    let ms = (n as u64).checked_mul(scale).ok_or_else(|| RuleError {
                        pos,
                        message: format!("{n}{unit} is too long a duration"),
                    })?;
                    Tok::Duration(ms)
                }
            };
            out.push((tok, pos));
        } else if c == '"' {
            advance(&mut i, &mut line, &mut column, 1);
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None | Some('\n') => return error(pos, "the string is not closed"),
                    Some('"') => {
                        advance(&mut i, &mut line, &mut column, 1);
                        break;
                    }
                    Some('\\') => {
                        let escaped = match chars.get(i + 1) {
                            Some('"') => '"',
                            Some('\\') => '\\',
                            Some('n') => '\n',
                            Some('t') => '\t',
                            other => {
                                let at = Pos {
                                    line,
                                    column: column + 1,
                                };
                                return error(
                                    at,
                                    match other {
                                        Some(o) => format!(
                                            "\\{o} is not an escape: use \\\", \\\\, \\n or \\t"
                                        ),
                                        None => "the string is not closed".into(),
                                    },
                                );
                            }
                        };
                        s.push(escaped);
                        advance(&mut i, &mut line, &mut column, 2);
                    }
                    Some(ch) => {
                        s.push(*ch);
                        advance(&mut i, &mut line, &mut column, 1);
                    }
                }
            }
            out.push((Tok::Str(s), pos));
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let sym = SYMBOLS
                .iter()
                .chain(SHORT_SYMBOLS.iter())
                .find(|s| rest.starts_with(**s));
            match sym {
                Some(s) => {
                    out.push((Tok::Sym(s), pos));
                    advance(&mut i, &mut line, &mut column, s.len());
                }
                None => return error(pos, format!("{c:?} is not part of the rule language")),
            }
        }
    }
    out.push((Tok::End, Pos { line, column }));
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, Pos)>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].0
    }

    fn peek_at(&self, n: usize) -> &Tok {
        &self.toks[(self.at + n).min(self.toks.len() - 1)].0
    }

    fn pos(&self) -> Pos {
        self.toks[self.at].1
    }

    fn next(&mut self) -> (Tok, Pos) {
        let t = self.toks[self.at].clone();
        if self.at + 1 < self.toks.len() {
            self.at += 1;
        }
        t
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Tok::Word(x) if x == w)
    }

    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Sym(x) if *x == s)
    }

    fn eat_word(&mut self, w: &str) -> bool {
        let yes = self.is_word(w);
        if yes {
            self.next();
        }
        yes
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        let yes = self.is_sym(s);
        if yes {
            self.next();
        }
        yes
    }

    fn unexpected<T>(&self, wanted: &str) -> Result<T, RuleError> {
        error(
            self.pos(),
            format!("expected {wanted}, found {}", self.peek()),
        )
    }

    fn expect_word(&mut self, w: &str) -> Result<(), RuleError> {
        if self.eat_word(w) {
            Ok(())
        } else {
            self.unexpected(&format!("`{w}`"))
        }
    }

    fn expect_sym(&mut self, s: &str) -> Result<(), RuleError> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            self.unexpected(&format!("`{s}`"))
        }
    }

    fn name(&mut self, what: &str) -> Result<(String, Pos), RuleError> {
        let pos = self.pos();
        match self.peek().clone() {
            Tok::Word(w) if !KEYWORDS.contains(&w.as_str()) => {
                self.next();
                if w.len() > MAX_NAME_BYTES {
                    return error(
                        pos,
                        format!("{what} {w:?} is longer than {MAX_NAME_BYTES} bytes"),
                    );
                }
                Ok((w, pos))
            }
            Tok::Word(w) => error(
                pos,
                format!("`{w}` is a keyword; {what} needs another name"),
            ),
            _ => self.unexpected(what),
        }
    }

    fn string(&mut self, what: &str) -> Result<(String, Pos), RuleError> {
        let pos = self.pos();
        match self.peek().clone() {
            Tok::Str(s) => {
                self.next();
                Ok((s, pos))
            }
            _ => self.unexpected(what),
        }
    }

    fn duration(&mut self) -> Result<(u64, Pos), RuleError> {
        let pos = self.pos();
        match self.peek().clone() {
            Tok::Duration(ms) => {
                self.next();
                Ok((ms, pos))
            }
            Tok::Int(n) => error(
                pos,
                format!("{n} needs a unit of time: {n}ms, {n}s, {n}m or {n}h"),
            ),
            _ => self.unexpected("a duration such as 10s"),
        }
    }

    fn rule(&mut self) -> Result<(Rule, Spans), RuleError> {
        let mut spans = Spans::default();
        self.expect_word("rule")?;
        let (name, _) = self.name("the rule")?;
        let mut locations = Vec::new();
        if self.eat_word("on") {
            loop {
                let (l, pos) = self.string("a location's name in quotes")?;
                if locations.contains(&l) {
                    return error(pos, format!("location {l:?} is named twice"));
                }
                locations.push(l);
                if locations.len() > MAX_RULE_LOCATIONS {
                    return error(
                        pos,
                        format!("a rule names at most {MAX_RULE_LOCATIONS} locations"),
                    );
                }
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        let mut partition = None;
        if self.eat_word("partition") {
            self.expect_word("by")?;
            partition = Some(self.key()?);
        }
        let body = if self.eat_word("pattern") {
            self.pattern(&mut spans)?
        } else if self.eat_word("aggregate") {
            self.aggregate(&mut spans)?
        } else {
            return self.unexpected("`pattern` or `aggregate`");
        };
        self.expect_word("emit")?;
        let emit = self.emit(&mut spans)?;
        if *self.peek() != Tok::End {
            return self.unexpected("the end of the rule (after `emit`)");
        }
        Ok((
            Rule {
                name,
                locations,
                partition,
                body,
                emit,
            },
            spans,
        ))
    }

    fn key(&mut self) -> Result<Key, RuleError> {
        if self.eat_word("player") {
            Ok(Key::Player)
        } else if self.eat_word("entity") {
            Ok(Key::Entity)
        } else if self.eat_word("field") {
            Ok(Key::Field(self.name("a field")?.0))
        } else {
            self.unexpected("`player`, `entity` or `field NAME`")
        }
    }

    fn pattern(&mut self, spans: &mut Spans) -> Result<Body, RuleError> {
        let mut steps = vec![self.step(Contiguity::Start, false, spans)?];
        loop {
            let pos = self.pos();
            let negated = self.eat_word("not");
            let contiguity = if self.eat_word("then") {
                Contiguity::Strict
            } else if self.eat_word("followed") {
                self.expect_word("by")?;
                if self.eat_word("any") {
                    Contiguity::RelaxedAny
                } else {
                    Contiguity::Relaxed
                }
            } else if negated {
                return self.unexpected("`then` or `followed by` after `not`");
            } else {
                break;
            };
            if negated && contiguity == Contiguity::RelaxedAny {
                return error(
                    pos,
                    "`not followed by any` means nothing more than `not followed by`: write that",
                );
            }
            steps.push(self.step(contiguity, negated, spans)?);
            if steps.len() > MAX_PATTERN_STEPS {
                return error(
                    pos,
                    format!("a pattern has at most {MAX_PATTERN_STEPS} steps"),
                );
            }
        }
        let mut within_ms = None;
        if self.eat_word("within") {
            let (ms, pos) = self.duration()?;
            spans.within = Some(pos);
            within_ms = Some(ms);
        }
        let mut skip = Skip::NoSkip;
        if self.eat_word("skip") {
            spans.skip = self.pos();
            skip = if self.eat_word("no") {
                self.expect_word("skip")?;
                Skip::NoSkip
            } else if self.eat_word("to") {
                if self.eat_word("next") {
                    Skip::ToNext
                } else if self.eat_word("first") {
                    Skip::ToFirst(self.name("a step")?.0)
                } else if self.eat_word("last") {
                    Skip::ToLast(self.name("a step")?.0)
                } else {
                    return self.unexpected("`next`, `first STEP` or `last STEP`");
                }
            } else if self.eat_word("past") {
                self.expect_word("last")?;
                Skip::PastLast
            } else {
                return self.unexpected(
                    "`no skip`, `to next`, `past last`, `to first STEP` or `to last STEP`",
                );
            };
        }
        Ok(Body::Pattern {
            steps,
            within_ms,
            skip,
        })
    }

    fn aggregate(&mut self, spans: &mut Spans) -> Result<Body, RuleError> {
        let step = self.step(Contiguity::Start, false, spans)?;
        spans.window = self.pos();
        self.expect_word("window")?;
        let window = if self.eat_word("tumbling") {
            Window::Tumbling {
                size_ms: self.duration()?.0,
            }
        } else if self.eat_word("sliding") {
            let size_ms = self.duration()?.0;
            self.expect_word("every")?;
            let every_ms = self.duration()?.0;
            Window::Sliding { size_ms, every_ms }
        } else {
            return self.unexpected("`tumbling DURATION` or `sliding DURATION every DURATION`");
        };
        self.expect_word("having")?;
        spans.having = self.pos();
        let having = self.expr()?;
        Ok(Body::Aggregate {
            step,
            window,
            having,
        })
    }

    fn step(
        &mut self,
        contiguity: Contiguity,
        negated: bool,
        spans: &mut Spans,
    ) -> Result<Step, RuleError> {
        let (name, pos) = self.name("a step's name")?;
        self.expect_sym(":")?;
        let kind_pos = self.pos();
        let kind = match self.peek().clone() {
            Tok::Word(w) => match EventKind::all().into_iter().find(|k| k.name() == w) {
                Some(k) => {
                    self.next();
                    k
                }
                None => {
                    let names: Vec<&str> = EventKind::all().iter().map(|k| k.name()).collect();
                    return error(
                        kind_pos,
                        format!(
                            "{w:?} is not an event type: use one of {}",
                            names.join(", ")
                        ),
                    );
                }
            },
            _ => return self.unexpected("an event type"),
        };
        let mut pattern = None;
        if let Tok::Str(_) = self.peek() {
            let (p, ppos) = self.string("a pattern")?;
            if !kind.takes_pattern() {
                return error(ppos, format!("`{}` takes no pattern", kind.name()));
            }
            if p.is_empty() || p.len() > 128 {
                return error(ppos, "a pattern is 1 to 128 bytes");
            }
            pattern = Some(p);
        }
        let qpos = self.pos();
        let mut quantifier = if self.eat_sym("+") {
            Quantifier {
                min: 1,
                max: None,
                greedy: false,
            }
        } else if self.eat_sym("*") {
            Quantifier {
                min: 0,
                max: None,
                greedy: false,
            }
        } else if self.eat_sym("?") {
            Quantifier {
                min: 0,
                max: Some(1),
                greedy: false,
            }
        } else if self.eat_sym("{") {
            let min = self.bound()?;
            let max = if self.eat_sym(",") {
                if self.is_sym("}") {
                    None
                } else {
                    Some(self.bound()?)
                }
            } else {
                Some(min)
            };
            self.expect_sym("}")?;
            if let Some(max) = max {
                if max < min {
                    return error(
                        qpos,
                        format!("{{{min},{max}}}: the most is below the least"),
                    );
                }
                if max == 0 {
                    return error(qpos, "{0}: a step matches at least one event at most");
                }
            }
            Quantifier {
                min,
                max,
                greedy: false,
            }
        } else {
            Quantifier::ONE
        };
        if self.eat_word("greedy") {
            if quantifier.max == Some(quantifier.min) {
                return error(
                    qpos,
                    "`greedy` needs a quantifier that allows a choice (+, *, ?, {n,m})",
                );
            }
            quantifier.greedy = true;
        }
        let mut condition = None;
        if self.eat_word("where") {
            condition = Some(self.expr()?);
        }
        spans.steps.push(pos);
        Ok(Step {
            contiguity,
            negated,
            name,
            matcher: Matcher { kind, pattern },
            quantifier,
            condition,
        })
    }

    fn bound(&mut self) -> Result<u32, RuleError> {
        let pos = self.pos();
        match self.peek().clone() {
            Tok::Int(n) if (0..=i64::from(MAX_QUANTIFIER_BOUND)).contains(&n) => {
                self.next();
                Ok(n as u32)
            }
            Tok::Int(n) => error(
                pos,
                format!("{n}: a quantifier's bound is 0 to {MAX_QUANTIFIER_BOUND}"),
            ),
            _ => self.unexpected("a number"),
        }
    }

    fn emit(&mut self, spans: &mut Spans) -> Result<Emit, RuleError> {
        let (kind, pos) = self.string("the emitted event's kind in quotes")?;
        if kind.is_empty() || kind.len() > MAX_EMIT_KIND_BYTES {
            return error(
                pos,
                format!("an emitted kind is 1 to {MAX_EMIT_KIND_BYTES} bytes"),
            );
        }
        let mut fields = Vec::new();
        if self.eat_sym("{") {
            if !self.is_sym("}") {
                loop {
                    let (field, fpos) = self.name("a field")?;
                    if fields.iter().any(|(f, _)| *f == field) {
                        return error(fpos, format!("field {field:?} is set twice"));
                    }
                    self.expect_sym("=")?;
                    spans.fields.push(self.pos());
                    fields.push((field, self.expr()?));
                    if fields.len() > MAX_FIELDS_PER_EMIT {
                        return error(
                            fpos,
                            format!("a match emits at most {MAX_FIELDS_PER_EMIT} fields"),
                        );
                    }
                    if !self.eat_sym(",") {
                        break;
                    }
                }
            }
            self.expect_sym("}")?;
        }
        Ok(Emit { kind, fields })
    }

    fn expr(&mut self) -> Result<Expr, RuleError> {
        self.binary(1)
    }

    fn binary_op(&self) -> Option<BinOp> {
        Some(match self.peek() {
            Tok::Word(w) if w == "or" => BinOp::Or,
            Tok::Word(w) if w == "and" => BinOp::And,
            Tok::Sym("==") => BinOp::Eq,
            Tok::Sym("!=") => BinOp::Ne,
            Tok::Sym("<") => BinOp::Lt,
            Tok::Sym("<=") => BinOp::Le,
            Tok::Sym(">") => BinOp::Gt,
            Tok::Sym(">=") => BinOp::Ge,
            Tok::Sym("+") => BinOp::Add,
            Tok::Sym("-") => BinOp::Sub,
            Tok::Sym("*") => BinOp::Mul,
            Tok::Sym("/") => BinOp::Div,
            Tok::Sym("%") => BinOp::Rem,
            _ => return None,
        })
    }

    /// Operators of at least `min` precedence, left-associative;
    /// comparisons do not chain.
    fn binary(&mut self, min: u8) -> Result<Expr, RuleError> {
        let mut left = self.unary()?;
        while let Some(op) = self.binary_op().filter(|op| op.precedence() >= min) {
            self.next();
            let right = self.binary(op.precedence() + 1)?;
            if op.precedence() == 3 && self.binary_op().is_some_and(|o| o.precedence() == 3) {
                return error(self.pos(), "comparisons do not chain: join them with `and`");
            }
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, RuleError> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            return error(
                self.pos(),
                format!("an expression nests at most {MAX_EXPR_DEPTH} deep"),
            );
        }
        let e = if self.eat_word("not") {
            Expr::Unary(UnOp::Not, Box::new(self.unary()?))
        } else if self.eat_sym("-") {
            match self.unary()? {
                Expr::Int(n) => Expr::Int(-n),
                e => Expr::Unary(UnOp::Neg, Box::new(e)),
            }
        } else {
            self.atom()?
        };
        self.depth -= 1;
        Ok(e)
    }

    fn atom(&mut self) -> Result<Expr, RuleError> {
        let pos = self.pos();
        match self.peek().clone() {
            Tok::Int(n) => {
                self.next();
                Ok(Expr::Int(n))
            }
            Tok::Str(s) => {
                self.next();
                Ok(Expr::Str(s))
            }
            Tok::Sym("(") => {
                self.next();
                let e = self.expr()?;
                self.expect_sym(")")?;
                Ok(e)
            }
            Tok::Word(w) if w == "true" || w == "false" => {
                self.next();
                Ok(Expr::Bool(w == "true"))
            }
            Tok::Word(w) if matches!(self.peek_at(1), Tok::Sym("(")) => {
                let Some(func) = AggFunc::ALL.iter().find(|f| f.name() == w).copied() else {
                    let names: Vec<&str> = AggFunc::ALL.iter().map(|f| f.name()).collect();
                    return error(
                        pos,
                        format!("{w:?} is not a function: use one of {}", names.join(", ")),
                    );
                };
                self.next();
                self.next();
                let (step, _) = self.name("a step")?;
                let of = if func == AggFunc::Count {
                    None
                } else {
                    self.expect_sym(".")?;
                    Some(self.attr()?)
                };
                self.expect_sym(")")?;
                Ok(Expr::Agg { func, step, of })
            }
            Tok::Word(_) => {
                let (step, _) = self.name("a step")?;
                if !self.eat_sym(".") {
                    return error(
                        pos,
                        format!("{step:?} alone is not a value: name what of it, as in {step}.hp or {step}.player"),
                    );
                }
                Ok(Expr::Ref {
                    step,
                    attr: self.attr()?,
                })
            }
            _ => self.unexpected("a value"),
        }
    }

    fn attr(&mut self) -> Result<Attr, RuleError> {
        let pos = self.pos();
        let Tok::Word(w) = self.peek().clone() else {
            return self
                .unexpected("a field or `player`, `entity`, `kind`, `time`, `index`, `old.FIELD`");
        };
        self.next();
        Ok(match w.as_str() {
            "player" => Attr::Player,
            "entity" => Attr::Entity,
            "kind" => Attr::Kind,
            "time" => Attr::Time,
            "index" => Attr::Index,
            "old" if self.eat_sym(".") => Attr::Old(self.field_name()?),
            "field" if self.eat_sym(".") => Attr::Field(self.field_name()?),
            _ if w.len() > MAX_NAME_BYTES => {
                return error(
                    pos,
                    format!("field {w:?} is longer than {MAX_NAME_BYTES} bytes"),
                )
            }
            _ => Attr::Field(w),
        })
    }

    /// A field's name after `old.` or `field.` (which may be any word, so
    /// that fields named like attributes can be read).
    fn field_name(&mut self) -> Result<String, RuleError> {
        let pos = self.pos();
        match self.peek().clone() {
            Tok::Word(w) if w.len() <= MAX_NAME_BYTES => {
                self.next();
                Ok(w)
            }
            Tok::Word(w) => error(
                pos,
                format!("field {w:?} is longer than {MAX_NAME_BYTES} bytes"),
            ),
            _ => self.unexpected("a field's name"),
        }
    }
}

/// Words that cannot name a rule, step or field.
const KEYWORDS: [&str; 30] = [
    "rule",
    "on",
    "partition",
    "by",
    "pattern",
    "aggregate",
    "then",
    "followed",
    "not",
    "within",
    "skip",
    "no",
    "to",
    "next",
    "first",
    "last",
    "past",
    "window",
    "tumbling",
    "sliding",
    "every",
    "having",
    "emit",
    "where",
    "greedy",
    "and",
    "or",
    "true",
    "false",
    "field",
];

/// Where the parts of a rule that [`check`] may complain about are.
#[derive(Clone, Debug, Default)]
struct Spans {
    steps: Vec<Pos>,
    within: Option<Pos>,
    skip: Pos,
    window: Pos,
    having: Pos,
    fields: Vec<Pos>,
}

/// Parses and checks a rule's text.
pub fn parse(text: &str) -> Result<Rule, RuleError> {
    if text.len() > MAX_RULE_TEXT_BYTES {
        return error(
            Pos { line: 1, column: 1 },
            format!(
                "the rule is {} bytes; the limit is {MAX_RULE_TEXT_BYTES}",
                text.len()
            ),
        );
    }
    let mut parser = Parser {
        toks: lex(text)?,
        at: 0,
        depth: 0,
    };
    let (rule, spans) = parser.rule()?;
    check(&rule, &spans)?;
    Ok(rule)
}

/// What an expression may refer to where it stands.
struct Scope<'a> {
    /// Steps that may be referred to (matched earlier, or the step itself).
    visible: &'a [&'a Step],
    /// Aggregates run over this step (an aggregate rule's), or over any
    /// visible step (a pattern's).
    aggregate_over: Option<&'a str>,
    /// Whether aggregates may appear at all.
    aggregates: bool,
}

/// `STEP.old.FIELD` needs a step that matches changes.
fn check_old(
    step: &str,
    attr: Option<&Attr>,
    scope: &Scope<'_>,
    pos: Pos,
) -> Result<(), RuleError> {
    let changes = scope
        .visible
        .iter()
        .any(|s| s.name == step && s.matcher.kind == EventKind::Of(EventType::Changed));
    match attr {
        Some(Attr::Old(_)) if !changes => error(
            pos,
            format!("{step}.old.FIELD needs {step} to match `changed` events"),
        ),
        _ => Ok(()),
    }
}

fn check_expr(e: &Expr, scope: &Scope<'_>, pos: Pos) -> Result<(), RuleError> {
    let known = |step: &str| scope.visible.iter().any(|s| s.name == step);
    match e {
        Expr::Int(_) | Expr::Str(_) | Expr::Bool(_) => Ok(()),
        Expr::Ref { step, attr } => {
            if !known(step) {
                return error(
                    pos,
                    format!("step {step:?} is not matched before this point"),
                );
            }
            check_old(step, Some(attr), scope, pos)
        }
        Expr::Agg { step, of, .. } => {
            if !scope.aggregates {
                return error(pos, "an aggregate is not allowed here");
            }
            match scope.aggregate_over {
                Some(over) if over != step => error(
                    pos,
                    format!("aggregates here run over {over:?}, not {step:?}"),
                ),
                _ if !known(step) => error(
                    pos,
                    format!("step {step:?} is not matched before this point"),
                ),
                _ => check_old(step, of.as_ref(), scope, pos),
            }
        }
        Expr::Unary(_, e) => check_expr(e, scope, pos),
        Expr::Binary(_, a, b) => {
            check_expr(a, scope, pos)?;
            check_expr(b, scope, pos)
        }
    }
}

fn check_duration(ms: u64, least: u64, most: u64, what: &str, pos: Pos) -> Result<(), RuleError> {
    if ms < least || ms > most {
        return error(
            pos,
            format!(
                "{what} is {}; it must be {} to {}",
                Duration(ms),
                Duration(least),
                Duration(most)
            ),
        );
    }
    Ok(())
}

fn check(rule: &Rule, spans: &Spans) -> Result<(), RuleError> {
    let all: Vec<&Step> = match &rule.body {
        Body::Pattern { steps, .. } => steps.iter().collect(),
        Body::Aggregate { step, .. } => vec![step],
    };
    for (i, step) in all.iter().enumerate() {
        if all[..i].iter().any(|s| s.name == step.name) {
            return error(
                spans.steps[i],
                format!("step {:?} is named twice", step.name),
            );
        }
    }
    // Steps a later step or the emitted fields may refer to: not negated ones.
    let matched: Vec<&Step> = all.iter().copied().filter(|s| !s.negated).collect();
    match &rule.body {
        Body::Pattern {
            steps,
            within_ms,
            skip,
        } => {
            for (i, step) in steps.iter().enumerate() {
                let pos = spans.steps[i];
                if step.negated && step.quantifier != Quantifier::ONE {
                    return error(
                        pos,
                        "a negated step matches one event: it takes no quantifier",
                    );
                }
                if step.quantifier.min == 0 && (i == 0 || i == steps.len() - 1) {
                    return error(pos, "the first and last steps cannot be optional");
                }
                let last = i == steps.len() - 1;
                if step.negated && last && within_ms.is_none() {
                    return error(pos, "a pattern that ends in a negation needs `within`: absence is judged when that time has passed");
                }
                if step.negated && last && step.contiguity == Contiguity::Strict {
                    return error(pos, "`not then` cannot end a pattern: the next event either is or is not the one; use `not followed by ... within`");
                }
                if step.negated && i > 0 && steps[i - 1].negated {
                    return error(
                        pos,
                        "two negations in a row: join them in one step's condition",
                    );
                }
                let visible: Vec<&Step> = steps[..i]
                    .iter()
                    .filter(|s| !s.negated)
                    .chain(std::iter::once(step))
                    .collect();
                if let Some(c) = &step.condition {
                    let scope = Scope {
                        visible: &visible,
                        aggregate_over: None,
                        aggregates: true,
                    };
                    check_expr(c, &scope, pos)?;
                }
            }
            if let (Some(ms), Some(pos)) = (within_ms, spans.within) {
                check_duration(*ms, 1, MAX_WITHIN_MS, "`within`", pos)?;
            }
            if let Skip::ToFirst(s) | Skip::ToLast(s) = skip {
                if !matched.iter().any(|m| m.name == *s) {
                    return error(
                        spans.skip,
                        format!("skip names {s:?}, which is not a matched step of the pattern"),
                    );
                }
            }
            let scope = Scope {
                visible: &matched,
                aggregate_over: None,
                aggregates: true,
            };
            for ((_, e), pos) in rule.emit.fields.iter().zip(&spans.fields) {
                check_expr(e, &scope, *pos)?;
            }
        }
        Body::Aggregate {
            step,
            window,
            having,
        } => {
            if step.quantifier != Quantifier::ONE {
                return error(
                    spans.steps[0],
                    "an aggregate's step matches one event at a time: it takes no quantifier",
                );
            }
            if let Some(c) = &step.condition {
                let scope = Scope {
                    visible: &all,
                    aggregate_over: None,
                    aggregates: false,
                };
                check_expr(c, &scope, spans.steps[0])?;
            }
            match *window {
                Window::Tumbling { size_ms } => check_duration(
                    size_ms,
                    MIN_WINDOW_MS,
                    MAX_WINDOW_MS,
                    "the window",
                    spans.window,
                )?,
                Window::Sliding { size_ms, every_ms } => {
                    check_duration(
                        size_ms,
                        MIN_WINDOW_MS,
                        MAX_WINDOW_MS,
                        "the window",
                        spans.window,
                    )?;
                    check_duration(every_ms, MIN_WINDOW_MS, size_ms, "the slide", spans.window)?;
                    if size_ms % every_ms != 0 {
                        return error(
                            spans.window,
                            format!(
                                "the window ({}) must be a whole number of slides ({})",
                                Duration(size_ms),
                                Duration(every_ms)
                            ),
                        );
                    }
                    if size_ms / every_ms > MAX_WINDOWS_PER_EVENT {
                        return error(spans.window, format!("an event would fall in {} windows; at most {MAX_WINDOWS_PER_EVENT}", size_ms / every_ms));
                    }
                }
            }
            let scope = Scope {
                visible: &all,
                aggregate_over: Some(&step.name),
                aggregates: true,
            };
            check_expr(having, &scope, spans.having)?;
            for ((_, e), pos) in rule.emit.fields.iter().zip(&spans.fields) {
                check_expr(e, &scope, *pos)?;
            }
        }
    }
    Ok(())
}

/// A duration in its largest exact unit.
struct Duration(u64);

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        for (unit, scale) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if ms > 0 && ms.is_multiple_of(scale) {
                return write!(f, "{}{unit}", ms / scale);
            }
        }
        write!(f, "{ms}ms")
    }
}

fn write_str(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Player => f.write_str("player"),
            Key::Entity => f.write_str("entity"),
            Key::Field(name) => write!(f, "field {name}"),
        }
    }
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attr::Field(name) if is_plain_field(name) => f.write_str(name),
            Attr::Field(name) => write!(f, "field.{name}"),
            Attr::Old(name) => write!(f, "old.{name}"),
            Attr::Player => f.write_str("player"),
            Attr::Entity => f.write_str("entity"),
            Attr::Kind => f.write_str("kind"),
            Attr::Time => f.write_str("time"),
            Attr::Index => f.write_str("index"),
        }
    }
}

/// Whether a field can be written by its bare name after `step.`.
fn is_plain_field(name: &str) -> bool {
    !matches!(
        name,
        "player" | "entity" | "kind" | "time" | "index" | "old" | "field"
    )
}

impl Expr {
    fn write(&self, f: &mut fmt::Formatter<'_>, outer: u8) -> fmt::Result {
        match self {
            Expr::Int(n) => write!(f, "{n}"),
            Expr::Str(s) => write_str(f, s),
            Expr::Bool(b) => write!(f, "{b}"),
            Expr::Ref { step, attr } => write!(f, "{step}.{attr}"),
            Expr::Agg { func, step, of } => match of {
                Some(attr) => write!(f, "{}({step}.{attr})", func.name()),
                None => write!(f, "{}({step})", func.name()),
            },
            Expr::Unary(UnOp::Not, e) => {
                f.write_str("not ")?;
                e.write(f, 6)
            }
            Expr::Unary(UnOp::Neg, e) => {
                f.write_str("-")?;
                e.write(f, 6)
            }
            Expr::Binary(op, a, b) => {
                let p = op.precedence();
                if p < outer {
                    f.write_str("(")?;
                }
                a.write(f, p)?;
                write!(f, " {} ", op.symbol())?;
                b.write(f, p + 1)?;
                if p < outer {
                    f.write_str(")")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, 0)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.matcher.kind.name())?;
        if let Some(p) = &self.matcher.pattern {
            f.write_str(" ")?;
            write_str(f, p)?;
        }
        let q = self.quantifier;
        match (q.min, q.max) {
            (1, Some(1)) => {}
            (1, None) => f.write_str(" +")?,
            (0, None) => f.write_str(" *")?,
            (0, Some(1)) => f.write_str(" ?")?,
            (n, Some(m)) if n == m => write!(f, " {{{n}}}")?,
            (n, Some(m)) => write!(f, " {{{n},{m}}}")?,
            (n, None) => write!(f, " {{{n},}}")?,
        }
        if q.greedy {
            f.write_str(" greedy")?;
        }
        if let Some(c) = &self.condition {
            write!(f, " where {c}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rule {}", self.name)?;
        if !self.locations.is_empty() {
            f.write_str("on ")?;
            for (i, l) in self.locations.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write_str(f, l)?;
            }
            writeln!(f)?;
        }
        if let Some(k) = &self.partition {
            writeln!(f, "partition by {k}")?;
        }
        match &self.body {
            Body::Pattern {
                steps,
                within_ms,
                skip,
            } => {
                for step in steps {
                    let join = match (step.negated, step.contiguity) {
                        (_, Contiguity::Start) => "pattern",
                        (false, Contiguity::Strict) => "  then",
                        (false, Contiguity::Relaxed) => "  followed by",
                        (false, Contiguity::RelaxedAny) => "  followed by any",
                        (true, Contiguity::Strict) => "  not then",
                        (true, _) => "  not followed by",
                    };
                    writeln!(f, "{join} {step}")?;
                }
                if let Some(ms) = within_ms {
                    writeln!(f, "within {}", Duration(*ms))?;
                }
                match skip {
                    Skip::NoSkip => {}
                    Skip::ToNext => writeln!(f, "skip to next")?,
                    Skip::PastLast => writeln!(f, "skip past last")?,
                    Skip::ToFirst(s) => writeln!(f, "skip to first {s}")?,
                    Skip::ToLast(s) => writeln!(f, "skip to last {s}")?,
                }
            }
            Body::Aggregate {
                step,
                window,
                having,
            } => {
                writeln!(f, "aggregate {step}")?;
                match window {
                    Window::Tumbling { size_ms } => {
                        writeln!(f, "window tumbling {}", Duration(*size_ms))?
                    }
                    Window::Sliding { size_ms, every_ms } => writeln!(
                        f,
                        "window sliding {} every {}",
                        Duration(*size_ms),
                        Duration(*every_ms)
                    )?,
                }
                writeln!(f, "having {having}")?;
            }
        }
        f.write_str("emit ")?;
        write_str(f, &self.emit.kind)?;
        if !self.emit.fields.is_empty() {
            f.write_str(" { ")?;
            for (i, (name, e)) in self.emit.fields.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{name} = {e}")?;
            }
            f.write_str(" }")?;
        }
        writeln!(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANK: &str = r#"
        # Two players attack the same target within ten seconds.
        rule flank
        on "north", "south"
        pattern a: emitted "attack"
          followed by b: emitted "attack" where b.target == a.target and b.player != a.player
        within 10000ms
        skip past last
        emit "flank" { target = a.target, gap_ms = b.time - a.time }
    "#;

    const LOSSES: &str = r#"
        rule heavy_losses
        partition by player
        aggregate e: emitted "unit_lost" where e.cost > 0
        window sliding 60s every 10s
        having count(e) > 5 and sum(e.cost) >= 100
        emit "heavy_losses" { lost = count(e), cost = avg(e.cost) }
    "#;

    const DESERTED: &str = r#"
        rule deserted
        partition by entity
        pattern c: created "base/*"
          not followed by v: changed "base/*" where v.entity == c.entity
        within 2m
        emit "base_deserted" { base = c.entity }
    "#;

    const RUN: &str = r#"
        rule retreat
        partition by field unit
        pattern a: changed "unit/*" where a.hp < a.old.hp
          then b: changed "unit/*" {2,4} greedy where b.hp < a.hp
          followed by any c: deleted "unit/*"
        skip to last b
        emit "retreat" { hits = count(b), least = min(b.hp), first_hp = -a.old.hp + (1 - 2) * 3 }
    "#;

    #[test]
    fn rules_parse_and_their_canonical_text_parses_to_the_same_rule() {
        for text in [FLANK, LOSSES, DESERTED, RUN] {
            let rule = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            let canonical = rule.to_string();
            let again = parse(&canonical).unwrap_or_else(|e| panic!("{e}\n{canonical}"));
            assert_eq!(again, rule, "{canonical}");
            assert_eq!(again.to_string(), canonical);
        }
    }

    #[test]
    fn the_canonical_text_is_normalized() {
        let rule = parse(FLANK).unwrap();
        assert_eq!(
            rule.to_string(),
            "rule flank\n\
             on \"north\", \"south\"\n\
             pattern a: emitted \"attack\"\n\
             \x20 followed by b: emitted \"attack\" where b.target == a.target and b.player != a.player\n\
             within 10s\n\
             skip past last\n\
             emit \"flank\" { target = a.target, gap_ms = b.time - a.time }\n"
        );
        let run = parse(RUN).unwrap().to_string();
        assert!(
            run.contains("then b: changed \"unit/*\" {2,4} greedy where b.hp < a.hp"),
            "{run}"
        );
        assert!(run.contains("first_hp = -a.old.hp + (1 - 2) * 3"), "{run}");
    }

    #[test]
    fn precedence_and_parentheses_survive_the_round_trip() {
        let rule = parse(
            "rule p pattern a: any where (a.x + 1) * 2 > 3 or not (a.y == 1 and a.z != 2) emit \"k\"",
        )
        .unwrap();
        let Body::Pattern { steps, .. } = &rule.body else {
            panic!()
        };
        assert_eq!(
            steps[0].condition.as_ref().unwrap().to_string(),
            "(a.x + 1) * 2 > 3 or not (a.y == 1 and a.z != 2)"
        );
        let sub = parse("rule p pattern a: any where a.x - (a.y - a.z) == 0 emit \"k\"").unwrap();
        assert_eq!(parse(&sub.to_string()).unwrap(), sub);
        assert!(sub.to_string().contains("a.x - (a.y - a.z) == 0"));
    }

    fn refused(text: &str) -> RuleError {
        match parse(text) {
            Ok(rule) => panic!("accepted:\n{rule}"),
            Err(e) => e,
        }
    }

    #[test]
    fn errors_say_what_is_wrong_and_where() {
        let cases: &[(&str, (u32, u32), &str)] = &[
            ("rule r\npattern a: exploded emit \"k\"", (2, 12), "not an event type"),
            ("rule r\npattern a: any\nwithin 10 emit \"k\"", (3, 8), "needs a unit of time"),
            ("rule r pattern a: any within 3d emit \"k\"", (1, 30), "not a unit of time"),
            ("rule r pattern a: any where b.hp > 1 emit \"k\"", (1, 16), "\"b\" is not matched before"),
            ("rule r pattern a: any followed by a: any emit \"k\"", (1, 35), "named twice"),
            ("rule r pattern a: any not followed by b: any emit \"k\"", (1, 39), "needs `within`"),
            ("rule r pattern a: any\n  then b: any {3,2} emit \"k\"", (2, 15), "below the least"),
            ("rule r pattern a: any emit \"k\" extra", (1, 32), "expected the end of the rule"),
            ("rule r pattern a: any emit \"k", (1, 28), "not closed"),
            ("rule then pattern a: any emit \"k\"", (1, 6), "keyword"),
            ("rule r pattern a: any where a.x < 1 < 2 emit \"k\"", (1, 37), "do not chain"),
            ("rule r pattern a: committed \"x\" emit \"k\"", (1, 29), "takes no pattern"),
            ("rule r pattern a: any not followed by b: any within 2s skip to first b emit \"k\"", (1, 61), "not a matched step"),
            ("rule r aggregate e: any window tumbling 10s having count(x) > 1 emit \"k\"", (1, 52), "run over \"e\""),
            ("rule r aggregate e: any window sliding 60s every 7s having count(e) > 1 emit \"k\"", (1, 25), "whole number of slides"),
            ("rule r aggregate e: any window tumbling 2d having true emit \"k\"", (1, 41), "not a unit"),
            ("rule r aggregate e: any window tumbling 10ms having true emit \"k\"", (1, 25), "must be 100ms to 24h"),
            ("rule r pattern a: changed \"u\" followed by b: any where b.old.hp > 1 within 1s emit \"k\"", (1, 43), "needs b to match `changed`"),
            ("rule r pattern a: any ? followed by b: any emit \"k\"", (1, 16), "cannot be optional"),
            ("rule r pattern a: any followed by b: any greedy emit \"k\"", (1, 42), "`greedy` needs a quantifier"),
            ("rule r pattern a: any emit \"k\" { n = 1, n = 2 }", (1, 41), "set twice"),
            ("rule r pattern a: any where a emit \"k\"", (1, 29), "alone is not a value"),
            ("rule r pattern a: any where frob(a) emit \"k\"", (1, 29), "not a function"),
            ("rule r pattern a: any emit \"k\" { n = a.x $ 1 }", (1, 42), "not part of the rule language"),
            (
                "rule r pattern a: any followed by b: any where max(b.old.hp) > 1 emit \"k\"",
                (1, 35),
                "needs b to match `changed`",
            ),
        ];
        let mut wrong = Vec::new();
        for (text, (line, column), says) in cases {
            let e = refused(text);
            if !e.message.contains(says) || (e.pos.line, e.pos.column) != (*line, *column) {
                wrong.push(format!(
                    "{text}\n  expected {line}:{column} {says:?}, got {e}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn every_limit_is_refused_by_name() {
        let steps: Vec<String> = (0..=MAX_PATTERN_STEPS)
            .map(|i| format!("s{i}: any"))
            .collect();
        let long = format!("rule r pattern {} emit \"k\"", steps.join(" then "));
        assert!(refused(&long)
            .message
            .contains(&format!("at most {MAX_PATTERN_STEPS} steps")));
        let fields: Vec<String> = (0..=MAX_FIELDS_PER_EMIT)
            .map(|i| format!("f{i} = 1"))
            .collect();
        let wide = format!(
            "rule r pattern a: any emit \"k\" {{ {} }}",
            fields.join(", ")
        );
        assert!(refused(&wide).message.contains("at most"));
        let deep = format!(
            "rule r pattern a: any where {}1{} emit \"k\"",
            "(".repeat(MAX_EXPR_DEPTH + 1),
            ")".repeat(MAX_EXPR_DEPTH + 1)
        );
        assert!(refused(&deep).message.contains("nests at most"));
        let big = format!(
            "rule r pattern a: any {{{}}} emit \"k\"",
            MAX_QUANTIFIER_BOUND + 1
        );
        assert!(refused(&big).message.contains("bound is 0 to"));
        let text = format!(
            "rule r pattern a: any emit \"k\" # {}",
            "x".repeat(MAX_RULE_TEXT_BYTES)
        );
        assert!(refused(&text).message.contains("the limit is"));
        let within = "rule r pattern a: any followed by b: any within 25h emit \"k\"";
        assert!(refused(within).message.contains("must be 1ms to 24h"));
        let slides = "rule r aggregate e: any window sliding 1h every 1s having true emit \"k\"";
        assert!(refused(slides).message.contains("at most 100"));
        let name = format!(
            "rule {} pattern a: any emit \"k\"",
            "n".repeat(MAX_NAME_BYTES + 1)
        );
        assert!(refused(&name).message.contains("longer than"));
        let kind = format!(
            "rule r pattern a: any emit \"{}\"",
            "k".repeat(MAX_EMIT_KIND_BYTES + 1)
        );
        assert!(refused(&kind).message.contains("emitted kind is 1 to"));
    }

    mod round_trip {
        use super::super::*;
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = String> {
            prop::sample::select(vec!["a", "b", "c", "hp", "target", "x_1"]).prop_map(String::from)
        }

        fn attr() -> impl Strategy<Value = Attr> {
            prop_oneof![
                name().prop_map(Attr::Field),
                Just(Attr::Field("time".into())),
                Just(Attr::Player),
                Just(Attr::Entity),
                Just(Attr::Kind),
                Just(Attr::Time),
                Just(Attr::Index),
            ]
        }

        fn expr() -> impl Strategy<Value = Expr> {
            let leaf = prop_oneof![
                any::<i64>()
                    .prop_filter("fits a literal", |n| *n > i64::MIN)
                    .prop_map(Expr::Int),
                "[a-z \"\\\\\n]{0,6}".prop_map(Expr::Str),
                any::<bool>().prop_map(Expr::Bool),
                attr().prop_map(|attr| Expr::Ref {
                    step: "s0".into(),
                    attr
                }),
                (prop::sample::select(AggFunc::ALL.to_vec()), attr()).prop_map(|(func, of)| {
                    Expr::Agg {
                        func,
                        step: "s0".into(),
                        of: (func != AggFunc::Count).then_some(of),
                    }
                }),
            ];
            leaf.prop_recursive(4, 24, 2, |inner| {
                let ops = vec![
                    BinOp::Or,
                    BinOp::And,
                    BinOp::Eq,
                    BinOp::Ne,
                    BinOp::Lt,
                    BinOp::Le,
                    BinOp::Gt,
                    BinOp::Ge,
                    BinOp::Add,
                    BinOp::Sub,
                    BinOp::Mul,
                    BinOp::Div,
                    BinOp::Rem,
                ];
                prop_oneof![
                    inner
                        .clone()
                        .prop_map(|e| Expr::Unary(UnOp::Not, Box::new(e))),
                    inner
                        .clone()
                        .prop_filter("a negated literal is a literal", |e| !matches!(
                            e,
                            Expr::Int(_)
                        ))
                        .prop_map(|e| Expr::Unary(UnOp::Neg, Box::new(e))),
                    (prop::sample::select(ops), inner.clone(), inner)
                        .prop_filter("comparisons do not chain", |(op, a, b)| {
                            let cmp =
                                |e: &Expr| matches!(e, Expr::Binary(o, ..) if o.precedence() == 3);
                            op.precedence() != 3 || !(cmp(a) || cmp(b))
                        })
                        .prop_map(|(op, a, b)| Expr::Binary(op, Box::new(a), Box::new(b))),
                ]
            })
        }

        proptest! {
            #[test]
            fn a_rule_reads_back_from_its_canonical_text(
                condition in expr(),
                field in expr(),
                steps in 1usize..4,
                within in 1u64..100_000,
                greedy in any::<bool>(),
            ) {
                let mut text = String::from("rule r partition by field unit pattern s0: any");
                for i in 1..steps {
                    text.push_str(&format!(" followed by s{i}: emitted \"k*\" {{1,3}}{}", if greedy { " greedy" } else { "" }));
                }
                text.push_str(&format!(" within {within}ms skip to last s0 emit \"m\""));
                let mut rule = parse(&text).unwrap();
                let Body::Pattern { steps, .. } = &mut rule.body else { unreachable!() };
                steps[0].condition = Some(condition);
                rule.emit.fields.push(("f".into(), field));
                let canonical = rule.to_string();
                let again = parse(&canonical).map_err(|e| TestCaseError::fail(format!("{e}\n{canonical}")))?;
                prop_assert_eq!(&again, &rule, "{}", canonical);
                prop_assert_eq!(again.to_string(), canonical);
            }
        }
    }
}
