//! Transactions: what a player asks a location to do, encoded canonically
//! and signed with ed25519 (RFC 8032). This is the only module that touches
//! ed25519.
//!
//! # Canonical bytes
//!
//! A [`Transaction`] is encoded with bincode 2 in one fixed configuration:
//! little-endian, **fixed-width** integers (u16 = 2 bytes, u32 = 4, u64 and
//! i64 = 8), strings and vectors as a u64 length then their contents, enums
//! as a u32 variant index then their fields, `Option` as a byte 0/1 then the
//! value, and the 32-byte public key as 32 raw bytes. Fixed widths make the
//! bytes easy to produce from any language; `docs/formats.md` lays them out
//! field by field and gives test vectors.
//!
//! The signature covers [`SIGNING_DOMAIN`] followed by the canonical bytes,
//! so a transaction signature can never be replayed as anything else a
//! player's key signs.
//!
//! # Ingress checks
//!
//! [`SignedTransaction::verify`] is what a node runs before it proposes
//! anything: size, canonical decoding, static limits, a well-formed and
//! non-weak public key, then `verify_strict`. Each failure is a distinct
//! [`TxError`] that says what was wrong.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::events::{MAX_EMIT_KIND_BYTES, MAX_FIELDS_PER_EMIT};
use crate::policy::{Action, AdminOp, ADMIN_LOCATION};

/// Prefix of every signed message: the transaction format's name and version.
pub const SIGNING_DOMAIN: &[u8] = b"garrison/tx/v1";
/// Largest canonical transaction, in bytes.
pub const MAX_TRANSACTION_BYTES: usize = 16 * 1024;
/// Most operations in one transaction.
pub const MAX_OPS_PER_TRANSACTION: usize = 64;
/// Longest entity key, in bytes.
pub const MAX_ENTITY_KEY_BYTES: usize = 128;
/// Longest field name, in bytes.
pub const MAX_FIELD_NAME_BYTES: usize = 64;
/// Largest string or bytes value, in bytes.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Most fields one `Put` may set.
pub const MAX_FIELDS_PER_PUT: usize = 64;
/// Longest cluster or location name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Length of an ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;

/// A player's public key: 32 bytes of compressed Edwards point.
pub type PlayerKey = [u8; 32];

/// A field's value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Value {
    /// A signed 64-bit integer.
    Int(i64),
    /// UTF-8 text.
    Str(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => write!(f, "0x{}", hex::encode(b)),
        }
    }
}

/// One operation of a transaction. Operations run in order; the first that
/// fails rejects the whole transaction and nothing changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Sets fields on an entity, creating it (owned by the signer) if needed.
    Put {
        /// The entity's key, e.g. `unit/17`.
        entity: String,
        /// Field names and values to set.
        fields: Vec<(String, Value)>,
    },
    /// Deletes an entity; it must exist.
    Delete {
        /// The entity's key.
        entity: String,
    },
    /// Adds `by` to an integer field (a missing field counts as 0), refusing
    /// a result outside `[min, max]`.
    Increment {
        /// The entity's key; it must exist.
        entity: String,
        /// The field.
        field: String,
        /// The amount, negative to subtract.
        by: i64,
        /// The lowest allowed result, if any.
        min: Option<i64>,
        /// The highest allowed result, if any.
        max: Option<i64>,
    },
    /// Requires the entity's version to be `version` (0: it must not exist).
    ExpectVersion {
        /// The entity's key.
        entity: String,
        /// The required version.
        version: u64,
    },
    /// Requires a field to hold `value` (`None`: the field, or the entity,
    /// must be absent).
    ExpectField {
        /// The entity's key.
        entity: String,
        /// The field.
        field: String,
        /// The required value.
        value: Option<Value>,
    },
    /// An administrative operation; only in transactions for
    /// [`ADMIN_LOCATION`], which hold nothing else.
    Admin(AdminOp),
    /// Records a game event (`attack`, `capture`, `unit_lost`...) with
    /// typed fields in the location's event stream and the receipt; changes
    /// no entity. Needs the `emit` permission for the kind.
    Emit {
        /// The event's kind: 1 to [`MAX_EMIT_KIND_BYTES`] letters, digits
        /// and `_ . / : -`.
        kind: String,
        /// Its fields (at most [`MAX_FIELDS_PER_EMIT`], each named once).
        fields: Vec<(String, Value)>,
    },
}

