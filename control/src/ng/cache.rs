//! Reply cache keyed by cookie, so that retransmissions are answered without re-executing.
//!
//! Kamailio resends a request with the same cookie when the reply is late or lost; executing
//! an `offer` twice would allocate ports twice, and a second `delete` would fail. rtpengine
//! keeps encoded replies by cookie for 30–60 s (two 30 s generations); this cache keeps each
//! for a fixed TTL ([`DEFAULT_TTL`]) and is bounded in entries and bytes, evicting the oldest
//! first. Sans-IO: time comes in as `now`.
//!
//! Entries are expired lazily on every call (from the oldest end, amortised O(1), without a
//! lookup while nothing is due); lookups and inserts are O(1) on average, one hash each. A
//! cookie is stored once, shared by the index and the age queue.

use std::collections::{HashMap, VecDeque, hash_map};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// rtpengine's cookie-cache generation length.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Default bound on entries (≈ 30 s of 3k requests/s).
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// Most entries the cache's index is sized for up front.
const PRESIZE_LIMIT: usize = 1 << 17;
/// Default bound on stored cookie and reply bytes.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

struct Entry {
    reply: Vec<u8>,
    inserted: Instant,
    /// Matches the entry's current slot in the age queue (older slots are stale).
    seq: u64,
}

/// A bounded, TTL-based map from cookie to encoded reply datagram.
pub struct ReplyCache {
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    next_seq: u64,
    entries: HashMap<Arc<[u8]>, Entry>,
    /// Cookies in insertion order, with the sequence number and time of that insertion; a
    /// slot whose number no longer matches its entry is stale (the cookie was re-inserted or
    /// removed).
    order: VecDeque<Slot>,
}

struct Slot {
    cookie: Arc<[u8]>,
    seq: u64,
    inserted: Instant,
}

impl Default for ReplyCache {
    fn default() -> Self {
        ReplyCache::new(DEFAULT_TTL, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES)
    }
}

impl ReplyCache {
    /// A cache keeping replies for `ttl`, at most `max_entries` of them and `max_bytes` of
    /// cookies plus replies.
    pub fn new(ttl: Duration, max_entries: usize, max_bytes: usize) -> Self {
        ReplyCache {
            ttl,
            max_entries,
            max_bytes,
            bytes: 0,
            next_seq: 0,
            // Sized for the bound at once: growing by doubling rehashes every entry each time,
            // tens of thousands at once near the bound (a latency spike on the control thread).
            // Only the index is allocated here; memory for replies comes as they do.
            entries: HashMap::with_capacity(max_entries.min(PRESIZE_LIMIT)),
            order: VecDeque::with_capacity(max_entries.min(PRESIZE_LIMIT)),
        }
    }

    /// The cached reply for `cookie`, if one was stored less than the TTL ago.
    pub fn get(&mut self, cookie: &[u8], now: Instant) -> Option<&[u8]> {
        self.expire(now);
        let ttl = self.ttl;
        let entry = self.entries.get(cookie)?;
        if now.saturating_duration_since(entry.inserted) >= ttl {
            return None;
        }
        Some(&entry.reply)
    }

