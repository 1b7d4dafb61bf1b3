//! Sorting that is compiled once, not once per element type.
//!
//! The standard library's stable sort is generic over the element and the comparison, and
//! each instantiation is about 4 KiB of code; collecting into a `BTreeMap` or `BTreeSet`
//! sorts its input too, with one more instantiation per key type. The router binary held 28
//! of them (138 KiB, all resident: see ARCHITECTURE.md, "One sort in the binary"). Here a slice is
//! sorted through a permutation of its indices: the index sort and the permutation's swaps are
//! plain functions, compiled once, and what is left per element type is a comparison closure
//! and a loop of `swap`s. The sort is stable and O(n log n), like `slice::sort_by`; it costs
//! one allocation of two words per element, which is nothing at the sizes sorted here
//! (uplinks, rules, routes, findings, diagnostics).
//!
//! Maps and sets are built by inserting, which needs no sort at all ([`Collect`]).
//!
//! `tests/layout.rs` keeps the router's and the core's code on these helpers.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// Sorts `v` by `cmp`, keeping equal elements in their order (like `slice::sort_by`).
pub fn sort_by<T>(v: &mut [T], mut cmp: impl FnMut(&T, &T) -> Ordering) {
    let swaps = {
        let items: &[T] = v;
        swaps(items.len(), &mut |a, b| cmp(&items[a], &items[b]))
    };
    for (a, b) in swaps {
        v.swap(a, b);
    }
}

/// Sorts `v` in ascending order, keeping equal elements in their order (like `slice::sort`).
pub fn sort<T: Ord>(v: &mut [T]) {
    sort_by(v, T::cmp);
}

/// Sorts `v` by the key `key` gives each element, stably (like `slice::sort_by_key`).
pub fn sort_by_key<T, K: Ord>(v: &mut [T], mut key: impl FnMut(&T) -> K) {
    sort_by(v, |a, b| key(a).cmp(&key(b)));
}

/// `collect()` into a map or a set, without the sort: `iter.collect_map()`, `iter.collect_set()`.
pub trait Collect: Iterator + Sized {
    /// The map of the items; a later item replaces an earlier one with the same key (as
    /// `collect()` does), built by inserting.
    fn collect_map<K: Ord, V>(self) -> BTreeMap<K, V>
    where
        Self: Iterator<Item = (K, V)>,
    {
        let mut out = BTreeMap::new();
        out.extend(self);
        out
    }

    /// The set of the items (as `collect()`), built by inserting.
    fn collect_set(self) -> BTreeSet<Self::Item>
    where
        Self::Item: Ord,
    {
        let mut out = BTreeSet::new();
        out.extend(self);
        out
    }
}

impl<I: Iterator> Collect for I {}

/// The swaps that put `len` elements, compared by index with `cmp`, in stable order.
fn swaps(len: usize, cmp: &mut dyn FnMut(usize, usize) -> Ordering) -> Vec<(usize, usize)> {
    // order[k]: the index of the element that belongs at position k.
    let mut order: Vec<usize> = (0..len).collect();
    order.sort_by(|&a, &b| cmp(a, b));
    // Apply it with swaps, tracking where each original element is (pos) and which original
    // element each position holds (at).
    let mut pos: Vec<usize> = (0..len).collect();
    let mut at = pos.clone();
    let mut out = Vec::new();
    for (k, &want) in order.iter().enumerate() {
        let p = pos[want];
        if p != k {
            out.push((k, p));
            let displaced = at[k];
            at[k] = want;
            at[p] = displaced;
            pos[want] = k;
            pos[displaced] = p;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sorts_like_the_standard_library() {
        let mut v = vec![5, 3, 9, 1, 3, 0, 7];
        sort(&mut v);
        assert_eq!(v, [0, 1, 3, 3, 5, 7, 9]);
        let mut empty: Vec<u8> = Vec::new();
        sort(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn equal_elements_keep_their_order() {
        let mut v = vec![(2, 'a'), (1, 'b'), (2, 'c'), (1, 'd'), (0, 'e')];
        sort_by_key(&mut v, |e| e.0);
        assert_eq!(v, [(0, 'e'), (1, 'b'), (1, 'd'), (2, 'a'), (2, 'c')]);
    }

    #[test]
    fn maps_keep_the_last_value_like_collect() {
        let m = [("a", 1), ("b", 2), ("a", 3)].into_iter().collect_map();
        let c: BTreeMap<_, _> = [("a", 1), ("b", 2), ("a", 3)].into_iter().collect();
        assert_eq!(m, c);
        assert_eq!(
            [3, 1, 3, 2].into_iter().collect_set(),
            BTreeSet::from([1, 2, 3])
        );
    }

    proptest! {
        #[test]
        fn any_slice_sorts_as_sort_by_does(v in proptest::collection::vec((0u8..8, any::<u16>()), 0..200)) {
            let mut ours = v.clone();
            sort_by(&mut ours, |a, b| a.0.cmp(&b.0));
            let mut std = v;
            std.sort_by_key(|a| a.0);
            prop_assert_eq!(ours, std);
        }
    }
}
