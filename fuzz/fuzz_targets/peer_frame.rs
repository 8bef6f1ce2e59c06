//! The peer protocol's frame decoder on arbitrary bytes: a hostile peer's
//! frame must decode or be refused, never panic or allocate without bound.
#![no_main]

use garrison_raft::codec;
use garrison_raft::network::{PeerRequest, PeerResponse};
use libfuzzer_sys::fuzz_target;

static QUIET_HOOK: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    // garrison_wire::decode catches panics of hostile values (tarpc's
    // deadline overflows the clock); libfuzzer-sys's hook would abort on
    // those before they are caught. A panic that escapes decode still
    // reaches libfuzzer-sys's catch_unwind and aborts there.
    QUIET_HOOK.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let _ = codec::decode::<tarpc::ClientMessage<PeerRequest>>(data);
    let _ = codec::decode::<tarpc::Response<PeerResponse>>(data);
});
