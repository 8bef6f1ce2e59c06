//! CacheManager: committed entity data kept per node for reads, current
//! because apply tells it what changed.
//!
//! A read of one entity on a node that holds a replica of the location
//! first waits, as every read does, until the replica has applied what the
//! read requires (the leader's read index, or the client's `min_index`).
//! Then it asks this cache instead of the group's state machine: no lock
//! shared with apply, no query to encode and reply to decode. On a miss
//! the replica answers and the answer fills the cache.
//!
//! # Why an entry is never stale
//!
//! Apply reports to the cache, for each entry it applies, the entities the
//! entry changed and a new access policy if the entry carried one, before
//! the entry's result becomes visible to anyone. The cache keeps per group:
//!
//! - `changed_at`: the index of the last entry that changed any entity. A
//!   fill of data read at index `i < changed_at` is refused, because it may
//!   predate that change (a reader that raced with apply).
//! - the location's policy and the index it holds from.
//!
//! Apply's reports and fills take the same lock, so an entry present in the
//! cache equals the replica's state at every index from the one it was read
//! at up to the replica's current one. A hit therefore answers at the
//! largest of: the index the reader caught up to, the entry's index, the
//! policy's index. That index is at least what the read required, and both
//! the entity and the policy it was checked against hold there.
//!
//! A restored snapshot starts a new generation of the group's entries (the
//! old ones can no longer be found) at the snapshot's index; so does the
//! opening of a group's app, and its closing forgets the group. Generations
//! are unique in the cache, so no entry outlives the app that reported on it.
//! Every group holding the same policy version shares one copy of it.
//!
//! Apply never consults the cache: it only reports to it, so replicas stay
//! deterministic whatever a node's cache holds or evicts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use garrison_client::api::{CacheStats, Entity};
use garrison_raft::{codec, GroupId};

use crate::security::access::Policy;

/// Bytes of entity data a node caches unless configured otherwise.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Bytes an entry costs besides its key and encoded entity.
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// One cached entity (or its absence), the index it was read at, and what
/// it weighs (counted before it is inserted, outside the lock).
#[derive(Debug)]
struct Cached {
    index: u64,
    entity: Option<Entity>,
    weight: u32,
}

/// What the cache knows of one group.
#[derive(Debug)]
struct GroupSlot {
    /// Entries of other generations (before a restored snapshot, or of an
    /// earlier app of the group) are never found again.
    generation: u64,
    /// Index of the last applied entry that changed an entity.
    changed_at: u64,
    /// The location's access policy and the index it holds from.
    policy: Option<(u64, Arc<Policy>)>,
}

/// (group, generation, entity key).
type Key = (GroupId, u64, String);

/// A cache hit: the entity as of `index`, and the policy in force there.
#[derive(Debug)]
pub struct Hit {
    /// An index at which both the entity and the policy hold, at least the
    /// index the reader caught up to.
    pub index: u64,
    /// The entity, `None` if it does not exist at `index`.
    pub entity: Option<Entity>,
    /// The location's access policy at `index`.
    pub policy: Arc<Policy>,
}

/// The groups the cache knows, and the newest policy they share.
#[derive(Debug, Default)]
struct Groups {
    slots: BTreeMap<GroupId, GroupSlot>,
    /// The last generation handed out.
    generation: u64,
    /// The newest policy any group reported, shared by every group that
    /// holds the same version.
    policy: Option<Arc<Policy>>,
}

impl Groups {
    fn new_slot(&mut self) -> GroupSlot {
        self.generation += 1;
        GroupSlot {
            generation: self.generation,
            changed_at: 0,
            policy: None,
        }
    }

    fn slot(&mut self, group: GroupId) -> &mut GroupSlot {
        if !self.slots.contains_key(&group) {
            let slot = self.new_slot();
            self.slots.insert(group, slot);
        }
        self.slots.get_mut(&group).expect("inserted above")
    }

    /// `policy` as an `Arc`, shared with the groups that hold its version.
    fn share(&mut self, policy: &Policy) -> Option<Arc<Policy>> {
        if policy.version == 0 {
            return None;
        }
        match &self.policy {
            Some(p) if p.version == policy.version => Some(p.clone()),
            newest => {
                let p = Arc::new(policy.clone());
                if newest.as_ref().is_none_or(|n| n.version < p.version) {
                    self.policy = Some(p.clone());
                }
                Some(p)
            }
        }
    }
}

