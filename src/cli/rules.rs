//! `garrison rules`: rules of the complex event processor
//! (`docs/cep.md`). `check` parses and checks a rule file and prints its
//! canonical text; `deploy`, `remove`, `list` and `show` manage the
//! cluster's rules through administrative transactions and reads; `test`
//! runs rules over an event script, and `backtest` over a location's
//! retained events, both with the engine apply runs.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use garrison_client::events::{EventId, StreamEvent};
use garrison_client::policy::AdminOp;
use garrison_client::Client;

use super::Cli;
use crate::cep::engine::CepState;
use crate::cep::lang::{parse, Body, Rule};
use crate::cep::script::{match_line, parse_script, rule_set, run_script};

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
    /// Deploy a rule (or replace the deployed rule of the same name): an
    /// administrative transaction; every location it names (or all) runs
    /// it from the index at which its log receives it.
    Deploy {
        /// The rule's file.
        file: PathBuf,
        /// The admin's key file (default: the dev cluster's admin key).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Remove a deployed rule.
    Remove {
        /// Its name.
        name: String,
        /// The admin's key file (default: the dev cluster's admin key).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// List the deployed rules.
    List,
    /// Print a deployed rule's canonical text and version; with
    /// `--location`, also what it holds and found there.
    Show {
        /// Its name.
        name: String,
        /// A location to report on.
        #[arg(short, long)]
        location: Option<String>,
    },
    /// Run rule files over an event script (see `docs/cep.md`, "Event
    /// scripts") and print each match and what is left pending.
    Test {
        /// The event script.
        #[arg(short, long)]
        script: PathBuf,
        /// The rules' files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
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
    /// The id the match would have had: after its entry's retained events.
    pub at: EventId,
    /// The match, as apply would have recorded it.
    pub body: garrison_client::events::EventBody,
}

/// What a backtest saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backtest {
    /// Events read.
    pub events: u64,
    /// Matches, in the order they were found.
    pub found: Vec<Found>,
    /// Partial matches, or open window groups, left when the events ran
    /// out.
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
    use garrison_client::events::{EventFilter, StartAt};
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

/// Runs `rule` over `events` (one location's, in log order) with the
/// engine apply runs: entry by entry, each entry's retained events
/// together, the rule deployed before the first.
pub fn run(rule: &Rule, events: &[StreamEvent]) -> Backtest {
    let mut cep = CepState::default();
    cep.set_rules(&rule_set(std::slice::from_ref(rule), 1), "backtest");
    let mut out = Backtest {
        events: events.len() as u64,
        ..Default::default()
    };
    for entry in events.chunk_by(|a, b| a.id.index == b.id.index) {
        let first = &entry[0];
        let mut bodies: Vec<_> = entry.iter().map(|e| e.body.clone()).collect();
        // Positions as retained (a reader may not see every event).
        let own = entry.last().map_or(0, |e| e.id.position as usize + 1);
        let seen = bodies.len();
        cep.entry(first.id.index, first.log_time_ms, first.player, &mut bodies);
        for (k, body) in bodies.into_iter().enumerate().skip(seen) {
            out.found.push(Found {
                at: EventId {
                    location: first.id.location.clone(),
                    index: first.id.index,
                    position: (own + k - seen) as u32,
                },
                body,
            });
        }
    }
    out.pending = cep.rules.values().map(|r| r.pending()).sum();
    out
}

fn rule_kind(rule: &Rule) -> &'static str {
    match rule.body {
        Body::Pattern { .. } => "pattern",
        Body::Aggregate { .. } => "aggregate",
    }
}

/// Runs `garrison rules`.
pub async fn command(cli: &Cli, args: &RulesArgs) -> anyhow::Result<i32> {
    let read = |file: &Path| -> anyhow::Result<Option<Rule>> {
        Ok(match read_rule(file)? {
            Ok(rule) => Some(rule),
            Err(e) => {
                eprintln!("{e}");
                None
            }
        })
    };
    match &args.command {
        RulesCommand::Check { file } => match read(file)? {
            Some(rule) => {
                print!("{rule}");
                Ok(0)
            }
            None => Ok(1),
        },
        RulesCommand::Deploy { file, key } => {
            let Some(rule) = read(file)? else {
                return Ok(1);
            };
            let op = AdminOp::DeployRule {
                text: rule.to_string(),
            };
            super::admin::submit_op(cli, key.as_ref(), op).await
        }
        RulesCommand::Remove { name, key } => {
            let op = AdminOp::RemoveRule { name: name.clone() };
            super::admin::submit_op(cli, key.as_ref(), op).await
        }
        RulesCommand::List => {
            let client = super::connect(cli).await?;
            let set = client.rules().await?;
            if set.rules.is_empty() {
                println!("no rules deployed");
            }
            for (name, deployed) in &set.rules {
                let (kind, on) = match parse(&deployed.text) {
                    Ok(r) => (
                        rule_kind(&r),
                        if r.locations.is_empty() {
                            "every location".to_string()
                        } else {
                            r.locations.join(", ")
                        },
                    ),
                    Err(_) => ("?", "?".into()),
                };
                println!(
                    "{name}  version {}  {kind}  on {on}  emits {}",
                    deployed.version,
                    parse(&deployed.text).map_or("?".into(), |r| r.emit.kind)
                );
            }
            Ok(0)
        }
        RulesCommand::Show { name, location } => {
            let client = super::connect(cli).await?;
            let set = client.rules().await?;
            let Some(deployed) = set.rules.get(name) else {
                eprintln!("no rule {name:?} is deployed");
                return Ok(1);
            };
            println!("# version {}", deployed.version);
            print!("{}", deployed.text);
            if let Some(location) = location {
                let here = client.location_rules(location).await?;
                match here.rules.iter().find(|r| r.name == *name) {
                    Some(r) => println!(
                        "# at {location}, as of index {}: version {}, {} matches, {} pending, {} dropped",
                        here.index, r.version, r.matches, r.pending, r.dropped
                    ),
                    None => println!(
                        "# not running at {location} (as of index {}, rule set version {})",
                        here.index, here.version
                    ),
                }
            }
            Ok(0)
        }
        RulesCommand::Test { script, files } => {
            let mut rules = Vec::new();
            for file in files {
                match read(file)? {
                    Some(rule) => rules.push(rule),
                    None => return Ok(1),
                }
            }
            let text = std::fs::read_to_string(script)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", script.display()))?;
            let entries = match parse_script(&text) {
                Ok(entries) => entries,
                Err(e) => {
                    eprintln!("{}: {e}", script.display());
                    return Ok(1);
                }
            };
            print!("{}", run_script(&rules, &entries));
            Ok(0)
        }
        RulesCommand::Backtest {
            location,
            file,
            key,
        } => {
            let Some(rule) = read(file)? else {
                return Ok(1);
            };
            let client = super::ops::connect_reader(cli, key).await?;
            let events = retained(&client, location).await?;
            let result = run(&rule, &events);
            for f in &result.found {
                if let Some(line) = match_line(&f.at.to_string(), &f.body) {
                    println!("{line}");
                }
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
