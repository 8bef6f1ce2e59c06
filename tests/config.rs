//! The example configuration in the repository is valid, spells out the
//! defaults, and bad files get errors that name the problem.

use garrison::server::{ApiLimits, ServerConfig};
use garrison_raft::{RaftConfig, MAX_LOCATION_HEARTBEAT_INTERVAL_MS};

#[test]
fn the_example_configuration_loads_and_states_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("garrison.example.toml");
    let config = ServerConfig::load(&path).expect("garrison.example.toml loads");
    assert_eq!(config.members.len(), 3);
    assert!(config.admin_keys.is_empty() && config.roles_file.is_none());
    assert_eq!(
        config.token_ttl_ms,
        garrison::server::default_token_ttl_ms(),
        "the example should show the default token lifetime"
    );
    assert_eq!(
        config.raft,
        RaftConfig::default(),
        "the example's [raft] section should show the defaults"
    );
    assert_eq!(
        config.api,
        ApiLimits::default(),
        "the example's [api] section should show the defaults"
    );
    assert_eq!(
        config.events,
        garrison::server::EventsConfig::default(),
        "the example's [events] section should show the defaults"
    );
    config.raft.validate().unwrap();
}

/// A configuration of node `id` with `extra` top-level lines, one member
/// (node 1) and TLS files.
fn valid(id: u64, extra: &str) -> String {
    format!(
        "node_id = {id}\ncluster = \"c\"\ndata_dir = \"d\"\ntoken_key = \"t.key\"\n{extra}\n\
         [[members]]\nid = 1\npeer_addr = \"127.0.0.1:1\"\napi_addr = \"127.0.0.1:2\"\n\
         [tls]\nca_cert = \"ca.pem\"\nnode_cert = \"n.pem\"\nnode_key = \"n.key\"\n"
    )
}

#[test]
fn bad_configurations_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (valid(9, ""), "not among the members"),
        // TLS between nodes cannot be left out.
        (
            valid(1, "").split("[tls]").next().unwrap().to_string(),
            "missing field `tls`",
        ),
        (valid(1, "colour = \"blue\""), "unknown field"),
        ("node_id = \"one\"\n".to_string(), "invalid type"),
        (valid(1, "admin_keys = [\"abc\"]"), "not 64 hex digits"),
        (
            valid(1, "roles_file = \"/nonexistent/roles.toml\""),
            "cannot read roles file",
        ),
        // TLS on the client port names files that must load.
        (
            valid(1, "[api_tls]\ncert = \"/nonexistent/api.pem\"\nkey = \"k\""),
            "api_tls: cannot read the certificate /nonexistent/api.pem",
        ),
        // The cluster's event retention has bounds.
        (
            valid(1, "[events]\nmax_retained_events = 0"),
            "events.max_retained_events must be 1 to",
        ),
        (
            valid(1, "[events]\nmax_retained_event_bytes = 1000"),
            "events.max_retained_event_bytes must be 524288 to",
        ),
    ];
    for (i, (text, words)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", ServerConfig::load(&path).unwrap_err());
        assert!(err.contains(words), "{err:?} should mention {words:?}");
    }
    let raft = RaftConfig {
        election_timeout_min_ms: 10,
        ..RaftConfig::default()
    };
    assert!(raft
        .validate()
        .unwrap_err()
        .to_string()
        .contains("election_timeout_min_ms"));
    // Location groups' followers stand on pings, not late heartbeats: their
    // heartbeat may exceed the election timeout; the meta group's may not.
    let slow_locations = RaftConfig {
        location_heartbeat_interval_ms: MAX_LOCATION_HEARTBEAT_INTERVAL_MS,
        ..RaftConfig::default()
    };
    slow_locations.validate().unwrap();
    for (raft, words) in [
        (
            RaftConfig {
                location_heartbeat_interval_ms: 0,
                ..RaftConfig::default()
            },
            "location_heartbeat_interval_ms (0) must be between 1 and",
        ),
        (
            RaftConfig {
                location_heartbeat_interval_ms: MAX_LOCATION_HEARTBEAT_INTERVAL_MS + 1,
                ..RaftConfig::default()
            },
            "location_heartbeat_interval_ms (5001) must be between 1 and",
        ),
        (
            RaftConfig {
                heartbeat_interval_ms: 400,
                ..RaftConfig::default()
            },
            "must exceed heartbeat_interval_ms (400)",
        ),
    ] {
        let err = raft.validate().unwrap_err().to_string();
        assert!(err.contains(words), "{err:?} should mention {words:?}");
    }
    let raft = RaftConfig {
        max_frame_bytes: 1024,
        ..RaftConfig::default()
    };
    assert!(raft
        .validate()
        .unwrap_err()
        .to_string()
        .contains("max_frame_bytes"));
}
