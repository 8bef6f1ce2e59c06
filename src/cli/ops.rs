//! The everyday commands: keygen, tx, get, locations,
//! status and check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use garrison_client::api::{GroupConsistency, Outcome, ReadMode, MAX_ENTITIES_PER_READ};
use garrison_client::{Client, Entity, Keypair, Op, Player};

use super::{connect, endpoints, home, Cli};

/// Exit code of `tx` when the cluster rejected the transaction.
pub const EXIT_REJECTED: i32 = 2;
/// Exit code of `check` when replicas diverge.
pub const EXIT_DIVERGED: i32 = 1;

/// Arguments of `garrison keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to save the key (default: $GARRISON_HOME/player.key).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn default_key() -> PathBuf {
    home().join("player.key")
}

/// Generates and saves a key.
pub fn keygen(args: &KeygenArgs) -> anyhow::Result<i32> {
    let path = args.out.clone().unwrap_or_else(default_key);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let key = Keypair::generate();
    key.save(&path)?;
    println!("saved a new player key to {}", path.display());
    println!("public key: {}", hex::encode(key.public()));
    Ok(0)
}

/// Arguments of `garrison tx`. Operations run in command-line order.
#[derive(Debug, Args)]
pub struct TxArgs {
    /// The location to act on.
    #[arg(long, short)]
    pub location: String,
    /// The player key file (default: $GARRISON_HOME/player.key).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Set a field: ENTITY:FIELD=VALUE (VALUE: 42, 0xBEEF for bytes, anything else is text).
    #[arg(long)]
    pub put: Vec<String>,
    /// Delete an entity: ENTITY.
    #[arg(long)]
    pub delete: Vec<String>,
    /// Add to an integer field: ENTITY:FIELD=BY[,min=N][,max=N].
    #[arg(long)]
    pub incr: Vec<String>,
    /// Require an entity's version: ENTITY=VERSION (0: must not exist).
    #[arg(long)]
    pub expect_version: Vec<String>,
    /// Require a field's value: ENTITY:FIELD=VALUE, or ENTITY:FIELD= for absent.
    #[arg(long)]
    pub expect: Vec<String>,
    /// Record a game event: KIND or KIND:FIELD=VALUE[,FIELD=VALUE...] (on the
    /// command line KIND holds no `:` and values no `,`)
    /// (needs the emit permission for KIND).
    #[arg(long)]
    pub emit: Vec<String>,
}

fn parse_op(flag: &str, spec: &str) -> anyhow::Result<Op> {
    garrison_client::tx::parse_op(flag, spec).map_err(|e| anyhow::anyhow!("--{e}"))
}

/// The operations in the order their flags appear on the command line.
fn ordered_ops(args: &TxArgs, matches: Option<&clap::ArgMatches>) -> anyhow::Result<Vec<Op>> {
    let flags: [(&str, &Vec<String>); 6] = [
        ("put", &args.put),
        ("delete", &args.delete),
        ("incr", &args.incr),
        ("expect_version", &args.expect_version),
        ("expect", &args.expect),
        ("emit", &args.emit),
    ];
    let mut positioned = Vec::new();
    for (flag, values) in flags {
        let indices: Vec<usize> = matches
            .and_then(|m| m.indices_of(flag))
            .map(|i| i.collect())
            .unwrap_or_default();
        for (n, value) in values.iter().enumerate() {
            positioned.push((
                indices.get(n).copied().unwrap_or(usize::MAX),
                parse_op(flag, value)?,
            ));
        }
    }
    positioned.sort_by_key(|(at, _)| *at);
    let ops: Vec<Op> = positioned.into_iter().map(|(_, op)| op).collect();
    if ops.is_empty() {
        bail!("no operations: give at least one of --put, --delete, --incr, --expect-version, --expect, --emit");
    }
    Ok(ops)
}

fn print_entity(key: &str, e: &Entity) {
    println!(
        "{key}  (version {}, owner {})",
        e.version,
        &hex::encode(e.owner)[..16]
    );
    for (field, value) in &e.fields {
        println!("  {field} = {value}");
    }
}

