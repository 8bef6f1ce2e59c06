//! `garrison watch`: prints the events of one or more locations as they are
//! applied, from a cursor, through node failures, with no gap.
//!
//! It is a [`garrison_client::client::Subscription`] of the Rust client: long polls that carry each
//! location's cursor, so a killed node or a new leader only moves the next
//! poll to another node. With `--consumer NAME` it starts from the cursor
//! that consumer saved last and saves its cursor after every batch it has
//! printed, so a watcher that is stopped and started again goes on where
//! it was.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use garrison_client::events::{Cursor, EventBody, EventFilter, EventType, StartAt, StreamEvent};
use garrison_client::{ApiError, ClientError, Value};

use super::Cli;
pub use crate::events::json::event_json;

/// Exit code of `watch` when the events after its cursor are gone.
pub const EXIT_TRIMMED: i32 = 3;

/// Arguments of `garrison watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// A location to watch (repeat for several).
    #[arg(long, short, required = true)]
    pub location: Vec<String>,
    /// Where to start: `now` (events applied from now on), `oldest` (the
    /// oldest event each location still holds), `start` (every event since
    /// the location began; refused if some are gone), or a cursor as
    /// events print it: `INDEX.POSITION`, or `LOCATION@INDEX.POSITION` for
    /// one location (repeat).
    #[arg(long, default_value = "now")]
    pub from: Vec<String>,
    /// Only events of these types: created, changed, deleted, emitted,
    /// committed, rejected (repeat).
    #[arg(long)]
    pub kind: Vec<String>,
    /// Only entity events whose key starts with this (repeat).
    #[arg(long)]
    pub prefix: Vec<String>,
    /// Only entity events whose key matches this pattern (`*` matches
    /// anything; repeat).
    #[arg(long)]
    pub entity: Vec<String>,
    /// Only emitted events whose kind matches this pattern (repeat).
    #[arg(long)]
    pub emitted: Vec<String>,
    /// Only events of this player (public key in hex; repeat).
    #[arg(long)]
    pub player: Vec<String>,
    /// Print each event as one JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// A named consumer: start after the cursor it saved last (if any), and
    /// save its cursor after each batch printed.
    #[arg(long)]
    pub consumer: Option<String>,
    /// Once a poll has found events, wait this long (0 to 1000 ms) for
    /// more: fewer, fuller batches, at that much more lag (for many
    /// watchers of a busy stream).
    #[arg(long, default_value_t = 0)]
    pub linger_ms: u64,
    /// The key to log in with (default: $GARRISON_HOME/player.key, else the
    /// dev cluster's admin key).
    #[arg(long)]
    pub key: Option<PathBuf>,
}

fn start_of(args: &WatchArgs, location: &str) -> anyhow::Result<StartAt> {
    let mut start = StartAt::Latest;
    for from in &args.from {
        let (named, spec) = match from.split_once('@') {
            Some((l, spec)) => (Some(l), spec),
            None => (None, from.as_str()),
        };
        if named.is_some_and(|l| l != location) {
            continue;
        }
        start = match spec {
            "now" => StartAt::Latest,
            "oldest" => StartAt::Oldest,
            "start" => StartAt::After(Cursor::START),
            cursor => StartAt::After(cursor.parse::<Cursor>().map_err(anyhow::Error::msg)?),
        };
    }
    Ok(start)
}

