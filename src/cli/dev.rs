//! `garrison dev` (a local cluster of node processes) and `garrison node`
//! (one node from a configuration file).
//!
//! `dev` makes a development CA and node certificates in `tls/` under its
//! data directory (reusing them when they exist), writes one configuration
//! file per node, starts `garrison node --config ...` for each as a child process (logs in
//! `node-N/node.log`, pid in `node-N/pid`), waits until the cluster answers,
//! creates a few locations and records the endpoints (and, with
//! `--client-tls`, the CA of the client ports) in `cluster.toml` for the
//! other commands. Ctrl-C stops the nodes cleanly; running it again
//! resumes from their directories.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use garrison_client::{Client, Keypair, Player};

use garrison_raft::network::TlsFiles;

use super::{home, ClusterFile};
use crate::server::{ApiTlsFiles, Member, Server, ServerConfig};

/// Locations `garrison dev` creates so there is something to play with.
pub const DEV_LOCATIONS: [&str; 3] = ["alpha", "bravo", "charlie"];
/// How long `dev` waits for its nodes to form a cluster.
pub const DEV_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Node N's HTTP port is the base port plus this plus N.
pub const HTTP_PORT_OFFSET: u64 = 200;
/// How long a node gets to stop after SIGTERM before it is killed.
pub const DEV_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `garrison dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Where the nodes keep their data (default: $GARRISON_HOME/dev).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Client ports are BASE+1..BASE+N, peer ports BASE+101..BASE+100+N,
    /// HTTP ports BASE+201..BASE+200+N.
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
    /// Serve clients over TLS too (certificates from the dev CA; the other
    /// commands find the CA by themselves). Chosen when the cluster is
    /// created: a resumed cluster keeps what it was made with.
    #[arg(long)]
    pub client_tls: bool,
}

fn node_config(args: &DevArgs, dir: &Path, id: u64, admin: &Keypair) -> ServerConfig {
    let (nodes, base_port) = (args.nodes, args.base_port);
    let members = (1..=nodes)
        .map(|n| Member {
            id: n,
            peer_addr: format!("127.0.0.1:{}", base_port as u64 + 100 + n),
            api_addr: format!("127.0.0.1:{}", base_port as u64 + n),
            http_addr: Some(format!(
                "127.0.0.1:{}",
                base_port as u64 + HTTP_PORT_OFFSET + n
            )),
        })
        .collect();
    ServerConfig {
        node_id: id,
        cluster: "dev".into(),
        data_dir: dir.join(format!("node-{id}")).join("data"),
        members,
        raft: Default::default(),
        api: Default::default(),
        admin_keys: vec![hex::encode(admin.public())],
        roles_file: None,
        events: Default::default(),
        tls: TlsFiles::in_dir(&dir.join("tls"), id),
        token_key: dir.join("tls").join(super::certs::TOKEN_KEY_FILE),
        token_ttl_ms: crate::server::default_token_ttl_ms(),
        cache_bytes: crate::server::default_cache_bytes(),
        api_tls: args
            .client_tls
            .then(|| ApiTlsFiles::in_dir(&dir.join("tls"), id)),
    }
}

/// The dev cluster's admin key (`admin.key` in its directory), created the
/// first time.
fn admin_key(dir: &Path) -> anyhow::Result<Keypair> {
    super::load_or_create_key(&dir.join("admin.key"))
}

/// Loads the nodes' configurations from `dir`, writing them first if this is
/// a new cluster.
fn prepare(dir: &Path, args: &DevArgs) -> anyhow::Result<Vec<(PathBuf, ServerConfig)>> {
    let mut configs = Vec::new();
    let existing: Vec<PathBuf> = (1..=9)
        .map(|n| dir.join(format!("node-{n}/garrison.toml")))
        .filter(|p| p.exists())
        .collect();
    if !existing.is_empty() && existing.len() as u64 != args.nodes {
        bail!(
            "{} holds a cluster of {} nodes; run with --nodes {} or choose another --data-dir",
            dir.display(),
            existing.len(),
            existing.len()
        );
    }
    let ids: Vec<u64> = (1..=args.nodes).collect();
    super::certs::ensure(&dir.join("tls"), &ids)?;
    for id in 1..=args.nodes {
        let node_dir = dir.join(format!("node-{id}"));
        let path = node_dir.join("garrison.toml");
        let config = if path.exists() {
            ServerConfig::load(&path)?
        } else {
            std::fs::create_dir_all(&node_dir)
                .with_context(|| format!("cannot create {}", node_dir.display()))?;
            let config = node_config(args, dir, id, &admin_key(dir)?);
            std::fs::write(&path, toml::to_string(&config)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
            config
        };
        if args.client_tls && config.api_tls.is_none() {
            bail!(
                "{} was made without --client-tls; run without it, or choose another --data-dir",
                dir.display()
            );
        }
        configs.push((path, config));
    }
    Ok(configs)
}

fn spawn_node(config_path: &Path, log: &Path) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the garrison executable")?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut command = Command::new(exe);
    command
        .arg("node")
        .arg("--config")
        .arg(config_path)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    #[cfg(target_os = "linux")]
    unsafe {
        use std::os::unix::process::CommandExt;
        // If `dev` dies without cleaning up, its nodes get SIGTERM too.
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("cannot start a node for {}", config_path.display()))
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

fn stop_all(children: &mut [(u64, Child)]) {
    for (_, child) in children.iter() {
        signal(child, libc::SIGTERM);
    }
    let deadline = Instant::now() + DEV_STOP_TIMEOUT;
    for (id, child) in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    eprintln!("node {id} did not stop in {DEV_STOP_TIMEOUT:?}; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// Runs the local cluster until Ctrl-C.
pub async fn run(args: &DevArgs) -> anyhow::Result<i32> {
    let dir = args.data_dir.clone().unwrap_or_else(|| home().join("dev"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let configs = prepare(&dir, args)?;
    // Another cluster on these ports would answer in place of ours.
    for member in &configs[0].1.members {
        for addr in [&member.api_addr, &member.peer_addr]
            .into_iter()
            .chain(member.http_addr.as_ref())
        {
            if let Err(e) = std::net::TcpListener::bind(addr.as_str()) {
                bail!("{addr} is not free ({e}); is another garrison dev running? Stop it, or use --base-port");
            }
        }
    }
    let mut children = Vec::new();
    for (path, config) in &configs {
        let node_dir = path.parent().expect("config lives in the node's directory");
        let child = spawn_node(path, &node_dir.join("node.log"))?;
        std::fs::write(node_dir.join("pid"), format!("{}\n", child.id()))?;
        children.push((config.node_id, child));
    }
    let endpoints: Vec<String> = configs[0]
        .1
        .members
        .iter()
        .map(|m| m.api_addr.clone())
        .collect();
    // The CA the other commands need when the client ports speak TLS.
    let first = &configs[0].1;
    let ca = first.api_tls.is_some().then(|| first.tls.ca_cert.clone());
    let options = super::options_trusting(ca.as_deref())?;
    let started = Instant::now();
    let client = loop {
        if let Some((id, status)) = children
            .iter_mut()
            .find_map(|(id, c)| c.try_wait().ok().flatten().map(|s| (*id, s)))
        {
            stop_all(&mut children);
            bail!(
                "node {id} exited during start-up ({status}); see {}",
                dir.join(format!("node-{id}/node.log")).display()
            );
        }
        match Client::connect_with(&endpoints, options.clone()).await {
            Ok(client) if client.locations().await.is_ok() => break client,
            _ if started.elapsed() > DEV_START_TIMEOUT => {
                stop_all(&mut children);
                bail!("the cluster did not come up within {DEV_START_TIMEOUT:?}; see the node.log files in {}", dir.display());
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let mut admin = Player::new(admin_key(&dir)?);
    for name in DEV_LOCATIONS {
        admin
            .create_location(&client, name)
            .await
            .with_context(|| format!("creating location {name}"))?;
    }
    let scheme = if ca.is_some() { "https" } else { "http" };
    let http_endpoints: Vec<String> = configs[0]
        .1
        .members
        .iter()
        .filter_map(|m| Some(format!("{scheme}://{}", m.http_addr.as_ref()?)))
        .collect();
    let file = ClusterFile {
        cluster: client.cluster().to_string(),
        endpoints: endpoints.clone(),
        http_endpoints,
        ca: ca.clone(),
    };
    std::fs::write(ClusterFile::path(&dir), toml::to_string(&file)?)?;

    println!(
        "garrison dev cluster {:?} is up ({} nodes, data in {})",
        client.cluster(),
        configs.len(),
        dir.display()
    );
    for ((_, config), (_, child)) in configs.iter().zip(&children) {
        let me = config.me()?;
        let http = me
            .http_addr
            .as_ref()
            .map(|a| format!("  http {scheme}://{a}"))
            .unwrap_or_default();
        println!(
            "  node {}: client {}{http}  peer {}  pid {}",
            me.id,
            me.api_addr,
            me.peer_addr,
            child.id()
        );
    }
    if let Some(ca) = &ca {
        println!("client ports speak TLS; their CA: {}", ca.display());
    }
    println!("locations: {}", DEV_LOCATIONS.join(", "));
    println!(
        "admin key: {} (garrison admin ...)",
        dir.join("admin.key").display()
    );
    println!("try: garrison keygen; garrison tx -l alpha --put unit/1:hp=10; garrison get -l alpha; garrison status");
    println!("Ctrl-C stops the cluster; running `garrison dev` again resumes it.");

    let mut reported = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for (id, child) in children.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        if reported.insert(*id) {
                            println!("node {id} exited ({status}); the others carry on. Restart it by stopping (Ctrl-C) and running `garrison dev` again.");
                        }
                    }
                }
            }
        }
    }
    println!("stopping the nodes...");
    stop_all(&mut children);
    println!("stopped; data kept in {}", dir.display());
    Ok(0)
}

/// Runs one node until SIGINT or SIGTERM.
pub async fn run_node(config_path: &Path) -> anyhow::Result<i32> {
    let config = ServerConfig::load(config_path)?;
    let server = Server::start(config.clone()).await?;
    let me = config.me()?;
    tracing::info!(node = me.id, api = %server.api_addr, peer = %me.peer_addr, "serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!(node = me.id, "stopping");
    server.shutdown().await;
    Ok(0)
}