impl Op {
    /// The entity the operation is about (`None` for administrative ones).
    pub fn entity(&self) -> Option<&str> {
        match self {
            Op::Put { entity, .. }
            | Op::Delete { entity }
            | Op::Increment { entity, .. }
            | Op::ExpectVersion { entity, .. }
            | Op::ExpectField { entity, .. } => Some(entity),
            Op::Admin(_) | Op::Emit { .. } => None,
        }
    }

    /// What the permission's pattern is matched against: the entity's key,
    /// or an emitted event's kind.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Op::Emit { kind, .. } => Some(kind),
            op => op.entity(),
        }
    }

    /// The permission the signer needs for this operation.
    pub fn action(&self) -> Action {
        match self {
            Op::Put { .. } => Action::Put,
            Op::Delete { .. } => Action::Delete,
            Op::Increment { .. } => Action::Increment,
            Op::ExpectVersion { .. } | Op::ExpectField { .. } => Action::Read,
            Op::Admin(op) => op.action(),
            Op::Emit { .. } => Action::Emit,
        }
    }
}

/// What a player signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// The cluster's name; another cluster refuses the transaction.
    pub cluster: String,
    /// The location the transaction acts on.
    pub location: String,
    /// The signer's public key.
    pub player: PlayerKey,
    /// The player's next sequence number at this location (the first is 1).
    pub sequence: u64,
    /// The operations, applied in order, all or none.
    pub ops: Vec<Op>,
}

/// A transaction's canonical bytes and their signature, as sent to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTransaction {
    /// [`Transaction::canonical_bytes`].
    pub transaction: Vec<u8>,
    /// The 64-byte ed25519 signature of `SIGNING_DOMAIN ‖ transaction`.
    pub signature: Vec<u8>,
}

/// Why a transaction was refused before it reached the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum TxError {
    /// The transaction is larger than [`MAX_TRANSACTION_BYTES`].
    #[error("transaction is {bytes} bytes; the limit is {max}")]
    TooLarge {
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The bytes are not a canonically encoded transaction.
    #[error("malformed transaction: {0}")]
    Malformed(String),
    /// A field breaks a static limit; the message names it.
    #[error("transaction breaks a limit: {0}")]
    Limit(String),
    /// The public key is not a valid, canonically encoded ed25519 point.
    #[error("the player key is not a valid, canonically encoded ed25519 public key")]
    InvalidKey,
    /// The public key has small order: anyone could forge its signatures.
    #[error("the player key is a weak (small-order) ed25519 key; generate a new key")]
    WeakKey,
    /// The signature is malformed or does not verify for this key and these bytes.
    #[error("the signature does not verify for this transaction and player key")]
    BadSignature,
}

fn canonical_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_TRANSACTION_BYTES>()
}

/// Encodes `value` canonically (the transaction encoding: bincode 2,
/// little-endian, fixed-width integers): transactions and the other signed
/// formats.
pub fn canonical_encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, canonical_config())
        .expect("signed formats are smaller than the transaction limit")
}

/// Decodes canonical bytes of at most `max` bytes, refusing trailing bytes
/// and any encoding but the canonical one; the error says what was wrong.
pub fn canonical_decode<T: serde::de::DeserializeOwned + Serialize>(
    bytes: &[u8],
    max: usize,
) -> Result<T, String> {
    if bytes.len() > max.min(MAX_TRANSACTION_BYTES) {
        return Err(format!("{} bytes; the limit is {max}", bytes.len()));
    }
    let (value, used): (T, usize) =
        bincode::serde::decode_from_slice(bytes, canonical_config()).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!("{} bytes after the value", bytes.len() - used));
    }
    if canonical_encode(&value) != bytes {
        return Err("not the canonical encoding".into());
    }
    Ok(value)
}

