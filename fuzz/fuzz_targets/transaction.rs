//! The transaction decoder and every ingress check, on arbitrary bytes: they
//! must refuse or accept, never panic, and never accept a non-canonical
//! encoding.
#![no_main]

use garrison_client::tx::{SignedTransaction, Transaction};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tx) = Transaction::from_canonical_bytes(data) {
        assert_eq!(
            tx.canonical_bytes(),
            data,
            "a decoded transaction re-encodes to other bytes"
        );
        let _ = tx.check_limits();
    }
    let (transaction, signature) = data.split_at(data.len().saturating_sub(64));
    let signed = SignedTransaction {
        transaction: transaction.to_vec(),
        signature: signature.to_vec(),
    };
    let _ = signed.verify();
});
