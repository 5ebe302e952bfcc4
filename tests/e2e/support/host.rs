//! A host-like harness: starts the real `handler` binary the way the Azure Functions host does
//! and sends exactly what the host sends (functions-custom-handler.md §2–4). Every envelope
//! answer is checked against the host's rules, so every test that goes through here also tests
//! protocol conformance.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

pub const HOST_VERSION: &str = "4.1037.0.0";

/// The repository root (the app root: host.json, the function folders).
pub fn app_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `handler <args>` as an operator runs it: only `env` (and a `PATH`) in its environment, the
/// app root as its directory. The caller adds what else it needs and runs it.
pub fn handler_command<K, V>(args: &[&str], env: impl IntoIterator<Item = (K, V)>) -> Command
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(env!("CARGO_BIN_EXE_handler"));
    c.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env)
        .current_dir(app_root());
    c
}

/// Runs `command` to its end: whether it succeeded, and what it printed (stdout, then stderr).
pub async fn output_of(command: &mut Command) -> (bool, String) {
    let out = command.output().await.unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A running `handler` process.
pub struct Handler {
    child: Child,
    pub port: u16,
    http: reqwest::Client,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

/// The host's view of one envelope answer.
#[derive(Debug)]
pub struct HostResponse {
    pub status: u16,
    pub body: Value,
}

impl HostResponse {
    pub fn logs(&self) -> Vec<String> {
        self.body["Logs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What the caller of an HTTP function gets, taken from `Outputs.res`.
#[derive(Debug)]
pub struct CallerResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    /// `res.body` parsed as JSON.
    pub body: Value,
    pub logs: Vec<String>,
}

impl CallerResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// A request to WriteDocumentHttp as a client sends it to the host.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    pub method: String,
    /// The `{id}` of the route, if the URL names a document.
    pub id: Option<String>,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

impl ClientRequest {
    pub fn post_json(body: impl Into<String>) -> Self {
        Self {
            method: "POST".into(),
            id: None,
            content_type: Some("application/json".into()),
            headers: Vec::new(),
            body: Some(body.into()),
        }
    }

    pub fn put_json(id: &str, body: impl Into<String>) -> Self {
        Self {
            method: "PUT".into(),
            id: Some(id.into()),
            ..Self::post_json(body)
        }
    }

    pub fn delete(id: &str) -> Self {
        Self {
            method: "DELETE".into(),
            id: Some(id.into()),
            content_type: None,
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl Handler {
    /// Starts the handler in Functions mode with only these app settings (plus what the host
    /// itself sets), and waits until it answers `GET /` as the host does.
    pub async fn functions(settings: &[(String, String)]) -> Self {
        Self::spawn(&[], settings, None).await
    }

    /// Starts `handler serve` on a free port.
    pub async fn standalone(settings: &[(String, String)]) -> Self {
        let port = devstack::pick_free_port().expect("free port");
        Self::spawn(
            &["serve", "--port", &port.to_string()],
            settings,
            Some(port),
        )
        .await
    }

    async fn spawn(args: &[&str], settings: &[(String, String)], port: Option<u16>) -> Self {
        let functions_mode = port.is_none();
        let port = port.unwrap_or_else(|| devstack::pick_free_port().expect("free port"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_handler"));
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("RUST_LOG", "info")
            .current_dir(app_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if functions_mode {
            cmd.env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
                .env(
                    "FUNCTIONS_CUSTOMHANDLER_WORKER_ID",
                    uuid::Uuid::new_v4().to_string(),
                )
                .env("FUNCTIONS_WORKER_RUNTIME", "custom")
                .env("FUNCTIONS_APP_ROOT_PATH", app_root())
                .env("AzureWebJobsStorage", "UseDevelopmentStorage=true");
        }
        for (k, v) in settings {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn handler");
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        readers.push(collect(stdout, Arc::clone(&output), "out"));
        readers.push(collect(stderr, Arc::clone(&output), "err"));
        outbox_relay::publisher::install_crypto_provider();
        let http = reqwest::Client::builder()
            .http1_only()
            .user_agent(format!("Azure-Functions-Host/{HOST_VERSION}"))
            .build()
            .unwrap();
        let mut handler = Self {
            child,
            port,
            http,
            output,
            readers,
        };
        handler.wait_ready().await;
        handler
    }

    /// Polls `GET /` every 25 ms, like the host, until any HTTP answer; 30 s deadline.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "handler exited with {status} before it was ready:\n{}",
                    self.output()
                );
            }
            if self.http.get(self.url("/")).send().await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "handler not ready after 30 s:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Everything the process wrote, stdout and stderr lines tagged `out|`/`err|`.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits (up to 30 s) until the process has written `text`; panics with its output if not.
    pub async fn wait_for_output(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.output().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Lines the process wrote to stderr (the host files them as errors).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.output()
            .lines()
            .filter_map(|l| l.strip_prefix("err|").map(str::to_owned))
            .collect()
    }

    /// Sends an envelope to `POST /<function>` exactly as the host does: chunked transfer
    /// encoding, its headers. Checks the answer against the host's rules and returns it.
    pub async fn invoke(&self, function: &str, envelope: &Value) -> HostResponse {
        self.try_invoke(function, envelope, None)
            .await
            .expect("the handler must answer the invocation")
    }

    /// [`Self::invoke`], but a transport failure (the process killed, the connection reset,
    /// `timeout` passed) is returned instead of panicking: for chaos tests, where the outcome
    /// of an invocation may be unknown. An answer is still checked against the host's rules.
    pub async fn try_invoke(
        &self,
        function: &str,
        envelope: &Value,
        timeout: Option<Duration>,
    ) -> Result<HostResponse, reqwest::Error> {
        let invocation = uuid::Uuid::new_v4().to_string();
        let bytes = serde_json::to_vec(envelope).unwrap();
        // A streamed body makes reqwest use chunked transfer encoding, as the host does.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            bytes.chunks(4096).map(|c| Ok(c.to_vec())).collect();
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        let mut request = self.http.post(self.url(&format!("/{function}")));
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request
            .header("Content-Type", "application/json; charset=utf-8")
            .header("X-Azure-Functions-InvocationId", &invocation)
            .header("X-Azure-Functions-HostVersion", HOST_VERSION)
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await?;
        let body = check_envelope_answer(status, content_type.as_deref(), &text);
        Ok(HostResponse { status, body })
    }

    /// Invokes WriteDocumentHttp through the envelope; the host answer must be 200 with a
    /// well-formed `Outputs.res`, which is returned as the caller would see it.
    pub async fn write(&self, request: &ClientRequest) -> CallerResponse {
        self.try_write(request, None)
            .await
            .expect("the handler must answer the invocation")
    }

    /// [`Self::write`], but a transport failure (or `timeout` passing) is returned instead of
    /// panicking; the answer, when there is one, is checked as in [`Self::write`].
    pub async fn try_write(
        &self,
        request: &ClientRequest,
        timeout: Option<Duration>,
    ) -> Result<CallerResponse, reqwest::Error> {
        let mut headers = serde_json::Map::new();
        if let Some(ct) = &request.content_type {
            headers.insert("Content-Type".into(), json!([ct]));
        }
        if let Some(b) = &request.body {
            headers.insert("Content-Length".into(), json!([b.len().to_string()]));
        }
        for (k, v) in &request.headers {
            headers.insert(k.clone(), json!([v]));
        }
        headers.insert("Accept".into(), json!(["*/*"]));
        headers.insert("Host".into(), json!(["contoso-outbox.azurewebsites.net"]));
        headers.insert("X-Forwarded-For".into(), json!(["203.0.113.7:51234"]));
        let path = request.id.as_ref().map_or_else(
            || "/api/documents".to_owned(),
            |id| format!("/api/documents/{id}"),
        );
        let params = request
            .id
            .as_ref()
            .map_or_else(|| json!({}), |id| json!({ "id": id }));
        let mut req = json!({
            "Url": format!("https://contoso-outbox.azurewebsites.net{path}?tenant=acme"),
            "Method": request.method,
            "Query": { "tenant": "acme" },
            "Headers": headers,
            "Params": params,
            "Identities": [ { "AuthenticationType": "WebJobsAuthLevel", "IsAuthenticated": true, "Claims": [] } ],
        });
        if let Some(b) = &request.body {
            req["Body"] = Value::String(b.clone());
        }
        let envelope = json!({
            "Data": { "req": req },
            "Metadata": {
                "tenant": "\"acme\"",
                "Query": { "tenant": "acme" },
                "Headers": { "Content-Type": request.content_type.clone().unwrap_or_default() },
                "sys": sys("WriteDocumentHttp"),
            }
        });
        let answer = self
            .try_invoke("WriteDocumentHttp", &envelope, timeout)
            .await?;
        assert_eq!(
            answer.status, 200,
            "the host must get 200 for a completed HTTP invocation: {:?}",
            answer.body
        );
        let res = &answer.body["Outputs"]["res"];
        assert!(
            res.is_object(),
            "Outputs.res must always be set: {}",
            answer.body
        );
        let status = res["statusCode"]
            .as_u64()
            .unwrap_or_else(|| panic!("statusCode must be an integer: {res}"));
        let headers: BTreeMap<String, String> = res["headers"]
            .as_object()
            .unwrap_or_else(|| panic!("headers must be an object: {res}"))
            .iter()
            .map(|(k, v)| {
                let v = v
                    .as_str()
                    .unwrap_or_else(|| panic!("header {k} must be a string: {res}"));
                (k.clone(), v.to_owned())
            })
            .collect();
        let body_text = res["body"]
            .as_str()
            .unwrap_or_else(|| panic!("body must be a string: {res}"));
        let ct = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.as_str());
        assert_eq!(ct, Some("application/json"), "{res}");
        let body: Value = serde_json::from_str(body_text)
            .unwrap_or_else(|e| panic!("res.body must be JSON ({e}): {body_text}"));
        Ok(CallerResponse {
            status: u16::try_from(status).unwrap(),
            headers,
            body,
            logs: answer.logs(),
        })
    }

    /// Invokes OutboxTimer with the given `timer` binding value.
    pub async fn timer(&self, timer: Value) -> HostResponse {
        self.invoke(
            "OutboxTimer",
            &json!({ "Data": { "timer": timer }, "Metadata": { "sys": sys("OutboxTimer") } }),
        )
        .await
    }

    /// A typical timer invocation (schedule monitoring on).
    pub async fn tick(&self) -> HostResponse {
        self.timer(typical_timer(false)).await
    }

    /// [`Self::tick`] (with `IsPastDue` as given, as in a catch-up or replayed occurrence),
    /// returning a transport failure (the process killed mid-run, `timeout` passed) instead
    /// of panicking.
    pub async fn try_tick(
        &self,
        past_due: bool,
        timeout: Option<Duration>,
    ) -> Result<HostResponse, reqwest::Error> {
        self.try_invoke(
            "OutboxTimer",
            &json!({
                "Data": { "timer": typical_timer(past_due) },
                "Metadata": { "sys": sys("OutboxTimer") },
            }),
            timeout,
        )
        .await
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGKILL now without waiting, so it can land while requests to the process are
    /// in flight (they then fail); [`Self::kill`] afterwards reaps the process.
    pub fn sigkill(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-s", "KILL", &pid.to_string()])
                .status();
        }
    }

    /// Sends SIGKILL, as the host does on timeout, scale-in or deployment.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-s", "TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within 30 s of SIGTERM")
            .unwrap();
        for r in self.readers.drain(..) {
            let _ = r.await;
        }
        status
    }
}

/// The `timer` binding value of a typical occurrence.
fn typical_timer(past_due: bool) -> Value {
    json!({
        "Schedule": { "AdjustForDST": true },
        "ScheduleStatus": {
            "Last": "2025-06-02T08:14:00.0041733+00:00",
            "Next": "2025-06-02T08:15:00+00:00",
            "LastUpdated": "2025-06-02T08:14:00.0041733+00:00"
        },
        "IsPastDue": past_due
    })
}

fn sys(method: &str) -> Value {
    json!({
        "MethodName": method,
        "UtcNow": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "RandGuid": uuid::Uuid::new_v4().to_string(),
    })
}

fn collect<R>(stream: R, into: Arc<Mutex<String>>, tag: &'static str) -> JoinHandle<()>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            #[expect(
                clippy::disallowed_methods,
                reason = "test support reads its own variable"
            )]
            let echo = std::env::var_os("TEST_LOG").is_some();
            if echo {
                eprintln!("handler {tag}| {line}");
            }
            let mut out = into.lock().unwrap();
            out.push_str(tag);
            out.push('|');
            out.push_str(&line);
            out.push('\n');
        }
    })
}

/// The host's rules for an invocation answer (§4.1–4.2): a JSON object with only `Outputs`,
/// `Logs`, `ReturnValue`, sent as `application/json`; never empty, never `null`.
fn check_envelope_answer(status: u16, content_type: Option<&str>, text: &str) -> Value {
    let ct =
        content_type.unwrap_or_else(|| panic!("no Content-Type on the answer ({status}): {text}"));
    assert!(
        ct.starts_with("application/json") || ct.starts_with("text/json"),
        "answer Content-Type must be JSON, got {ct}"
    );
    assert!(
        !text.trim().is_empty(),
        "an empty answer leaves the invocation hanging"
    );
    let body: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"));
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("answer must be a JSON object: {text}"));
    for key in obj.keys() {
        assert!(
            ["Outputs", "Logs", "ReturnValue"].contains(&key.as_str()),
            "unexpected property {key} in the answer (PascalCase Outputs/Logs/ReturnValue only): {text}"
        );
    }
    if let Some(logs) = obj.get("Logs") {
        assert!(
            logs.is_null()
                || logs
                    .as_array()
                    .is_some_and(|a| a.iter().all(Value::is_string)),
            "Logs must be an array of strings: {text}"
        );
    }
    if let Some(outputs) = obj.get("Outputs") {
        assert!(
            outputs.is_null() || outputs.is_object(),
            "Outputs must be an object: {text}"
        );
    }
    body
}
