//! The Prometheus blocker: active alerts block reboots.
//!
//! As upstream kured, it evaluates the instant query `ALERTS` through the HTTP API
//! (`<prometheus-url>/api/v1/query`, the URL's path kept as a prefix, so a Prometheus served
//! under `/prometheus` works) and takes the `alertname` of every sample whose value is not 0.
//! Then, exactly as upstream:
//! - without `--alert-filter-regexp` every alert counts;
//! - with it, alerts whose name the regexp matches (anywhere in the name, unanchored) are ignored;
//!   `--alert-filter-match-only` inverts that: only matching alerts count;
//! - with `--alert-firing-only`, only samples with `alertstate="firing"` count; pending alerts
//!   (those still waiting out their rule's `for:`) are ignored;
//! - the names are de-duplicated (one alert name often fires for many label sets) and sorted.
//!
//! Any failure — no connection, a time-out, a status other than 2xx, a body that is not a
//! Prometheus answer, `"status": "error"` — blocks, with a reason that names the URL (without
//! its user and password) and the cause.
//!
//! TLS uses rustls with the ring provider and the CA certificates of the system's PEM bundle, so
//! it works in a minimal image that ships one. User and password in the URL are sent as HTTP
//! basic authentication, as Go's HTTP client (and so upstream) does.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use tracing::debug;
use url::Url;

use super::{BlockKind, BlockReason, Blocker, name_list};
use crate::http::{self, HttpError};

/// How long one query may take, connection included. Prometheus answers `ALERTS` from memory in
/// milliseconds; a server that has not answered in 10 s is down for our purpose, and the next
/// check retries.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Alert names listed in a reason; upstream logs the first 10 too. More would drown the log line
/// and `kured status`; the reason still gives the total.
const MAX_NAMES: usize = 10;

/// The largest answer read. `ALERTS` takes about 300 bytes per active alert, so 8 MiB holds
/// tens of thousands of them; a larger body is not an answer to this query, and reading it whole
/// would take the agent's memory from a couple of MiB to whatever the server sends.
pub const MAX_ANSWER_BYTES: usize = 8 << 20;

/// Bytes of an unexpected response body quoted in an error: enough to recognise an HTML error
/// page or a proxy's message, short enough for one log line.
const BODY_EXCERPT: usize = 200;

pub use crate::http::CA_BUNDLES;

/// Which alerts block a reboot: `--alert-filter-regexp`, `--alert-filter-match-only`,
/// `--alert-firing-only`.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub regexp: Option<Regex>,
    pub match_only: bool,
    pub firing_only: bool,
}

/// The query upstream kured evaluates: Prometheus' synthetic series of pending and firing alerts.
const QUERY: &str = "ALERTS";

