//! The test vectors in `docs/formats.md` are what this crate produces: the
//! test reads them from the document itself, so the two cannot drift apart.

use garrison_client::policy::AdminOp;
use garrison_client::tx::{Op, Transaction, Value};
use garrison_client::Keypair;

/// The transactions the vectors describe, by vector number, with their seeds.
pub fn vectors() -> Vec<([u8; 32], Transaction)> {
    let seed1: [u8; 32] = std::array::from_fn(|i| i as u8);
    let seed2 = [0x42; 32];
    let seed3 = [0xa5; 32];
    let seed4 = [0x07; 32];
    let seed5 = [0x55; 32];
    let seed6 = [0x66; 32];
    let tx = |seed: &[u8; 32], location: &str, sequence, ops| Transaction {
        cluster: "dev".into(),
        location: location.into(),
        player: Keypair::from_seed(*seed).public(),
        sequence,
        ops,
    };
    vec![
        (
            seed1,
            tx(
                &seed1,
                "alpha",
                1,
                vec![Op::Put {
                    entity: "unit/1".into(),
                    fields: vec![("hp".into(), Value::Int(10))],
                }],
            ),
        ),
        (
            seed2,
            tx(
                &seed2,
                "bravo",
                7,
                vec![
                    Op::ExpectVersion {
                        entity: "depot/3".into(),
                        version: 5,
                    },
                    Op::Increment {
                        entity: "depot/3".into(),
                        field: "ammo".into(),
                        by: -2,
                        min: Some(0),
                        max: None,
                    },
                    Op::Delete {
                        entity: "unit/9".into(),
                    },
                ],
            ),
        ),
        (
            seed3,
            tx(
                &seed3,
                "charlie",
                300,
                vec![
                    Op::Put {
                        entity: "unit/2".into(),
                        fields: vec![
                            ("name".into(), Value::Str("scout".into())),
                            ("tag".into(), Value::Bytes(vec![0xbe, 0xef])),
                        ],
                    },
                    Op::ExpectField {
                        entity: "unit/2".into(),
                        field: "hp".into(),
                        value: None,
                    },
                ],
            ),
        ),
        (
            seed4,
            tx(
                &seed4,
                "alpha",
                2,
                vec![
                    Op::Emit {
                        kind: "unit_lost".into(),
                        fields: vec![
                            ("unit".into(), Value::Str("unit/9".into())),
                            ("by".into(), Value::Int(3)),
                        ],
                    },
                    Op::Delete {
                        entity: "unit/9".into(),
                    },
                ],
            ),
        ),
        (
            seed5,
            tx(
                &seed5,
                "@cluster",
                1,
                vec![Op::Admin(AdminOp::DeployRule {
                    text: "rule r\npattern a: emitted \"x\"\nemit \"y\"\n".into(),
                })],
            ),
        ),
        (
            seed6,
            tx(
                &seed6,
                "@cluster",
                2,
                vec![Op::Admin(AdminOp::DeployPlugin {
                    spec: {
                        let mut spec = garrison_client::plugins::PluginSpec::new(
                            "p",
                            b"\0asm\x01\0\0\0".to_vec(),
                            "game_master",
                        );
                        spec.locations = vec!["alpha".into()];
                        spec.on = vec!["resupply".into()];
                        spec
                    },
                })],
            ),
        ),
    ]
}

/// `key: hex` lines of each vector block in the document, in order.
fn documented() -> Vec<std::collections::BTreeMap<String, String>> {
    let doc = include_str!("../../docs/formats.md");
    let mut out = Vec::new();
    for block in doc.split("```vector").skip(1) {
        let body = block.split("```").next().unwrap();
        let mut fields = std::collections::BTreeMap::new();
        let mut last = String::new();
        for line in body.lines() {
            if let Some((k, v)) = line.split_once(':') {
                if !k.starts_with(' ') && !k.is_empty() {
                    last = k.trim().to_string();
                    fields.insert(last.clone(), v.trim().to_string());
                    continue;
                }
            }
            // Continuation lines of a long hex value.
            if let Some(v) = fields.get_mut(&last) {
                v.push_str(line.trim());
            }
        }
        out.push(fields);
    }
    out
}

/// The vector blocks as the document should have them (shown when the test
/// fails, so a deliberate format change can update the document).
fn rendered() -> String {
    let mut out = String::new();
    for (seed, tx) in vectors() {
        let key = Keypair::from_seed(seed);
        let signed = tx.sign(key.signing_key());
        out += &format!(
            "```vector\nseed: {}\npublic key: {}\ncanonical bytes: {}\nsignature: {}\n```\n",
            hex::encode(seed),
            hex::encode(key.public()),
            hex::encode(&signed.transaction),
            hex::encode(&signed.signature)
        );
    }
    out
}

#[test]
fn the_documented_vectors_match_the_encoding_and_the_signatures() {
    let docs = documented();
    let vectors = vectors();
    assert_eq!(
        docs.len(),
        vectors.len(),
        "docs/formats.md should hold {} vector blocks:\n{}",
        vectors.len(),
        rendered()
    );
    for (n, ((seed, tx), doc)) in vectors.iter().zip(&docs).enumerate() {
        let key = Keypair::from_seed(*seed);
        let signed = tx.sign(key.signing_key());
        let field = |k: &str| {
            doc.get(k)
                .unwrap_or_else(|| {
                    panic!("vector {} lacks {k:?}; expected:\n{}", n + 1, rendered())
                })
                .clone()
        };
        assert_eq!(field("seed"), hex::encode(seed), "vector {}", n + 1);
        assert_eq!(
            field("public key"),
            hex::encode(key.public()),
            "vector {}",
            n + 1
        );
        assert_eq!(
            field("canonical bytes"),
            hex::encode(&signed.transaction),
            "vector {}",
            n + 1
        );
        assert_eq!(
            field("signature"),
            hex::encode(&signed.signature),
            "vector {}; expected blocks:\n{}",
            n + 1,
            rendered()
        );
        assert_eq!(signed.verify().unwrap().transaction, *tx);
    }
}
