//! The snapshot decoders on arbitrary bytes: a corrupt or hostile snapshot
//! is refused and leaves the state as it was.
#![no_main]

use garrison::state::location::LocationApp;
use garrison_raft::meta::MetaApp;
use garrison_raft::storage::state::SnapshotImage;
use garrison_raft::{codec, GroupApp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = codec::decode::<SnapshotImage>(data);
    let mut location = LocationApp::new("here");
    let before = location.snapshot();
    if location.restore(data).is_err() {
        assert_eq!(
            location.snapshot(),
            before,
            "a refused snapshot changed the state"
        );
    }
    // The meta app with garrison's extension (policy, admin sequences, audit).
    let mut meta = MetaApp::new(Box::new(garrison::security::admin::AdminApp::default()));
    let before = meta.snapshot();
    if meta.restore(data).is_err() {
        assert_eq!(
            meta.snapshot(),
            before,
            "a refused snapshot changed the directory"
        );
    }
});
