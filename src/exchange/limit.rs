//! A token bucket per actor: `per_second` exchanges sustained, `burst` at once.
//!
//! Buckets live in a bounded cache and are dropped once idle long enough to have refilled,
//! so dropping one changes no answer, and a flood of actor ids cannot grow memory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::RateLimitConfig;

/// Most actors tracked at once; beyond it the least recently seen bucket goes (a full one,
/// unless more than this many actors are all busy within one refill time).
const MAX_ACTORS: u64 = 100_000;

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: moka::sync::Cache<String, Arc<Mutex<Bucket>>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `None` when the limit is off (`per_second: 0`).
    pub fn new(config: &RateLimitConfig) -> Option<RateLimiter> {
        if config.per_second <= 0.0 {
            return None;
        }
        let burst = f64::from(config.burst.max(1));
        let refill = Duration::from_secs_f64(burst / config.per_second);
        Some(RateLimiter {
            per_second: config.per_second,
            burst,
            buckets: moka::sync::Cache::builder()
                .max_capacity(MAX_ACTORS)
                .time_to_idle(refill + Duration::from_secs(1))
                .build(),
        })
    }

    /// Takes one exchange from `actor`'s bucket, or says how long until one is there.
    pub fn take(&self, actor: &str) -> Result<(), Duration> {
        self.take_at(actor, Instant::now())
    }

    fn take_at(&self, actor: &str, now: Instant) -> Result<(), Duration> {
        let bucket = self.buckets.get_with_by_ref(actor, || {
            Arc::new(Mutex::new(Bucket {
                tokens: self.burst,
                at: now,
            }))
        });
        let mut b = bucket.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig { per_second, burst }).expect("on")
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let l = limiter(2.0, 3);
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.take_at("agent", t), Ok(()));
        }
        let wait = l.take_at("agent", t).expect_err("over the burst");
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Another actor has its own bucket.
        assert_eq!(l.take_at("other", t), Ok(()));
        // Half a second later one more exchange is there, and only one.
        let later = t + Duration::from_millis(500);
        assert_eq!(l.take_at("agent", later), Ok(()));
        assert!(l.take_at("agent", later).is_err());
    }

    #[test]
    fn zero_per_second_is_no_limit() {
        assert!(
            RateLimiter::new(&RateLimitConfig {
                per_second: 0.0,
                burst: 0
            })
            .is_none()
        );
    }
}
