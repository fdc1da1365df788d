//! A small bounded cache for grain tables and inflated grains.
//!
//! Sharded to keep lock hold times short when several threads read one
//! handle; each shard evicts in insertion order once its byte budget is
//! spent. Sequential backup reads touch each table and grain once, so
//! recency tracking would buy nothing over FIFO here.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

const SHARDS: usize = 16;

struct Shard<K, V> {
    map: HashMap<K, (Arc<V>, usize)>,
    order: VecDeque<K>,
    bytes: usize,
}

/// A bounded map from keys to shared values, sized in bytes.
pub(crate) struct Cache<K, V> {
    shards: Vec<Mutex<Shard<K, V>>>,
    shard_budget: usize,
    hasher: RandomState,
}

impl<K: Hash + Eq + Clone, V> Cache<K, V> {
    /// A cache holding at most about `budget` bytes.
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        order: VecDeque::new(),
                        bytes: 0,
                    })
                })
                .collect(),
            shard_budget: (budget / SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, Shard<K, V>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A poisoned shard only means another reader panicked mid-insert;
        // the map itself is still consistent.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, key: &K) -> Option<Arc<V>> {
        self.shard(key).map.get(key).map(|(v, _)| Arc::clone(v))
    }

    /// Inserts or replaces.
    pub(crate) fn replace(&self, key: K, value: Arc<V>, size: usize) {
        {
            let mut s = self.shard(&key);
            if let Some(slot) = s.map.get_mut(&key) {
                slot.0 = value;
                return;
            }
        }
        self.insert(key, value, size);
    }

    pub(crate) fn insert(&self, key: K, value: Arc<V>, size: usize) {
        let budget = self.shard_budget;
        let mut s = self.shard(&key);
        if s.map.contains_key(&key) {
            return;
        }
        while s.bytes + size > budget {
            let Some(old) = s.order.pop_front() else {
                break;
            };
            if let Some((_, sz)) = s.map.remove(&old) {
                s.bytes -= sz;
            }
        }
        s.bytes += size;
        s.order.push_back(key.clone());
        s.map.insert(key, (value, size));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded() {
        let c: Cache<u32, u32> = Cache::new(SHARDS * 100);
        for i in 0..10_000 {
            c.insert(i, Arc::new(i), 10);
        }
        let kept = (0..10_000).filter(|i| c.get(i).is_some()).count();
        assert!(kept <= SHARDS * 10, "{kept}");
        assert!(c.get(&9_999).is_some());
    }
}
