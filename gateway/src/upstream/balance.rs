//! Balancing policies as pure functions over a slice of endpoints.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Round-robin over the items for which `ok` holds; `None` if none does.
pub fn round_robin<T>(items: &[T], next: &AtomicUsize, ok: impl Fn(&T) -> bool) -> Option<usize> {
    let n = items.len();
    if n == 0 {
        return None;
    }
    let start = next.fetch_add(1, Ordering::Relaxed);
    (0..n)
        .map(|i| (start.wrapping_add(i)) % n)
        .find(|&i| items.get(i).is_some_and(&ok))
}

/// Power of two choices: two distinct random candidates among the items for
/// which `ok` holds, the one with the lower `load` wins.
pub fn p2c<T>(
    items: &[T],
    ok: impl Fn(&T) -> bool,
    load: impl Fn(&T) -> usize,
    mut rand: impl FnMut(std::ops::Range<usize>) -> usize,
) -> Option<usize> {
    let healthy = items.iter().filter(|e| ok(e)).count();
    let nth = |k: usize| {
        items
            .iter()
            .enumerate()
            .filter(|(_, e)| ok(e))
            .nth(k)
            .map(|(i, _)| i)
    };
    match healthy {
        0 => None,
        1 => nth(0),
        _ => {
            let a = rand(0..healthy);
            let mut b = rand(0..healthy - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a)?, nth(b)?);
            let (la, lb) = (load(items.get(a)?), load(items.get(b)?));
            Some(if lb < la { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_and_skips_unhealthy() {
        let items = [true, false, true, true];
        let next = AtomicUsize::new(0);
        let picks: Vec<_> = (0..6)
            .map(|_| round_robin(&items, &next, |h| *h).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 2, 3, 0, 2]);
        assert_eq!(round_robin(&[false, false], &next, |h| *h), None);
        assert_eq!(round_robin::<bool>(&[], &next, |h| *h), None);
    }

    #[test]
    fn p2c_prefers_the_less_loaded_of_two_and_never_unhealthy() {
        // (healthy, load)
        let items = [(true, 5), (false, 0), (true, 1), (true, 9)];
        for seed in 0..200u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let pick = p2c(&items, |e| e.0, |e| e.1, |r| rng.usize(r)).unwrap();
            assert_ne!(pick, 1, "unhealthy endpoint picked");
            // The most loaded endpoint can never win against another.
            assert_ne!(pick, 3);
        }
        assert_eq!(p2c(&[(false, 0)], |e| e.0, |e| e.1, fastrand::usize), None);
        assert_eq!(
            p2c(&[(false, 0), (true, 3)], |e| e.0, |e| e.1, fastrand::usize),
            Some(1)
        );
    }

    #[test]
    fn p2c_spreads_evenly_under_equal_load() {
        let items = [0usize; 4];
        let mut counts = [0usize; 4];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..4000 {
            counts[p2c(&items, |_| true, |e| *e, |r| rng.usize(r)).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
