//! One classification of Kubernetes API errors, and one way to retry the transient ones.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

/// First pause after a transient failure; it doubles per attempt.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest pause between two attempts: an API server back from an outage is noticed within this.
const RETRY_MAX: Duration = Duration::from_secs(8);

/// An API error that says nothing about the request itself: the server or the connection failed,
/// or the server asked to come back later (429, 5xx, a reset or refused connection, a time-out).
pub fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// The pause before attempt `attempt + 1` (attempts count from 1).
pub fn retry_pause(attempt: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

/// Runs `op` until it succeeds, fails with an error that `transient` does not accept, or
/// `deadline` passes (the last error is returned then). Each transient failure is logged with
/// `what` and retried after a growing pause.
pub async fn retry_transient<T, E, F, Fut>(
    what: &str,
    deadline: Instant,
    transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    E: std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) if transient(&e) && Instant::now() + retry_pause(attempt) < deadline => {
                let pause = retry_pause(attempt);
                warn!(error = %crate::error_chain(&e), attempt, retry_in = ?pause, "{what}: transient API error; retrying");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("test", "Test")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn transient_errors_are_server_side_or_throttling() {
        for code in [429, 500, 502, 503, 504] {
            assert!(is_transient(&api(code)), "{code}");
        }
        for code in [400, 403, 404, 409, 422] {
            assert!(!is_transient(&api(code)), "{code}");
        }
    }

    #[test]
    fn pauses_double_up_to_their_ceiling() {
        let pauses: Vec<_> = (1..=7).map(retry_pause).collect();
        let ms: Vec<u128> = pauses.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(retry_pause(u32::MAX), RETRY_MAX);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("failure {0}")]
    struct Failure(bool);

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_success() {
        let mut calls = 0;
        let result = retry_transient(
            "testing",
            Instant::now() + Duration::from_secs(60),
            |e: &Failure| e.0,
            || {
                calls += 1;
                let n = calls;
                async move { if n < 4 { Err(Failure(true)) } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(result.expect("success on the fourth call"), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_and_the_deadline_end_the_retries() {
        let mut calls = 0;
        let permanent = retry_transient(
            "testing",
            Instant::now() + Duration::from_secs(60),
            |e: &Failure| e.0,
            || {
                calls += 1;
                async { Err::<(), _>(Failure(false)) }
            },
        )
        .await;
        assert!(permanent.is_err());
        assert_eq!(calls, 1, "a permanent error is not retried");

        let start = Instant::now();
        let mut calls = 0;
        let late = retry_transient(
            "testing",
            start + Duration::from_secs(5),
            |e: &Failure| e.0,
            || {
                calls += 1;
                async { Err::<(), _>(Failure(true)) }
            },
        )
        .await;
        assert!(late.is_err());
        // Attempts at 0, 0.5, 1.5 and 3.5 s; the next pause (8 s) would pass the deadline.
        assert_eq!(calls, 4);
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
