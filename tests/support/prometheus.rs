//! A real Prometheus server for tests: the Debian package's `/usr/bin/prometheus`, started on a
//! free loopback port, either with rules that keep one alert firing (`RebootRequired`) and one
//! pending (`LongPending`), or scraping agents' `/metrics` with rules of the test's; and its HTTP
//! API.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kured::blockers::PrometheusBlocker;
use kured::blockers::prometheus::AlertFilter;
use url::Url;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use super::http::{free_port, get};
use super::wait::eventually;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Rules evaluated every second: `RebootRequired` fires at once, `LongPending` stays pending for
/// an hour, far longer than any test.
pub const RULES: &str = "groups:
  - name: kured-test
    interval: 1s
    rules:
      - alert: RebootRequired
        expr: vector(1)
        for: 0s
      - alert: LongPending
        expr: vector(1)
        for: 1h
";

/// A Prometheus server run by the test, killed when dropped.
pub struct Prometheus {
    child: Child,
    /// The server's base URL, including its route prefix.
    pub url: Url,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port, serving under `prefix` (e.g. `/prom`) if given,
    /// and waits until the `ALERTS` query shows both test alerts.
    pub async fn start(prefix: Option<&str>) -> Prometheus {
        let setup = Setup {
            prefix,
            scrape: String::new(),
            rules: RULES,
            ready_query: "ALERTS",
            ready: &|body| body.contains("\"RebootRequired\"") && body.contains("\"LongPending\""),
            what: "both test alerts",
        };
        Self::start_with(&setup).await
    }

    /// Starts Prometheus on a free loopback port scraping, every second as job `job`, the
    /// `/metrics` of the loopback `ports`, evaluating `rules` (a rule file's text) every second;
    /// waits until every target has been scraped once.
    pub async fn scraping(job: &str, ports: &[u16], rules: &str) -> Prometheus {
        let targets: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let scrape = format!(
            "scrape_configs:\n  - job_name: {job}\n    scrape_interval: 1s\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let ready_query = format!("count(up{{job=\"{job}\"}}) == {}", ports.len());
        let setup = Setup {
            prefix: None,
            scrape,
            rules,
            ready_query: &ready_query,
            ready: &|body| body.contains("\"result\":[{"),
            what: "every target scraped",
        };
        Self::start_with(&setup).await
    }

    async fn start_with(setup: &Setup<'_>) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).is_file(),
            "{PROMETHEUS} is missing: install it with `apt-get install prometheus` (scripts/test does)"
        );
        // A port found free can be taken before Prometheus binds it; try a few.
        for _ in 0..3 {
            let mut server = Self::spawn(setup);
            if server.wait_ready(setup).await {
                return server;
            }
        }
        panic!("Prometheus did not start in three attempts");
    }

    fn spawn(setup: &Setup<'_>) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("rules.yml"), setup.rules).expect("writing rules");
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n{}",
                setup.scrape
            ),
        )
        .expect("writing the configuration");
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}{}", setup.prefix.unwrap_or(""));
        let log = std::fs::File::create(dir.path().join("log")).expect("a log file");
        let mut command = Command::new(PROMETHEUS);
        command
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file handle"))
            .stderr(log);
        if let Some(prefix) = setup.prefix {
            command
                .arg(format!("--web.route-prefix={prefix}"))
                .arg(format!("--web.external-url={base}"));
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {PROMETHEUS}: {e}"));
        Prometheus {
            child,
            url: base.parse().expect("a valid URL"),
            dir,
        }
    }

    /// True once the setup's ready query answers as it should; false if Prometheus exited because
    /// its port was taken.
    async fn wait_ready(&mut self, setup: &Setup<'_>) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let addr = (Ipv4Addr::LOCALHOST, self.url.port().expect("a port"));
        let path = self.path("query", &[("query", setup.ready_query)]);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.log();
                // Only a port taken meanwhile is worth another try; a configuration or a rule
                // file it refuses is the test's to fix.
                assert!(
                    log.contains("address already in use"),
                    "Prometheus exited with {status}; its log:\n{log}"
                );
                eprintln!("Prometheus exited with {status}, its port taken:\n{log}");
                return false;
            }
            if let Ok((200, body)) = get(addr, &path, Duration::from_secs(5)).await
                && (setup.ready)(&body)
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "Prometheus at {} did not report {} within 60s; its log:\n{}",
                    self.url,
                    setup.what,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The path of API `endpoint` (e.g. `query`) with `params`, encoded.
    fn path(&self, endpoint: &str, params: &[(&str, &str)]) -> String {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
            .collect();
        format!(
            "{}/api/v1/{endpoint}?{}",
            self.url.path().trim_end_matches('/'),
            query.join("&")
        )
    }

    /// `GET /api/v1/ENDPOINT?PARAMS`: the answer's `data`, or Prometheus's error (a query that
    /// does not parse, say) with the request.
    pub async fn api(&self, endpoint: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let addr = (Ipv4Addr::LOCALHOST, self.url.port().expect("a port"));
        let (status, body) = get(addr, &self.path(endpoint, params), Duration::from_secs(30)).await?;
        let answer: Value = serde_json::from_str(&body).map_err(|e| {
            format!("/api/v1/{endpoint} {params:?} answered {status}, not JSON ({e}): {body}")
        })?;
        if status != 200 || answer["status"] != "success" {
            return Err(format!("/api/v1/{endpoint} {params:?} answered {status}: {body}"));
        }
        Ok(answer["data"].clone())
    }

    /// Waits until instant query `expr` returns a series (for a comparison: until it holds);
    /// fails naming the query after `limit`.
    pub async fn until_answered(&self, expr: &str, limit: Duration) {
        eventually(&format!("Prometheus to answer {expr}"), limit, || async {
            let data = self.api("query", &[("query", expr)]).await.ok()?;
            (!data["result"].as_array()?.is_empty()).then_some(())
        })
        .await;
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    pub fn blocker(&self, filter: AlertFilter) -> PrometheusBlocker {
        PrometheusBlocker::new(self.url.clone(), filter).expect("a Prometheus client")
    }
}

/// How a server starts: its scrape configuration, its rules, and the query whose answer says it
/// is ready.
struct Setup<'a> {
    prefix: Option<&'a str>,
    /// `scrape_configs:` of the configuration, or nothing.
    scrape: String,
    rules: &'a str,
    ready_query: &'a str,
    ready: &'a dyn Fn(&str) -> bool,
    /// What `ready` waits for, for the failure.
    what: &'a str,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
