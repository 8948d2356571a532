//! Dense quantities: the allocator's internal form of [`Resources`].
//!
//! Resource names are interned to small indices once, at the API edge; inside,
//! a bag of resources is a short vector of thousandths indexed by name. Adding,
//! subtracting, comparing and computing shares then touch a handful of integers
//! and never allocate a string.

use std::collections::HashMap;

use wasmos_model::{Resources, Scalar};

/// Interned resource names. Indices are handed out in first-seen order and never
/// change, so every [`Qty`] stays valid as new names appear.
#[derive(Debug, Default, Clone)]
pub(crate) struct Names {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, usize>,
}

impl Names {
    pub(crate) fn intern(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len();
        self.names.push(name.into());
        self.index.insert(name.into(), i);
        i
    }

    /// `r` as a dense vector, interning names not seen before.
    pub(crate) fn qty(&mut self, r: &Resources) -> Qty {
        let mut q = Qty::default();
        for (name, amount) in r.iter() {
            let i = self.intern(name);
            q.set(i, amount.0);
        }
        q
    }

    /// Back to [`Resources`], for the API edge.
    pub(crate) fn resources(&self, q: &Qty) -> Resources {
        let mut r = Resources::new();
        for (i, &v) in q.0.iter().enumerate() {
            if v > 0 {
                r.set(&self.names[i], Scalar(v));
            }
        }
        r
    }
}

/// A non-negative amount per interned resource name, in thousandths. Indices past
/// the end read as zero.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Qty(pub(crate) Vec<i64>);

impl Qty {
    #[inline]
    pub(crate) fn get(&self, k: usize) -> i64 {
        self.0.get(k).copied().unwrap_or(0)
    }

    pub(crate) fn set(&mut self, k: usize, v: i64) {
        if k >= self.0.len() {
            if v == 0 {
                return;
            }
            self.0.resize(k + 1, 0);
        }
        self.0[k] = v;
    }

    #[inline]
    pub(crate) fn is_zero(&self) -> bool {
        self.0.iter().all(|&v| v == 0)
    }

    pub(crate) fn add(&mut self, o: &Qty) {
        if o.0.len() > self.0.len() {
            self.0.resize(o.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a += b;
        }
    }

    /// `self -= o`. Callers check containment first; a negative result is a bug.
    pub(crate) fn sub(&mut self, o: &Qty) {
        if o.0.len() > self.0.len() {
            self.0.resize(o.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a -= b;
            debug_assert!(*a >= 0, "quantity went negative");
        }
    }

    /// `self -= o`, stopping at zero.
    pub(crate) fn sub_saturating(&mut self, o: &Qty) {
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a = (*a - b).max(0);
        }
    }

    /// Whether every amount of `o` is available in `self`.
    #[inline]
    pub(crate) fn contains(&self, o: &Qty) -> bool {
        o.0.iter().enumerate().all(|(k, &v)| v <= self.get(k))
    }

    /// Element-wise minimum with a cap (see [`Cap`]).
    pub(crate) fn cap(&mut self, cap: &Cap) {
        for (k, v) in self.0.iter_mut().enumerate() {
            *v = (*v).min(cap.get(k));
        }
    }

    /// Element-wise `self - o` floored at zero, as a new vector.
    pub(crate) fn minus(&self, o: &Qty) -> Qty {
        let mut q = self.clone();
        q.sub_saturating(o);
        q
    }

    /// Element-wise `min(self, o)`.
    pub(crate) fn min(&self, o: &Qty) -> Qty {
        Qty(self.0.iter().enumerate().map(|(k, &v)| v.min(o.get(k))).collect())
    }

    /// Element-wise `max(self, o)`.
    pub(crate) fn max(&self, o: &Qty) -> Qty {
        let n = self.0.len().max(o.0.len());
        Qty((0..n).map(|k| self.get(k).max(o.get(k))).collect())
    }

    /// Dominant share: the largest `self[k] / total[k]` over resources the cluster
    /// has (`total[k] > 0`); 0 for an empty bag or an empty cluster.
    #[inline]
    pub(crate) fn dominant_share(&self, total: &Qty) -> f64 {
        let mut share = 0.0f64;
        for (k, &v) in self.0.iter().enumerate() {
            let t = total.get(k);
            if t > 0 && v > 0 {
                share = share.max(v as f64 / t as f64);
            }
        }
        share
    }
}

/// An upper bound per resource name; names with no bound are unlimited. Used for
/// quota limits, the room left under them, and headroom.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Cap(pub(crate) Vec<i64>);

impl Cap {
    pub(crate) const UNLIMITED: i64 = i64::MAX;

    pub(crate) fn unlimited() -> Cap {
        Cap(Vec::new())
    }

    #[inline]
    pub(crate) fn get(&self, k: usize) -> i64 {
        self.0.get(k).copied().unwrap_or(Self::UNLIMITED)
    }

    pub(crate) fn set(&mut self, k: usize, v: i64) {
        if k >= self.0.len() {
            self.0.resize(k + 1, Self::UNLIMITED);
        }
        self.0[k] = v;
    }

    pub(crate) fn is_unlimited(&self) -> bool {
        self.0.iter().all(|&v| v == Self::UNLIMITED)
    }

    /// Tightens `self` to `min(self, o)`.
    pub(crate) fn tighten(&mut self, o: &Cap) {
        if o.0.len() > self.0.len() {
            self.0.resize(o.0.len(), Self::UNLIMITED);
        }
        for (a, &b) in self.0.iter_mut().zip(&o.0) {
            *a = (*a).min(b);
        }
    }

    /// The room left under this cap once `used` is taken: `max(cap - used, 0)`.
    pub(crate) fn room(&self, used: &Qty) -> Cap {
        Cap(self
            .0
            .iter()
            .enumerate()
            .map(|(k, &c)| if c == Self::UNLIMITED { c } else { (c - used.get(k)).max(0) })
            .collect())
    }
}
