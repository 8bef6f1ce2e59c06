//! The `garrison` command line: one subcommand per file, parsed with clap.
//!
//! Every command that talks to a cluster finds it the same way: `--cluster
//! ADDR,...` (or `GARRISON_CLUSTER`), else the `cluster.toml` that `garrison
//! dev` wrote in its data directory (`$GARRISON_HOME/dev`, by default
//! `~/.garrison/dev`). It speaks TLS to the client ports with `--ca FILE`
//! (or `GARRISON_CA`), or when that file says the dev cluster does.

pub mod admin;
pub mod apply_bench;
pub mod bench;
// Argument docs are `--help` text first: `[,max=N]` and `<id>` there are
// for the reader of the help, not rustdoc links or HTML tags.
#[allow(rustdoc::invalid_html_tags)]
pub mod certs;
pub mod dev;
#[allow(rustdoc::broken_intra_doc_links)]
pub mod ops;
pub mod plugin;
pub mod rules;
pub mod watch;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use garrison_client::tls::ClientTls;
use garrison_client::{Client, ClientOptions};
use serde::{Deserialize, Serialize};

/// garrison: a replicated, signed state store for persistent-world wargames.
#[derive(Debug, Parser)]
#[command(name = "garrison", version, about)]
pub struct Cli {
    /// Client API addresses of the cluster's nodes, comma-separated.
    #[arg(long, global = true, env = "GARRISON_CLUSTER", value_delimiter = ',')]
    pub cluster: Vec<String>,
    /// Connect over TLS, trusting this CA certificate (PEM) for the nodes'
    /// client ports (nodes with `api_tls`).
    #[arg(long, global = true, env = "GARRISON_CA")]
    pub ca: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local cluster of N nodes, each its own process and directory.
    Dev(dev::DevArgs),
    /// Run one node from a TOML configuration file.
    Node {
        /// The configuration file (see garrison.example.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Make a development CA, and node certificates for TLS between nodes
    /// and on client ports.
    Certs(certs::CertsArgs),
    /// Generate a player key and save it.
    Keygen(ops::KeygenArgs),
    /// Sign and submit a transaction; prints its index and outcome.
    Tx(ops::TxArgs),
    /// Read an entity or a whole location.
    Get(ops::GetArgs),
    /// Show a location's audit trail: who did what, at which index, with which outcome.
    Audit(ops::AuditArgs),
    /// Print the events of one or more locations as they are applied.
    Watch(watch::WatchArgs),
    /// Administrative transactions: locations, roles.
    Admin(admin::AdminArgs),
    /// Rules of the complex event processor: check one, or backtest it on a
    /// location's retained events.
    Rules(rules::RulesArgs),
    /// WebAssembly plugins: deploy, remove, list, show, logs.
    Plugin(plugin::PluginArgs),
    /// List the locations.
    Locations,
    /// Show every node's view of every group.
    Status,
    /// Compare every replica of every group; exits non-zero on divergence.
    Check(ops::CheckArgs),
    /// Drive signed transactions at the cluster and report throughput and latency.
    Bench(bench::BenchArgs),
}

/// Where garrison keeps its local files: `$GARRISON_HOME`, else `~/.garrison`.
pub fn home() -> PathBuf {
    if let Some(dir) = std::env::var_os("GARRISON_HOME") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".garrison")
}

/// The key in the key file at `path`, created the first time.
pub fn load_or_create_key(path: &std::path::Path) -> anyhow::Result<garrison_client::Keypair> {
    if path.exists() {
        return Ok(garrison_client::Keypair::load(path)?);
    }
    let key = garrison_client::Keypair::generate();
    key.save(path)?;
    Ok(key)
}

/// What `garrison dev` records about the cluster it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The cluster's name.
    pub cluster: String,
    /// Client API addresses, by node.
    pub endpoints: Vec<String>,
    /// HTTP API URLs, by node (`docs/http.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_endpoints: Vec<String>,
    /// The CA of the client ports' certificates, when they speak TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

impl ClusterFile {
    /// The file's path in a dev data directory.
    pub fn path(data_dir: &std::path::Path) -> PathBuf {
        data_dir.join("cluster.toml")
    }
}

/// The dev cluster's file (for a command line that names no cluster).
fn dev_cluster_file() -> anyhow::Result<ClusterFile> {
    let path = ClusterFile::path(&home().join("dev"));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("no cluster given and no dev cluster found ({} is missing): start one with `garrison dev`, or pass --cluster ADDR,...", path.display())
    })?;
    toml::from_str(&text).with_context(|| format!("{} is not a cluster file", path.display()))
}

/// The endpoints to use: the flag or variable, else the dev cluster's file.
pub fn endpoints(cli: &Cli) -> anyhow::Result<Vec<String>> {
    if !cli.cluster.is_empty() {
        return Ok(cli.cluster.clone());
    }
    Ok(dev_cluster_file()?.endpoints)
}

/// How to reach those endpoints: over TLS with `--ca`, or with the dev
/// cluster's CA when no cluster is named and the dev cluster speaks TLS.
pub fn client_options(cli: &Cli) -> anyhow::Result<ClientOptions> {
    let ca = match &cli.ca {
        Some(ca) => Some(ca.clone()),
        None if cli.cluster.is_empty() => dev_cluster_file()?.ca,
        None => None,
    };
    options_trusting(ca.as_deref()).map_err(|e| e.context("--ca"))
}

/// Default client options, over TLS trusting `ca` if one is given.
pub fn options_trusting(ca: Option<&std::path::Path>) -> anyhow::Result<ClientOptions> {
    let tls = ca
        .map(ClientTls::load)
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(ClientOptions {
        tls,
        ..ClientOptions::default()
    })
}

/// Connects to `endpoints` as the command line says (TLS or not). A
/// plaintext client and a TLS port cannot parse each other, so a failure
/// says which one this was.
pub async fn connect_to(cli: &Cli, endpoints: &[String]) -> anyhow::Result<Client> {
    let options = client_options(cli)?;
    let tls = options.tls.is_some();
    Client::connect_with(endpoints, options)
        .await
        .with_context(|| {
            if tls {
                "tried TLS; if the client ports are plaintext, leave out --ca"
            } else {
                "tried plaintext; if the client ports speak TLS, pass --ca FILE (or GARRISON_CA)"
            }
        })
}

/// Connects to the cluster the command line points at.
pub async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let endpoints = endpoints(cli)?;
    connect_to(cli, &endpoints).await.with_context(|| {
        format!(
            "cannot reach the cluster at {}; is it running?",
            endpoints.join(",")
        )
    })
}

/// Runs the parsed command line; returns the process exit code.
/// `matches` are the parsed arguments `cli` came from (the order of `tx`'s
/// operation flags is read from them).
pub async fn run(cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Node { config } => dev::run_node(config).await,
        Command::Certs(args) => certs::run(args),
        Command::Keygen(args) => ops::keygen(args),
        Command::Tx(args) => ops::tx(&cli, args, matches.subcommand_matches("tx")).await,
        Command::Get(args) => ops::get(&cli, args).await,
        Command::Audit(args) => ops::audit(&cli, args).await,
        Command::Watch(args) => watch::run(&cli, args).await,
        Command::Admin(args) => admin::run(&cli, args).await,
        Command::Rules(args) => rules::command(&cli, args).await,
        Command::Plugin(args) => plugin::command(&cli, args).await,
        Command::Locations => ops::locations(&cli).await,
        Command::Status => ops::status(&cli).await,
        Command::Check(args) => ops::check(&cli, args).await,
        Command::Bench(args) => bench::run(&cli, args).await,
    }
}