/// Signs and submits one transaction.
pub async fn tx(
    cli: &Cli,
    args: &TxArgs,
    matches: Option<&clap::ArgMatches>,
) -> anyhow::Result<i32> {
    let ops = ordered_ops(args, matches)?;
    let key_path = args.key.clone().unwrap_or_else(default_key);
    let key =
        Keypair::load(&key_path).context("no player key: create one with `garrison keygen`")?;
    let client = connect(cli).await?;
    let mut player = Player::new(key);
    let receipt = player.transact(&client, &args.location, ops).await?;
    let dup = if receipt.duplicate {
        " (resubmission: original outcome)"
    } else {
        ""
    };
    match &receipt.outcome {
        Outcome::Committed { events, emitted } => {
            println!(
                "committed at index {} (sequence {}){dup}",
                receipt.index, receipt.sequence
            );
            for e in events {
                println!("  {:?} {}", e.kind, e.entity);
            }
            for kind in emitted {
                println!("  Emitted {kind}");
            }
            Ok(0)
        }
        Outcome::Rejected { op, reason } => {
            let at = op.map(|i| format!("operation {i}: ")).unwrap_or_default();
            println!(
                "rejected at index {} (sequence {}){dup}: {at}{reason}",
                receipt.index, receipt.sequence
            );
            Ok(EXIT_REJECTED)
        }
    }
}

/// Arguments of `garrison get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The location.
    #[arg(long, short)]
    pub location: String,
    /// One entity (default: the whole location).
    #[arg(long, short)]
    pub entity: Option<String>,
    /// Read from whichever replica answers instead of linearizably.
    #[arg(long)]
    pub stale: bool,
    /// With --stale: the lowest log index the answer may reflect.
    #[arg(long, default_value_t = 0)]
    pub min_index: u64,
    /// The key to log in with (default: $GARRISON_HOME/player.key, else the
    /// dev cluster's admin key).
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// The key reads log in with: the one given, else the player key, else the
/// dev cluster's admin key.
fn reader_key(given: &Option<PathBuf>) -> anyhow::Result<Keypair> {
    let path = match given {
        Some(p) => p.clone(),
        None if default_key().exists() => default_key(),
        None => super::admin::default_admin_key(),
    };
    Keypair::load(&path).with_context(|| {
        format!(
            "reads need a session: no key at {} (garrison keygen, or --key FILE)",
            path.display()
        )
    })
}

/// Connects and logs in with the reader's key (`given`, else the player
/// key, else the dev cluster's admin key).
pub(crate) async fn connect_reader(cli: &Cli, given: &Option<PathBuf>) -> anyhow::Result<Client> {
    connect_as(cli, given).await
}

/// Connects and logs in with the reader's key.
async fn connect_as(cli: &Cli, key: &Option<PathBuf>) -> anyhow::Result<Client> {
    let client = connect(cli).await?;
    client.login(&reader_key(key)?).await?;
    Ok(client)
}

