//! The real `garrison` binary, three node processes on loopback, each with
//! its own data directory: writes survive `kill -9` of a leader and of the
//! whole cluster, and `garrison check` finds the replicas identical. The
//! nodes talk mutual TLS with certificates from `garrison certs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, WAIT};
use garrison::server::{Member, ServerConfig};
use garrison_client::api::{Outcome, ReadMode};
use garrison_client::{Client, Keypair, Op, Player, Value};
use garrison_raft::network::TlsFiles;

const BIN: &str = env!("CARGO_BIN_EXE_garrison");

struct Proc {
    config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["node", "--config"])
            .arg(&self.config)
            // The default log, whose quieting of openraft is checked below.
            .env_remove("GARRISON_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start garrison node");
        self.child = Some(child);
    }

    /// How many bytes the node has logged.
    fn log_len(&self) -> usize {
        std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize)
    }

    /// What the node logged from byte `from` of its log on.
    fn log_since(&self, from: usize) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&bytes[from.min(bytes.len())..]).into_owned()
    }

    /// kill -9: no shutdown, no flush.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `garrison certs` for nodes 1..=n in `dir/tls`.
fn make_certs(dir: &Path, n: u64) -> PathBuf {
    let tls = dir.join("tls");
    let ids: Vec<String> = (1..=n).map(|id| id.to_string()).collect();
    let out = Command::new(BIN)
        .args(["certs", "--nodes", &ids.join(","), "--dir"])
        .arg(&tls)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "garrison certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tls
}

fn write_configs(dir: &Path, n: u64) -> (Vec<Proc>, Vec<String>) {
    let tls = make_certs(dir, n);
    let members: Vec<Member> = (1..=n)
        .map(|id| Member {
            id,
            peer_addr: format!("127.0.0.1:{}", free_port()),
            api_addr: format!("127.0.0.1:{}", free_port()),
            http_addr: None,
        })
        .collect();
    let mut procs = Vec::new();
    for m in &members {
        let config = ServerConfig {
            node_id: m.id,
            cluster: "process-test".into(),
            data_dir: dir.join(format!("node-{}", m.id)),
            members: members.clone(),
            raft: Default::default(),
            api: Default::default(),
            admin_keys: vec![hex::encode(common::admin_key().public())],
            roles_file: None,
            events: Default::default(),
            tls: TlsFiles::in_dir(&tls, m.id),
            token_key: tls.join("token.key"),
            token_ttl_ms: garrison::server::default_token_ttl_ms(),
            cache_bytes: garrison::server::default_cache_bytes(),
            api_tls: None,
        };
        let path = dir.join(format!("node-{}.toml", m.id));
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        procs.push(Proc {
            config: path,
            child: None,
            log: dir.join(format!("node-{}.log", m.id)),
        });
    }
    (procs, members.iter().map(|m| m.api_addr.clone()).collect())
}

