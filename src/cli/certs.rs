//! `garrison certs`: a development CA and, per node, a certificate for
//! mutual TLS between nodes and one for its client port (used when the
//! node has `api_tls`), and the cluster's session-token key (`token.key`);
//! `docs/formats.md` describes the files.
//!
//! Idempotent: an existing CA in the directory is reused and existing
//! certificates are kept, so adding a node to a cluster is running it again
//! with the new id. `garrison dev` and the fault harness call this too.

use std::path::{Path, PathBuf};

use clap::Args;
use garrison_raft::certs::{ensure_dev_certs, CertsReport};
use garrison_raft::NodeId;

/// Arguments of `garrison certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// The directory for ca.pem, ca.key, node-<id>.pem/.key (peer port) and
    /// api-<id>.pem/.key (client port).
    #[arg(long)]
    pub dir: PathBuf,
    /// The node ids to issue certificates for, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<NodeId>,
}

/// Makes the certificates and says what it did.
pub fn run(args: &CertsArgs) -> anyhow::Result<i32> {
    let report = ensure(&args.dir, &args.nodes)?;
    let ca = if report.ca_created {
        "created"
    } else {
        "reused"
    };
    println!("CA {ca}: {}", args.dir.join("ca.pem").display());
    println!(
        "session-token key: {}",
        args.dir.join(TOKEN_KEY_FILE).display()
    );
    for (what, ids) in [("issued", &report.issued), ("kept", &report.kept)] {
        for id in ids {
            println!(
                "node {id}: {what} {}",
                args.dir.join(format!("node-{id}.pem")).display()
            );
        }
    }
    for id in &args.nodes {
        let what = if report.api_issued.contains(id) {
            "issued"
        } else {
            "kept"
        };
        let (cert, _) = garrison_raft::certs::api_cert_files(&args.dir, *id);
        println!("node {id} client port: {what} {}", cert.display());
    }
    Ok(0)
}

/// The cluster's session-token key's file name in a certificates directory.
pub const TOKEN_KEY_FILE: &str = "token.key";

/// Makes sure `dir` holds a CA, certificates for `nodes` and a session-token
/// key (for callers that want no output).
pub fn ensure(dir: &Path, nodes: &[NodeId]) -> anyhow::Result<CertsReport> {
    let report = ensure_dev_certs(dir, nodes)?;
    super::load_or_create_key(&dir.join(TOKEN_KEY_FILE))?;
    Ok(report)
}
