//! Handing memory back after a load. A hash map keeps the capacity of its fullest moment and an allocator keeps
//! the pages it once used: after a busy hour (6,000 calls/s leave ~380,000 transaction tombstones for 32 s) or a
//! flood, both would hold the peak for good. The reaper in `server.rs` calls the tables' `shrink` and then
//! [`release_free_memory`] once a load is over; what is live stays, what only the peak needed goes.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash};

use dashmap::DashMap;

/// A map is shrunk only when this many times its entries would still fit (a half-full map is left alone: it
/// would only grow again at the next busy minute).
const SPARSE: usize = 4;

/// Whether a container with room for `capacity` holds few enough of it to be worth shrinking.
fn sparse(capacity: usize, len: usize) -> bool {
    capacity > SPARSE * len.max(64)
}

/// Shrink `map` to its entries when it is sparse (see [`SPARSE`]). Locks one shard at a time.
pub fn shrink_sparse<K: Eq + Hash, V, S: BuildHasher + Clone>(map: &DashMap<K, V, S>) {
    if sparse(map.capacity(), map.len()) {
        map.shrink_to_fit();
    }
}

/// [`shrink_sparse`] for a queue.
pub fn shrink_sparse_queue<T>(queue: &mut VecDeque<T>) {
    if sparse(queue.capacity(), queue.len()) {
        queue.shrink_to_fit();
    }
}

/// Hand the allocator's free memory back to the OS (glibc keeps freed arenas mapped otherwise). Nothing to do
/// under the `alloc-mimalloc` and `alloc-jemalloc` allocators: they purge freed pages by themselves.
pub fn release_free_memory() {
    #[cfg(all(
        target_os = "linux",
        target_env = "gnu",
        not(any(feature = "alloc-mimalloc", feature = "alloc-jemalloc"))
    ))]
    {
        // SAFETY: malloc_trim only walks and releases the allocator's own free lists; it takes no pointers.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(released, "allocator trimmed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_emptied_after_a_peak_gives_its_capacity_back_and_a_full_one_keeps_it() {
        let map: DashMap<u32, [u8; 64]> = DashMap::new();
        for i in 0..100_000 {
            map.insert(i, [0; 64]);
        }
        let peak = map.capacity();
        shrink_sparse(&map);
        assert_eq!(map.capacity(), peak, "a full map is left alone");
        map.retain(|k, _| *k < 10);
        shrink_sparse(&map);
        assert!(map.capacity() < peak / 100, "capacity {} after the load (peak {peak})", map.capacity());
        assert_eq!(map.len(), 10, "the live entries stay");

        let mut q: VecDeque<u32> = (0..100_000).collect();
        q.truncate(5);
        shrink_sparse_queue(&mut q);
        assert!(q.capacity() < 1_000 && q.len() == 5, "queue capacity {}", q.capacity());
    }
}
