//! One classification of Kubernetes API errors, and one way to retry the transient ones.
//!
//! An error either carries the API server's answer, a [`Status`], or says that no answer came (a
//! reset or refused connection, a time-out). The answer is read as Go's apimachinery reads it
//! (`apierrors.IsNotFound` and the like), which is what `kubectl` and upstream kured decide on: by
//! its reason when that is one Kubernetes defines, and by its HTTP code otherwise (a proxy's error
//! page, a body that is not a Status).

use std::future::Future;
use std::time::Duration;

use kube::core::Status;
use kube::core::response::reason;
use kube::runtime::watcher;
use tokio::time::Instant;
use tracing::warn;

/// First pause after a transient failure; it doubles per attempt.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest pause between two attempts: an API server back from an outage is noticed within this.
const RETRY_MAX: Duration = Duration::from_secs(8);

/// What may carry the API server's answer: an error of a request or of a watch (unless no answer
/// came), or the answer itself. The classifications below accept any of them.
pub trait ApiAnswer {
    /// The answer, a [`Status`], if there was one.
    fn status(&self) -> Option<&Status>;
}

impl ApiAnswer for Status {
    fn status(&self) -> Option<&Status> {
        Some(self)
    }
}

impl ApiAnswer for kube::Error {
    fn status(&self) -> Option<&Status> {
        match self {
            kube::Error::Api(status) => Some(status),
            _ => None,
        }
    }
}

/// The answer to a watch's list or watch request, or an error in its stream.
impl ApiAnswer for watcher::Error {
    fn status(&self) -> Option<&Status> {
        match self {
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => e.status(),
            watcher::Error::WatchError(status) => Some(status),
            watcher::Error::NoResourceVersion => None,
        }
    }
}

/// The object does not exist (404 NotFound).
pub fn is_not_found(error: &impl ApiAnswer) -> bool {
    answered(error, reason::NOT_FOUND, 404)
}

/// The write was based on a stale read, or a precondition failed (409 Conflict).
pub fn is_conflict(error: &impl ApiAnswer) -> bool {
    answered(error, reason::CONFLICT, 409)
}

/// A create found the object there already (409 AlreadyExists): another writer created it first.
pub fn is_already_exists(error: &impl ApiAnswer) -> bool {
    answered(error, reason::ALREADY_EXISTS, 409)
}

/// Our credentials may not do this (403 Forbidden, RBAC).
pub fn is_forbidden(error: &impl ApiAnswer) -> bool {
    answered(error, reason::FORBIDDEN, 403)
}

/// The server asks to come back later (429 TooManyRequests). For an eviction: a
/// PodDisruptionBudget says "not yet".
pub fn is_too_many_requests(error: &impl ApiAnswer) -> bool {
    answered(error, reason::TOO_MANY_REQUESTS, 429)
}

/// The write lost a race with another writer: a [conflict](is_conflict), or a JSON Patch `test`
/// that no longer holds. The API server reports a failed test as a bare 422 Invalid, without the
/// field causes that a real validation error (also 422) lists.
pub fn is_lost_race(error: &impl ApiAnswer) -> bool {
    is_conflict(error)
        || (answered(error, reason::INVALID, 422)
            && error
                .status()
                .and_then(|s| s.details.as_ref())
                .is_none_or(|d| d.causes.is_empty()))
}

/// The request itself is refused, and asking again would be refused again: malformed (400), not
/// authenticated (401), forbidden (403), or aimed at nothing (404).
pub fn is_refused(error: &impl ApiAnswer) -> bool {
    error
        .status()
        .is_some_and(|s| matches!(s.code, 400 | 401 | 403 | 404))
}

/// An API error that says nothing about the request itself: the server or the connection failed,
/// or the server asked to come back later (429, 5xx, a reset or refused connection, a time-out).
pub fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => is_too_many_requests(status.as_ref()) || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// A watch failure that retrying will not cure: the request [is refused](is_refused) (no
/// permission to watch, a bad selector), or the answers lack the resource version a watch needs.
pub fn watch_is_permanent(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::NoResourceVersion) || is_refused(error)
}

