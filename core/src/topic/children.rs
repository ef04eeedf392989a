//! [`Children`]: the exact-level children of one trie node, found by a seeded level hash.
//!
//! A small open-addressing table (linear probing, at most half full, backward-shift deletion)
//! of `(hash, Box<child>)`. Each child carries its own [`Label`] (short levels stored inline), so a
//! lookup reads one table slot and then the child it would visit anyway: about two cache misses
//! per level, however many children there are. The table grows and shrinks with its contents.
//!
//! Never: treat two different levels as one (a hash match is confirmed on the label), or keep
//! capacity far beyond what the children need.

use alloc::boxed::Box;
use alloc::vec::Vec;

/// A level's text with its hash, computed once per lookup.
#[derive(Clone, Copy)]
pub(super) struct Level<'l> {
    hash: u64,
    text: &'l str,
}

impl<'l> Level<'l> {
    /// Hashes `text` with the trie's `seed`.
    pub(super) fn new(seed: u64, text: &'l str) -> Self {
        Self {
            hash: level_hash(seed, text),
            text,
        }
    }
}

/// A keyed multiply-fold hash (in the manner of wyhash): a few instructions for a short level;
/// with a secret seed, levels that collide cannot be computed offline.
fn level_hash(seed: u64, text: &str) -> u64 {
    const K0: u64 = 0x243f_6a88_85a3_08d3;
    const K1: u64 = 0x1319_8a2e_0370_7344;
    let fold = |a: u64, b: u64| {
        let product = u128::from(a) * u128::from(b);
        (product as u64) ^ ((product >> 64) as u64)
    };
    let bytes = text.as_bytes();
    let key = seed ^ K1;
    let mut hash = seed ^ (bytes.len() as u64).wrapping_mul(K0);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = <[u8; 8]>::try_from(chunk).map_or(0, u64::from_le_bytes);
        hash = fold(hash ^ word, key);
    }
    let tail = chunks.remainder();
    // The length is already mixed in, so overlapping reads of the tail are unambiguous.
    let word = match (tail.first_chunk::<4>(), tail.last_chunk::<4>()) {
        (Some(first), Some(last)) => {
            (u64::from(u32::from_le_bytes(*first)) << 32) | u64::from(u32::from_le_bytes(*last))
        }
        _ => match (tail.first(), tail.get(tail.len() / 2), tail.last()) {
            (Some(&a), Some(&b), Some(&c)) => {
                (u64::from(a) << 16) | (u64::from(b) << 8) | u64::from(c)
            }
            _ => 0,
        },
    };
    fold(fold(hash ^ word, key), K0 ^ seed)
}

/// Bytes of level text kept inside the node; longer levels go to the heap.
const INLINE_LABEL: usize = 22;

/// The text of the level a child is reached by.
pub(super) enum Label {
    /// Up to [`INLINE_LABEL`] bytes, stored in place.
    Inline {
        /// Number of bytes used.
        len: u8,
        /// The bytes, zero-padded.
        bytes: [u8; INLINE_LABEL],
    },
    /// A longer level.
    Heap(Box<str>),
}

impl Label {
    /// The label for `text`.
    pub(super) fn new(text: &str) -> Self {
        let source = text.as_bytes();
        match u8::try_from(source.len()) {
            Ok(len) if source.len() <= INLINE_LABEL => {
                let mut bytes = [0; INLINE_LABEL];
                for (slot, byte) in bytes.iter_mut().zip(source) {
                    *slot = *byte;
                }
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(Box::from(text)),
        }
    }

    /// The label's bytes.
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Self::Heap(text) => text.as_bytes(),
        }
    }
}

/// A child that knows the level it is reached by.
pub(super) trait Labeled {
    /// The child's label.
    fn label(&self) -> &Label;
}

type Slot<T> = Option<(u64, Box<T>)>;

/// Map from a level's text to a boxed child, keyed by the level's seeded hash.
pub(super) struct Children<T> {
    /// Power-of-two length, or empty.
    slots: Box<[Slot<T>]>,
    len: usize,
}

impl<T> Default for Children<T> {
    fn default() -> Self {
        Self {
            slots: Box::default(),
            len: 0,
        }
    }
}

