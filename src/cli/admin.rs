//! `garrison admin ...`: administrative transactions, signed with an admin's
//! key (default: the dev cluster's `admin.key`), and the policy they change.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use garrison_client::api::Outcome;
use garrison_client::policy::{AdminOp, Scope};
use garrison_client::{Keypair, Player};

use super::{connect, home, Cli};
use crate::security::access::RoleSpec;

/// Exit code when the cluster refused the administrative transaction.
pub const EXIT_REFUSED: i32 = 2;

/// Arguments of `garrison admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The admin's key file (default: $GARRISON_HOME/dev/admin.key, which
    /// `garrison dev` creates).
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The administrative commands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a location (nothing happens if it exists).
    CreateLocation {
        /// Its name.
        name: String,
    },
    /// Remove a location and its state on every node.
    RemoveLocation {
        /// Its name.
        name: String,
    },
    /// Give a player a role, everywhere or in one location.
    Assign(AssignArgs),
    /// Take a role back.
    Unassign(AssignArgs),
    /// Define a role (or replace its permissions) from a TOML file holding
    /// `permissions = [...]` as in policy/roles.toml.
    DefineRole {
        /// The role's name.
        role: String,
        /// The file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Delete a role that nobody holds.
    DeleteRole {
        /// The role's name.
        role: String,
    },
    /// Set the role of players without an assignment ("none": no role).
    SetDefaultRole {
        /// The role, or "none".
        role: String,
    },
    /// Revoke every session token a player holds (its own: no permission needed).
    RevokeTokens {
        /// The player's public key, in hex.
        player: String,
    },
}

/// Who gets (or loses) which role where.
#[derive(Debug, Args)]
pub struct AssignArgs {
    /// The player's public key, in hex.
    pub player: String,
    /// The role.
    pub role: String,
    /// Only in this location (default: everywhere).
    #[arg(long, short)]
    pub location: Option<String>,
}

/// A public key given in hex on the command line.
pub fn parse_player(text: &str) -> anyhow::Result<[u8; 32]> {
    hex::decode(text)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .with_context(|| format!("{text:?} is not a public key (64 hex digits)"))
}

impl AssignArgs {
    fn parts(&self) -> anyhow::Result<([u8; 32], String, Scope)> {
        let player = parse_player(&self.player)?;
        let scope = match &self.location {
            Some(l) => Scope::Location(l.clone()),
            None => Scope::Everywhere,
        };
        Ok((player, self.role.clone(), scope))
    }
}

/// The default admin key: the dev cluster's.
pub fn default_admin_key() -> PathBuf {
    home().join("dev").join("admin.key")
}

fn op(command: &AdminCommand) -> anyhow::Result<AdminOp> {
    Ok(match command {
        AdminCommand::CreateLocation { name } => AdminOp::CreateLocation { name: name.clone() },
        AdminCommand::RemoveLocation { name } => AdminOp::RemoveLocation { name: name.clone() },
        AdminCommand::Assign(args) => {
            let (player, role, scope) = args.parts()?;
            AdminOp::AssignRole {
                player,
                role,
                scope,
            }
        }
        AdminCommand::Unassign(args) => {
            let (player, role, scope) = args.parts()?;
            AdminOp::UnassignRole {
                player,
                role,
                scope,
            }
        }
        AdminCommand::DefineRole { role, file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let spec: RoleSpec = toml::from_str(&text).with_context(|| {
                format!("{} is not a role (permissions = [...])", file.display())
            })?;
            AdminOp::DefineRole {
                role: role.clone(),
                permissions: spec.permissions,
            }
        }
        AdminCommand::DeleteRole { role } => AdminOp::DeleteRole { role: role.clone() },
        AdminCommand::SetDefaultRole { role } => AdminOp::SetDefaultRole {
            role: (role != "none").then(|| role.clone()),
        },
        AdminCommand::RevokeTokens { player } => AdminOp::RevokeTokens {
            player: parse_player(player)?,
        },
    })
}

/// Signs and submits one administrative operation.
pub async fn run(cli: &Cli, args: &AdminArgs) -> anyhow::Result<i32> {
    submit_op(cli, args.key.as_ref(), op(&args.command)?).await
}

/// Signs `op` with the key at `key` (default: the dev cluster's admin key)
/// and submits it; prints the outcome and returns the exit code.
pub async fn submit_op(cli: &Cli, key: Option<&PathBuf>, op: AdminOp) -> anyhow::Result<i32> {
    op.check_limits().map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = key.cloned().unwrap_or_else(default_admin_key);
    if !path.exists() {
        bail!(
            "no admin key at {} (pass --key FILE; `garrison dev` creates one for its cluster)",
            path.display()
        );
    }
    let key = Keypair::load(&path)?;
    let client = connect(cli).await?;
    let mut admin = Player::new(key);
    let receipt = admin.admin(&client, vec![op]).await?;
    match &receipt.outcome {
        Outcome::Committed { events, .. } => {
            println!("done at meta index {}", receipt.index);
            for e in events {
                println!("  {:?} {}", e.kind, e.entity);
            }
            Ok(0)
        }
        Outcome::Rejected { reason, .. } => {
            eprintln!("refused at meta index {}: {reason}", receipt.index);
            Ok(EXIT_REFUSED)
        }
    }
}
