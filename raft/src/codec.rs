//! The binary encoding of everything this crate stores or sends: garrison's
//! one bincode 2 configuration, from `garrison-wire`.

pub use garrison_wire::{
    decode, decode_stored, encode, Bincode2, DecodeError, DECODE_LIMIT_BYTES,
    STORED_DECODE_LIMIT_BYTES,
};
