//! A vector that knows which of its pages changed: the native form of the table's large
//! vectors (virtual hosts, matches, actions, Services, regexes).
//!
//! Items are grouped in pages of [`PAGE_ITEMS`]; each page carries an identity that every
//! mutable access through [`Paged`] replaces with a fresh one. An encoder that remembers the
//! identity of each page it encoded therefore re-encodes only the pages that changed since
//! (docs/table-format.md, "Chunks"). Reads go through `Deref<Target = [T]>`; there is no
//! `DerefMut`, so no write can skip the bookkeeping.

use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicU64, Ordering};

/// Items per page (and per chunk of an encoded table). A page of actions is ~40 KB encoded,
/// one of matches ~7 KB.
pub const PAGE_ITEMS: usize = 128;

/// Page identities, unique within the process (0 is never handed out).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn fresh_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A `Vec<T>` with one identity per page of [`PAGE_ITEMS`] items.
#[derive(Clone)]
pub struct Paged<T> {
    items: Vec<T>,
    /// One per page: `ids.len() == items.len().div_ceil(PAGE_ITEMS)`.
    ids: Vec<u64>,
}

impl<T> Paged<T> {
    /// An empty vector.
    pub const fn new() -> Paged<T> {
        Paged { items: Vec::new(), ids: Vec::new() }
    }

    /// The identity of page `page` (items `page * PAGE_ITEMS ..`): equal identities mean equal
    /// contents.
    pub fn page_id(&self, page: usize) -> Option<u64> {
        self.ids.get(page).copied()
    }

    /// The items of page `page`.
    pub fn page(&self, page: usize) -> &[T] {
        let start = (page * PAGE_ITEMS).min(self.items.len());
        &self.items[start..(start + PAGE_ITEMS).min(self.items.len())]
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.ids.len()
    }

    /// Marks the pages holding items `range` (clamped) as changed.
    fn touch(&mut self, range: Range<usize>) {
        let end = range.end.min(self.items.len());
        if range.start >= end {
            return;
        }
        for id in &mut self.ids[range.start / PAGE_ITEMS..end.div_ceil(PAGE_ITEMS)] {
            *id = fresh_id();
        }
    }

    /// Makes `ids` fit `items` after a length change, renewing pages from `from` on.
    fn resized(&mut self, from: usize) {
        self.ids.resize(self.items.len().div_ceil(PAGE_ITEMS), 0);
        self.touch(from..self.items.len());
    }

    /// Reserves room for `more` items.
    pub fn reserve(&mut self, more: usize) {
        self.items.reserve(more);
    }

    /// Appends `item`.
    pub fn push(&mut self, item: T) {
        self.items.push(item);
        self.resized(self.items.len() - 1);
    }

    /// Inserts `item` at `at`, moving later items up (their pages change too).
    pub fn insert(&mut self, at: usize, item: T) {
        self.items.insert(at, item);
        self.resized(at);
    }

    /// Removes the item at `at`, moving later items down.
    pub fn remove(&mut self, at: usize) -> T {
        let item = self.items.remove(at);
        self.resized(at);
        item
    }

    /// Item `i` for writing; its page changes.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.touch(i..i + 1);
        self.items.get_mut(i)
    }

    /// Items `range` for writing; their pages change.
    pub fn range_mut(&mut self, range: Range<usize>) -> Option<&mut [T]> {
        self.touch(range.clone());
        self.items.get_mut(range)
    }

    /// Every item for writing: every page changes. Prefer [`get_mut`](Self::get_mut) of the
    /// items that do.
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, T> {
        self.touch(0..self.items.len());
        self.items.iter_mut()
    }

    /// Sets item `i` to `value` unless it already equals it (its page changes only then).
    pub fn set(&mut self, i: usize, value: T)
    where
        T: PartialEq,
    {
        if self.items.get(i).is_some_and(|v| *v != value)
            && let Some(slot) = self.get_mut(i)
        {
            *slot = value;
        }
    }

    /// Removes and returns the items from `at` on.
    pub fn split_off(&mut self, at: usize) -> Vec<T> {
        let tail = self.items.split_off(at);
        self.resized(at);
        tail
    }

    /// Keeps the items `keep` says yes to (every page changes).
    pub fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        self.items.retain(keep);
        self.resized(0);
    }
}

impl<T> Default for Paged<T> {
    fn default() -> Self {
        Paged::new()
    }
}

impl<T> Deref for Paged<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.items
    }
}

impl<T, I: std::slice::SliceIndex<[T]>> std::ops::Index<I> for Paged<T> {
    type Output = I::Output;
    fn index(&self, i: I) -> &I::Output {
        &self.items[i]
    }
}

impl<T> std::ops::IndexMut<usize> for Paged<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        self.touch(i..i + 1);
        &mut self.items[i]
    }
}

impl<T> From<Vec<T>> for Paged<T> {
    fn from(items: Vec<T>) -> Self {
        let ids = (0..items.len().div_ceil(PAGE_ITEMS)).map(|_| fresh_id()).collect();
        Paged { items, ids }
    }
}

impl<T> FromIterator<T> for Paged<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Paged::from(iter.into_iter().collect::<Vec<T>>())
    }
}

impl<T> Extend<T> for Paged<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        let from = self.items.len();
        self.items.extend(iter);
        self.resized(from);
    }
}

impl<'a, T> IntoIterator for &'a Paged<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// Equal items (identities are bookkeeping, not contents).
impl<T: PartialEq> PartialEq for Paged<T> {
    fn eq(&self, other: &Self) -> bool {
        self.items == other.items
    }
}

impl<T: Eq> Eq for Paged<T> {}

impl<T: std::fmt::Debug> std::fmt::Debug for Paged<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.items.fmt(f)
    }
}

impl<T: serde::Serialize> serde::Serialize for Paged<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.items.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids<T>(p: &Paged<T>) -> Vec<u64> {
        (0..p.pages()).filter_map(|i| p.page_id(i)).collect()
    }

    #[test]
    fn only_the_pages_written_get_new_identities() {
        let mut p: Paged<usize> = (0..PAGE_ITEMS * 3 + 5).collect();
        assert_eq!(p.pages(), 4);
        let before = ids(&p);
        p[PAGE_ITEMS + 1] = 7;
        let after = ids(&p);
        assert_eq!((before[0], before[2], before[3]), (after[0], after[2], after[3]));
        assert_ne!(before[1], after[1]);
        // Unchanged value: nothing changes.
        p.set(0, 0);
        assert_eq!(ids(&p)[0], after[0]);
        // A push changes only the last page; one that opens a page adds one.
        let before = ids(&p);
        p.push(1);
        assert_eq!(ids(&p)[..3], before[..3]);
        assert_ne!(ids(&p)[3], before[3]);
        // An insert changes its page and every later one.
        let before = ids(&p);
        p.insert(PAGE_ITEMS * 2, 9);
        assert_eq!(ids(&p)[..2], before[..2]);
        assert!(ids(&p)[2..].iter().all(|id| !before.contains(id)));
        assert_eq!(p[PAGE_ITEMS * 2], 9);
        p.remove(0);
        assert_eq!(p.len(), PAGE_ITEMS * 3 + 6);
        assert_eq!(p.page(3).len(), 6);
        let mut q: Paged<usize> = (0..PAGE_ITEMS).collect();
        q.push(0);
        assert_eq!(q.pages(), 2);
        q.remove(0);
        assert_eq!(q.pages(), 1);
    }
}