fn empty_slots<T>(capacity: usize) -> Box<[Slot<T>]> {
    (0..capacity).map(|_| None).collect()
}

impl<T: Labeled> Children<T> {
    /// Number of children.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no children.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// The slot index holding `level`.
    fn find(&self, level: Level<'_>) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.mask();
        let mut index = level.hash as usize & mask;
        // The table is never full, so an empty slot ends every probe; the bound is a backstop.
        for _ in 0..self.slots.len() {
            let (hash, child) = self.slots.get(index)?.as_ref()?;
            if *hash == level.hash && child.label().as_bytes() == level.text.as_bytes() {
                return Some(index);
            }
            index = (index + 1) & mask;
        }
        None
    }

    /// The child at `level`.
    pub(super) fn get(&self, level: Level<'_>) -> Option<&T> {
        let index = self.find(level)?;
        let (_, child) = self.slots.get(index)?.as_ref()?;
        Some(child)
    }

    /// The child at `level`, mutably.
    pub(super) fn get_mut(&mut self, level: Level<'_>) -> Option<&mut T> {
        let index = self.find(level)?;
        let (_, child) = self.slots.get_mut(index)?.as_mut()?;
        Some(child)
    }

    /// The child at `level`, created by `make` from the level's text if missing.
    ///
    /// Always `Some`: the `Option` only carries the bounds checks of the table, which cannot
    /// fail, so that this path has no panic at all.
    pub(super) fn get_or_insert_with(
        &mut self,
        level: Level<'_>,
        make: impl FnOnce(&str) -> T,
    ) -> Option<&mut T> {
        let index = match self.find(level) {
            Some(index) => index,
            None => {
                // At most half full: a failed lookup (most are) then probes about 2.5 slots.
                if (self.len + 1) * 2 > self.slots.len() {
                    self.resize((self.slots.len() * 2).max(2));
                }
                let index = self.free_slot(level.hash)?;
                *self.slots.get_mut(index)? = Some((level.hash, Box::new(make(level.text))));
                self.len += 1;
                index
            }
        };
        let (_, child) = self.slots.get_mut(index)?.as_mut()?;
        Some(child)
    }

    /// Removes and returns the child at `level`.
    pub(super) fn remove(&mut self, level: Level<'_>) -> Option<Box<T>> {
        let index = self.find(level)?;
        let (_, removed) = self.slots.get_mut(index)?.take()?;
        self.len -= 1;
        self.close_gap(index);
        if self.len == 0 {
            self.slots = Box::default();
        } else if self.slots.len() > 4 && self.len * 8 < self.slots.len() {
            self.resize(self.slots.len() / 2);
        }
        Some(removed)
    }

