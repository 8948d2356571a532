//! The agent's link to the master. For now: [`Backoff`], the one retry
//! schedule of every loop that waits for the master.

use std::time::Duration;

/// Capped exponential backoff: waits `first`, then twice as long each time,
/// at most `max`; [`Backoff::reset`] starts over. Pitfall: the first wait is
/// `first` even when `max` is shorter.
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, next: first, max }
    }

    /// The next wait, doubling the one after it.
    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.step()).await;
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(b: &mut Backoff, n: usize) -> Vec<u64> {
        (0..n).map(|_| b.step().as_millis() as u64).collect()
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_starts_over_on_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        // 100, 200, 400, 800, then 1600 capped to 1000
        assert_eq!(steps(&mut b, 6), [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(steps(&mut b, 2), [100, 200]);
    }

    #[test]
    fn backoff_waits_first_once_even_above_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(30));
        assert_eq!(steps(&mut b, 3), [100, 30, 30]);
    }
}
