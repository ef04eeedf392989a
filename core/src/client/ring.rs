//! [`Ring`]: the client's FIFO storage for in-flight and queued commands. With the crate
//! feature `heapless` it is a fixed-capacity `heapless::Deque` that never allocates or grows
//! (capacities [`INFLIGHT_CAPACITY`] and [`QUEUE_CAPACITY`]); without it, a `VecDeque` bounded
//! by the configured limits.

#[cfg(not(feature = "heapless"))]
use alloc::collections::VecDeque;

/// In-flight commands the client can hold with the `heapless` feature.
pub const INFLIGHT_CAPACITY: usize = 64;
/// Queued commands the client can hold with the `heapless` feature.
pub const QUEUE_CAPACITY: usize = 256;

/// A FIFO with removal at any position.
#[derive(Debug, Clone)]
pub(crate) struct Ring<T, const N: usize> {
    #[cfg(feature = "heapless")]
    items: heapless::Deque<T, N>,
    #[cfg(not(feature = "heapless"))]
    items: VecDeque<T>,
}

impl<T, const N: usize> Ring<T, N> {
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(feature = "heapless")]
            items: heapless::Deque::new(),
            #[cfg(not(feature = "heapless"))]
            items: VecDeque::new(),
        }
    }

    /// The most this ring can hold (unbounded without `heapless`: callers apply limits).
    pub(crate) const fn capacity() -> usize {
        if cfg!(feature = "heapless") {
            N
        } else {
            usize::MAX
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.items.front()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.items.iter_mut()
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    /// Appends; gives the item back when the ring is full.
    pub(crate) fn push_back(&mut self, item: T) -> Result<(), T> {
        #[cfg(feature = "heapless")]
        return self.items.push_back(item);
        #[cfg(not(feature = "heapless"))]
        {
            self.items.push_back(item);
            Ok(())
        }
    }

    /// Prepends; gives the item back when the ring is full.
    pub(crate) fn push_front(&mut self, item: T) -> Result<(), T> {
        #[cfg(feature = "heapless")]
        return self.items.push_front(item);
        #[cfg(not(feature = "heapless"))]
        {
            self.items.push_front(item);
            Ok(())
        }
    }

    /// Removes the item at `index`, keeping the order of the rest.
    pub(crate) fn remove(&mut self, index: usize) -> Option<T> {
        #[cfg(feature = "heapless")]
        {
            if index >= self.items.len() {
                return None;
            }
            for i in index..self.items.len() - 1 {
                self.items.swap(i, i + 1);
            }
            self.items.pop_back()
        }
        #[cfg(not(feature = "heapless"))]
        self.items.remove(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_keeps_order() {
        let mut ring: Ring<u8, 8> = Ring::new();
        for i in 0..5 {
            assert!(ring.push_back(i).is_ok());
        }
        assert_eq!(ring.remove(1), Some(1));
        assert_eq!(ring.remove(9), None);
        assert_eq!(
            ring.iter().copied().collect::<alloc::vec::Vec<_>>(),
            [0, 2, 3, 4]
        );
        assert!(ring.push_front(9).is_ok());
        assert_eq!(ring.pop_front(), Some(9));
    }

    #[cfg(feature = "heapless")]
    #[test]
    fn a_full_heapless_ring_gives_the_item_back() {
        let mut ring: Ring<u8, 2> = Ring::new();
        assert!(ring.push_back(1).is_ok());
        assert!(ring.push_back(2).is_ok());
        assert_eq!(ring.push_back(3), Err(3));
        assert_eq!(Ring::<u8, 2>::capacity(), 2);
    }
}
