//! The cluster under test: N `garrison node` processes, each in its own
//! network namespace (`gj-n1`, ...) with its own data directory, joined by
//! veth pairs to a bridge in namespace `gj-br`; the harness reaches them
//! from the host through one more veth (10.77.0.1). The nodes talk mutual
//! TLS with certificates `garrison certs` makes in `<dir>/tls` (identity is
//! the certificate's node name, not the address, so the `slow-links`
//! proxies in between change nothing). Faults are iptables
//! rules inside the node namespaces, signals to the processes, and
//! libfaketime's timestamp file.
//!
//! Everything created here is removed by [`Cluster::teardown`] (also run at
//! start-up, for leftovers of an interrupted run).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context as _};

/// Prefix of every namespace and link the harness creates.
const PREFIX: &str = "gj";
/// The bridge namespace.
const BRIDGE_NS: &str = "gj-br";
/// The host's end of the test network.
const HOST_IP: &str = "10.77.0.1";
/// Client port of every node (each node has its own address).
pub const API_PORT: u16 = 7401;
/// Peer port of every node.
pub const PEER_PORT: u16 = 7501;
/// Where Debian's faketime package puts the preload library.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Runs a command, failing with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command and ignores failure (for clean-up).
fn sh_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// One node of the cluster.
pub struct NodeProc {
    /// Its network namespace.
    pub ns: String,
    /// Its address on the test network.
    pub ip: String,
    config: PathBuf,
    log: PathBuf,
    clock_file: PathBuf,
    child: Option<Child>,
    /// Whether it is stopped with SIGSTOP.
    pub paused: bool,
}

impl NodeProc {
    /// The node's client API endpoint.
    pub fn endpoint(&self) -> String {
        format!("{}:{API_PORT}", self.ip)
    }

    /// Whether its process is running (possibly paused).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
}

/// The harness's admin key: it bootstraps the cluster's policy and creates
/// the workload's locations.
pub fn admin_key() -> garrison_client::Keypair {
    garrison_client::Keypair::from_seed([0xad; 32])
}

/// The cluster: namespaces, configurations, processes.
pub struct Cluster {
    /// The nodes, by id - 1.
    pub nodes: Vec<NodeProc>,
    bin: PathBuf,
    /// The peer-link proxies, when the run uses them.
    pub links: Option<std::sync::Arc<crate::proxy::Links>>,
}

/// Snapshot settings small enough that a follower cut off for a few seconds
/// must catch up by snapshot.
const RAFT_TOML: &str = "[raft]\nsnapshot_logs_since_last = 200\nsnapshot_logs_to_keep = 20\n";

/// Runs `bin certs` for nodes 1..=n in `dir` (a CA and one certificate per
/// node; an existing CA there is reused).
fn make_certs(bin: &Path, dir: &Path, n: u64) -> anyhow::Result<()> {
    let ids: Vec<String> = (1..=n).map(|id| id.to_string()).collect();
    let dir_arg = dir.to_string_lossy();
    let bin_arg = bin.to_string_lossy();
    sh(
        &bin_arg,
        &["certs", "--dir", &dir_arg, "--nodes", &ids.join(",")],
    )?;
    Ok(())
}

/// The `[tls]` section of node `id`'s configuration: the files `garrison
/// certs` wrote in `dir`.
fn tls_toml(dir: &Path, id: u64) -> String {
    format!(
        "[tls]\nca_cert = \"{}\"\nnode_cert = \"{}\"\nnode_key = \"{}\"\n",
        dir.join("ca.pem").display(),
        dir.join(format!("node-{id}.pem")).display(),
        dir.join(format!("node-{id}.key")).display()
    )
}

