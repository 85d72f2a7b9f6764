//! Pacing: a token bucket on the aggregate packet rate. Sans-IO (time comes in as nanoseconds).
//!
//! The bucket fills at `rate` tokens per second up to `capacity`; sending a packet takes a
//! token. The capacity bounds how much the sender may catch up after it fell behind (a
//! descheduled thread): with a small capacity a slow generator shows up as an offered rate
//! below the target, which the report flags, instead of as bursts.

/// A token bucket.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    per_ns: f64,
    capacity: f64,
    tokens: f64,
    last_ns: u64,
}

impl TokenBucket {
    /// An empty bucket filling at `rate` per second (positive) up to `capacity` (at least 1)
    /// from `now_ns` on.
    pub fn new(rate: f64, capacity: f64, now_ns: u64) -> Self {
        Self {
            per_ns: rate.max(f64::MIN_POSITIVE) / 1e9,
            capacity: capacity.max(1.0),
            tokens: 0.0,
            last_ns: now_ns,
        }
    }

    fn refill(&mut self, now_ns: u64) {
        if now_ns > self.last_ns {
            let add = (now_ns - self.last_ns) as f64 * self.per_ns;
            self.tokens = (self.tokens + add).min(self.capacity);
            self.last_ns = now_ns;
        }
    }

    /// Whole tokens available at `now_ns`.
    pub fn available(&mut self, now_ns: u64) -> u64 {
        self.refill(now_ns);
        self.tokens as u64
    }

    /// Takes `n` tokens (after [`TokenBucket::available`] said they are there).
    pub fn take(&mut self, n: u64) {
        self.tokens = (self.tokens - n as f64).max(0.0);
    }

    /// Nanoseconds from `now_ns` until `n` tokens are available (0: now). `n` above the
    /// capacity is treated as the capacity.
    pub fn wait_ns(&mut self, n: u64, now_ns: u64) -> u64 {
        self.refill(now_ns);
        let want = (n as f64).min(self.capacity);
        if self.tokens >= want {
            0
        } else {
            ((want - self.tokens) / self.per_ns).ceil() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn fills_at_the_rate() {
        let mut b = TokenBucket::new(10_000.0, 1_000.0, 0);
        assert_eq!(b.available(0), 0);
        assert_eq!(b.available(MS), 10);
        b.take(10);
        assert_eq!(b.available(MS), 0);
        assert_eq!(b.available(11 * MS / 2), 45);
    }

    #[test]
    fn capacity_bounds_catch_up() {
        let mut b = TokenBucket::new(10_000.0, 32.0, 0);
        assert_eq!(b.available(1_000 * MS), 32);
        b.take(40);
        assert_eq!(b.available(1_000 * MS), 0, "never negative");
    }

    #[test]
    fn wait_until_enough() {
        let mut b = TokenBucket::new(1_000.0, 100.0, 0);
        assert_eq!(b.wait_ns(1, 0), MS);
        assert_eq!(b.wait_ns(5, 0), 5 * MS);
        assert_eq!(b.wait_ns(5, 5 * MS), 0);
        assert_eq!(b.wait_ns(1_000, 5 * MS), 95 * MS, "capped at the capacity");
        // Time never runs backwards for the bucket.
        assert_eq!(b.available(MS), 5);
    }

    #[test]
    fn long_run_rate_is_exact() {
        // 200k pps in 1 µs steps for 1 s: exactly 200k tokens.
        let mut b = TokenBucket::new(200_000.0, 64.0, 0);
        let mut taken = 0;
        for t in (1_000..=1_000_000_000).step_by(1_000) {
            let n = b.available(t);
            b.take(n);
            taken += n;
        }
        assert!((199_999..=200_000).contains(&taken), "{taken}");
    }
}
