//! Polling instead of sleeping.
//!
//! Tests never `sleep(5s)` and hope: they state the condition and poll it with [`eventually`], which
//! retries with a short backoff (10 ms doubling to 250 ms) and, on timeout, returns the *last* error
//! with the elapsed time and attempt count, so a failure shows what was still wrong.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

const FIRST_DELAY: Duration = Duration::from_millis(10);
const MAX_DELAY: Duration = Duration::from_millis(250);

/// Call `f` until it returns `Ok`, for at most `timeout`; returns that value, or the last error.
/// `f` is always called at least once, and once more right at the deadline.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut delay = FIRST_DELAY;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let err = match f() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(err.context(format!(
                "still failing after {:.1?} ({attempts} attempts)",
                now - start
            )));
        }
        std::thread::sleep(delay.min(deadline - now));
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// [`eventually`] for a boolean condition; `what` describes it in the error.
pub fn until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    eventually(timeout, || {
        if f() {
            Ok(())
        } else {
            Err(anyhow!("condition not met: {what}"))
        }
    })
}

/// Assert that `f` keeps returning `Ok` for the whole of `period` (polled like [`eventually`]); fails
/// with the first error. For "the session stays up" / "the route is not withdrawn" checks.
pub fn consistently<T>(period: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let mut delay = FIRST_DELAY;
    loop {
        let v = match f() {
            Ok(v) => v,
            Err(e) => bail!("failed after {:.1?}: {e:#}", start.elapsed()),
        };
        let elapsed = start.elapsed();
        if elapsed >= period {
            return Ok(v);
        }
        std::thread::sleep(delay.min(period - elapsed));
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// Async [`eventually`] for tests that run inside a tokio runtime (e.g. via `Netns::block_on`).
pub async fn eventually_async<T, F, Fut>(timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut delay = FIRST_DELAY;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let err = match f().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(err.context(format!(
                "still failing after {:.1?} ({attempts} attempts)",
                now - start
            )));
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_first_ok() {
        let mut n = 0;
        let v = eventually(Duration::from_secs(2), || {
            n += 1;
            if n < 3 {
                bail!("n={n}")
            } else {
                Ok(n)
            }
        })
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn times_out_with_last_error() {
        let mut n = 0;
        let e = eventually(Duration::from_millis(100), || -> Result<()> {
            n += 1;
            bail!("attempt {n}")
        })
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains(&format!("attempt {n}")), "{msg}");
        assert!(msg.contains("still failing"), "{msg}");
    }

    #[test]
    fn consistently_fails_fast() {
        let mut n = 0;
        let e = consistently(Duration::from_secs(5), || -> Result<()> {
            n += 1;
            if n > 2 {
                bail!("broke")
            }
            Ok(())
        })
        .unwrap_err();
        assert!(format!("{e}").contains("broke"));
    }
}
