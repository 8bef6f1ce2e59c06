//! Why ingress verifies signatures one by one, and what that costs.
//!
//! 1. ed25519-dalek's `verify_batch` is not `verify_strict`: it accepts a
//!    signature whose `R` carries a small-order part, which both single
//!    verifications refuse. The signer can make such signatures, and the
//!    batch's coefficients are derived from its contents, so the signer can
//!    also try messages until one passes. This prints how many of `TRIES`
//!    such signatures the batch accepted.
//! 2. Checking that `R` has no small-order part (what would make the batch
//!    agree with `verify_strict`) costs about as much as the whole single
//!    verification. This prints the cost per signature of signing,
//!    `verify_strict`, that check, and `verify_batch` at 4, 16 and 64.
//!
//!     cargo run --release --example probe_crypto
//!
//! `docs/performance.md` quotes both.

use std::time::Instant;

use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha512};

const TRIES: u32 = 64;
const SIGNATURES: usize = 2048;

/// A deterministic 32-byte value per label and number (no RNG needed here).
fn bytes32(label: &str, n: u64) -> [u8; 32] {
    let digest = Sha512::new()
        .chain_update(label)
        .chain_update(n.to_le_bytes())
        .finalize();
    digest[..32].try_into().expect("32 bytes")
}

/// A signature by secret scalar `a` on `msg` whose `R` is `r·B` plus the
/// point of order 2: valid under the cofactored equation only.
fn torsioned_signature(a: &Scalar, msg: &[u8], nonce: u64) -> Signature {
    let public = (a * ED25519_BASEPOINT_POINT).compress();
    let r = Scalar::from_bytes_mod_order(bytes32("nonce", nonce));
    let big_r = (r * ED25519_BASEPOINT_POINT + EIGHT_TORSION[4]).compress();
    let k = Scalar::from_hash(
        Sha512::new()
            .chain_update(big_r.as_bytes())
            .chain_update(public.as_bytes())
            .chain_update(msg),
    );
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(big_r.as_bytes());
    bytes[32..].copy_from_slice((r + k * a).as_bytes());
    Signature::from_bytes(&bytes)
}

fn micros_each(n: usize, run: impl FnOnce()) -> f64 {
    let started = Instant::now();
    run();
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let a = Scalar::from_bytes_mod_order(bytes32("secret", 0));
    let key = VerifyingKey::from_bytes((a * ED25519_BASEPOINT_POINT).compress().as_bytes())
        .expect("a valid key");
    let mut accepted = 0;
    for n in 0..TRIES {
        let msg = format!("transfer 10 gold, attempt {n}");
        let sig = torsioned_signature(&a, msg.as_bytes(), n.into());
        assert!(key.verify_strict(msg.as_bytes(), &sig).is_err());
        assert!(key.verify(msg.as_bytes(), &sig).is_err());
        if ed25519_dalek::verify_batch(&[msg.as_bytes()], &[sig], &[key]).is_ok() {
            accepted += 1;
        }
    }
    println!(
        "RESULT probe=batch-vs-strict refused_by_verify_strict={TRIES} \
         accepted_by_verify_batch={accepted}"
    );

    let keys: Vec<SigningKey> = (0..SIGNATURES as u64)
        .map(|n| SigningKey::from_bytes(&bytes32("key", n)))
        .collect();
    let public: Vec<VerifyingKey> = keys.iter().map(SigningKey::verifying_key).collect();
    let msgs: Vec<Vec<u8>> = (0..SIGNATURES as u64)
        .map(|n| bytes32("msg", n).repeat(7)[..200].to_vec())
        .collect();
    for round in 0..3 {
        let mut sigs = Vec::new();
        let sign = micros_each(SIGNATURES, || {
            sigs = keys.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
        });
        let strict = micros_each(SIGNATURES, || {
            for ((key, msg), sig) in public.iter().zip(&msgs).zip(&sigs) {
                key.verify_strict(msg, sig).expect("valid");
            }
        });
        let subgroup = micros_each(SIGNATURES, || {
            for sig in &sigs {
                let r = CompressedEdwardsY(*sig.r_bytes()).decompress();
                assert!(r.expect("a point").is_torsion_free());
            }
        });
        let batches: Vec<String> = [4, 16, 64]
            .into_iter()
            .map(|size: usize| {
                let each = micros_each(SIGNATURES, || {
                    for start in (0..SIGNATURES).step_by(size) {
                        let range = start..start + size;
                        let m: Vec<&[u8]> = msgs[range.clone()].iter().map(Vec::as_slice).collect();
                        ed25519_dalek::verify_batch(&m, &sigs[range.clone()], &public[range])
                            .expect("valid");
                    }
                });
                format!("verify_batch_{size}={each:.1}")
            })
            .collect();
        // The first round warms caches and clocks up.
        if round > 0 {
            println!(
                "RESULT probe=crypto us_per_signature: sign={sign:.1} verify_strict={strict:.1} \
                 r_subgroup_check={subgroup:.1} {}",
                batches.join(" ")
            );
        }
    }
}
