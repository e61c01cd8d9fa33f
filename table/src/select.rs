//! Weighted backend selection: smooth weighted round robin (the nginx algorithm).
//!
//! Deterministic: over any `sum(weights)` consecutive picks each backend is chosen exactly
//! `weight` times, interleaved rather than in bursts. Weight 0 is never chosen. The state is a
//! slice of per-core counters (no atomics, no locks), one per backend, which each core keeps
//! for the table it serves.

use crate::format::ArchivedWeightedBackend;

/// Picks the index of the next backend, or `None` when every weight is 0 (or there are none).
/// `state` holds one counter per backend; backends without a counter are never chosen.
pub fn pick_weighted(backends: &[ArchivedWeightedBackend], state: &mut [i64]) -> Option<usize> {
    pick(backends.iter().map(|b| b.weight.to_native()), state)
}

/// [`pick_weighted`] over plain weights.
pub fn pick(weights: impl Iterator<Item = u32>, state: &mut [i64]) -> Option<usize> {
    let mut total: i64 = 0;
    let mut best: Option<(usize, i64)> = None;
    for (i, (weight, current)) in weights.zip(state.iter_mut()).enumerate() {
        if weight == 0 {
            continue;
        }
        *current += i64::from(weight);
        total += i64::from(weight);
        if best.is_none_or(|(_, value)| *current > value) {
            best = Some((i, *current));
        }
    }
    let (index, _) = best?;
    if let Some(current) = state.get_mut(index) {
        *current -= total;
    }
    Some(index)
}

#[cfg(test)]
mod tests {
    use super::pick;

    fn counts(weights: &[u32], rounds: usize) -> Vec<usize> {
        let mut state = vec![0; weights.len()];
        let mut counts = vec![0; weights.len()];
        for _ in 0..rounds {
            if let Some(i) = pick(weights.iter().copied(), &mut state) {
                counts[i] += 1;
            }
        }
        counts
    }

    #[test]
    fn exact_shares_over_a_full_cycle() {
        assert_eq!(counts(&[80, 20], 100), vec![80, 20]);
        assert_eq!(counts(&[1, 2, 3], 600), vec![100, 200, 300]);
    }

    #[test]
    fn zero_weight_gets_nothing() {
        assert_eq!(counts(&[0, 5, 0], 50), vec![0, 50, 0]);
        assert_eq!(counts(&[0, 0], 10), vec![0, 0]);
    }

    #[test]
    fn picks_are_interleaved_not_bursty() {
        let mut state = vec![0; 2];
        let seq: Vec<_> = (0..4).filter_map(|_| pick([1u32, 1].into_iter(), &mut state)).collect();
        assert_eq!(seq, vec![0, 1, 0, 1]);
        let mut state = vec![0; 3];
        let seq: Vec<_> =
            (0..7).filter_map(|_| pick([5u32, 1, 1].into_iter(), &mut state)).collect();
        // nginx's documented sequence for weights 5,1,1.
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }
}
