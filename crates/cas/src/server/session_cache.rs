//! The cache of sessions ready for attestation, so that an attestation does not read and parse
//! its session's YAML and secrets again. It must never serve a version that a write replaced,
//! nor let a load that raced a write bring one back: see [`SessionCache`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cloister_cas_session::{Secrets, Session};

use super::Cas;
use super::error::CasResult;

/// A session ready for attestation.
pub(super) struct Loaded {
    pub(super) session: Session,
    pub(super) hash: String,
    pub(super) secrets: Secrets,
}

/// Loaded sessions by name. A load reads the vault without holding the lock, so a write can
/// commit between its read and its insert; the generation makes sure such a load, which may
/// hold the replaced version, is never cached: every committed write bumps it (and empties the
/// cache, since importers follow their exporters), and a load inserts only if the generation
/// is the one it saw before reading the vault.
pub(super) struct SessionCache<T> {
    inner: RwLock<Entries<T>>,
}

struct Entries<T> {
    generation: u64,
    by_name: HashMap<String, Arc<T>>,
}

impl<T> Default for SessionCache<T> {
    fn default() -> Self {
        Self {
            inner: RwLock::new(Entries {
                generation: 0,
                by_name: HashMap::new(),
            }),
        }
    }
}

impl<T> SessionCache<T> {
    /// The cached value of `name`, or else what `load` reads, kept only if no write committed
    /// since the lookup. `Ok(None)` (no such session) is not kept. A poisoned lock disables
    /// caching until the next [`SessionCache::invalidate`], never the loads.
    pub(super) fn get_or_load<E>(
        &self,
        name: &str,
        load: impl FnOnce() -> Result<Option<T>, E>,
    ) -> Result<Option<Arc<T>>, E> {
        let generation = match self.inner.read() {
            Ok(cache) => match cache.by_name.get(name) {
                Some(hit) => return Ok(Some(hit.clone())),
                None => Some(cache.generation),
            },
            Err(_) => None,
        };
        let Some(loaded) = load()? else {
            return Ok(None);
        };
        let loaded = Arc::new(loaded);
        if let Ok(mut cache) = self.inner.write()
            && Some(cache.generation) == generation
        {
            cache.by_name.insert(name.to_owned(), loaded.clone());
        }
        Ok(Some(loaded))
    }

    /// Called after a session write committed: no load that began before it is cached, and
    /// nothing cached before it is served again.
    pub(super) fn invalidate(&self) {
        match self.inner.write() {
            Ok(mut cache) => {
                cache.generation = cache.generation.wrapping_add(1);
                cache.by_name.clear();
            }
            Err(poisoned) => {
                let mut cache = poisoned.into_inner();
                cache.generation = cache.generation.wrapping_add(1);
                cache.by_name.clear();
                self.inner.clear_poison();
            }
        }
    }
}

impl Cas {
    /// The session and its secrets, from the cache or the vault, with its imports checked
    /// against their exporters as they are now (see [`SessionCache`]).
    pub(super) fn loaded(&self, name: &str) -> CasResult<Option<Arc<Loaded>>> {
        self.require_unsealed()?;
        self.cache.get_or_load(name, || self.load_for_release(name))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Loads `value` for `name`, counting the loads.
    fn load(cache: &SessionCache<u32>, name: &str, value: u32, loads: &Cell<u32>) -> Option<Arc<u32>> {
        let loaded: Result<_, ()> = cache.get_or_load(name, || {
            loads.set(loads.get() + 1);
            Ok(Some(value))
        });
        loaded.unwrap()
    }

    #[test]
    fn serves_what_it_loaded_until_a_write_invalidates_it() {
        let cache = SessionCache::default();
        let loads = Cell::new(0);
        assert_eq!(load(&cache, "s", 1, &loads).as_deref(), Some(&1));
        assert_eq!(load(&cache, "s", 2, &loads).as_deref(), Some(&1), "cached");
        assert_eq!(loads.get(), 1);
        cache.invalidate();
        assert_eq!(
            load(&cache, "s", 2, &loads).as_deref(),
            Some(&2),
            "the new version"
        );
        assert_eq!(loads.get(), 2);

        let missing: Result<_, ()> = cache.get_or_load("t", || Ok(None));
        assert!(missing.unwrap().is_none());
        assert_eq!(
            load(&cache, "t", 3, &loads).as_deref(),
            Some(&3),
            "absence is not cached"
        );
    }

    #[test]
    fn a_load_that_raced_a_write_is_answered_but_never_cached() {
        let cache = SessionCache::default();
        let raced: Result<_, ()> = cache.get_or_load("s", || {
            // A write commits after this load read the old version.
            cache.invalidate();
            Ok(Some(1))
        });
        assert_eq!(raced.unwrap().as_deref(), Some(&1));
        let loads = Cell::new(0);
        assert_eq!(load(&cache, "s", 2, &loads).as_deref(), Some(&2));
        assert_eq!(loads.get(), 1, "the raced load was not cached");
    }

    #[test]
    fn a_poisoned_lock_disables_caching_until_the_next_write() {
        let cache = SessionCache::default();
        std::thread::scope(|s| {
            let poisoner = s.spawn(|| {
                let _guard = cache.inner.write().unwrap();
                panic!("a holder of the lock panics");
            });
            assert!(poisoner.join().is_err());
        });
        let loads = Cell::new(0);
        load(&cache, "s", 1, &loads);
        load(&cache, "s", 1, &loads);
        assert_eq!(loads.get(), 2, "nothing cached while poisoned");
        cache.invalidate();
        load(&cache, "s", 1, &loads);
        load(&cache, "s", 1, &loads);
        assert_eq!(loads.get(), 3, "caching again after the write");
    }
}