impl Transaction {
    /// The canonical bytes this transaction is signed and sent as.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        canonical_encode(self)
    }

    /// Decodes canonical bytes, refusing any other encoding of the same value.
    pub fn from_canonical_bytes(bytes: &[u8]) -> Result<Self, TxError> {
        if bytes.len() > MAX_TRANSACTION_BYTES {
            return Err(TxError::TooLarge {
                bytes: bytes.len() as u64,
                max: MAX_TRANSACTION_BYTES as u64,
            });
        }
        canonical_decode(bytes, MAX_TRANSACTION_BYTES).map_err(TxError::Malformed)
    }

    /// Checks the static limits (sizes and counts); the error names the first broken one.
    pub fn check_limits(&self) -> Result<(), TxError> {
        let limit = |what: String| Err(TxError::Limit(what));
        for (name, value) in [("cluster", &self.cluster), ("location", &self.location)] {
            if value.is_empty() || value.len() > MAX_NAME_BYTES {
                return limit(format!("{name} name must be 1 to {MAX_NAME_BYTES} bytes"));
            }
        }
        if self.sequence == 0 {
            return limit("sequence numbers start at 1".into());
        }
        if self.ops.is_empty() || self.ops.len() > MAX_OPS_PER_TRANSACTION {
            return limit(format!(
                "a transaction has 1 to {MAX_OPS_PER_TRANSACTION} operations, not {}",
                self.ops.len()
            ));
        }
        let admin = self.location == ADMIN_LOCATION;
        for (i, op) in self.ops.iter().enumerate() {
            match (admin, op) {
                (true, Op::Admin(_)) | (false, Op::Put { .. })
                | (false, Op::Delete { .. })
                | (false, Op::Increment { .. })
                | (false, Op::ExpectVersion { .. })
                | (false, Op::ExpectField { .. })
                | (false, Op::Emit { .. }) => {}
                (true, _) => {
                    return limit(format!(
                        "operation {i}: a transaction for {ADMIN_LOCATION} holds only administrative operations"
                    ))
                }
                (false, Op::Admin(_)) => {
                    return limit(format!(
                        "operation {i}: administrative operations go in a transaction for {ADMIN_LOCATION}"
                    ))
                }
            }
            check_op(op).map_err(|why| TxError::Limit(format!("operation {i}: {why}")))?;
        }
        Ok(())
    }

    /// Signs the transaction with the player's key.
    pub fn sign(&self, key: &SigningKey) -> SignedTransaction {
        let transaction = self.canonical_bytes();
        let signature = key.sign(&signed_message(&transaction)).to_bytes().to_vec();
        SignedTransaction {
            transaction,
            signature,
        }
    }
}

pub fn check_op(op: &Op) -> Result<(), String> {
    let entity = match op {
        Op::Admin(admin) => return admin.check_limits(),
        Op::Emit { kind, fields } => return check_emit(kind, fields),
        op => op.entity().unwrap_or_default(),
    };
    check_word("entity key", entity, MAX_ENTITY_KEY_BYTES, "_./:-")?;
    match op {
        Op::Put { fields, .. } => {
            if fields.is_empty() || fields.len() > MAX_FIELDS_PER_PUT {
                return Err(format!("a put sets 1 to {MAX_FIELDS_PER_PUT} fields"));
            }
            check_fields(fields)?;
        }
        Op::Delete { .. } | Op::ExpectVersion { .. } => {}
        Op::Increment {
            field, min, max, ..
        } => {
            check_field(field)?;
            if let (Some(min), Some(max)) = (min, max) {
                if min > max {
                    return Err(format!("bounds [{min}, {max}] are empty"));
                }
            }
        }
        Op::ExpectField { field, value, .. } => {
            check_field(field)?;
            if let Some(value) = value {
                check_value(value)?;
            }
        }
        Op::Admin(_) | Op::Emit { .. } => unreachable!("checked above"),
    }
    Ok(())
}

/// Checks a name of the kind keys, kinds and consumers have: 1 to `max`
/// bytes of ASCII letters, digits and the characters of `punctuation`. The
/// error names `what` and the first character that is not allowed.
pub fn check_word(what: &str, word: &str, max: usize, punctuation: &str) -> Result<(), String> {
    if word.is_empty() || word.len() > max {
        return Err(format!("{what} must be 1 to {max} bytes"));
    }
    if let Some(c) = word
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || punctuation.contains(*c)))
    {
        let allowed: Vec<String> = punctuation.chars().map(String::from).collect();
        return Err(format!(
            "{what} {word:?} contains {c:?}; use letters, digits and {}",
            allowed.join(" ")
        ));
    }
    Ok(())
}

fn check_field(field: &str) -> Result<(), String> {
    if field.is_empty() || field.len() > MAX_FIELD_NAME_BYTES {
        return Err(format!(
            "field name must be 1 to {MAX_FIELD_NAME_BYTES} bytes"
        ));
    }
    Ok(())
}

