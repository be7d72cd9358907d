//! Batches of handles a caller lists (blocks to free, blocks to unpin): how many times each is listed.
//!
//! A batch allocated together comes in increasing order, which lists every handle once; that is checked
//! in one pass with no allocation. Any other list is sorted to count its repeats.

#![deny(unsafe_code)]

/// Visit each distinct key of `items` with the number of times it is listed, stopping at the first
/// `Some` that `visit` returns (and returning it). Keys come in the list's order when it is strictly
/// increasing, in sorted order otherwise.
pub(crate) fn each_count<T, K: Ord + Copy, R>(
    items: &[T],
    key: impl Fn(&T) -> K,
    mut visit: impl FnMut(K, u32) -> Option<R>,
) -> Option<R> {
    if items.windows(2).all(|w| key(&w[0]) < key(&w[1])) {
        return items.iter().find_map(|t| visit(key(t), 1));
    }
    let mut keys: Vec<K> = items.iter().map(&key).collect();
    keys.sort_unstable();
    keys.chunk_by(|a, b| a == b).find_map(|run| visit(run[0], run.len() as u32))
}

/// The smallest key listed more than once, if any.
pub(crate) fn repeated<T, K: Ord + Copy>(items: &[T], key: impl Fn(&T) -> K) -> Option<K> {
    each_count(items, key, |k, n| (n > 1).then_some(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_found_in_any_order_and_counted() {
        assert_eq!(repeated(&[1, 2, 5, 9], |&k| k), None);
        assert_eq!(repeated(&[9, 5, 2, 1], |&k| k), None);
        assert_eq!(repeated(&[1, 1], |&k| k), Some(1));
        assert_eq!(repeated(&[4, 7, 2, 7, 4], |&k| k), Some(4));
        assert_eq!(repeated::<u32, u32>(&[], |&k| k), None);
        let mut seen = Vec::new();
        each_count(
            &[3, 1, 3, 3, 2],
            |&k| k,
            |k, n| -> Option<()> {
                seen.push((k, n));
                None
            },
        );
        assert_eq!(seen, [(1, 1), (2, 1), (3, 3)]);
        assert_eq!(each_count(&[1, 2, 3], |&k| k, |k, _| (k == 2).then_some(k)), Some(2));
    }
}
