//! Prometheus's own tools for the metrics tests: `promtool check metrics`, and a real
//! Prometheus server scraping a handler. `scripts/lib/prometheus.sh` (run by `make test`)
//! unpacks the Debian package `prometheus` into the project's tool directory.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// A Prometheus binary (`prometheus`, `promtool`): from the project's tool directory
/// (`TOOLS_DIR`, default `~/.cache/outbox-relay/tools`), else the `PATH`.
///
/// # Panics
/// When neither has it: the metrics tests need the real tools and do not skip.
pub fn tool(name: &str) -> PathBuf {
    #[expect(
        clippy::disallowed_methods,
        reason = "test support reads where the project's scripts put its tools"
    )]
    let (tools, cache, home) = (
        std::env::var_os("TOOLS_DIR"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    );
    let dir = tools.map(PathBuf::from).or_else(|| {
        cache
            .map(PathBuf::from)
            .or_else(|| home.map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("outbox-relay/tools"))
    });
    let candidates = dir
        .map(|d| d.join("bin").join(name))
        .into_iter()
        .chain(["/usr/bin", "/usr/local/bin"].map(|d| PathBuf::from(d).join(name)));
    for path in candidates {
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "{name} not found: run the tests with `make test`, or install it with \
         `bash -c 'source scripts/lib/prometheus.sh; require_prometheus'`"
    )
}

/// Runs `promtool check metrics` on `exposition`; its output, or a panic with it.
pub async fn promtool_check_metrics(exposition: &str) -> String {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start promtool");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(exposition.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics refused the exposition ({}): {said}\n--- exposition:\n{exposition}",
        out.status
    );
    said
}

/// A real Prometheus server scraping one target every second; stopped and its data removed
/// when dropped.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `http://{target}/metrics`, sending `?code=key` when given.
    pub async fn scraping(target: &str, key: Option<&str>) -> Self {
        let port = devstack::pick_free_port().expect("free port");
        let dir = std::env::temp_dir().join(format!("outbox-prometheus-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let params = key.map_or_else(String::new, |k| {
            format!("    params:\n      code: ['{k}']\n")
        });
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: handler\n    metrics_path: /metrics\n{params}    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let prometheus = Self {
            child,
            port,
            dir,
            http: reqwest::Client::new(),
        };
        prometheus.wait_ready().await;
        prometheus
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.http.get(self.url("/-/ready")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "prometheus not ready after 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of an instant query that returns one sample; `None` when it returns none.
    pub async fn query(&self, promql: &str) -> Option<f64> {
        let body: serde_json::Value = self
            .http
            .get(
                url::Url::parse_with_params(&self.url("/api/v1/query"), [("query", promql)])
                    .unwrap(),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "success", "{promql}: {body}");
        let result = body["data"]["result"].as_array()?;
        assert!(
            result.len() <= 1,
            "{promql} returned several series: {body}"
        );
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits (up to 60 s) until `promql` answers `expected`.
    pub async fn wait_for(&self, promql: &str, expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.query(promql).await;
            if got == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus answers {promql} with {got:?}, not {expected}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