fn check_value(value: &Value) -> Result<(), String> {
    let len = match value {
        Value::Int(_) => return Ok(()),
        Value::Str(s) => s.len(),
        Value::Bytes(b) => b.len(),
    };
    if len > MAX_VALUE_BYTES {
        return Err(format!("value of {len} bytes exceeds {MAX_VALUE_BYTES}"));
    }
    Ok(())
}

/// Each field named once, with a valid name and value.
fn check_fields(fields: &[(String, Value)]) -> Result<(), String> {
    let mut seen = BTreeMap::new();
    for (field, value) in fields {
        check_field(field)?;
        check_value(value)?;
        if seen.insert(field.as_str(), ()).is_some() {
            return Err(format!("field {field:?} is set twice"));
        }
    }
    Ok(())
}

/// Checks a game event's kind and fields against the limits of `Op::Emit`;
/// the error says which is broken.
pub fn check_emit(kind: &str, fields: &[(String, Value)]) -> Result<(), String> {
    check_word("event kind", kind, MAX_EMIT_KIND_BYTES, "_./:-")?;
    if fields.len() > MAX_FIELDS_PER_EMIT {
        return Err(format!(
            "an emitted event has at most {MAX_FIELDS_PER_EMIT} fields, not {}",
            fields.len()
        ));
    }
    check_fields(fields)
}

fn signed_message(canonical: &[u8]) -> Vec<u8> {
    domain_message(SIGNING_DOMAIN, canonical)
}

fn domain_message(domain: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + bytes.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(bytes);
    message
}

/// Checks that `public` is a usable player key: a canonically encoded
/// ed25519 point of large order.
pub fn check_public_key(public: &PlayerKey) -> Result<(), TxError> {
    checked_key(public).map(|_| ())
}

fn checked_key(public: &PlayerKey) -> Result<VerifyingKey, TxError> {
    let key = VerifyingKey::from_bytes(public).map_err(|_| TxError::InvalidKey)?;
    // One point, one encoding: a non-canonical y (≥ p) would give a
    // player a second identity with its own sequence numbers.
    if key.to_edwards().compress().to_bytes() != *public {
        return Err(TxError::InvalidKey);
    }
    if key.is_weak() {
        return Err(TxError::WeakKey);
    }
    Ok(key)
}

/// How many checked player keys a [`KeyCache`] holds; a full cache is
/// emptied at once and fills again.
pub const KEY_CACHE_CAPACITY: usize = 65_536;

/// Player keys that passed [`check_public_key`] and then signed a
/// transaction that verified, decompressed. A player's later signatures
/// skip decoding the point and the checks of its encoding and order: two
/// of the four field inversions a verification costs. The result is the
/// same as without the cache (the cached key is what the checks would
/// return for the same bytes). A key is kept only once a signature under
/// it verified, so made-up keys with bad signatures cannot fill it.
pub struct KeyCache {
    keys: Mutex<HashMap<PlayerKey, VerifyingKey>>,
    capacity: usize,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::with_capacity(KEY_CACHE_CAPACITY)
    }
}