    /// Every child, in no particular order.
    pub(super) fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten().map(|(_, child)| &**child)
    }

    /// Takes every child out, leaving this empty.
    pub(super) fn drain_into(&mut self, out: &mut Vec<Box<T>>) {
        self.len = 0;
        let slots = core::mem::take(&mut self.slots);
        out.extend(
            slots
                .into_vec()
                .into_iter()
                .flatten()
                .map(|(_, child)| child),
        );
    }

    /// The first empty slot on `hash`'s probe sequence.
    fn free_slot(&self, hash: u64) -> Option<usize> {
        let mask = self.mask();
        let mut index = hash as usize & mask;
        for _ in 0..self.slots.len() {
            if self.slots.get(index)?.is_none() {
                return Some(index);
            }
            index = (index + 1) & mask;
        }
        None
    }

    fn resize(&mut self, capacity: usize) {
        let old = core::mem::replace(&mut self.slots, empty_slots(capacity));
        for (hash, child) in old.into_vec().into_iter().flatten() {
            if let Some(slot) = self.free_slot(hash).and_then(|i| self.slots.get_mut(i)) {
                *slot = Some((hash, child));
            }
        }
    }

    /// Backward-shift deletion: moves later entries of the probe run into the hole at `hole`,
    /// so every entry stays reachable without tombstones.
    fn close_gap(&mut self, mut hole: usize) {
        let mask = self.mask();
        let mut index = (hole + 1) & mask;
        for _ in 0..self.slots.len() {
            let Some(Some((hash, _))) = self.slots.get(index) else {
                return;
            };
            let home = *hash as usize & mask;
            // The entry may move back to `hole` if `hole` lies on its probe path (home..=index).
            if index.wrapping_sub(home) & mask >= index.wrapping_sub(hole) & mask {
                let moved = self.slots.get_mut(index).and_then(Option::take);
                if let Some(slot) = self.slots.get_mut(hole) {
                    *slot = moved;
                }
                hole = index;
            }
            index = (index + 1) & mask;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::String;

    struct Leaf {
        label: Label,
        value: usize,
    }

    impl Labeled for Leaf {
        fn label(&self) -> &Label {
            &self.label
        }
    }

    fn leaf(text: &str) -> Leaf {
        Leaf {
            label: Label::new(text),
            value: usize::MAX,
        }
    }

    fn exercise(level: fn(&str) -> Level<'_>) {
        // Long texts too, to use heap labels.
        let texts: Vec<String> = (0..300)
            .map(|i| {
                format!(
                    "level{i}{}",
                    if i % 3 == 0 { "-with-a-long-tail" } else { "" }
                )
            })
            .collect();
        let mut children = Children::default();
        for (i, t) in texts.iter().enumerate() {
            children.get_or_insert_with(level(t), leaf).unwrap().value = i;
            assert_eq!(
                children.get_or_insert_with(level(t), leaf).unwrap().value,
                i
            );
        }
        assert_eq!(children.len(), texts.len());
        for (i, t) in texts.iter().enumerate() {
            assert_eq!(children.get(level(t)).unwrap().value, i, "{t}");
        }
        assert_eq!(children.values().count(), texts.len());
        assert!(children.get(level("absent")).is_none());
        let full = children.slots.len();
        // Remove from both ends and the middle: the rest must stay reachable.
        for (i, t) in texts.iter().enumerate() {
            if i % 7 != 3 {
                assert_eq!(children.remove(level(t)).unwrap().value, i);
                assert!(children.remove(level(t)).is_none());
            }
        }
        assert!(children.slots.len() < full, "the table shrinks");
        for (i, t) in texts.iter().enumerate().filter(|(i, _)| i % 7 == 3) {
            assert_eq!(children.get_mut(level(t)).unwrap().value, i);
        }
        let mut drained: Vec<usize> = Vec::new();
        let mut boxes = Vec::new();
        children.drain_into(&mut boxes);
        drained.extend(boxes.iter().map(|b| b.value));
        drained.sort_unstable();
        assert_eq!(drained, (0..300).filter(|i| i % 7 == 3).collect::<Vec<_>>());
        assert!(children.is_empty());
        assert!(children.get(level("level3")).is_none());
    }

    #[test]
    fn children_survive_growing_and_shrinking() {
        exercise(|t| Level::new(7, t));
    }

    #[test]
    fn colliding_levels_are_kept_apart() {
        // Every level hashes alike: lookups must still tell them apart by label.
        exercise(|text| Level { hash: 42, text });
    }

    #[test]
    fn nearly_colliding_levels_are_kept_apart() {
        // Two home slots only: long probe runs that wrap around the table.
        exercise(|text| Level {
            hash: u64::from(text.len() % 2 == 0),
            text,
        });
    }

    #[test]
    fn labels_keep_their_text() {
        for text in [
            "",
            "a",
            "exactly-22-bytes-long!",
            "exactly-23-bytes-long!!",
            "ä€𝄞",
        ] {
            assert_eq!(Label::new(text).as_bytes(), text.as_bytes());
        }
        assert!(matches!(
            Label::new("exactly-22-bytes-long!"),
            Label::Inline { .. }
        ));
        assert!(matches!(
            Label::new("exactly-23-bytes-long!!"),
            Label::Heap(_)
        ));
    }

    #[test]
    fn hash_depends_on_seed_and_every_byte() {
        assert_ne!(level_hash(1, "sensor"), level_hash(2, "sensor"));
        assert_ne!(level_hash(1, "sensor1"), level_hash(1, "sensor2"));
        assert_ne!(level_hash(1, "a"), level_hash(1, "a\u{1}"));
        assert_ne!(level_hash(1, ""), level_hash(1, "\u{1}"));
        assert_ne!(level_hash(1, "abcdefgh1"), level_hash(1, "abcdefgh2"));
    }
}