/// Arguments of `garrison audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The location (`@cluster`: administrative transactions).
    #[arg(long, short)]
    pub location: String,
    /// Only this player's transactions (public key in hex).
    #[arg(long)]
    pub player: Option<String>,
    /// From this log index on.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// At most this many entries.
    #[arg(long, default_value_t = 100)]
    pub max: u32,
    /// The key to log in with (default: the dev cluster's admin key if there
    /// is one, else $GARRISON_HOME/player.key, which sees only its own entries).
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// Prints who did what, at which index, with which outcome.
pub async fn audit(cli: &Cli, args: &AuditArgs) -> anyhow::Result<i32> {
    let player = match &args.player {
        Some(h) => Some(super::admin::parse_player(h)?),
        None => None,
    };
    let admin = super::admin::default_admin_key();
    let key = match &args.key {
        None if admin.exists() => Some(admin),
        given => given.clone(),
    };
    let client = connect_as(cli, &key).await?;
    let read = client
        .audit(&args.location, player, args.from, args.max)
        .await?;
    if let Some(gone) = read.rolled_off_through.filter(|g| *g >= args.from) {
        println!("(entries up to index {gone} have rolled off)");
    }
    for e in &read.entries {
        let what = match &e.transaction {
            Some(signed) => {
                match garrison_client::Transaction::from_canonical_bytes(&signed.transaction) {
                    Ok(tx) => format!("{} op(s)", tx.ops.len()),
                    Err(_) => "undecodable".into(),
                }
            }
            None => format!(
                "tx {} (refused, kept by digest)",
                hex::encode(&e.digest[..8])
            ),
        };
        let outcome = match &e.outcome {
            Outcome::Committed { events, .. } => format!("committed, {} event(s)", events.len()),
            Outcome::Rejected { reason, .. } => format!("rejected: {reason}"),
        };
        println!(
            "index {:<8} t={}ms player {} seq {:<5} {what}: {outcome}",
            e.index,
            e.log_time_ms,
            hex::encode(e.player),
            e.sequence
        );
    }
    let more = if read.more { ", more follow" } else { "" };
    println!(
        "({} entries as of index {}{more})",
        read.entries.len(),
        read.index
    );
    Ok(0)
}

/// Reads an entity or a location.
pub async fn get(cli: &Cli, args: &GetArgs) -> anyhow::Result<i32> {
    let client = connect_as(cli, &args.key).await?;
    let mode = if args.stale {
        ReadMode::Stale {
            min_index: args.min_index,
        }
    } else {
        ReadMode::Linearizable
    };
    match &args.entity {
        Some(key) => {
            let read = client.get_entity(&args.location, key, mode).await?;
            match read.entity {
                Some(e) => print_entity(key, &e),
                None => println!("{key}: no such entity"),
            }
            println!("(as of index {})", read.index);
        }
        None => {
            let read = client
                .get_location(&args.location, mode, MAX_ENTITIES_PER_READ)
                .await?;
            for (key, e) in &read.entities {
                print_entity(key, e);
            }
            let more = if read.truncated {
                ", more not shown"
            } else {
                ""
            };
            println!(
                "({} entities as of index {}{more})",
                read.entities.len(),
                read.index
            );
        }
    }
    Ok(0)
}

/// Lists the locations.
pub async fn locations(cli: &Cli) -> anyhow::Result<i32> {
    let client = connect(cli).await?;
    for info in client.locations().await? {
        println!(
            "{:<24} group {:<6} nodes {:?}",
            info.name, info.group, info.replicas
        );
    }
    Ok(0)
}

/// Prints every node's view of every group.
pub async fn status(cli: &Cli) -> anyhow::Result<i32> {
    let endpoints = endpoints(cli)?;
    let client = super::connect_to(cli, &endpoints)
        .await
        .context("no node of the cluster answers")?;
    println!("cluster {}", client.cluster());
    let mut rows: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut names: BTreeMap<u64, String> = BTreeMap::new();
    for addr in client.endpoints() {
        match client.status_of(addr).await {
            Err(e) => println!("node at {addr}: DOWN ({e})"),
            Ok(s) => {
                let c = &s.cache;
                println!(
                    "node {} at {addr}: up, {} groups; cache {} hits, {} misses, {} entities, {} of {} bytes",
                    s.node,
                    s.groups.len(),
                    c.hits,
                    c.misses,
                    c.entries,
                    c.bytes,
                    c.capacity_bytes
                );
                let e = &s.events;
                println!(
                    "  events: {} delivered, {} reads waiting, {} observers",
                    e.delivered, e.waiting_polls, e.observers
                );
                for g in s.groups {
                    names.insert(
                        g.group,
                        g.location.clone().unwrap_or_else(|| "(meta)".into()),
                    );
                    let role = if g.leader == Some(s.node) {
                        "leader"
                    } else {
                        "follower"
                    };
                    let role = if g.quiet {
                        format!("{role}(quiet)")
                    } else {
                        role.into()
                    };
                    rows.entry(g.group).or_default().push(format!(
                        "n{}:{role} term {} applied {} leader {}",
                        s.node,
                        g.term,
                        g.applied_index,
                        g.leader
                            .map(|l| l.to_string())
                            .unwrap_or_else(|| "?".into())
                    ));
                }
            }
        }
    }
    for (group, views) in rows {
        println!(
            "group {group:<4} {:<20} {}",
            names[&group],
            views.join(" | ")
        );
    }
    Ok(0)
}

