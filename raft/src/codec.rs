//! The binary encoding of everything this crate stores or sends: garrison's
//! one bincode 2 configuration, from `garrison-wire`.

pub use garrison_wire::{decode, encode, Bincode2, DecodeError, DECODE_LIMIT_BYTES};