/// A node's cache of committed entities of the locations it holds.
pub struct EntityCache {
    entries: moka::sync::Cache<Key, Arc<Cached>>,
    groups: Mutex<Groups>,
    capacity_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl EntityCache {
    /// A cache of at most `capacity_bytes` of keys and encoded entities.
    pub fn new(capacity_bytes: u64) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_: &Key, cached: &Arc<Cached>| cached.weight)
            .build();
        Self {
            entries,
            groups: Mutex::new(Groups::default()),
            capacity_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The group table. A panic while it is held may have left it half
    /// updated, so it poisons the cache, and apply stops the node.
    fn groups(&self) -> std::sync::MutexGuard<'_, Groups> {
        self.groups.lock().expect("entity cache lock")
    }

    /// From a group's new app: nothing cached for `group` before holds.
    pub fn opened(&self, group: GroupId) {
        let mut groups = self.groups();
        let slot = groups.new_slot();
        groups.slots.insert(group, slot);
    }

    /// From a group's app as it goes: forget the group.
    pub fn closed(&self, group: GroupId) {
        self.groups().slots.remove(&group);
    }

    /// From apply: the entry at `index` of `group` changed these entities.
    pub fn changed<'a>(&self, group: GroupId, index: u64, keys: impl IntoIterator<Item = &'a str>) {
        let mut groups = self.groups();
        let slot = groups.slot(group);
        slot.changed_at = slot.changed_at.max(index);
        for key in keys {
            self.entries
                .invalidate(&(group, slot.generation, key.to_string()));
        }
    }

    /// From apply: the entry at `index` of `group` installed `policy`.
    pub fn policy_changed(&self, group: GroupId, index: u64, policy: &Policy) {
        let mut groups = self.groups();
        let shared = groups.share(policy);
        groups.slot(group).policy = shared.map(|p| (index, p));
    }

    /// From the state machine: `group` now holds a snapshot that ends at
    /// `index`, whose policy is `policy`.
    pub fn restored(&self, group: GroupId, index: u64, policy: &Policy) {
        let mut groups = self.groups();
        let shared = groups.share(policy);
        let mut slot = groups.new_slot();
        slot.changed_at = index;
        slot.policy = shared.map(|p| (index, p));
        groups.slots.insert(group, slot);
    }

    /// The entity `key` of `group` for a reader whose replica has applied
    /// `applied`, if the cache has it and the group's policy.
    pub fn get(&self, group: GroupId, key: &str, applied: u64) -> Option<Hit> {
        let found = {
            let groups = self.groups();
            groups.slots.get(&group).and_then(|slot| {
                let (from, policy) = slot.policy.clone()?;
                let cached = self
                    .entries
                    .get(&(group, slot.generation, key.to_string()))?;
                Some((from, policy, cached))
            })
        };
        let Some((from, policy, cached)) = found else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(Hit {
            index: applied.max(cached.index).max(from),
            entity: cached.entity.clone(),
            policy,
        })
    }

    /// Remembers `entity` (`None`: absent) as the replica's answer for
    /// `key` of `group` at `index`, unless an entity of the group changed
    /// after `index`. Returns whether it was kept.
    pub fn fill(&self, group: GroupId, key: &str, index: u64, entity: Option<Entity>) -> bool {
        let bytes = entity.as_ref().map_or(0, |e| codec::encode(e).len());
        let weight = u32::try_from(key.len() + bytes + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX);
        let cached = Arc::new(Cached {
            index,
            entity,
            weight,
        });
        let mut groups = self.groups();
        let slot = groups.slot(group);
        if slot.changed_at > index {
            return false;
        }
        self.entries
            .insert((group, slot.generation, key.to_string()), cached);
        true
    }

    /// Hit and miss counts, and what the cache holds.
    pub fn stats(&self) -> CacheStats {
        self.entries.run_pending_tasks();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.entries.entry_count(),
            bytes: self.entries.weighted_size(),
            capacity_bytes: self.capacity_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const GROUP: GroupId = 7;

    fn entity(version: u64) -> Entity {
        Entity {
            owner: [1; 32],
            version,
            fields: BTreeMap::new(),
        }
    }

    fn policy(version: u64) -> Policy {
        Policy {
            version,
            ..Policy::default()
        }
    }

    fn cache_with_policy() -> EntityCache {
        let cache = EntityCache::new(1 << 20);
        cache.policy_changed(GROUP, 1, &policy(3));
        cache
    }

    #[test]
    fn a_hit_answers_at_no_less_than_the_readers_index_the_entrys_and_the_policys() {
        let cache = cache_with_policy();
        assert!(cache.fill(GROUP, "unit/1", 5, Some(entity(4))));
        let hit = cache.get(GROUP, "unit/1", 9).unwrap();
        assert_eq!(
            (hit.index, hit.entity, hit.policy.version),
            (9, Some(entity(4)), 3)
        );
        // A reader that caught up to less than the fill's index gets the
        // fill's index, never less.
        assert_eq!(cache.get(GROUP, "unit/1", 2).unwrap().index, 5);
        cache.policy_changed(GROUP, 12, &policy(4));
        assert_eq!(cache.get(GROUP, "unit/1", 2).unwrap().index, 12);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (3, 0, 1));
    }

    #[test]
    fn a_change_removes_the_entry_and_refuses_fills_read_before_it() {
        let cache = cache_with_policy();
        assert!(cache.fill(GROUP, "unit/1", 5, Some(entity(4))));
        cache.changed(GROUP, 6, ["unit/1"]);
        assert!(cache.get(GROUP, "unit/1", 6).is_none());
        // A reader that read at 5 and fills after apply reported 6.
        assert!(!cache.fill(GROUP, "unit/1", 5, Some(entity(4))));
        assert!(cache.get(GROUP, "unit/1", 6).is_none());
        assert!(cache.fill(GROUP, "unit/1", 6, Some(entity(6))));
        assert_eq!(
            cache.get(GROUP, "unit/1", 6).unwrap().entity,
            Some(entity(6))
        );
        // Other groups are not affected.
        cache.policy_changed(GROUP + 1, 1, &policy(3));
        assert!(cache.fill(GROUP + 1, "unit/1", 1, None));
        cache.changed(GROUP, 9, ["unit/1"]);
        assert!(cache.get(GROUP + 1, "unit/1", 1).unwrap().entity.is_none());
    }

    #[test]
    fn no_hit_without_the_groups_policy() {
        let cache = EntityCache::new(1 << 20);
        assert!(cache.fill(GROUP, "unit/1", 5, None));
        assert!(cache.get(GROUP, "unit/1", 5).is_none());
        cache.policy_changed(GROUP, 6, &policy(0));
        assert!(cache.get(GROUP, "unit/1", 6).is_none());
        assert_eq!(cache.stats().misses, 2);
    }

    #[test]
    fn a_restored_snapshot_hides_every_earlier_entry() {
        let cache = cache_with_policy();
        assert!(cache.fill(GROUP, "unit/1", 5, Some(entity(4))));
        cache.restored(GROUP, 40, &policy(5));
        assert!(cache.get(GROUP, "unit/1", 40).is_none());
        assert!(!cache.fill(GROUP, "unit/1", 39, None));
        assert!(cache.fill(GROUP, "unit/1", 40, Some(entity(30))));
        let hit = cache.get(GROUP, "unit/1", 41).unwrap();
        assert_eq!((hit.index, hit.policy.version), (41, 5));
    }

    #[test]
    fn a_reopened_group_finds_nothing_of_its_earlier_app() {
        let cache = cache_with_policy();
        assert!(cache.fill(GROUP, "unit/1", 5, Some(entity(4))));
        cache.closed(GROUP);
        cache.opened(GROUP);
        cache.policy_changed(GROUP, 1, &policy(3));
        assert!(cache.get(GROUP, "unit/1", 5).is_none());
    }

    #[test]
    fn groups_with_one_policy_version_share_one_copy() {
        let cache = EntityCache::new(1 << 20);
        for group in 1..=3 {
            cache.policy_changed(group, 1, &policy(3));
            assert!(cache.fill(group, "unit/1", 1, None));
        }
        let a = cache.get(1, "unit/1", 1).unwrap().policy;
        let b = cache.get(3, "unit/1", 1).unwrap().policy;
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn the_cache_holds_no_more_than_its_capacity() {
        let cache = EntityCache::new(4096);
        cache.policy_changed(GROUP, 1, &policy(3));
        for i in 0..1000 {
            assert!(cache.fill(GROUP, &format!("unit/{i}"), 1, Some(entity(1))));
        }
        let stats = cache.stats();
        assert!(stats.bytes <= 4096, "{stats:?}");
        assert!(stats.entries < 1000, "{stats:?}");
    }
}
