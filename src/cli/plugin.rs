//! `garrison plugin`: WebAssembly plugins (`docs/plugins.md`). `deploy`
//! compiles WAT to a binary if need be, checks it locally, and submits the
//! administrative transaction that carries it; `remove`, `list` and `show`
//! manage and read the cluster's plugins; `logs` prints the log lines the
//! answering node kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use garrison_client::plugins::{PluginSpec, DEFAULT_PLUGIN_FUEL, DEFAULT_SUSPEND_AFTER};
use garrison_client::policy::AdminOp;

use super::Cli;

/// Arguments of `garrison plugin`.
#[derive(Debug, Args)]
pub struct PluginArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PluginCommand,
}

/// The `plugin` subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Deploy a plugin (or a new version of the plugin of that name: it
    /// replaces the old one from the index at which each location's log
    /// receives it; deploying an old module again rolls back).
    Deploy {
        /// The module: WebAssembly text (.wat) or binary (.wasm).
        file: PathBuf,
        /// Its name.
        #[arg(long)]
        name: String,
        /// A location it runs in (repeat; default: every location).
        #[arg(long = "location", short)]
        locations: Vec<String>,
        /// An event kind it is called for, `*` matching anything (repeat;
        /// default: every event). A game event's kind, a rule's emitted
        /// kind, or a type: created, changed, deleted, committed, rejected.
        #[arg(long)]
        on: Vec<String>,
        /// The role its transactions are checked against.
        #[arg(long, default_value = "game_master")]
        role: String,
        /// Fuel per event.
        #[arg(long, default_value_t = DEFAULT_PLUGIN_FUEL)]
        fuel: u64,
        /// Failures in a row that suspend it.
        #[arg(long, default_value_t = DEFAULT_SUSPEND_AFTER)]
        suspend_after: u32,
        /// The admin's key file (default: the dev cluster's admin key).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Remove a deployed plugin.
    Remove {
        /// Its name.
        name: String,
        /// The admin's key file (default: the dev cluster's admin key).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// List the deployed plugins.
    List,
    /// Show a deployed plugin; with `--location`, also its record there.
    Show {
        /// Its name.
        name: String,
        /// A location to report on.
        #[arg(short, long)]
        location: Option<String>,
    },
    /// Print the log lines the answering node kept (node-local).
    Logs {
        /// Only this plugin's.
        name: Option<String>,
        /// Keep printing new lines.
        #[arg(long, short)]
        follow: bool,
    },
}

/// The module in `file` as a WebAssembly binary (WAT is compiled).
pub fn module_bytes(file: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes);
    }
    #[cfg(feature = "plugins")]
    {
        wat::parse_bytes(&bytes)
            .map(|b| b.into_owned())
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
    }
    #[cfg(not(feature = "plugins"))]
    anyhow::bail!(
        "{}: not a WebAssembly binary, and this build cannot compile WAT",
        file.display()
    )
}

fn short(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..8])
}

/// Runs `garrison plugin`.
pub async fn command(cli: &Cli, args: &PluginArgs) -> anyhow::Result<i32> {
    match &args.command {
        PluginCommand::Deploy {
            file,
            name,
            locations,
            on,
            role,
            fuel,
            suspend_after,
            key,
        } => {
            let module = module_bytes(file)?;
            #[cfg(feature = "plugins")]
            if let Err(e) = crate::plugins::runtime::PluginRuntime::new()
                .map_err(|e| anyhow::anyhow!(e))?
                .load(&module)
            {
                eprintln!("{}: {e}", file.display());
                return Ok(1);
            }
            let mut spec = PluginSpec::new(name, module, role);
            spec.locations = locations.clone();
            spec.on = on.clone();
            spec.fuel = *fuel;
            spec.suspend_after = *suspend_after;
            super::admin::submit_op(cli, key.as_ref(), AdminOp::DeployPlugin { spec }).await
        }
        PluginCommand::Remove { name, key } => {
            let op = AdminOp::RemovePlugin { name: name.clone() };
            super::admin::submit_op(cli, key.as_ref(), op).await
        }
        PluginCommand::List => {
            let client = super::connect(cli).await?;
            let set = client.plugins().await?;
            if set.plugins.is_empty() {
                println!("no plugins deployed");
            }
            for (name, p) in &set.plugins {
                let s = &p.spec;
                let list = |v: &[String], all: &str| {
                    if v.is_empty() {
                        all.to_string()
                    } else {
                        v.join(", ")
                    }
                };
                println!(
                    "{name}  version {}  sha256 {}  {} bytes  in {}  on {}  role {}",
                    p.version,
                    short(&s.hash),
                    s.module.len(),
                    list(&s.locations, "every location"),
                    list(&s.on, "every event"),
                    s.role
                );
            }
            Ok(0)
        }
        PluginCommand::Show { name, location } => {
            let client = super::connect(cli).await?;
            let set = client.plugins().await?;
            let Some(p) = set.plugins.get(name) else {
                eprintln!("no plugin {name:?} is deployed");
                return Ok(1);
            };
            let s = &p.spec;
            println!("{name}");
            println!("  version {} (meta index)", p.version);
            println!("  sha256 {}", hex::encode(s.hash));
            println!("  module {} bytes", s.module.len());
            println!("  role {}", s.role);
            println!(
                "  fuel {} per event, suspended after {} failures in a row",
                s.fuel, s.suspend_after
            );
            println!("  engine {}", set.engine);
            if let Some(location) = location {
                let here = client.location_plugins(location).await?;
                match here.plugins.iter().find(|r| r.name == *name) {
                    Some(status) => {
                        let r = &status.record;
                        println!(
                            "  at {location}, as of index {}: version {}, {} runs, {} failures ({} in a row), {} fuel, {} skipped",
                            here.index, status.version, r.runs, r.failures, r.failures_in_a_row, r.fuel_used, r.skipped
                        );
                        if here.outbox > 0 {
                            println!("  {} transactions in {location}'s outbox", here.outbox);
                        }
                        if let Some(at) = r.suspended_at {
                            println!("  suspended at index {at}");
                        }
                        if let Some((event, failure)) = &r.last_failure {
                            println!("  last failure on {event}: {failure}");
                        }
                    }
                    None => println!(
                        "  not running at {location} (as of index {}, plugin set version {})",
                        here.index, here.version
                    ),
                }
            }
            Ok(0)
        }
        PluginCommand::Logs { name, follow } => {
            let client = super::connect(cli).await?;
            let mut after = 0;
            loop {
                let lines = client.plugin_logs(name.as_deref(), after, 1_000).await?;
                for l in &lines {
                    println!("{}  {}  {}", l.event, l.plugin, l.line);
                    after = l.seq;
                }
                if !*follow {
                    return Ok(0);
                }
                if lines.is_empty() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