#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("cannot set up the HTTP client for Prometheus")]
    Client(#[from] HttpError),
    #[error("cannot send the query")]
    Send(#[source] reqwest::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot read the response")]
    Read(#[source] reqwest::Error),
    #[error("the answer is larger than {} MiB, more than an ALERTS query returns; not read further", .limit >> 20)]
    TooLarge { limit: usize },
    #[error("HTTP status {status}, and the body is not a Prometheus error: {excerpt:?}")]
    Status {
        status: reqwest::StatusCode,
        excerpt: String,
    },
    #[error("the query failed (HTTP status {status}): {error_type}: {error}")]
    Query {
        status: reqwest::StatusCode,
        error_type: String,
        error: String,
    },
    #[error("the response is not a Prometheus API answer: {excerpt:?}")]
    Decode {
        excerpt: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the answer has status success but no data")]
    NoData,
    #[error("the query result is a {0}, not a vector")]
    ResultType(String),
    #[error("sample value {0:?} is not a number")]
    Value(String),
}

/// One sample of the `ALERTS` series.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// The `alertname` label.
    pub name: String,
    /// The `alertstate` label: `firing` or `pending` (empty if absent).
    pub state: String,
    /// The sample value; Prometheus writes 1 for every active alert.
    pub value: f64,
}

impl Alert {
    pub fn firing(&self) -> bool {
        self.state == "firing"
    }
}

/// The names of the alerts that block a reboot under `filter`: upstream's rules, in the module
/// documentation. Sorted, without duplicates.
pub fn blocking_alerts(alerts: &[Alert], filter: &AlertFilter) -> Vec<String> {
    let names: BTreeSet<&str> = alerts
        .iter()
        .filter(|a| a.value != 0.0)
        .filter(|a| match &filter.regexp {
            None => true,
            Some(re) => re.is_match(&a.name) == filter.match_only,
        })
        .filter(|a| !filter.firing_only || a.firing())
        .map(|a| a.name.as_str())
        .collect();
    names.into_iter().map(str::to_owned).collect()
}

/// The alerts in the body of a successful (2xx) `ALERTS` query response. Samples without an
/// `alertname` label are not alerts and are left out.
pub fn parse_alerts(body: &[u8]) -> Result<Vec<Alert>, PrometheusError> {
    let response = decode(body)?;
    if response.status != "success" {
        return Err(PrometheusError::Query {
            status: reqwest::StatusCode::OK,
            error_type: response.error_type.unwrap_or(response.status),
            error: response.error.unwrap_or_default(),
        });
    }
    let data = response.data.ok_or(PrometheusError::NoData)?;
    if data.result_type != "vector" {
        return Err(PrometheusError::ResultType(data.result_type));
    }
    let samples: Vec<Sample> =
        serde_json::from_value(data.result).map_err(|source| PrometheusError::Decode {
            excerpt: excerpt(body),
            source,
        })?;
    samples
        .into_iter()
        .filter_map(|mut s| {
            let name = s.metric.remove("alertname")?;
            Some(parse_value(&s.value.1).map(|value| Alert {
                name,
                state: s.metric.remove("alertstate").unwrap_or_default(),
                value,
            }))
        })
        .collect()
}

/// Prometheus writes sample values as strings: numbers, `NaN`, `+Inf`, `-Inf`.
fn parse_value(text: &str) -> Result<f64, PrometheusError> {
    text.parse::<f64>()
        .map_err(|_| PrometheusError::Value(text.to_owned()))
}

#[derive(Debug, Deserialize)]
struct ApiResponse {
    status: String,
    data: Option<ApiData>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ApiData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct Sample {
    metric: std::collections::HashMap<String, String>,
    /// `[<unix time>, "<value>"]`
    value: (serde_json::Value, String),
}

fn decode(body: &[u8]) -> Result<ApiResponse, PrometheusError> {
    serde_json::from_slice(body).map_err(|source| PrometheusError::Decode {
        excerpt: excerpt(body),
        source,
    })
}

/// The start of a body, on one line, for an error message.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(BODY_EXCERPT)]);
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if body.len() > BODY_EXCERPT {
        format!("{line}…")
    } else {
        line
    }
}

/// Asks Prometheus for active alerts; blocks while any passes the alert filter.
#[derive(Clone)]
pub struct PrometheusBlocker {
    /// The query endpoint, with any user and password of the configured URL.
    endpoint: Url,
    /// The configured URL without user, password, query or fragment: safe to log and publish.
    shown: String,
    filter: AlertFilter,
    client: reqwest::Client,
    timeout: Duration,
}

impl fmt::Debug for PrometheusBlocker {
    /// Without the endpoint, whose URL may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusBlocker")
            .field("url", &self.shown)
            .field("filter", &self.filter)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PrometheusBlocker {
    /// A blocker for the Prometheus server at `url` (its path is kept as a prefix). Fails only if
    /// the HTTP client cannot be set up: for an `https` URL, when no CA bundle can be read. The
    /// bundle is read once, here: a changed bundle takes effect when the agent restarts.
    pub fn new(url: Url, filter: AlertFilter) -> Result<PrometheusBlocker, PrometheusError> {
        let roots = http::root_store(url.scheme() == "https", &[])?;
        let client = http::client(roots)?;
        Ok(PrometheusBlocker {
            endpoint: query_endpoint(&url),
            shown: shown_url(&url),
            filter,
            client,
            timeout: QUERY_TIMEOUT,
        })
    }

    /// The same blocker with another query time-out than [`QUERY_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> PrometheusBlocker {
        self.timeout = timeout;
        self
    }

    /// The server's URL as reasons and logs show it: without user, password or query.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// One line for the agent's start-up log.
    pub fn describe(&self) -> String {
        let mut line = format!("Prometheus alerts at {}", self.shown);
        if let Some(re) = &self.filter.regexp {
            let verb = if self.filter.match_only {
                "matching"
            } else {
                "not matching"
            };
            line.push_str(&format!(", {verb} {:?}", re.as_str()));
        }
        if self.filter.firing_only {
            line.push_str(", firing only");
        }
        line
    }

    /// All active alerts Prometheus reports, before filtering.
    pub async fn query(&self) -> Result<Vec<Alert>, PrometheusError> {
        let exchange = async {
            let response = self
                .client
                .get(self.endpoint.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| PrometheusError::Send(e.without_url()))?;
            let status = response.status();
            let body = read_bounded(response, MAX_ANSWER_BYTES).await?;
            Ok::<_, PrometheusError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| PrometheusError::Timeout(self.timeout))??;
        if status.is_success() {
            return parse_alerts(&body);
        }
        // Prometheus answers bad queries, time-outs and unavailability (400, 422, 503) with its
        // JSON error object; anything else (404 from a wrong path, a proxy's 502) is not from it.
        match decode(&body) {
            Ok(ApiResponse {
                error_type: Some(error_type),
                error,
                ..
            }) => Err(PrometheusError::Query {
                status,
                error_type,
                error: error.unwrap_or_default(),
            }),
            _ => Err(PrometheusError::Status {
                status,
                excerpt: excerpt(&body),
            }),
        }
    }

    /// The names of the alerts that block a reboot: [`PrometheusBlocker::query`], then
    /// [`blocking_alerts`].
    pub async fn active_alerts(&self) -> Result<Vec<String>, PrometheusError> {
        let alerts = self.query().await?;
        let names = blocking_alerts(&alerts, &self.filter);
        debug!(url = %self.shown, alerts = alerts.len(), blocking = names.len(), "Prometheus alerts queried");
        Ok(names)
    }
}

impl Blocker for PrometheusBlocker {
    async fn check(&self) -> Vec<BlockReason> {
        match self.active_alerts().await {
            Ok(names) if names.is_empty() => Vec::new(),
            Ok(names) => {
                let message = format!(
                    "{} active alert{} in Prometheus at {}: {}",
                    names.len(),
                    if names.len() == 1 { "" } else { "s" },
                    self.shown,
                    name_list(&names, MAX_NAMES)
                );
                vec![BlockReason::new(BlockKind::PrometheusAlerts, message)]
            }
            Err(e) => {
                let cause = crate::error_chain(&e);
                debug!(url = %self.shown, error = %cause, "cannot query Prometheus");
                vec![BlockReason::new(
                    BlockKind::PrometheusError,
                    format!("cannot query Prometheus at {}: {cause}", self.shown),
                )]
            }
        }
    }
}

/// The body of `response`, or [`PrometheusError::TooLarge`] as soon as it is known to exceed
/// `limit` bytes: from its Content-Length before reading, else while reading.
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, PrometheusError> {
    let too_large = PrometheusError::TooLarge { limit };
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(too_large);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| PrometheusError::Read(e.without_url()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `<url>/api/v1/query?query=ALERTS`, keeping the URL's path as a prefix and its query pairs.
fn query_endpoint(url: &Url) -> Url {
    let mut endpoint = url.clone();
    let path = format!("{}/api/v1/query", url.path().trim_end_matches('/'));
    endpoint.set_path(&path);
    endpoint.set_fragment(None);
    endpoint.query_pairs_mut().append_pair("query", QUERY);
    endpoint
}

/// The URL without user, password, query and fragment, which may carry credentials.
fn shown_url(url: &Url) -> String {
    let mut shown = url.clone();
    // Both fail only for URLs that cannot have a user (no host), which then have none to hide.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str, state: &str) -> Alert {
        Alert {
            name: name.to_owned(),
            state: state.to_owned(),
            value: 1.0,
        }
    }

    fn filter(regexp: Option<&str>, match_only: bool, firing_only: bool) -> AlertFilter {
        AlertFilter {
            regexp: regexp.map(|r| Regex::new(r).expect("a valid regexp")),
            match_only,
            firing_only,
        }
    }

    /// Two firing alerts (one of them twice, with other labels), two pending ones.
    fn fixed_alerts() -> Vec<Alert> {
        vec![
            alert("RebootRequired", "firing"),
            alert("NodeDiskFull", "firing"),
            alert("NodeDiskFull", "firing"),
            alert("LongPending", "pending"),
            alert("RebootPending", "pending"),
        ]
    }

    /// (case, regexp, match-only, firing-only, blocking alerts)
    type FilterCase<'a> = (&'a str, Option<&'a str>, bool, bool, &'a [&'a str]);

    #[test]
    fn alert_filter_rules() {
        let cases: &[FilterCase] = &[
            (
                "no filter: every active alert, pending too, de-duplicated and sorted",
                None,
                false,
                false,
                &["LongPending", "NodeDiskFull", "RebootPending", "RebootRequired"],
            ),
            (
                "firing only drops pending alerts",
                None,
                false,
                true,
                &["NodeDiskFull", "RebootRequired"],
            ),
            (
                "match-only without a regexp changes nothing",
                None,
                true,
                false,
                &["LongPending", "NodeDiskFull", "RebootPending", "RebootRequired"],
            ),
            (
                "match-only without a regexp, firing only",
                None,
                true,
                true,
                &["NodeDiskFull", "RebootRequired"],
            ),
            (
                "a regexp ignores the alerts it matches",
                Some("^RebootRequired$"),
                false,
                false,
                &["LongPending", "NodeDiskFull", "RebootPending"],
            ),
            (
                "a regexp and firing only",
                Some("^RebootRequired$"),
                false,
                true,
                &["NodeDiskFull"],
            ),
            (
                "match-only keeps only the alerts the regexp matches",
                Some("^RebootRequired$"),
                true,
                false,
                &["RebootRequired"],
            ),
            (
                "match-only and firing only",
                Some("^RebootRequired$"),
                true,
                true,
                &["RebootRequired"],
            ),
            (
                "the regexp is unanchored: it matches anywhere in the name",
                Some("Reboot"),
                false,
                false,
                &["LongPending", "NodeDiskFull"],
            ),
            (
                "unanchored, match-only: pending matches count",
                Some("Reboot"),
                true,
                false,
                &["RebootPending", "RebootRequired"],
            ),
            (
                "unanchored, match-only, firing only",
                Some("Reboot"),
                true,
                true,
                &["RebootRequired"],
            ),
            (
                "a regexp that matches nothing ignores nothing",
                Some("^Nothing$"),
                false,
                false,
                &["LongPending", "NodeDiskFull", "RebootPending", "RebootRequired"],
            ),
            (
                "match-only with a regexp that matches nothing: nothing blocks",
                Some("^Nothing$"),
                true,
                false,
                &[],
            ),
            (
                "a regexp that matches everything ignores everything",
                Some(""),
                false,
                false,
                &[],
            ),
            (
                "match-only with a regexp that matches everything keeps everything",
                Some(""),
                true,
                true,
                &["NodeDiskFull", "RebootRequired"],
            ),
        ];
        let alerts = fixed_alerts();
        for (case, regexp, match_only, firing_only, want) in cases {
            let got = blocking_alerts(&alerts, &filter(*regexp, *match_only, *firing_only));
            assert_eq!(got, *want, "{case}");
        }
    }

    #[test]
    fn zero_valued_samples_are_not_active() {
        let mut quiet = alert("Quiet", "firing");
        quiet.value = 0.0;
        let mut nan = alert("NotANumber", "firing");
        nan.value = f64::NAN;
        let got = blocking_alerts(&[quiet, nan], &filter(None, false, false));
        assert_eq!(
            got,
            ["NotANumber"],
            "upstream counts any value != 0, NaN included"
        );
    }

    /// Upstream's response fixture: four firing alerts and one pending.
    const UPSTREAM_BODY: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"ALERTS","alertname":"GatekeeperViolations","alertstate":"firing","severity":"warning","team":"platform-infra"},"value":[1622472933.973,"1"]},{"metric":{"__name__":"ALERTS","alertname":"PodCrashing-dev","alertstate":"firing","container":"deployment","instance":"1.2.3.4:8080","job":"kube-state-metrics","namespace":"dev","pod":"dev-deployment-78dcbmf25v","severity":"critical","team":"dev"},"value":[1622472933.973,"1"]},{"metric":{"__name__":"ALERTS","alertname":"PodRestart-dev","alertstate":"firing","container":"deployment","instance":"1.2.3.4:1234","job":"kube-state-metrics","namespace":"qa","pod":"qa-job-deployment-78dcbmf25v","severity":"warning","team":"qa"},"value":[1622472933.973,"1"]},{"metric":{"__name__":"ALERTS","alertname":"PrometheusTargetDown","alertstate":"firing","job":"kubernetes-pods","severity":"warning","team":"platform-infra"},"value":[1622472933.973,"1"]},{"metric":{"__name__":"ALERTS","alertname":"ScheduledRebootFailing","alertstate":"pending","severity":"warning","team":"platform-infra"},"value":[1622472933.973,"1"]}]}}"#;

    const PENDING_REBOOT_REQUIRED: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"ALERTS","alertname":"RebootRequired","alertstate":"pending","severity":"warning","team":"platform-infra"},"value":[1622472933.973,"1"]}]}}"#;

    #[test]
    fn upstream_cases() {
        // Upstream's "*" is not a valid regexp; its test then runs without a filter, as we do
        // (our configuration rejects an invalid regexp at start-up instead).
        // (response body, case)
        let cases: &[(&str, FilterCase)] = &[
            (
                UPSTREAM_BODY,
                (
                    "an empty regexp matches every name: no active alerts",
                    Some(""),
                    false,
                    false,
                    &[],
                ),
            ),
            (
                UPSTREAM_BODY,
                (
                    "a subset of all alerts",
                    Some("Pod"),
                    false,
                    false,
                    &[
                        "GatekeeperViolations",
                        "PrometheusTargetDown",
                        "ScheduledRebootFailing",
                    ],
                ),
            ),
            (
                UPSTREAM_BODY,
                (
                    "match-only: a subset of all alerts",
                    Some("Gatekeeper"),
                    true,
                    false,
                    &["GatekeeperViolations"],
                ),
            ),
            (
                UPSTREAM_BODY,
                (
                    "all active alerts",
                    None,
                    false,
                    false,
                    &[
                        "GatekeeperViolations",
                        "PodCrashing-dev",
                        "PodRestart-dev",
                        "PrometheusTargetDown",
                        "ScheduledRebootFailing",
                    ],
                ),
            ),
            (
                UPSTREAM_BODY,
                (
                    "only firing alerts if firing-only",
                    None,
                    false,
                    true,
                    &[
                        "GatekeeperViolations",
                        "PodCrashing-dev",
                        "PodRestart-dev",
                        "PrometheusTargetDown",
                    ],
                ),
            ),
            (
                PENDING_REBOOT_REQUIRED,
                (
                    "a pending RebootRequired, filtered out",
                    Some("RebootRequired"),
                    false,
                    false,
                    &[],
                ),
            ),
            (
                PENDING_REBOOT_REQUIRED,
                (
                    "a pending RebootRequired, match-only",
                    Some("RebootRequired"),
                    true,
                    false,
                    &["RebootRequired"],
                ),
            ),
        ];
        for (body, (case, regexp, match_only, firing_only, want)) in cases {
            let alerts = parse_alerts(body.as_bytes()).expect("upstream's fixture parses");
            let got = blocking_alerts(&alerts, &filter(*regexp, *match_only, *firing_only));
            assert_eq!(got, *want, "{case}");
        }
    }

    #[test]
    fn parses_a_real_prometheus_answer() {
        // Prometheus 2.42 answering `ALERTS` with one firing and one pending rule.
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"ALERTS","alertname":"LongPending","alertstate":"pending"},"value":[1795772166.860,"1"]},{"metric":{"__name__":"ALERTS","alertname":"RebootRequired","alertstate":"firing"},"value":[1795772166.860,"1"]}]}}"#;
        let alerts = parse_alerts(body).expect("parses");
        assert_eq!(
            alerts,
            [alert("LongPending", "pending"), alert("RebootRequired", "firing")]
        );
        assert!(!alerts[0].firing() && alerts[1].firing());
    }

    #[test]
    fn parses_no_alerts_warnings_and_odd_samples() {
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_alerts(empty).expect("parses"), []);

        let odd =
            br#"{"status":"success","warnings":["partial response"],"data":{"resultType":"vector","result":[
            {"metric":{"__name__":"ALERTS","alertstate":"firing"},"value":[1.5,"1"]},
            {"metric":{"alertname":"Inf"},"value":[1,"+Inf"]},
            {"metric":{"alertname":"Zero","alertstate":"firing"},"value":[1,"0"]}]}}"#;
        let alerts = parse_alerts(odd).expect("parses");
        assert_eq!(
            alerts.len(),
            2,
            "a sample without alertname is not an alert: {alerts:?}"
        );
        assert_eq!((alerts[0].name.as_str(), alerts[0].state.as_str()), ("Inf", ""));
        assert_eq!(alerts[0].value, f64::INFINITY);
        assert_eq!(alerts[1].value, 0.0);
    }

    #[test]
    fn rejects_what_is_not_an_alerts_vector() {
        let cases: &[(&str, &[u8], &str)] = &[
            ("not JSON", b"<html>404 page not found</html>", "not a Prometheus API answer"),
            ("JSON of another kind", br#"{"kind":"PodList"}"#, "not a Prometheus API answer"),
            (
                "status error",
                br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
                "bad_data: parse error",
            ),
            (
                "success without data",
                br#"{"status":"success"}"#,
                "no data",
            ),
            (
                "a scalar",
                br#"{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}"#,
                "a scalar, not a vector",
            ),
            (
                "a malformed sample",
                br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{}}]}}"#,
                "not a Prometheus API answer",
            ),
            (
                "a value that is no number",
                br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"alertname":"A"},"value":[1,"one"]}]}}"#,
                "\"one\" is not a number",
            ),
        ];
        for (case, body, want) in cases {
            let err = parse_alerts(body).expect_err(case);
            let text = crate::error_chain(&err);
            assert!(text.contains(want), "{case}: {text:?} should contain {want:?}");
        }
    }

    #[test]
    fn the_url_path_is_a_prefix_and_credentials_are_not_shown() {
        let cases = [
            (
                "http://prom:9090",
                "http://prom:9090/api/v1/query?query=ALERTS",
                "http://prom:9090/",
            ),
            (
                "http://prom:9090/",
                "http://prom:9090/api/v1/query?query=ALERTS",
                "http://prom:9090/",
            ),
            (
                "http://prom:9090/prometheus",
                "http://prom:9090/prometheus/api/v1/query?query=ALERTS",
                "http://prom:9090/prometheus",
            ),
            (
                "https://user:secret@prom.example/prom/?tenant=a#x",
                "https://user:secret@prom.example/prom/api/v1/query?tenant=a&query=ALERTS",
                "https://prom.example/prom/",
            ),
        ];
        for (url, endpoint, shown) in cases {
            let url = Url::parse(url).expect("a valid URL");
            assert_eq!(query_endpoint(&url).as_str(), endpoint);
            assert_eq!(shown_url(&url), shown);
        }
    }

    #[test]
    fn excerpts_are_short_and_on_one_line() {
        assert_eq!(excerpt(b"404 page\nnot found\n"), "404 page not found");
        let long = vec![b'x'; 1000];
        assert_eq!(excerpt(&long).chars().count(), BODY_EXCERPT + 1);
    }

    #[test]
    fn https_clients_load_the_system_ca_bundle() {
        let url = Url::parse("https://prometheus.example:9090").expect("a valid URL");
        let blocker = PrometheusBlocker::new(url, filter(None, false, false));
        if CA_BUNDLES.iter().any(|p| std::path::Path::new(p).is_file()) {
            let blocker = blocker.expect("a client with the system's roots");
            assert_eq!(blocker.url(), "https://prometheus.example:9090/");
        } else {
            assert!(matches!(
                blocker,
                Err(PrometheusError::Client(HttpError::NoCaBundle))
            ));
        }
    }

    #[test]
    fn describes_its_filter() {
        let url = Url::parse("http://u:p@prom:9090/x?token=t").expect("a valid URL");
        let b = PrometheusBlocker::new(url, filter(Some("^Reboot"), true, true)).expect("a client");
        assert_eq!(
            b.describe(),
            "Prometheus alerts at http://prom:9090/x, matching \"^Reboot\", firing only"
        );
    }
}
