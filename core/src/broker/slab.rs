//! [`Slab`]: the broker's table of connections and of sessions — O(1) access by key, slots
//! reused, and keys that never come back to life: a key carries its slot's generation, so a
//! key kept after its entry was removed finds nothing, even when the slot holds a new entry.
//!
//! Never: hand out key 0, or let a stale key reach a live entry.

use alloc::vec::Vec;

#[derive(Debug)]
struct Slot<T> {
    /// Generation of the current (or, if vacant, the next) occupant.
    generation: u32,
    value: Option<T>,
}

#[derive(Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

fn split(key: u64) -> (usize, u32) {
    // Truncation intended: the low half is the index, the high half the generation.
    ((key & 0xffff_ffff) as usize, (key >> 32) as u32)
}

impl<T> Slab<T> {
    pub(crate) const fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Stores `value`; returns its key (never 0: generations start at 1).
    pub(crate) fn insert(&mut self, value: T) -> u64 {
        self.len += 1;
        if let Some(index) = self.free.pop()
            && let Some(slot) = self.slots.get_mut(index as usize)
        {
            slot.value = Some(value);
            return (u64::from(slot.generation) << 32) | u64::from(index);
        }
        let index = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.slots.push(Slot {
            generation: 1,
            value: Some(value),
        });
        (1u64 << 32) | u64::from(index)
    }

    pub(crate) fn get(&self, key: u64) -> Option<&T> {
        let (index, generation) = split(key);
        let slot = self.slots.get(index)?;
        if slot.generation == generation {
            slot.value.as_ref()
        } else {
            None
        }
    }

    pub(crate) fn get_mut(&mut self, key: u64) -> Option<&mut T> {
        let (index, generation) = split(key);
        let slot = self.slots.get_mut(index)?;
        if slot.generation == generation {
            slot.value.as_mut()
        } else {
            None
        }
    }

    pub(crate) fn contains(&self, key: u64) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn remove(&mut self, key: u64) -> Option<T> {
        let (index, generation) = split(key);
        let slot = self.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        let value = slot.value.take()?;
        // A generation that wrapped around would revive old keys: retire the slot instead.
        if let Some(next) = slot.generation.checked_add(1) {
            slot.generation = next;
            self.free.push(u32::try_from(index).unwrap_or(u32::MAX));
        }
        self.len -= 1;
        Some(value)
    }

    /// Whether `key` was ever handed out by this slab (live or removed since).
    pub(crate) fn was_issued(&self, key: u64) -> bool {
        let (index, generation) = split(key);
        self.slots.get(index).is_some_and(|slot| {
            generation >= 1
                && (generation < slot.generation
                    || (generation == slot.generation && slot.value.is_some()))
        })
    }

    /// Keys of the live entries, in slot order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots.iter().enumerate().filter_map(|(index, slot)| {
            slot.value
                .as_ref()
                .map(|_| (u64::from(slot.generation) << 32) | index as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_keys_never_reach_a_new_occupant() {
        let mut slab = Slab::new();
        let a = slab.insert("a");
        assert_ne!(a, 0);
        assert_eq!(slab.remove(a), Some("a"));
        let b = slab.insert("b");
        assert_ne!(a, b);
        assert_eq!(slab.get(a), None);
        assert_eq!(slab.get(b), Some(&"b"));
        assert_eq!(slab.remove(a), None);
        assert!(slab.was_issued(a) && slab.was_issued(b));
        assert!(!slab.was_issued(b + (1 << 32)));
        assert!(!slab.was_issued(7));
        assert_eq!(slab.len(), 1);
        assert_eq!(slab.keys().collect::<Vec<_>>(), [b]);
    }
}