impl Cluster {
    /// Removes every namespace and link a harness run may have left.
    pub fn teardown() {
        if let Ok(list) = sh("ip", &["netns", "list"]) {
            for ns in list
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(&format!("{PREFIX}-")))
            {
                // Kill whatever still runs inside before deleting it.
                if let Ok(pids) = sh("ip", &["netns", "pids", ns]) {
                    for pid in pids.split_whitespace() {
                        sh_quiet("kill", &["-9", pid]);
                    }
                }
                sh_quiet("ip", &["netns", "del", ns]);
            }
        }
        sh_quiet("ip", &["link", "del", "gjh"]);
    }

    /// Creates the network and writes the node configurations under `dir`.
    pub fn create(n: u64, dir: &Path, bin: &Path) -> anyhow::Result<Self> {
        Self::teardown();
        sh("ip", &["netns", "add", BRIDGE_NS])?;
        let in_bridge = |args: &[&str]| -> anyhow::Result<String> {
            let mut full = vec!["netns", "exec", BRIDGE_NS];
            full.extend_from_slice(args);
            sh("ip", &full)
        };
        in_bridge(&["ip", "link", "add", "br0", "type", "bridge"])?;
        in_bridge(&["ip", "link", "set", "br0", "up"])?;
        in_bridge(&["ip", "link", "set", "lo", "up"])?;
        // The host's leg.
        sh(
            "ip",
            &["link", "add", "gjh", "type", "veth", "peer", "name", "gjhb"],
        )?;
        sh("ip", &["link", "set", "gjhb", "netns", BRIDGE_NS])?;
        in_bridge(&["ip", "link", "set", "gjhb", "master", "br0"])?;
        in_bridge(&["ip", "link", "set", "gjhb", "up"])?;
        sh(
            "ip",
            &["addr", "add", &format!("{HOST_IP}/24"), "dev", "gjh"],
        )?;
        sh("ip", &["link", "set", "gjh", "up"])?;

        let tls = dir.join("tls");
        make_certs(bin, &tls, n)?;
        let ips: Vec<String> = (1..=n).map(|i| format!("10.77.0.{}", 10 + i)).collect();
        // Top-level keys go before the [[members]] tables.
        let mut members = format!(
            "admin_keys = [\"{}\"]\ntoken_key = \"{}\"\n\n",
            hex::encode(admin_key().public()),
            tls.join("token.key").display()
        );
        for (i, ip) in ips.iter().enumerate() {
            members += &format!("[[members]]\nid = {}\npeer_addr = \"{ip}:{PEER_PORT}\"\napi_addr = \"{ip}:{API_PORT}\"\n\n", i + 1);
        }
        let mut nodes = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            let id = i as u64 + 1;
            let ns = format!("{PREFIX}-n{id}");
            let (a, b) = (format!("gj{id}a"), format!("gj{id}b"));
            sh("ip", &["netns", "add", &ns])?;
            sh(
                "ip",
                &["link", "add", &a, "type", "veth", "peer", "name", &b],
            )?;
            sh("ip", &["link", "set", &a, "netns", &ns])?;
            sh("ip", &["link", "set", &b, "netns", BRIDGE_NS])?;
            in_bridge(&["ip", "link", "set", &b, "master", "br0"])?;
            in_bridge(&["ip", "link", "set", &b, "up"])?;
            sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "ip",
                    "addr",
                    "add",
                    &format!("{ip}/24"),
                    "dev",
                    &a,
                ],
            )?;
            sh("ip", &["netns", "exec", &ns, "ip", "link", "set", &a, "up"])?;
            sh(
                "ip",
                &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"],
            )?;
            let node_dir = dir.join(format!("n{id}"));
            std::fs::create_dir_all(&node_dir)?;
            let config = node_dir.join("garrison.toml");
            std::fs::write(
                &config,
                format!(
                    "node_id = {id}\ncluster = \"jepsen\"\ndata_dir = \"{}\"\n\n{members}{RAFT_TOML}\n{}",
                    node_dir.join("data").display(),
                    tls_toml(&tls, id)
                ),
            )?;
            let clock_file = node_dir.join("faketime");
            std::fs::write(&clock_file, "+0\n")?;
            nodes.push(NodeProc {
                ns,
                ip: ip.clone(),
                config,
                log: node_dir.join("node.log"),
                clock_file,
                child: None,
                paused: false,
            });
        }
        Ok(Self {
            nodes,
            bin: bin.to_path_buf(),
            links: None,
        })
    }

    /// Puts a proxy on the host in the path of every peer connection (DNAT
    /// inside each node's namespace), for the `slow-links` nemesis.
    pub async fn proxy_peer_links(&mut self) -> anyhow::Result<()> {
        let links = std::sync::Arc::new(crate::proxy::Links::default());
        for from in &self.nodes {
            let from_id = from.ns.trim_start_matches("gj-n").parse::<u64>()?;
            for (j, to) in self.nodes.iter().enumerate() {
                let to_id = j as u64 + 1;
                if to_id == from_id {
                    continue;
                }
                let port = crate::proxy::port(from_id, to_id);
                links
                    .start(
                        from_id,
                        to_id,
                        format!("{HOST_IP}:{port}"),
                        format!("{}:{PEER_PORT}", to.ip),
                    )
                    .await?;
                let dport = PEER_PORT.to_string();
                let target = format!("{HOST_IP}:{port}");
                sh(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &from.ns,
                        "iptables",
                        "-t",
                        "nat",
                        "-A",
                        "OUTPUT",
                        "-d",
                        &to.ip,
                        "-p",
                        "tcp",
                        "--dport",
                        &dport,
                        "-j",
                        "DNAT",
                        "--to-destination",
                        &target,
                    ],
                )?;
            }
        }
        self.links = Some(links);
        Ok(())
    }

    /// The client endpoints of every node.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.endpoint()).collect()
    }

    /// Starts node `id` (1-based) if it is not running.
    pub fn start(&mut self, id: u64) -> anyhow::Result<()> {
        let bin = self.bin.clone();
        let node = &mut self.nodes[id as usize - 1];
        if node.running() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.ns])
            .arg(&bin)
            .args(["node", "--config"])
            .arg(&node.config);
        cmd.env("GARRISON_LOG", "warn,garrison=info,openraft=error");
        if Path::new(LIBFAKETIME).exists() {
            // Wall clock only: the clock nemesis moves what the node reads as
            // the time of day; its timers run on the monotonic clock.
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", &node.clock_file)
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        node.child = Some(cmd.spawn().context("cannot start a node")?);
        node.paused = false;
        Ok(())
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) {
        let node = &mut self.nodes[id as usize - 1];
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        node.paused = false;
    }

    /// SIGSTOP or SIGCONT.
    pub fn pause(&mut self, id: u64, pause: bool) {
        let node = &mut self.nodes[id as usize - 1];
        if let Some(pid) = node.pid() {
            // SAFETY: a signal to a child this harness spawned and has not reaped.
            unsafe {
                libc::kill(pid, if pause { libc::SIGSTOP } else { libc::SIGCONT });
            }
            node.paused = pause;
        }
    }

    /// Makes node `id` drop every packet from the nodes in `from` (and, if
    /// `both_ways`, stop sending to them).
    pub fn drop_from(&self, id: u64, from: &[u64], both_ways: bool) -> anyhow::Result<()> {
        let node = &self.nodes[id as usize - 1];
        for f in from {
            let ip = &self.nodes[*f as usize - 1].ip;
            sh(
                "ip",
                &[
                    "netns", "exec", &node.ns, "iptables", "-A", "INPUT", "-s", ip, "-j", "DROP",
                ],
            )?;
            if both_ways {
                sh(
                    "ip",
                    &[
                        "netns", "exec", &node.ns, "iptables", "-A", "OUTPUT", "-d", ip, "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Cuts the cluster into `groups`: nodes in different groups cannot talk.
    pub fn partition(&self, groups: &[Vec<u64>]) -> anyhow::Result<()> {
        for (g, members) in groups.iter().enumerate() {
            let others: Vec<u64> = groups
                .iter()
                .enumerate()
                .filter(|(h, _)| *h != g)
                .flat_map(|(_, m)| m.clone())
                .collect();
            for id in members {
                self.drop_from(*id, &others, true)?;
            }
        }
        Ok(())
    }

    /// Removes every packet filter.
    pub fn heal_network(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            sh("ip", &["netns", "exec", &node.ns, "iptables", "-F"])?;
        }
        Ok(())
    }

    /// Sets what node `id`'s wall clock reads, as libfaketime's offset
    /// syntax ("+30s", "-2m", "+0").
    pub fn set_clock(&self, id: u64, offset: &str) -> anyhow::Result<()> {
        std::fs::write(
            &self.nodes[id as usize - 1].clock_file,
            format!("{offset}\n"),
        )?;
        Ok(())
    }

    /// Undoes every fault: network, clocks, pauses, dead processes.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        self.heal_network()?;
        if let Some(links) = &self.links {
            links.heal();
        }
        for id in 1..=self.nodes.len() as u64 {
            self.set_clock(id, "+0")?;
            if self.nodes[id as usize - 1].paused {
                self.pause(id, false);
            }
            self.start(id)?;
        }
        Ok(())
    }

    /// Stops every node (kill -9) and removes the network.
    pub fn destroy(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.pause(id, false);
            self.kill(id);
        }
        Self::teardown();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.destroy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_configuration_names_its_own_tls_files() {
        let text = tls_toml(Path::new("/runs/r1/tls"), 2);
        let value: toml::Value = toml::from_str(&text).unwrap();
        let tls = &value["tls"];
        assert_eq!(tls["ca_cert"].as_str(), Some("/runs/r1/tls/ca.pem"));
        assert_eq!(tls["node_cert"].as_str(), Some("/runs/r1/tls/node-2.pem"));
        assert_eq!(tls["node_key"].as_str(), Some("/runs/r1/tls/node-2.key"));
        assert_eq!(tls.as_table().unwrap().len(), 3);
    }
}
