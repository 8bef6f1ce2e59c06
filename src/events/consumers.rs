//! Named consumers: cursors saved in a location's log, so a restarted
//! reader resumes after the last event it saved.
//!
//! A consumer is named by its player (from the session token that saved
//! it) and a name of its own; a player's consumers are its own, so no one
//! can move another's cursor. A save is an entry of the location's log
//! (proposed by the node that checked the token, never by the client
//! directly), so it is replicated, survives every node's restart and is
//! read back from any replica. Saves produce no events: a consumer that
//! saves after every event must not feed itself.
//!
//! A player keeps at most [`MAX_CONSUMERS_PER_PLAYER`] consumers at a
//! location; a location at most [`MAX_CONSUMERS_PER_LOCATION`]. A new
//! consumer at a full location takes the place of the one saved longest
//! ago (by log index), so that keys made up by the thousand can push out
//! only consumers that have stopped saving, never fill the table for good.

use std::collections::BTreeMap;

use garrison_client::events::{
    Cursor, MAX_CONSUMERS_PER_LOCATION, MAX_CONSUMERS_PER_PLAYER, MAX_CONSUMER_NAME_BYTES,
};
use garrison_client::tx::{check_word, PlayerKey};
use serde::{Deserialize, Serialize};

/// Every saved cursor of one location, by player and consumer name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumers {
    /// Each consumer's cursor and the log index it was saved at.
    cursors: BTreeMap<(PlayerKey, String), (Cursor, u64)>,
}

/// Checks a consumer's name: 1 to [`MAX_CONSUMER_NAME_BYTES`] letters,
/// digits and `_ . : -`.
pub fn check_name(name: &str) -> Result<(), String> {
    check_word("consumer name", name, MAX_CONSUMER_NAME_BYTES, "_.:-")
}

impl Consumers {
    /// Saves `player`'s consumer `name` at `cursor`, in the entry at
    /// `applied`; refuses a player's consumer beyond its limit, or a cursor
    /// past `applied` (no event after it exists yet).
    pub fn save(
        &mut self,
        player: PlayerKey,
        name: &str,
        cursor: Cursor,
        applied: u64,
    ) -> Result<(), String> {
        check_name(name)?;
        if cursor.index > applied {
            return Err(format!(
                "cursor {cursor} is past this location's log (index {applied})"
            ));
        }
        let key = (player, name.to_string());
        if !self.cursors.contains_key(&key) {
            let own = self.cursors.keys().filter(|(p, _)| *p == player).count();
            if own >= MAX_CONSUMERS_PER_PLAYER {
                return Err(format!(
                    "a player keeps at most {MAX_CONSUMERS_PER_PLAYER} consumers per location"
                ));
            }
            if self.cursors.len() >= MAX_CONSUMERS_PER_LOCATION {
                // Ties cannot happen (one save per entry), but the key
                // breaks them anyway, for determinism's sake.
                let stalest = self
                    .cursors
                    .iter()
                    .min_by_key(|(k, (_, saved))| (*saved, (*k).clone()))
                    .map(|(k, _)| k.clone())
                    .expect("the table is full");
                self.cursors.remove(&stalest);
            }
        }
        self.cursors.insert(key, (cursor, applied));
        Ok(())
    }

    /// The cursor `player`'s consumer `name` saved last.
    pub fn load(&self, player: &PlayerKey, name: &str) -> Option<Cursor> {
        self.cursors
            .get(&(*player, name.to_string()))
            .map(|(cursor, _)| *cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_player_has_its_own_consumers_within_limits() {
        let mut c = Consumers::default();
        let at = Cursor {
            index: 4,
            position: 1,
        };
        c.save([1; 32], "stats", at, 9).unwrap();
        assert_eq!(c.load(&[1; 32], "stats"), Some(at));
        assert_eq!(
            c.load(&[2; 32], "stats"),
            None,
            "another player's is not mine"
        );
        assert!(c.save([1; 32], "stats", Cursor::end_of(10), 9).is_err());
        assert!(c.save([1; 32], "bad name", at, 9).is_err());
        for i in 1..MAX_CONSUMERS_PER_PLAYER {
            c.save([1; 32], &format!("c{i}"), at, 9).unwrap();
        }
        let full = c.save([1; 32], "one-more", at, 9).unwrap_err();
        assert!(full.contains("at most"), "{full}");
        // Moving an existing one is always allowed.
        c.save([1; 32], "stats", Cursor::end_of(9), 9).unwrap();
    }

    #[test]
    fn a_full_location_makes_room_by_dropping_the_stalest_consumer() {
        let mut c = Consumers::default();
        let at = Cursor::START;
        let mut index = 0;
        for p in 0..(MAX_CONSUMERS_PER_LOCATION / MAX_CONSUMERS_PER_PLAYER) {
            for n in 0..MAX_CONSUMERS_PER_PLAYER {
                index += 1;
                c.save([p as u8; 32], &format!("c{n}"), at, index).unwrap();
            }
        }
        // The first consumer saves again: it is no longer the stalest.
        index += 1;
        c.save([0; 32], "c0", at, index).unwrap();
        index += 1;
        let newcomer = [
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
            11, 12, 13, 14, 15, 16,
        ];
        c.save(newcomer, "new", at, index).unwrap();
        assert_eq!(c.cursors.len(), MAX_CONSUMERS_PER_LOCATION);
        assert!(c.load(&[0; 32], "c0").is_some(), "saved recently: kept");
        assert!(c.load(&[0; 32], "c1").is_none(), "the stalest made room");
        assert!(c.load(&newcomer, "new").is_some());
    }
}