fn filter_of(args: &WatchArgs) -> anyhow::Result<EventFilter> {
    let types = args
        .kind
        .iter()
        .map(|k| k.parse::<EventType>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let players = args
        .player
        .iter()
        .map(|p| super::admin::parse_player(p))
        .collect::<anyhow::Result<_>>()?;
    let entities = args
        .prefix
        .iter()
        .map(|p| format!("{p}*"))
        .chain(args.entity.iter().cloned())
        .collect();
    let filter = EventFilter {
        types,
        players,
        entities,
        emitted: args.emitted.clone(),
    };
    filter.check().map_err(anyhow::Error::msg)?;
    Ok(filter)
}

/// Follows the events until `--count` is reached (or for ever).
pub async fn run(cli: &Cli, args: &WatchArgs) -> anyhow::Result<i32> {
    let filter = filter_of(args)?;
    let client = super::ops::connect_reader(cli, &args.key).await?;
    let mut places = Vec::new();
    for location in &args.location {
        let mut start = start_of(args, location)?;
        if let Some(consumer) = &args.consumer {
            if let Some(saved) = client
                .load_cursor(location, consumer)
                .await
                .with_context(|| format!("loading consumer {consumer:?} at {location}"))?
            {
                start = StartAt::After(saved);
            }
        }
        places.push((location.clone(), start));
    }
    let mut subscription = client.subscribe(places, filter);
    subscription.linger_ms = args.linger_ms;
    let mut printed = 0u64;
    let mut saved = std::collections::HashMap::new();
    loop {
        while let Some(event) = subscription.next_buffered() {
            print_event(&event, args.json);
            printed += 1;
            if args.count.is_some_and(|n| printed >= n) {
                save(&client, args, &subscription, &mut saved).await?;
                return Ok(0);
            }
        }
        save(&client, args, &subscription, &mut saved).await?;
        match subscription.poll().await {
            Ok(_) => {}
            Err(ClientError::Api(e @ ApiError::EventsTrimmed { .. })) => {
                eprintln!("garrison watch: {e}");
                return Ok(EXIT_TRIMMED);
            }
            Err(ClientError::Api(e)) if !retryable(&e) => bail!(e),
            Err(e) => {
                // Every node was unreachable for the client's whole
                // deadline: say so and go on from the same cursors.
                eprintln!("garrison watch: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn retryable(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Unavailable(_) | ApiError::Timeout | ApiError::RateLimited { .. }
    )
}

/// Saves the consumer's cursors that moved since `saved`, if it has a name.
async fn save(
    client: &garrison_client::Client,
    args: &WatchArgs,
    subscription: &garrison_client::client::Subscription<'_>,
    saved: &mut std::collections::HashMap<String, Cursor>,
) -> anyhow::Result<()> {
    let Some(consumer) = &args.consumer else {
        return Ok(());
    };
    for location in &args.location {
        let Some(cursor) = subscription.cursor(location) else {
            continue;
        };
        if saved.get(location) == Some(&cursor) {
            continue;
        }
        client
            .save_cursor(location, consumer, cursor)
            .await
            .with_context(|| format!("saving consumer {consumer:?} at {location}"))?;
        saved.insert(location.clone(), cursor);
    }
    Ok(())
}

fn short(player: &Option<[u8; 32]>) -> String {
    player.map_or("?".into(), |p| hex::encode(p)[..16].to_string())
}

fn fields_text<'a>(fields: impl Iterator<Item = (&'a String, &'a Value)>) -> String {
    let parts: Vec<String> = fields.map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(" ")
}

/// One line per event: its id, what happened, and who did it.
pub fn event_line(e: &StreamEvent) -> String {
    let what = match &e.body {
        EventBody::Created { entity, fields, .. } => {
            format!("created {entity} {}", fields_text(fields.iter()))
        }
        EventBody::Changed {
            entity, changes, ..
        } => {
            let changes: Vec<String> = changes
                .iter()
                .map(|c| {
                    let old = c.old.as_ref().map_or("-".into(), |v| v.to_string());
                    format!("{}: {old} -> {}", c.field, c.new)
                })
                .collect();
            format!("changed {entity} {}", changes.join(", "))
        }
        EventBody::Deleted { entity, fields, .. } => {
            format!("deleted {entity} {}", fields_text(fields.iter()))
        }
        EventBody::Emitted { kind, fields } => {
            format!(
                "emitted {kind} {}",
                fields_text(fields.iter().map(|(k, v)| (k, v)))
            )
        }
        EventBody::Committed { sequence } => format!("committed sequence {sequence}"),
        EventBody::Rejected {
            sequence,
            op,
            reason,
        } => {
            let at = op.map(|o| format!(" op {o}")).unwrap_or_default();
            format!("rejected sequence {sequence}{at}: {reason}")
        }
        EventBody::Matched {
            rule,
            version,
            kind,
            events,
            window,
            fields,
            ..
        } => {
            let took = match window {
                Some((start, end)) => format!("window [{start}, {end})"),
                None => {
                    let ids: Vec<String> = events.iter().map(|c| c.to_string()).collect();
                    format!("events {}", ids.join(" "))
                }
            };
            format!(
                "matched {rule} v{version} {kind}: {took} {}",
                fields_text(fields.iter().map(|(k, v)| (k, v)))
            )
        }
        EventBody::Derived {
            plugin,
            version,
            cause,
            kind,
            fields,
        } => format!(
            "derived {kind} by plugin {plugin} v{version} from #{cause} {}",
            fields_text(fields.iter().map(|(k, v)| (k, v)))
        ),
        EventBody::PluginFailed {
            plugin,
            version,
            cause,
            failure,
            suspended,
        } => {
            let then = if *suspended { "; suspended" } else { "" };
            format!("plugin {plugin} v{version} failed on #{cause}: {failure}{then}")
        }
        EventBody::Delivered {
            plugin,
            version,
            source,
            seq,
            refused,
        } => {
            let outcome = match refused {
                Some(failure) => format!(": {failure}"),
                None => String::new(),
            };
            format!("delivered from plugin {plugin} v{version} for {source} (#{seq}){outcome}")
        }
    };
    format!("{}  {}  by {}", e.id, what.trim_end(), short(&e.player))
}

fn print_event(e: &StreamEvent, json: bool) {
    if json {
        println!("{}", event_json(e));
    } else {
        println!("{}", event_line(e));
    }
}
