//! What a phone search found for one number, the cache of those answers, and how one search's rows
//! are shared out among the numbers it asked for.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::crm::phone;
use crate::crm::port::CrmRecord;

/// The CRM's answer for one number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// These records carry the number (one pops it; several list them).
    Found(Vec<CrmRecord>),
    /// No record carries it.
    NotFound,
}

/// Shares one search's rows out among the numbers searched: a row belongs to every number one of
/// its phones is (a shared company line belongs to several callers).
pub fn share_out(numbers: &[String], rows: &[CrmRecord]) -> Vec<(String, Lookup)> {
    numbers
        .iter()
        .map(|number| {
            let found: Vec<CrmRecord> = rows
                .iter()
                .filter(|row| row.phones.iter().any(|stored| phone::same_number(stored, number)))
                .cloned()
                .collect();
            let lookup = if found.is_empty() { Lookup::NotFound } else { Lookup::Found(found) };
            (number.clone(), lookup)
        })
        .collect()
}

/// How long answers are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// A number that was found.
    pub found_ttl: Duration,
    /// A number no record carries (kept shorter: someone may add the record).
    pub not_found_ttl: Duration,
    /// Numbers kept at most; the oldest go first.
    pub capacity: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { found_ttl: Duration::from_secs(600), not_found_ttl: Duration::from_secs(120), capacity: 100_000 }
    }
}

/// Found and not-found answers by number (digits), each until its time to live runs out. Time is
/// given, as a duration since some start, so the cache is pure.
#[derive(Debug)]
pub struct LookupCache {
    config: CacheConfig,
    entries: HashMap<String, (Lookup, Duration)>,
    /// Numbers in the order they were stored, for eviction; stale positions are skipped.
    order: VecDeque<(String, Duration)>,
}

impl LookupCache {
    /// An empty cache.
    pub fn new(config: CacheConfig) -> Self {
        Self { config, entries: HashMap::new(), order: VecDeque::new() }
    }

    /// The answer for `number`, if it is still fresh at `now`.
    pub fn get(&self, number: &str, now: Duration) -> Option<&Lookup> {
        let (lookup, expires) = self.entries.get(number)?;
        (now < *expires).then_some(lookup)
    }

    /// Keeps `lookup` for `number` from `now`.
    pub fn put(&mut self, number: String, lookup: Lookup, now: Duration) {
        let ttl = match lookup {
            Lookup::Found(_) => self.config.found_ttl,
            Lookup::NotFound => self.config.not_found_ttl,
        };
        let expires = now + ttl;
        self.order.push_back((number.clone(), expires));
        self.entries.insert(number, (lookup, expires));
        self.evict(now);
    }

    /// Forgets `number` (a record was created for it).
    pub fn forget(&mut self, number: &str) {
        self.entries.remove(number);
    }

    /// Numbers cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn evict(&mut self, now: Duration) {
        while let Some((number, expires)) = self.order.front() {
            let current = self.entries.get(number).map(|(_, at)| *at);
            let stale_position = current != Some(*expires);
            let over = self.entries.len() > self.config.capacity;
            let expired = *expires <= now;
            if stale_position {
                self.order.pop_front();
            } else if over || expired {
                let (number, _) = self.order.pop_front().expect("front exists");
                self.entries.remove(&number);
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crm::port::RecordKind;

    fn record(kind: RecordKind, id: &str, phone: &str) -> CrmRecord {
        CrmRecord { kind, id: id.into(), name: format!("name of {id}"), phones: vec![phone.into()] }
    }

    #[test]
    fn rows_are_shared_out_by_number() {
        let rows = [
            record(RecordKind::Contact, "003A", "+49 30 1111111"),
            record(RecordKind::Account, "001A", "030 1111111"),
            record(RecordKind::Lead, "00QA", "(030) 222-2222"),
        ];
        let numbers = ["49301111111".to_owned(), "49302222222".to_owned(), "49303333333".to_owned()];
        let shared = share_out(&numbers, &rows);
        assert_eq!(shared[0].1, Lookup::Found(vec![rows[0].clone(), rows[1].clone()]));
        assert_eq!(shared[1].1, Lookup::Found(vec![rows[2].clone()]));
        assert_eq!(shared[2].1, Lookup::NotFound);
    }

    #[test]
    fn answers_expire_after_their_ttl() {
        let config =
            CacheConfig { found_ttl: Duration::from_secs(10), not_found_ttl: Duration::from_secs(2), capacity: 10 };
        let mut cache = LookupCache::new(config);
        let found = Lookup::Found(vec![record(RecordKind::Contact, "003A", "1234567890")]);
        cache.put("1234567890".into(), found.clone(), Duration::ZERO);
        cache.put("999999999".into(), Lookup::NotFound, Duration::ZERO);
        assert_eq!(cache.get("1234567890", Duration::from_secs(1)), Some(&found));
        assert_eq!(cache.get("999999999", Duration::from_secs(1)), Some(&Lookup::NotFound));
        assert_eq!(cache.get("999999999", Duration::from_secs(2)), None, "not-found answers go sooner");
        assert_eq!(cache.get("1234567890", Duration::from_secs(9)), Some(&found));
        assert_eq!(cache.get("1234567890", Duration::from_secs(10)), None);
    }

    #[test]
    fn the_oldest_numbers_go_when_full_and_a_refresh_keeps_a_number() {
        let config =
            CacheConfig { found_ttl: Duration::from_secs(100), not_found_ttl: Duration::from_secs(100), capacity: 2 };
        let mut cache = LookupCache::new(config);
        cache.put("1".into(), Lookup::NotFound, Duration::from_secs(0));
        cache.put("2".into(), Lookup::NotFound, Duration::from_secs(1));
        cache.put("1".into(), Lookup::NotFound, Duration::from_secs(2));
        cache.put("3".into(), Lookup::NotFound, Duration::from_secs(3));
        let now = Duration::from_secs(4);
        assert_eq!(cache.len(), 2);
        assert!(cache.get("2", now).is_none(), "the least recently stored number went");
        assert!(cache.get("1", now).is_some() && cache.get("3", now).is_some());
    }
}
