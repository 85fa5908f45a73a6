//! Vendor ids and unit ids, kept apart by type, and tables indexed by each.

use std::marker::PhantomData;

/// A configured vendor: its position in `Config::vendors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VendorId(pub usize);

/// A health unit (a vendor as a whole, or a vendor and one of its models):
/// its position in `Config::units`. The first units are the vendors'
/// pass-through units, in vendor order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitId(pub usize);

impl VendorId {
    /// The unit that stands for the vendor as a whole.
    pub fn pass_through(self) -> UnitId {
        UnitId(self.0)
    }
}

/// An id that indexes a `Table`.
pub trait Id: Copy {
    fn index(self) -> usize;
    fn at(index: usize) -> Self;
}

impl Id for VendorId {
    fn index(self) -> usize {
        self.0
    }
    fn at(index: usize) -> Self {
        VendorId(index)
    }
}

impl Id for UnitId {
    fn index(self) -> usize {
        self.0
    }
    fn at(index: usize) -> Self {
        UnitId(index)
    }
}

/// One `T` per vendor, or per unit: looked up only by that kind of id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table<I, T> {
    items: Vec<T>,
    id: PhantomData<I>,
}

impl<I, T> Default for Table<I, T> {
    fn default() -> Self {
        Table {
            items: Vec::new(),
            id: PhantomData,
        }
    }
}

impl<I: Id, T> Table<I, T> {
    pub fn get(&self, id: I) -> Option<&T> {
        self.items.get(id.index())
    }

    pub fn get_mut(&mut self, id: I) -> Option<&mut T> {
        self.items.get_mut(id.index())
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Every (id, item), in id order.
    pub fn iter(&self) -> impl Iterator<Item = (I, &T)> {
        self.items.iter().enumerate().map(|(i, t)| (I::at(i), t))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (I, &mut T)> {
        self.items.iter_mut().enumerate().map(|(i, t)| (I::at(i), t))
    }

    /// The items in id order, for comparing whole tables.
    pub fn as_slice(&self) -> &[T] {
        &self.items
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.items.iter_mut()
    }

    pub fn ids(&self) -> impl Iterator<Item = I> {
        (0..self.items.len()).map(I::at)
    }

    /// The id of the first item that matches.
    pub fn position(&self, f: impl Fn(&T) -> bool) -> Option<I> {
        self.items.iter().position(f).map(I::at)
    }
}

impl<I: Id, T: Clone> Table<I, T> {
    pub fn filled(len: usize, value: T) -> Self {
        Table {
            items: vec![value; len],
            id: PhantomData,
        }
    }
}

impl<I, T> From<Vec<T>> for Table<I, T> {
    fn from(items: Vec<T>) -> Self {
        Table { items, id: PhantomData }
    }
}

impl<I, T> FromIterator<T> for Table<I, T> {
    fn from_iter<It: IntoIterator<Item = T>>(iter: It) -> Self {
        Table {
            items: iter.into_iter().collect(),
            id: PhantomData,
        }
    }
}

/// Indexing panics on an unknown id: tests only (the data path uses `get`).
#[cfg(test)]
impl<I: Id, T> std::ops::Index<I> for Table<I, T> {
    type Output = T;

    fn index(&self, id: I) -> &T {
        &self.items[id.index()]
    }
}
