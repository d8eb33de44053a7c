//! A real Prometheus server for tests: the Debian package's `/usr/bin/prometheus`, started on a
//! free loopback port with rules that keep one alert firing (`RebootRequired`) and one pending
//! (`LongPending`).

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kured::blockers::PrometheusBlocker;
use kured::blockers::prometheus::AlertFilter;
use url::Url;

use super::http::{free_port, get};

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
        assert!(
            Path::new(PROMETHEUS).is_file(),
            "{PROMETHEUS} is missing: install it with `apt-get install prometheus` (scripts/test does)"
        );
        // A port found free can be taken before Prometheus binds it; try a few.
        for _ in 0..3 {
            let mut server = Self::spawn(prefix);
            if server.wait_ready().await {
                return server;
            }
        }
        panic!("Prometheus did not start in three attempts");
    }

    fn spawn(prefix: Option<&str>) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("rules.yml"), RULES).expect("writing rules");
        std::fs::write(
            dir.path().join("prometheus.yml"),
            "global:\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n",
        )
        .expect("writing the configuration");
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}{}", prefix.unwrap_or(""));
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
        if let Some(prefix) = prefix {
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

    /// True once both alerts are in `ALERTS`; false if Prometheus exited (a port taken).
    async fn wait_ready(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let addr = (Ipv4Addr::LOCALHOST, self.url.port().expect("a port"));
        let path = format!(
            "{}/api/v1/query?query=ALERTS",
            self.url.path().trim_end_matches('/')
        );
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                eprintln!("Prometheus exited with {status}:\n{}", self.log());
                return false;
            }
            if let Ok((200, body)) = get(addr, &path, Duration::from_secs(5)).await
                && body.contains("\"RebootRequired\"")
                && body.contains("\"LongPending\"")
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "Prometheus at {} did not report both test alerts within 60s; its log:\n{}",
                    self.url,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