/// apimachinery's test: the answer has the `reason`, or a reason Kubernetes does not define and
/// the HTTP `code` that goes with `reason`.
fn answered(error: &impl ApiAnswer, reason: &str, code: u16) -> bool {
    error
        .status()
        .is_some_and(|s| s.reason == reason || (!reason::is_known(&s.reason) && s.code == code))
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

    fn answer(value: serde_json::Value) -> Status {
        serde_json::from_value(value).expect("a Status")
    }

    /// Which classifications an answer meets, as letters: Not found, Conflict, Forbidden,
    /// Too many requests, Lost race, Refused.
    fn classes(status: &Status) -> String {
        [
            ('N', is_not_found(status)),
            ('C', is_conflict(status)),
            ('F', is_forbidden(status)),
            ('T', is_too_many_requests(status)),
            ('L', is_lost_race(status)),
            ('R', is_refused(status)),
        ]
        .iter()
        .filter(|(_, yes)| *yes)
        .map(|(letter, _)| *letter)
        .collect()
    }

    #[rustfmt::skip]
    #[test]
    fn answers_are_read_by_their_reason_and_else_by_their_code() {
        let cases: &[(&str, u16, &str, &str)] = &[
            ("not found", 404, "NotFound", "NR"),
            ("conflict", 409, "Conflict", "CL"),
            ("forbidden", 403, "Forbidden", "FR"),
            ("throttled", 429, "TooManyRequests", "T"),
            ("a failed JSON Patch test", 422, "Invalid", "L"),
            ("a bad request", 400, "BadRequest", "R"),
            ("unauthorized", 401, "Unauthorized", "R"),
            ("a proxy's 404 page, which kube turns into a Status", 404, "Failed to parse error data", "NR"),
            ("a 409 whose reason is another one Kubernetes defines", 409, "AlreadyExists", ""),
            ("unavailable", 503, "ServiceUnavailable", ""),
            ("gone (an expired watch)", 410, "Expired", ""),
        ];
        for &(case, code, reason, want) in cases {
            let status = answer(serde_json::json!({ "code": code, "reason": reason }));
            assert_eq!(classes(&status), want, "{case}");
        }
        let validation = answer(serde_json::json!({
            "code": 422, "reason": "Invalid",
            "details": { "causes": [{ "field": "metadata.labels", "reason": "FieldValueInvalid" }] },
        }));
        assert_eq!(classes(&validation), "", "a real validation error is no lost race");
    }

    #[test]
    fn request_and_watch_errors_are_classified_by_their_answer() {
        let forbidden = || api(403);
        assert!(is_forbidden(&forbidden()));
        assert!(is_forbidden(&watcher::Error::InitialListFailed(forbidden())));
        assert!(is_forbidden(&watcher::Error::WatchError(Box::new(answer(
            serde_json::json!({ "code": 403, "reason": "Forbidden" })
        )))));
        let unanswered = kube::Error::LinesCodecMaxLineLengthExceeded;
        assert_eq!(unanswered.status(), None);
        assert!(!is_not_found(&unanswered) && !is_refused(&unanswered));
    }

    #[test]
    fn only_refused_or_unusable_watches_are_permanent() {
        let expired = answer(serde_json::json!({ "code": 410, "reason": "Expired" }));
        let cases = [
            ("no permission", watcher::Error::WatchStartFailed(api(403)), true),
            (
                "no such resource",
                watcher::Error::InitialListFailed(api(404)),
                true,
            ),
            (
                "a bad selector",
                watcher::Error::InitialListFailed(api(400)),
                true,
            ),
            ("no resource version", watcher::Error::NoResourceVersion, true),
            ("expired", watcher::Error::WatchError(Box::new(expired)), false),
            ("unavailable", watcher::Error::WatchFailed(api(503)), false),
            ("throttled", watcher::Error::InitialListFailed(api(429)), false),
        ];
        for (case, error, permanent) in cases {
            assert_eq!(watch_is_permanent(&error), permanent, "{case}");
        }
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
