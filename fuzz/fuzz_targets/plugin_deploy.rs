//! The plugin deploy path on arbitrary bytes: the decoder of a deploy
//! transaction, the spec's static limits, and the module validator that a
//! node runs before it proposes a deploy (wasmtime's parser and compiler,
//! then garrison's checks of imports, memory and exports). Nothing may
//! panic; and a module the validator accepts must run an event within a
//! small fuel without panicking the host, whatever it does with the host
//! API. Seeds: `fuzz/seeds/plugin_deploy/` (the examples' modules and
//! deploy transactions).
#![no_main]

use std::sync::OnceLock;

use garrison::plugins::runtime::PluginRuntime;
use garrison::state::fragment::Fragment;
use garrison_client::events::{EventBody, EventId, StreamEvent};
use garrison_client::policy::AdminOp;
use garrison_client::tx::{Op, Transaction};
use garrison_client::Value;
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static PluginRuntime {
    static RUNTIME: OnceLock<PluginRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| PluginRuntime::new().expect("the plugin engine starts"))
}

fn validate_and_run(module: &[u8]) {
    let Ok(plugin) = runtime().load(module) else {
        return;
    };
    let event = StreamEvent {
        id: EventId {
            location: "alpha".into(),
            index: 7,
            position: 0,
        },
        log_time_ms: 1_000,
        player: Some([1; 32]),
        body: EventBody::Emitted {
            kind: "resupply".into(),
            fields: vec![("depot".into(), Value::Str("depot/1".into()))],
        },
    };
    let _ = runtime().run(&plugin, &event, 100_000, Fragment::default());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(tx) = Transaction::from_canonical_bytes(data) {
        for op in &tx.ops {
            if let Op::Admin(AdminOp::DeployPlugin { spec }) = op {
                if spec.check_limits().is_ok() {
                    validate_and_run(&spec.module);
                }
            }
        }
    }
    validate_and_run(data);
});