    /// Stores the reply sent for `cookie` (replacing any earlier one), evicting the oldest
    /// entries as needed to stay within the bounds. A reply larger than the byte bound is
    /// not stored.
    pub fn insert(&mut self, cookie: &[u8], reply: Vec<u8>, now: Instant) {
        self.expire(now);
        self.remove(cookie);
        let size = cookie.len() + reply.len();
        if self.max_entries == 0 || size > self.max_bytes {
            return;
        }
        while self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            if !self.evict_oldest() {
                break;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += size;
        let cookie: Arc<[u8]> = Arc::from(cookie);
        match self.entries.entry(Arc::clone(&cookie)) {
            hash_map::Entry::Vacant(v) => {
                v.insert(Entry {
                    reply,
                    inserted: now,
                    seq,
                });
            }
            // Removed above; kept total for the type.
            hash_map::Entry::Occupied(mut o) => {
                *o.get_mut() = Entry {
                    reply,
                    inserted: now,
                    seq,
                };
            }
        }
        self.order.push_back(Slot {
            cookie,
            seq,
            inserted: now,
        });
        self.compact();
    }

    /// Forgets `cookie`; `true` if it was cached.
    pub fn remove(&mut self, cookie: &[u8]) -> bool {
        match self.entries.remove(cookie) {
            Some(entry) => {
                self.bytes -= cookie.len() + entry.reply.len();
                true
            }
            None => false,
        }
    }

    /// Drops every entry older than the TTL.
    pub fn expire(&mut self, now: Instant) {
        // Slots are in insertion order, so the first one not due ends the scan: no lookup
        // while nothing is due.
        while let Some(slot) = self.order.front() {
            if now.saturating_duration_since(slot.inserted) < self.ttl {
                break;
            }
            if let Some(slot) = self.order.pop_front()
                && self
                    .entries
                    .get(&slot.cookie)
                    .is_some_and(|e| e.seq == slot.seq)
            {
                self.remove(&slot.cookie);
            }
        }
    }

    /// Number of cached replies.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No cached replies.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of cookies and replies held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Removes the oldest live entry; `false` if there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some(slot) = self.order.pop_front() {
            if self
                .entries
                .get(&slot.cookie)
                .is_some_and(|e| e.seq == slot.seq)
            {
                self.remove(&slot.cookie);
                return true;
            }
        }
        false
    }

    /// Keeps the age queue proportional to the live entries (stale slots accumulate when
    /// cookies are re-inserted or removed).
    fn compact(&mut self) {
        if self.order.len() <= 2 * self.entries.len() + 64 {
            return;
        }
        let entries = &self.entries;
        self.order
            .retain(|s| entries.get(&s.cookie).is_some_and(|e| e.seq == s.seq));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn hit_and_expiry() {
        let start = t0();
        let mut cache = ReplyCache::new(Duration::from_secs(30), 10, 1 << 20);
        assert_eq!(cache.get(b"a", start), None);
        cache.insert(b"a", b"a d6:result2:oke".to_vec(), start);
        assert_eq!(
            cache.get(b"a", start + Duration::from_secs(29)),
            Some(&b"a d6:result2:oke"[..])
        );
        assert_eq!(cache.get(b"b", start), None);
        assert_eq!(cache.get(b"a", start + Duration::from_secs(30)), None);
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn evicts_oldest_by_count() {
        let start = t0();
        let mut cache = ReplyCache::new(Duration::from_secs(30), 3, 1 << 20);
        for (i, c) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            cache.insert(*c, vec![b'x'; 4], start + Duration::from_millis(i as u64));
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(b"a", start), None, "oldest evicted");
        for c in [b"b", b"c", b"d"] {
            assert!(cache.get(c, start).is_some());
        }
    }

    #[test]
    fn evicts_oldest_by_bytes_and_skips_oversized() {
        let start = t0();
        let mut cache = ReplyCache::new(Duration::from_secs(30), 100, 20);
        cache.insert(b"a", vec![0; 9], start); // 10 bytes
        cache.insert(b"b", vec![0; 9], start); // 20 bytes
        assert_eq!(cache.bytes(), 20);
        cache.insert(b"c", vec![0; 4], start); // needs 5: evicts a
        assert_eq!(cache.get(b"a", start), None);
        assert!(cache.get(b"b", start).is_some());
        assert!(cache.get(b"c", start).is_some());
        assert_eq!(cache.bytes(), 15);
        cache.insert(b"huge", vec![0; 100], start);
        assert_eq!(cache.get(b"huge", start), None);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn reinsert_refreshes_and_stale_slots_are_skipped() {
        let start = t0();
        let ttl = Duration::from_secs(30);
        let mut cache = ReplyCache::new(ttl, 2, 1 << 20);
        cache.insert(b"a", b"1".to_vec(), start);
        cache.insert(b"b", b"2".to_vec(), start + Duration::from_secs(1));
        cache.insert(b"a", b"3".to_vec(), start + Duration::from_secs(2));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(b"a", start), Some(&b"3"[..]));
        // Count eviction now removes b (older live entry), not a's stale slot.
        cache.insert(b"c", b"4".to_vec(), start + Duration::from_secs(3));
        assert_eq!(cache.get(b"b", start), None);
        assert_eq!(cache.get(b"a", start), Some(&b"3"[..]));
        // a was refreshed at +2 s: still there at +31 s, gone at +32 s.
        assert!(cache.get(b"a", start + Duration::from_secs(31)).is_some());
        assert!(cache.get(b"a", start + Duration::from_secs(32)).is_none());
        assert!(cache.remove(b"c"));
        assert!(!cache.remove(b"c"));
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn queue_stays_bounded_under_reinsertion() {
        let start = t0();
        let mut cache = ReplyCache::new(Duration::from_secs(30), 4, 1 << 20);
        for i in 0..10_000u64 {
            cache.insert(b"same", vec![0; 8], start + Duration::from_micros(i));
        }
        assert_eq!(cache.len(), 1);
        assert!(cache.order.len() <= 2 * cache.entries.len() + 65);
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let mut cache = ReplyCache::new(Duration::from_secs(30), 0, 1 << 20);
        cache.insert(b"a", b"x".to_vec(), t0());
        assert!(cache.is_empty());
    }
}