async fn connect(endpoints: &[String]) -> Client {
    let started = Instant::now();
    loop {
        if let Ok(c) = Client::connect(endpoints).await {
            if c.login(&common::admin_key()).await.is_ok() {
                return c;
            }
        }
        assert!(started.elapsed() < WAIT, "the cluster never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `unit/{i}` for i in `range`, each acknowledged before the next.
async fn write(client: &Client, player: &mut Player, range: std::ops::Range<u64>) -> Vec<u64> {
    let mut acked = Vec::new();
    for i in range {
        let op = Op::Put {
            entity: format!("unit/{i}"),
            fields: vec![("n".into(), Value::Int(i as i64))],
        };
        let receipt = player
            .transact(client, "front", vec![op])
            .await
            .expect("write acknowledged");
        assert!(
            matches!(receipt.outcome, Outcome::Committed { .. }),
            "{receipt:?}"
        );
        acked.push(i);
    }
    acked
}

async fn assert_all_present(client: &Client, acked: &[u64]) {
    let read = client
        .get_location("front", ReadMode::Linearizable, 10_000)
        .await
        .unwrap();
    for i in acked {
        let e = read
            .entities
            .get(&format!("unit/{i}"))
            .unwrap_or_else(|| panic!("acknowledged unit/{i} lost"));
        assert_eq!(e.fields["n"], Value::Int(*i as i64));
    }
}

fn check(endpoints: &[String]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["check", "--cluster", &endpoints.join(",")])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_transactions_survive_kill_9_of_the_leader_and_of_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, endpoints) = write_configs(dir.path(), 3);
    for p in procs.iter_mut() {
        p.start();
    }
    let client = connect(&endpoints).await;
    Player::new(common::admin_key())
        .create_location(&client, "front")
        .await
        .unwrap();
    let mut player = Player::new(Keypair::generate());
    let mut acked = write(&client, &mut player, 0..20).await;

    // kill -9 the location's leader; writes resume through the client.
    let leader_addr = client.find_leader("front").await.unwrap();
    let leader = endpoints.iter().position(|e| *e == leader_addr).unwrap();
    // What the nodes logged before (peers not yet up at start-up included).
    let logged_before: Vec<usize> = procs.iter().map(Proc::log_len).collect();
    procs[leader].kill();
    let killed = Instant::now();
    acked.extend(write(&client, &mut player, 20..21).await);
    eprintln!(
        "leader (node {}) killed; next write acknowledged after {:?}",
        leader + 1,
        killed.elapsed()
    );
    acked.extend(write(&client, &mut player, 21..40).await);
    assert_all_present(&client, &acked).await;

    // Each survivor says once that the killed node is unreachable; the
    // groups' own retries (openraft's "Unreachable node" errors, dozens a
    // second) stay out of the default log.
    let gone = format!("peer node {} is unreachable", leader + 1);
    let since_kill = |procs: &[Proc], i: usize| procs[i].log_since(logged_before[i]);
    eventually("the survivors to report the killed node", || {
        let said = (0..procs.len())
            .filter(|&i| i != leader)
            .all(|i| since_kill(&procs, i).contains(&gone));
        async move { said }
    })
    .await;
    for i in (0..procs.len()).filter(|&i| i != leader) {
        let log = since_kill(&procs, i);
        assert_eq!(log.matches(&gone).count(), 1, "node {}:\n{log}", i + 1);
        assert!(!log.contains("Unreachable node"), "node {}:\n{log}", i + 1);
    }

    // Bring it back (the survivors say so once), then kill -9 all three at
    // once and restart them.
    procs[leader].start();
    acked.extend(write(&client, &mut player, 40..45).await);
    let back = format!("peer node {} is reachable again", leader + 1);
    eventually("the survivors to report the node back", || {
        let said = (0..procs.len())
            .filter(|&i| i != leader)
            .all(|i| since_kill(&procs, i).matches(&back).count() == 1);
        async move { said }
    })
    .await;
    for p in procs.iter_mut() {
        p.kill();
    }
    for p in procs.iter_mut() {
        p.start();
    }
    let client = connect(&endpoints).await;
    assert_all_present(&client, &acked).await;
    let mut player = Player::new(player.key().clone());
    acked.extend(write(&client, &mut player, 45..50).await);
    assert_all_present(&client, &acked).await;

    // Every replica holds the same log and state.
    let mut verdict = (false, String::new());
    eventually("garrison check to find the replicas identical", || {
        verdict = check(&endpoints);
        let ok =
            verdict.0 && verdict.1.contains("no divergence") && !verdict.1.contains("not checked");
        async move { ok }
    })
    .await;
    assert!(verdict.1.contains("front"), "{}", verdict.1);
}

/// `garrison watch`, a separate process, follows a location's commits while
/// the location's leader is killed with `kill -9` and comes back: it prints
/// every acknowledged transaction's commit exactly once, in log order, and
/// nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_every_commit_once_in_order_across_kill_9_of_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, endpoints) = write_configs(dir.path(), 3);
    for p in procs.iter_mut() {
        p.start();
    }
    let client = connect(&endpoints).await;
    Player::new(common::admin_key())
        .create_location(&client, "front")
        .await
        .unwrap();
    let key_file = dir.path().join("admin.key");
    common::admin_key().save(&key_file).unwrap();
    let out = dir.path().join("watch.out");
    let mut watch = Command::new(BIN)
        .args([
            "watch",
            "-l",
            "front",
            "--from",
            "start",
            "--kind",
            "committed",
        ])
        .args(["--json", "--cluster", &endpoints.join(","), "--key"])
        .arg(&key_file)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut player = Player::new(Keypair::generate());
    let mut receipts = Vec::new();
    let mut write_some = async |client: &Client, range: std::ops::Range<i64>| {
        for i in range {
            let op = Op::Put {
                entity: "unit/1".into(),
                fields: vec![("n".into(), Value::Int(i))],
            };
            let r = player.transact(client, "front", vec![op]).await.unwrap();
            receipts.push((r.index, r.sequence));
        }
    };
    write_some(&client, 0..15).await;
    let leader_addr = client.find_leader("front").await.unwrap();
    let leader = endpoints.iter().position(|e| *e == leader_addr).unwrap();
    procs[leader].kill();
    write_some(&client, 15..30).await;
    procs[leader].start();
    write_some(&client, 30..40).await;
    let seen = |out: &Path| -> Vec<(u64, u64)> {
        std::fs::read_to_string(out)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object a line");
                (
                    v["index"].as_u64().unwrap(),
                    v["sequence"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let expected = receipts.len();
    eventually("the watcher to print every commit", || {
        let n = seen(&out).len();
        async move { n >= expected }
    })
    .await;
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(seen(&out), receipts, "every commit once, in log order");
}

/// `garrison dev --client-tls`: every client port speaks TLS, and the other
/// commands, finding the dev cluster by themselves, find its CA too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_use_a_dev_cluster_with_client_tls_by_themselves() {
    let home = tempfile::tempdir().unwrap();
    let garrison = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("GARRISON_HOME", home.path())
            .env_remove("GARRISON_CLUSTER")
            .env_remove("GARRISON_CA")
            .output()
            .unwrap()
    };
    // dev needs its client ports at BASE+1.. and peer ports at BASE+101..:
    // take a free port as the base and try again if dev finds one taken.
    let out = home.path().join("dev.out");
    let started = Instant::now();
    let (dev, base) = loop {
        let base = free_port().saturating_sub(200).max(1024);
        let file = std::fs::File::create(&out).unwrap();
        let mut dev = Command::new(BIN)
            .args(["dev", "--client-tls", "--base-port", &base.to_string()])
            .env("GARRISON_HOME", home.path())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let up = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if text.contains("is up") {
                break true;
            }
            if dev.try_wait().unwrap().is_some() {
                break false;
            }
            assert!(
                started.elapsed() < 4 * WAIT,
                "garrison dev did not come up:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if up {
            break (Dev(dev), base);
        }
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        assert!(text.contains("is not free"), "garrison dev failed:\n{text}");
        let _ = dev.wait();
    };
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("client ports speak TLS"), "{text}");

    let status = garrison(&["status"]);
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(said.contains(&format!("127.0.0.1:{}", base + 1)), "{said}");
    assert!(garrison(&["keygen"]).status.success());
    let tx = garrison(&["tx", "-l", "alpha", "--put", "unit/1:hp=10"]);
    assert!(
        tx.status.success(),
        "{}",
        String::from_utf8_lossy(&tx.stderr)
    );
    drop(dev);
}

/// A running `garrison dev`: stopped with SIGINT (it stops its nodes) when
/// dropped, also when the test fails.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a child this test spawned and has not reaped.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGINT);
        }
        let _ = self.0.wait();
    }
}