impl KeyCache {
    /// An empty cache of [`KEY_CACHE_CAPACITY`] keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache of `capacity` keys.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PlayerKey, VerifyingKey>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, public: &PlayerKey) -> Option<VerifyingKey> {
        self.lock().get(public).copied()
    }

    fn remember(&self, public: PlayerKey, key: VerifyingKey) {
        let mut keys = self.lock();
        if keys.len() >= self.capacity {
            keys.clear();
        }
        keys.insert(public, key);
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Signs `domain ‖ bytes` (for the other signed formats: session tokens and
/// their challenges).
pub fn sign_with_domain(key: &SigningKey, domain: &[u8], bytes: &[u8]) -> Vec<u8> {
    key.sign(&domain_message(domain, bytes)).to_bytes().to_vec()
}

/// Checks that `signature` is `public`'s signature of `domain ‖ bytes`: the
/// key must be a canonically encoded, non-weak point, and the signature must
/// pass `verify_strict`.
pub fn verify_signed(
    public: &PlayerKey,
    domain: &[u8],
    bytes: &[u8],
    signature: &[u8],
) -> Result<(), TxError> {
    verify_with_key(&checked_key(public)?, domain, bytes, signature)
}

fn verify_with_key(
    key: &VerifyingKey,
    domain: &[u8],
    bytes: &[u8],
    signature: &[u8],
) -> Result<(), TxError> {
    let signature: [u8; SIGNATURE_BYTES] =
        signature.try_into().map_err(|_| TxError::BadSignature)?;
    key.verify_strict(
        &domain_message(domain, bytes),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| TxError::BadSignature)
}

/// A transaction that passed every ingress check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedTransaction {
    /// The decoded transaction.
    pub transaction: Transaction,
    /// What was verified, to be proposed as is.
    pub signed: SignedTransaction,
}

impl SignedTransaction {
    /// Runs every ingress check, cheapest first, and `verify_strict` last.
    pub fn verify(&self) -> Result<VerifiedTransaction, TxError> {
        self.verify_checking(checked_key)
    }

    /// [`Self::verify`], taking the player's checked key from `keys` (what
    /// a node does at ingress: players sign many transactions).
    pub fn verify_cached(&self, keys: &KeyCache) -> Result<VerifiedTransaction, TxError> {
        let mut fresh = None;
        let verified = self.verify_checking(|player| match keys.get(player) {
            Some(key) => Ok(key),
            None => {
                let key = checked_key(player)?;
                fresh = Some((*player, key));
                Ok(key)
            }
        })?;
        if let Some((player, key)) = fresh {
            keys.remember(player, key);
        }
        Ok(verified)
    }

    fn verify_checking(
        &self,
        key_of: impl FnOnce(&PlayerKey) -> Result<VerifyingKey, TxError>,
    ) -> Result<VerifiedTransaction, TxError> {
        let transaction = Transaction::from_canonical_bytes(&self.transaction)?;
        transaction.check_limits()?;
        verify_with_key(
            &key_of(&transaction.player)?,
            SIGNING_DOMAIN,
            &self.transaction,
            &self.signature,
        )?;
        Ok(VerifiedTransaction {
            transaction,
            signed: self.clone(),
        })
    }

    /// SHA-256 of the canonical transaction bytes: the transaction's identity
    /// for duplicate detection.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.transaction).into()
    }
}

/// A value as the command line and plugins write it: an integer is an
/// `Int`, `0x` and hex digits are `Bytes`, anything else is a `Str`.
pub fn parse_value(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        return Value::Int(i);
    }
    if let Some(h) = text.strip_prefix("0x") {
        if let Ok(bytes) = hex::decode(h) {
            return Value::Bytes(bytes);
        }
    }
    Value::Str(text.to_string())
}

/// Splits `ENTITY:FIELD=REST`.
fn entity_field(spec: &str, verb: &str) -> Result<(String, String, String), String> {
    let (target, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("{verb} {spec:?}: expected ENTITY:FIELD=VALUE"))?;
    let (entity, field) = target
        .rsplit_once(':')
        .ok_or_else(|| format!("{verb} {spec:?}: expected ENTITY:FIELD before '='"))?;
    Ok((entity.to_string(), field.to_string(), rest.to_string()))
}

/// Parses one operation in the text form `garrison tx` takes after its
/// flag, and plugins write after a verb: `put ENTITY:FIELD=VALUE`,
/// `delete ENTITY`, `incr ENTITY:FIELD=BY[,min=N][,max=N]`,
/// `expect_version ENTITY=VERSION`, `expect ENTITY:FIELD=[VALUE]`,
/// `emit KIND[:FIELD=VALUE,...]`. The error says what is wrong.
pub fn parse_op(verb: &str, spec: &str) -> Result<Op, String> {
    Ok(match verb {
        "put" => {
            let (entity, field, value) = entity_field(spec, verb)?;
            Op::Put {
                entity,
                fields: vec![(field, parse_value(&value))],
            }
        }
        "delete" => Op::Delete {
            entity: spec.to_string(),
        },
        "incr" => {
            let (entity, field, rest) = entity_field(spec, verb)?;
            let mut parts = rest.split(',');
            let by = parts.next().unwrap_or_default();
            let by: i64 = by
                .parse()
                .map_err(|_| format!("incr {spec:?}: {by:?} is not an integer"))?;
            let (mut min, mut max) = (None, None);
            for part in parts {
                let bound = |v: &str| {
                    v.parse::<i64>()
                        .map_err(|_| format!("incr {spec:?}: bound {v:?} is not an integer"))
                };
                match part.split_once('=') {
                    Some(("min", v)) => min = Some(bound(v)?),
                    Some(("max", v)) => max = Some(bound(v)?),
                    _ => {
                        return Err(format!(
                            "incr {spec:?}: expected min=N or max=N after the amount, got {part:?}"
                        ))
                    }
                }
            }
            Op::Increment {
                entity,
                field,
                by,
                min,
                max,
            }
        }
        "expect_version" => {
            let (entity, version) = spec
                .rsplit_once('=')
                .ok_or_else(|| format!("expect_version {spec:?}: expected ENTITY=VERSION"))?;
            let version = version
                .parse()
                .map_err(|_| format!("expect_version {spec:?}: {version:?} is not a version"))?;
            Op::ExpectVersion {
                entity: entity.to_string(),
                version,
            }
        }
        "expect" => {
            let (entity, field, value) = entity_field(spec, verb)?;
            Op::ExpectField {
                entity,
                field,
                value: (!value.is_empty()).then(|| parse_value(&value)),
            }
        }
        "emit" => {
            let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
            let mut fields = Vec::new();
            for part in rest.split(',').filter(|p| !p.is_empty()) {
                let (field, value) = part
                    .split_once('=')
                    .ok_or_else(|| format!("emit {spec:?}: expected FIELD=VALUE, got {part:?}"))?;
                fields.push((field.to_string(), parse_value(value)));
            }
            Op::Emit {
                kind: kind.to_string(),
                fields,
            }
        }
        other => {
            return Err(format!(
            "{other:?} is not an operation: use put, delete, incr, expect_version, expect or emit"
        ))
        }
    })
}

