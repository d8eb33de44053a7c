//! Waiting, bounded, for what the cluster or a process does next; on time-out, the test fails
//! naming what it waited for.

use std::future::Future;
use std::time::Duration;

/// Awaits `fut` for at most `limit`; panics naming `what` if it takes longer or fails.
pub async fn wait_for<T, E: std::fmt::Display>(
    what: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("waiting for {what}: {e}"),
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `check` every 200ms until it returns `Some`, for at most `limit`; panics naming `what`.
/// For conditions that span several objects, where a single-object watch does not fit.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_or(limit, check, || {
        format!("timed out after {limit:?} waiting for {what}")
    })
    .await
}

/// [`eventually`], failing with the message `failure` gives at the time-out: for a report of
/// what was seen meanwhile.
pub async fn eventually_or<T, F, Fut>(limit: Duration, mut check: F, failure: impl FnOnce() -> String) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{}", failure());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
