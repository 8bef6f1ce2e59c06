//! `garrison rules`: rules of the complex event processor
//! (`docs/cep.md`). `check` parses and checks a rule file and prints its
//! canonical text; `backtest` runs a rule over a location's retained
//! events with the engine's own code and prints each match with the ids
//! of the events it took.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use garrison_client::events::{Cursor, EventFilter, EventId, LocationEvent, StartAt, StreamEvent};
use garrison_client::{Client, Value};

use super::Cli;
use crate::cep::lang::{parse, Rule};
use crate::cep::pattern::{PatternMatcher, PatternState};
use crate::cep::window::{Aggregator, WindowState};

/// Arguments of `garrison rules`.
#[derive(Debug, Args)]
pub struct RulesArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RulesCommand,
}

/// The `rules` subcommands.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Parse and check a rule file; print its canonical text, or what is
    /// wrong and where (exit code 1).
    Check {
        /// The rule's file.
        file: PathBuf,
    },
    /// Run a rule over a location's retained events (oldest first) and
    /// print its matches, each with the ids of the events it took.
    Backtest {
        /// The location.
        #[arg(short, long)]
        location: String,
        /// The rule's file.
        file: PathBuf,
        /// The key to log in with (default: $GARRISON_HOME/player.key, else
        /// the dev cluster's admin key).
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

/// One match found by a backtest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The event at which it was found.
    pub at: EventId,
    /// The events it took (for an aggregate: none; see `window`).
    pub events: Vec<EventId>,
    /// For an aggregate: the window, `[start, end)` in log time.
    pub window: Option<(u64, u64)>,
    /// The fields it emits.
    pub fields: Vec<(String, Value)>,
}

/// What a backtest saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backtest {
    /// Events read.
    pub events: u64,
    /// Matches, in the order they were found.
    pub found: Vec<Found>,
    /// Partial matches, or open windows, left when the events ran out.
    pub pending: usize,
}

fn read_rule(file: &Path) -> anyhow::Result<Result<Rule, String>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    Ok(parse(&text).map_err(|e| format!("{}: {e}", file.display())))
}

/// Every event `location` retains, oldest first (if retention moves past
/// the reader meanwhile, it goes on from the oldest event still held).
pub async fn retained(client: &Client, location: &str) -> anyhow::Result<Vec<StreamEvent>> {
    let mut subscription = client.subscribe(
        vec![(location.to_string(), StartAt::Oldest)],
        EventFilter::default(),
    );
    subscription.wait_ms = 0;
    let mut events = Vec::new();
    loop {
        let fetched = match subscription.poll().await {
            Ok(n) => n,
            Err(e) if subscription.skip_trimmed(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        while let Some(event) = subscription.next_buffered() {
            events.push(event);
        }
        if fetched == 0 {
            return Ok(events);
        }
    }
}

fn local(e: &StreamEvent) -> LocationEvent {
    LocationEvent {
        index: e.id.index,
        position: e.id.position,
        log_time_ms: e.log_time_ms,
        player: e.player,
        body: e.body.clone(),
    }
}

/// Runs `rule` over `events` with the engine apply will use.
pub fn run(rule: &Rule, events: &[StreamEvent]) -> Backtest {
    let mut out = Backtest {
        events: events.len() as u64,
        ..Default::default()
    };
    let id = |location: &str, c: Cursor| EventId {
        location: location.to_string(),
        index: c.index,
        position: c.position,
    };
    if let Some(matcher) = PatternMatcher::new(rule) {
        let mut state = PatternState::default();
        for e in events {
            for m in matcher.add(&mut state, &local(e)) {
                out.found.push(Found {
                    at: e.id.clone(),
                    events: m.events.iter().map(|c| id(&e.id.location, *c)).collect(),
                    window: None,
                    fields: m.fields,
                });
            }
        }
        out.pending = state.runs();
    } else if let Some(agg) = Aggregator::new(rule) {
        let mut state = WindowState::default();
        for e in events {
            for m in agg.add(&mut state, &local(e)) {
                out.found.push(Found {
                    at: e.id.clone(),
                    events: Vec::new(),
                    window: Some((m.start_ms, m.end_ms)),
                    fields: m.fields,
                });
            }
        }
        out.pending = state.open_groups();
    }
    out
}

/// Runs `garrison rules`.
pub async fn command(cli: &Cli, args: &RulesArgs) -> anyhow::Result<i32> {
    match &args.command {
        RulesCommand::Check { file } => match read_rule(file)? {
            Ok(rule) => {
                print!("{rule}");
                Ok(0)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(1)
            }
        },
        RulesCommand::Backtest {
            location,
            file,
            key,
        } => {
            let rule = match read_rule(file)? {
                Ok(rule) => rule,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(1);
                }
            };
            let client = super::ops::connect_reader(cli, key).await?;
            let events = retained(&client, location).await?;
            let result = run(&rule, &events);
            for f in &result.found {
                let fields: Vec<String> =
                    f.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let what = match f.window {
                    Some((start, end)) => format!("window [{start}, {end})"),
                    None => {
                        let ids: Vec<String> = f.events.iter().map(|e| e.to_string()).collect();
                        format!("events {}", ids.join(" "))
                    }
                };
                println!(
                    "{} at {}: {what} {{{}}}",
                    rule.emit.kind,
                    f.at,
                    fields.join(", ")
                );
            }
            println!(
                "{} matches in {} events of {location}; {} pending",
                result.found.len(),
                result.events,
                result.pending
            );
            Ok(0)
        }
    }
}