/// Parses operations one per line, each a verb and its text as
/// [`parse_op`] takes them (`put unit/1:hp=10`); blank lines are skipped.
/// Each operation is checked against the limits.
pub fn parse_ops(text: &str) -> Result<Vec<Op>, String> {
    let mut ops = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (verb, spec) = line.split_once(' ').unwrap_or((line, ""));
        let op = parse_op(verb, spec.trim()).map_err(|e| format!("line {}: {e}", n + 1))?;
        check_op(&op).map_err(|e| format!("line {}: {e}", n + 1))?;
        ops.push(op);
    }
    if ops.is_empty() || ops.len() > MAX_OPS_PER_TRANSACTION {
        return Err(format!(
            "a transaction has 1 to {MAX_OPS_PER_TRANSACTION} operations, not {}",
            ops.len()
        ));
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn tx(player: &SigningKey) -> Transaction {
        Transaction {
            cluster: "c".into(),
            location: "hill".into(),
            player: player.verifying_key().to_bytes(),
            sequence: 1,
            ops: vec![Op::Put {
                entity: "unit/1".into(),
                fields: vec![("hp".into(), Value::Int(10))],
            }],
        }
    }

    #[test]
    fn a_signed_transaction_verifies() {
        let k = key(1);
        assert_eq!(tx(&k).sign(&k).verify().unwrap().transaction, tx(&k));
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let (k, other) = (key(1), key(2));
        let mut signed = tx(&k).sign(&other);
        assert_eq!(signed.verify(), Err(TxError::BadSignature));
        signed.signature.pop();
        assert_eq!(signed.verify(), Err(TxError::BadSignature));
    }

    #[test]
    fn a_changed_byte_breaks_the_signature() {
        let k = key(1);
        let mut signed = tx(&k).sign(&k);
        let last = signed.transaction.len() - 1;
        signed.transaction[last] ^= 1;
        assert_eq!(signed.verify(), Err(TxError::BadSignature));
    }

    #[test]
    fn weak_and_invalid_keys_are_refused() {
        let k = key(1);
        let mut t = tx(&k);
        // The identity point (a small-order point): verify (non-strict) would
        // accept a forged signature under it.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        t.player = identity;
        let forged = SignedTransaction {
            transaction: t.canonical_bytes(),
            signature: [0u8; 64].to_vec(),
        };
        assert_eq!(forged.verify(), Err(TxError::WeakKey));
        // Not a point at all: y = 2 has no x on the curve.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        t.player = bad;
        let signed = SignedTransaction {
            transaction: t.canonical_bytes(),
            signature: [0u8; 64].to_vec(),
        };
        assert_eq!(signed.verify(), Err(TxError::InvalidKey));
    }

    #[test]
    fn the_identity_key_forgery_that_plain_verify_accepts_is_refused() {
        // R = identity, S = 0 verifies under the identity public key with
        // plain `verify`, for any message: exactly why only strict checks do.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut forged = [0u8; 64];
        forged[0] = 1;
        let key = VerifyingKey::from_bytes(&identity).unwrap();
        let sig = Signature::from_bytes(&forged);
        use ed25519_dalek::Verifier;
        assert!(
            key.verify(b"anything", &sig).is_ok(),
            "plain verify accepts the forgery"
        );
        assert!(key.verify_strict(b"anything", &sig).is_err());
        let mut t = tx(&key_of(1));
        t.player = identity;
        let signed = SignedTransaction {
            transaction: t.canonical_bytes(),
            signature: forged.to_vec(),
        };
        assert_eq!(signed.verify(), Err(TxError::WeakKey));
    }

    fn key_of(seed: u8) -> SigningKey {
        key(seed)
    }

    #[test]
    fn the_key_cache_changes_no_verdict_and_keeps_only_keys_that_signed() {
        let cache = KeyCache::with_capacity(2);
        let (k1, k2, k3) = (key(1), key(2), key(3));
        let good = tx(&k1).sign(&k1);
        assert_eq!(good.verify_cached(&cache), good.verify());
        assert_eq!(good.verify_cached(&cache), good.verify(), "from the cache");
        assert_eq!(cache.len(), 1);
        // A bad signature under a cached key is still refused.
        let forged = tx(&k1).sign(&k2);
        assert_eq!(forged.verify_cached(&cache), Err(TxError::BadSignature));
        // A good key with a bad signature is not kept.
        let unsigned = tx(&k3).sign(&k2);
        assert_eq!(unsigned.verify_cached(&cache), Err(TxError::BadSignature));
        assert_eq!(cache.len(), 1);
        // Refused keys are not cached: the identity point, a non-point.
        for first in [1u8, 2] {
            // y = 1: the identity point (weak); y = 2: no point at all.
            let mut t = tx(&k1);
            t.player = [0u8; 32];
            t.player[0] = first;
            let signed = SignedTransaction {
                transaction: t.canonical_bytes(),
                signature: [0u8; 64].to_vec(),
            };
            assert_eq!(signed.verify_cached(&cache), signed.verify());
            assert!(signed.verify_cached(&cache).is_err());
        }
        assert_eq!(cache.len(), 1);
        // At capacity the cache starts again rather than growing.
        for k in [&k2, &k3] {
            let signed = tx(k).sign(k);
            assert!(signed.verify_cached(&cache).is_ok());
        }
        assert_eq!(cache.len(), 1, "emptied when full, then k3 cached");
        assert_eq!(good.verify_cached(&cache), good.verify());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_non_canonical_key_encoding_is_refused() {
        // y and y + p encode the same point; only y < p is canonical. Find
        // a point with y < 19 (so that y + p still fits in 255 bits).
        let p_minus_19 = {
            let mut p = [0xffu8; 32];
            p[0] = 0xed;
            p[31] = 0x7f;
            p
        };
        for y in 2u8..19 {
            let mut canonical = [0u8; 32];
            canonical[0] = y;
            let Ok(point) = VerifyingKey::from_bytes(&canonical) else {
                continue;
            };
            if point.is_weak() {
                continue;
            }
            // y + p, little-endian: p = 2^255 - 19.
            let mut alias = p_minus_19;
            let (sum, carry) = alias[0].overflowing_add(y);
            alias[0] = sum;
            assert!(!carry);
            let mut t = tx(&key(1));
            t.player = alias;
            let signed = SignedTransaction {
                transaction: t.canonical_bytes(),
                signature: vec![0; 64],
            };
            // Whether the decoder rejects the alias itself or decodes it to
            // the same point, the transaction is refused.
            let decodes = VerifyingKey::from_bytes(&alias).is_ok();
            assert_eq!(
                signed.verify(),
                Err(TxError::InvalidKey),
                "y = {y} + p (decodes: {decodes})"
            );
            return;
        }
        panic!("no point with a small y found");
    }

    #[test]
    fn a_non_canonical_signature_scalar_is_refused() {
        // S + L is the same scalar mod L; strict verification refuses it.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let k = key(1);
        let mut signed = tx(&k).sign(&k);
        let mut carry = 0u16;
        for (byte, l) in signed.signature[32..].iter_mut().zip(L) {
            let sum = *byte as u16 + l as u16 + carry;
            *byte = sum as u8;
            carry = sum >> 8;
        }
        // S < L < 2^253, so S + L still fits in the 32 bytes.
        assert_eq!(carry, 0);
        assert_eq!(signed.verify(), Err(TxError::BadSignature));
        // Truncated and overlong signatures too.
        let good = tx(&k).sign(&k);
        for len in [0, 63, 65, 128] {
            let mut bad = good.clone();
            bad.signature.resize(len, 0);
            assert_eq!(
                bad.verify(),
                Err(TxError::BadSignature),
                "signature of {len} bytes"
            );
        }
    }

    #[test]
    fn any_tampered_byte_breaks_the_signature() {
        let k = key(1);
        let signed = tx(&k).sign(&k);
        for i in 0..signed.transaction.len() {
            let mut bad = signed.clone();
            bad.transaction[i] ^= 0x01;
            assert!(bad.verify().is_err(), "byte {i} changed and still accepted");
        }
    }

    #[test]
    fn huge_length_prefixes_do_not_allocate() {
        // A vector of u64::MAX operations: refused by the decoder's limit,
        // not by running out of memory.
        let mut bytes = tx(&key(1)).canonical_bytes();
        let ops_len_at = 8 + 1 + 8 + 4 + 32 + 8;
        bytes[ops_len_at..ops_len_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Transaction::from_canonical_bytes(&bytes),
            Err(TxError::Malformed(_))
        ));
    }

    #[test]
    fn non_canonical_and_trailing_bytes_are_malformed() {
        let k = key(1);
        let mut signed = tx(&k).sign(&k);
        signed.transaction.push(0);
        assert!(matches!(signed.verify(), Err(TxError::Malformed(_))));
        let garbage = SignedTransaction {
            transaction: vec![0xff; 40],
            signature: vec![0; 64],
        };
        assert!(matches!(garbage.verify(), Err(TxError::Malformed(_))));
    }

    #[test]
    fn an_oversized_transaction_is_refused_before_decoding() {
        let signed = SignedTransaction {
            transaction: vec![0; MAX_TRANSACTION_BYTES + 1],
            signature: vec![0; 64],
        };
        assert_eq!(
            signed.verify(),
            Err(TxError::TooLarge {
                bytes: MAX_TRANSACTION_BYTES as u64 + 1,
                max: MAX_TRANSACTION_BYTES as u64
            })
        );
    }

    #[test]
    fn static_limits_are_named() {
        let k = key(1);
        type Change = Box<dyn Fn(&mut Transaction)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|t| t.ops.clear()), "operations"),
            (Box::new(|t| t.sequence = 0), "sequence"),
            (Box::new(|t| t.location = String::new()), "location"),
            (
                Box::new(|t| {
                    t.ops = vec![Op::Delete {
                        entity: "x".repeat(MAX_ENTITY_KEY_BYTES + 1),
                    }]
                }),
                "entity key",
            ),
            (
                Box::new(|t| {
                    t.ops = vec![Op::Delete {
                        entity: "a b".into(),
                    }]
                }),
                "contains",
            ),
            (
                Box::new(|t| {
                    t.ops = vec![Op::Put {
                        entity: "e".into(),
                        fields: vec![],
                    }]
                }),
                "fields",
            ),
            (
                Box::new(|t| {
                    t.ops = vec![Op::Put {
                        entity: "e".into(),
                        fields: vec![("f".into(), Value::Int(1)), ("f".into(), Value::Int(2))],
                    }]
                }),
                "twice",
            ),
            (
                Box::new(|t| {
                    t.ops = vec![Op::Put {
                        entity: "e".into(),
                        fields: vec![("f".into(), Value::Bytes(vec![0; MAX_VALUE_BYTES + 1]))],
                    }]
                }),
                "exceeds",
            ),
            (
                Box::new(|t| {
                    t.ops = vec![Op::Increment {
                        entity: "e".into(),
                        field: "f".into(),
                        by: 1,
                        min: Some(5),
                        max: Some(1),
                    }]
                }),
                "empty",
            ),
            (
                Box::new(|t| {
                    t.ops = vec![Op::Delete { entity: "e".into() }; MAX_OPS_PER_TRANSACTION + 1]
                }),
                "operations",
            ),
        ];
        for (change, words) in cases {
            let mut t = tx(&k);
            change(&mut t);
            match t.sign(&k).verify() {
                Err(TxError::Limit(why)) => {
                    assert!(why.contains(words), "{why:?} should mention {words:?}")
                }
                other => panic!("expected a limit error mentioning {words:?}, got {other:?}"),
            }
        }
    }
}