/// Arguments of `garrison check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// How many times to re-read replicas that are mid-apply before giving up
    /// on comparing their state digests.
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
}

/// Compares every replica of every group at a common index.
pub async fn check(cli: &Cli, args: &CheckArgs) -> anyhow::Result<i32> {
    let endpoints = endpoints(cli)?;
    let client = super::connect_to(cli, &endpoints)
        .await
        .context("no node of the cluster answers")?;
    let mut hosts: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut names: BTreeMap<u64, String> = BTreeMap::new();
    let mut incomplete = false;
    for addr in client.endpoints() {
        match client.consistency_of(addr, None, None).await {
            Ok(reports) => {
                for r in reports {
                    names.insert(
                        r.group,
                        r.location.clone().unwrap_or_else(|| "(meta)".into()),
                    );
                    hosts.entry(r.group).or_default().push(addr.clone());
                }
            }
            Err(e) => {
                incomplete = true;
                println!("node at {addr} not checked: {e}");
            }
        }
    }
    let mut diverged = 0;
    for (group, addrs) in &hosts {
        match check_group(&client, *group, addrs, args.rounds).await {
            Ok(verdict) => {
                let bad = verdict.starts_with("DIVERGED");
                diverged += bad as usize;
                println!(
                    "group {group:<4} {:<20} {} replicas: {verdict}",
                    names[group],
                    addrs.len()
                );
            }
            Err(e) => {
                incomplete = true;
                println!("group {group:<4} {:<20} not checked: {e}", names[group]);
            }
        }
    }
    if diverged > 0 {
        println!("{diverged} group(s) DIVERGED");
        return Ok(EXIT_DIVERGED);
    }
    let note = if incomplete {
        " (some replicas could not be checked)"
    } else {
        ""
    };
    println!("no divergence in {} groups{note}", hosts.len());
    Ok(0)
}

/// Compares one group's replicas: chains at the lowest applied index, and
/// state digests once all replicas stand at the same index.
async fn check_group(
    client: &Client,
    group: u64,
    addrs: &[String],
    rounds: u32,
) -> anyhow::Result<String> {
    let mut chain_checked_at = None;
    for _ in 0..rounds.max(1) {
        let mut reports: Vec<GroupConsistency> = Vec::new();
        for addr in addrs {
            reports.extend(client.consistency_of(addr, Some(group), None).await?);
        }
        let common = reports.iter().map(|r| r.applied_index).min().unwrap_or(0);
        let mut chains = BTreeSet::new();
        for addr in addrs {
            for r in client
                .consistency_of(addr, Some(group), Some(common))
                .await?
            {
                chains.insert(r.chain);
            }
        }
        if chains.len() > 1 && !chains.contains(&None) {
            return Ok(format!("DIVERGED: hash chains differ at index {common}"));
        }
        if !chains.contains(&None) {
            chain_checked_at = Some(common);
        }
        let at_same_index = reports
            .iter()
            .all(|r| r.applied_index == reports[0].applied_index);
        if at_same_index && chain_checked_at.is_some() {
            let digests: BTreeSet<[u8; 32]> = reports.iter().map(|r| r.state_digest).collect();
            if digests.len() > 1 {
                return Ok(format!("DIVERGED: state digests differ at index {common}"));
            }
            return Ok(format!(
                "identical at index {common} (chain {})",
                &hex::encode(reports[0].chain.unwrap_or_default())[..16]
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(match chain_checked_at {
        Some(i) => {
            format!("chains agree at index {i}; replicas kept moving, state digests not compared")
        }
        None => "not comparable: no common index in every replica's recent history".into(),
    })
}
