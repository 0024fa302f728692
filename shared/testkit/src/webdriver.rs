//! A small WebDriver client for tests: a real headless Chromium driven through
//! `chromedriver` over the W3C WebDriver HTTP API.
//!
//! [`Browser::start`] runs `chromedriver --port=0` in a process group of its own (it
//! chooses its port and prints it, so no two tests race for one), waits until
//! `GET /status` says ready and opens a session with a fresh profile directory. On
//! drop the whole group (chromedriver and every Chromium process) is killed; when the
//! test thread panics the directory (profile, `chromedriver.log`) is kept and printed.
//!
//! The browser starts with no network beyond what the page asks for (no QUIC, no
//! background fetches, no component updates, no sync): this machine refuses outside
//! connections, and a test must not depend on them anyway.
//!
//! Prompts are left open (`unhandledPromptBehavior: ignore`): a JavaScript `alert`
//! the page opens stays there for [`Browser::alert_text`] to see, and every other
//! command fails with `unexpected alert open` until [`Browser::accept_alert`], so an
//! injected `alert(1)` cannot go unnoticed.
//!
//! Gate tests with [`gate`](crate::gate::gate)`(`[`Browser::why_unavailable`]`())`:
//! it skips without Chromium, or fails under `SUBSTRUCT_REQUIRE_SYSTEM_TESTS=1`.
//!
//! ```no_run
//! use substruct_testkit::{gate::gate, webdriver::Browser};
//! # async fn t() -> anyhow::Result<()> {
//! if !gate(Browser::why_unavailable()) {
//!     return Ok(());
//! }
//! let browser = Browser::start().await?;
//! browser.goto("http://127.0.0.1:8080/").await?;
//! browser.find("#login").await?.click().await?;
//! browser.close().await
//! # }
//! ```

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::gate::{unmet, Need};
use crate::{poll, try_poll, WAIT_EVERY};

/// The key of a web element reference in WebDriver JSON (W3C WebDriver, "web element
/// identifier"; chromedriver answers `{"element-6066-…": "<id>"}`).
pub const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The Chromium binary unless `$SUBSTRUCT_CHROMIUM` names another.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The chromedriver binary unless `$SUBSTRUCT_CHROMEDRIVER` names another.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long any one HTTP call to chromedriver may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Page loads and scripts give up before the HTTP call does, so the error names them.
const PAGE_LOAD_TIMEOUT_MS: u64 = 20_000;

/// How long chromedriver may take to print its port and then report ready.
const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(15);

/// How often [`Browser::wait_for_element`] and [`Browser::wait_for_text`] look.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// The flags Chromium runs with (plus `--user-data-dir`).
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

/// A WebDriver error reply (`{"value":{"error":..,"message":..}}`), inside the
/// `anyhow::Error` of a failed command; find it with `err.downcast_ref::<WebDriverError>()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebDriverError {
    /// The command that failed, e.g. `find "#login"`.
    pub command: String,
    /// The W3C error code, e.g. `no such element`, `unexpected alert open`.
    pub error: String,
    /// chromedriver's message.
    pub message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "webdriver {}: {}: {}",
            self.command, self.error, self.message
        )
    }
}

impl std::error::Error for WebDriverError {}

/// Whether `err` is the WebDriver error `code` (e.g. `no such element`).
pub fn is_error(err: &anyhow::Error, code: &str) -> bool {
    err.downcast_ref::<WebDriverError>()
        .is_some_and(|e| e.error == code)
}

fn chromium_bin() -> PathBuf {
    std::env::var_os("SUBSTRUCT_CHROMIUM").map_or_else(|| PathBuf::from(CHROMIUM), PathBuf::from)
}

fn chromedriver_bin() -> PathBuf {
    std::env::var_os("SUBSTRUCT_CHROMEDRIVER")
        .map_or_else(|| PathBuf::from(CHROMEDRIVER), PathBuf::from)
}

/// One session's HTTP endpoint: cheap to clone, shared by the browser and its elements.
#[derive(Debug, Clone)]
struct Session {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`
    url: String,
}

impl Session {
    async fn get(&self, command: &str, path: &str) -> Result<Value> {
        call(
            &self.http,
            reqwest::Method::GET,
            &self.at(path),
            None,
            command,
        )
        .await
    }

    async fn post(&self, command: &str, path: &str, body: Value) -> Result<Value> {
        call(
            &self.http,
            reqwest::Method::POST,
            &self.at(path),
            Some(body),
            command,
        )
        .await
    }

    async fn delete(&self, command: &str, path: &str) -> Result<Value> {
        call(
            &self.http,
            reqwest::Method::DELETE,
            &self.at(path),
            None,
            command,
        )
        .await
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `Find Element(s)` under `base` (`""` for the document, `/element/ID` for an
    /// element).
    async fn find(&self, base: &str, css: &str) -> Result<Element> {
        let command = format!("find {css:?}");
        let value = self
            .post(
                &command,
                &format!("{base}/element"),
                json!({"using": "css selector", "value": css}),
            )
            .await?;
        self.element(&command, &value)
    }

    async fn find_all(&self, base: &str, css: &str) -> Result<Vec<Element>> {
        let command = format!("find all {css:?}");
        let value = self
            .post(
                &command,
                &format!("{base}/elements"),
                json!({"using": "css selector", "value": css}),
            )
            .await?;
        let Value::Array(items) = value else {
            bail!("webdriver {command}: expected an array, got {value}");
        };
        items.iter().map(|v| self.element(&command, v)).collect()
    }

    fn element(&self, command: &str, value: &Value) -> Result<Element> {
        let id = value
            .get(ELEMENT_KEY)
            .and_then(Value::as_str)
            .with_context(|| format!("webdriver {command}: no element reference in {value}"))?;
        Ok(Element {
            session: self.clone(),
            id: id.to_owned(),
        })
    }
}

/// Sends one command and returns its `value`, or the WebDriver error as
/// [`WebDriverError`].
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
    command: &str,
) -> Result<Value> {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("webdriver {command}: request to chromedriver"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .with_context(|| format!("webdriver {command}: reading the reply"))?;
    let mut reply: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => bail!(
            "webdriver {command}: HTTP {status}, not JSON: {}",
            text.chars().take(500).collect::<String>()
        ),
    };
    let value = reply
        .get_mut("value")
        .map(Value::take)
        .unwrap_or(Value::Null);
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        let message = value.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(WebDriverError {
            command: command.to_owned(),
            error: error.to_owned(),
            message: message.trim_end().to_owned(),
        }
        .into());
    }
    if !status.is_success() {
        bail!("webdriver {command}: HTTP {status}: {value}");
    }
    Ok(value)
}

/// The chromedriver process group and its directory: killed (all of it, Chromium
/// included) on drop; the directory is kept and printed when the thread panics.
#[derive(Debug)]
struct Driver {
    child: Child,
    dir: Option<tempfile::TempDir>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Chromium outlives a killed chromedriver, so the whole group goes. The group
        // id is chromedriver's pid (`process_group(0)`).
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!(
                    "browser profile and chromedriver.log kept at {}",
                    kept.display()
                );
            }
        }
    }
}

/// A headless Chromium with one WebDriver session; see the [module docs](self).
#[derive(Debug)]
pub struct Browser {
    session: Session,
    driver: Driver,
}

impl Browser {
    /// Why this host cannot run a browser (a binary is missing), or `None` when it can.
    /// Pass it to [`gate`](crate::gate::gate).
    pub fn why_unavailable() -> Option<String> {
        let chromium = chromium_bin();
        let driver = chromedriver_bin();
        unmet(&[
            Need::Tool(&chromium.to_string_lossy()),
            Need::Tool(&driver.to_string_lossy()),
        ])
        .map(|why| format!("{why} (apt-get install chromium chromium-driver)"))
    }

    /// Whether both Chromium and chromedriver are installed.
    pub fn available() -> bool {
        Self::why_unavailable().is_none()
    }

    /// Starts chromedriver and opens a session on a headless Chromium with a fresh
    /// profile. Fails, quoting chromedriver's log, when either does not come up.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("substruct-browser-")
            .tempdir()
            .context("temp dir for the browser")?;
        let profile = dir.path().join("profile");
        std::fs::create_dir(&profile).context("browser profile dir")?;
        let log_path = dir.path().join("chromedriver.log");
        let log = std::fs::File::create(&log_path).context("chromedriver log")?;
        let log_err = log.try_clone().context("chromedriver log")?;
        let child = {
            use std::os::unix::process::CommandExt as _;
            Command::new(chromedriver_bin())
                .arg("--port=0")
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .with_context(|| format!("spawning {}", chromedriver_bin().display()))?
        };
        let mut driver = Driver {
            child,
            dir: Some(dir),
        };
        let session = match open_session(&mut driver, &log_path, &profile).await {
            Ok(s) => s,
            Err(e) => {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(e.context(format!(
                    "chromedriver log ({}):\n{}",
                    log_path.display(),
                    log.trim_end()
                )));
            }
        };
        Ok(Self { session, driver })
    }

    /// The directory holding the profile and `chromedriver.log`.
    pub fn dir(&self) -> &Path {
        self.driver
            .dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.session
            .post(&format!("goto {url}"), "/url", json!({ "url": url }))
            .await?;
        Ok(())
    }

    /// The current page's URL.
    pub async fn current_url(&self) -> Result<String> {
        string(
            self.session.get("current url", "/url").await?,
            "current url",
        )
    }

    /// The current page's title.
    pub async fn title(&self) -> Result<String> {
        string(self.session.get("title", "/title").await?, "title")
    }

    /// The current page's HTML, as the browser serializes its DOM now.
    pub async fn source(&self) -> Result<String> {
        string(self.session.get("source", "/source").await?, "source")
    }

    /// The first element matching `css`; a WebDriver `no such element` error if none.
    pub async fn find(&self, css: &str) -> Result<Element> {
        self.session.find("", css).await
    }

    /// Every element matching `css` (possibly none).
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        self.session.find_all("", css).await
    }

    /// Polls until an element matches `css`, at most `timeout`.
    pub async fn wait_for_element(&self, css: &str, timeout: Duration) -> Result<Element> {
        try_poll(
            &format!("an element matching {css:?}"),
            timeout,
            POLL_EVERY,
            || async {
                match self.find(css).await {
                    Ok(e) => Ok(Some(e)),
                    Err(e) if is_error(&e, "no such element") => Ok(None),
                    Err(e) => Err(e),
                }
            },
        )
        .await
    }

    /// Polls until the text of the first element matching `css` contains `needle`,
    /// at most `timeout`; returns that text. On time-out the error names the last text
    /// seen.
    pub async fn wait_for_text(
        &self,
        css: &str,
        needle: &str,
        timeout: Duration,
    ) -> Result<String> {
        let last: RefCell<Option<String>> = RefCell::new(None);
        let found = try_poll(
            &format!("{css:?} to contain {needle:?}"),
            timeout,
            POLL_EVERY,
            || {
                let last = &last;
                async move {
                    let text = match self.find(css).await {
                        Ok(e) => e.text().await,
                        Err(e) => Err(e),
                    };
                    match text {
                        Ok(t) if t.contains(needle) => Ok(Some(t)),
                        Ok(t) => {
                            *last.borrow_mut() = Some(t);
                            Ok(None)
                        }
                        Err(e)
                            if is_error(&e, "no such element")
                                || is_error(&e, "stale element reference") =>
                        {
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    }
                }
            },
        )
        .await;
        found.with_context(|| match &*last.borrow() {
            Some(t) => format!("last text of {css:?}: {t:?}"),
            None => format!("no element matched {css:?}"),
        })
    }

    /// Runs `script` as a function body (`return ...` gives the result) with
    /// `arguments` = `args`; an element goes in as [`Element::as_arg`].
    pub async fn execute(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.session
            .post(
                "execute",
                "/execute/sync",
                json!({ "script": script, "args": args }),
            )
            .await
    }

    /// A PNG of the viewport.
    pub async fn screenshot_png(&self) -> Result<Vec<u8>> {
        let b64 = string(
            self.session.get("screenshot", "/screenshot").await?,
            "screenshot",
        )?;
        data_encoding::BASE64
            .decode(b64.as_bytes())
            .context("webdriver screenshot: not base64")
    }

    /// Writes [`screenshot_png`](Self::screenshot_png) to `path`.
    pub async fn save_screenshot(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let png = self.screenshot_png().await?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// The text of the open alert, confirm or prompt; `None` when none is open.
    pub async fn alert_text(&self) -> Result<Option<String>> {
        match self.session.get("alert text", "/alert/text").await {
            Ok(v) => Ok(Some(v.as_str().unwrap_or_default().to_owned())),
            Err(e) if is_error(&e, "no such alert") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Accepts the open alert and returns its text; `None` when none is open.
    pub async fn accept_alert(&self) -> Result<Option<String>> {
        let Some(text) = self.alert_text().await? else {
            return Ok(None);
        };
        match self
            .session
            .post("accept alert", "/alert/accept", json!({}))
            .await
        {
            Ok(_) => Ok(Some(text)),
            Err(e) if is_error(&e, "no such alert") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The cookies visible to the current page, as WebDriver cookie objects
    /// (`name`, `value`, `path`, `domain`, `httpOnly`, ...).
    pub async fn cookies(&self) -> Result<Vec<Value>> {
        match self.session.get("cookies", "/cookie").await? {
            Value::Array(cookies) => Ok(cookies),
            other => bail!("webdriver cookies: expected an array, got {other}"),
        }
    }

    /// The value of the cookie `name` visible to the current page, if any.
    pub async fn cookie(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .cookies()
            .await?
            .into_iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|c| c.get("value").and_then(Value::as_str).map(str::to_owned)))
    }

    /// Deletes every cookie of the current page's domain.
    pub async fn delete_all_cookies(&self) -> Result<()> {
        self.session.delete("delete all cookies", "/cookie").await?;
        Ok(())
    }

    /// Ends the session (Chromium exits) and stops chromedriver.
    pub async fn close(self) -> Result<()> {
        self.session.delete("close", "").await?;
        Ok(())
    }
}

/// Waits for chromedriver's port and readiness, then opens the session.
async fn open_session(driver: &mut Driver, log_path: &Path, profile: &Path) -> Result<Session> {
    let started = Instant::now();
    let port = try_poll(
        "chromedriver to print its port",
        DRIVER_START_TIMEOUT,
        WAIT_EVERY,
        || {
            let status = driver.child.try_wait();
            async move {
                match status.context("waiting for chromedriver")? {
                    Some(status) => bail!("chromedriver exited at start ({status})"),
                    None => Ok(read_driver_port(log_path)),
                }
            }
        },
    )
    .await?;
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .no_proxy()
        .build()
        .context("HTTP client for chromedriver")?;
    let base = format!("http://127.0.0.1:{port}");
    let remaining = DRIVER_START_TIMEOUT.saturating_sub(started.elapsed());
    let status_url = format!("{base}/status");
    poll(
        "chromedriver to report ready",
        remaining,
        WAIT_EVERY,
        || {
            let status = call(&http, reqwest::Method::GET, &status_url, None, "status");
            async move {
                status
                    .await
                    .ok()
                    .and_then(|v| v.get("ready").and_then(Value::as_bool))
                    .filter(|ready| *ready)
            }
        },
    )
    .await?;

    let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let capabilities = json!({
        "capabilities": {
            "alwaysMatch": {
                "browserName": "chrome",
                "unhandledPromptBehavior": "ignore",
                "timeouts": {
                    "implicit": 0,
                    "pageLoad": PAGE_LOAD_TIMEOUT_MS,
                    "script": PAGE_LOAD_TIMEOUT_MS,
                },
                "goog:chromeOptions": {
                    "binary": chromium_bin().to_string_lossy(),
                    "args": args,
                },
            }
        }
    });
    let reply = call(
        &http,
        reqwest::Method::POST,
        &format!("{base}/session"),
        Some(capabilities),
        "new session",
    )
    .await?;
    let id = reply
        .get("sessionId")
        .and_then(Value::as_str)
        .with_context(|| format!("webdriver new session: no sessionId in {reply}"))?;
    Ok(Session {
        http,
        url: format!("{base}/session/{id}"),
    })
}

/// The port in chromedriver's `ChromeDriver was started successfully on port N.`,
/// `None` until it has printed it.
fn read_driver_port(log_path: &Path) -> Option<u16> {
    let log = std::fs::read_to_string(log_path).ok()?;
    let rest = log.split("started successfully on port ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|p| *p != 0)
}

fn string(value: Value, command: &str) -> Result<String> {
    match value {
        Value::String(s) => Ok(s),
        other => bail!("webdriver {command}: expected a string, got {other}"),
    }
}

/// An element of the page, found by [`Browser::find`] or [`Element::find`].
#[derive(Debug, Clone)]
pub struct Element {
    session: Session,
    id: String,
}

impl Element {
    fn path(&self, tail: &str) -> String {
        format!("/element/{}{tail}", self.id)
    }

    /// The element as a script argument for [`Browser::execute`].
    pub fn as_arg(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    /// Clicks it (scrolling it into view first).
    pub async fn click(&self) -> Result<()> {
        self.session
            .post("click", &self.path("/click"), json!({}))
            .await?;
        Ok(())
    }

    /// Types `text` into it.
    pub async fn send_keys(&self, text: &str) -> Result<()> {
        self.session
            .post("send keys", &self.path("/value"), json!({ "text": text }))
            .await?;
        Ok(())
    }

    /// Clears an input or textarea.
    pub async fn clear(&self) -> Result<()> {
        self.session
            .post("clear", &self.path("/clear"), json!({}))
            .await?;
        Ok(())
    }

    /// Its rendered text (what a user sees).
    pub async fn text(&self) -> Result<String> {
        string(
            self.session
                .get("element text", &self.path("/text"))
                .await?,
            "element text",
        )
    }

    /// The HTML attribute `name`, `None` when absent.
    pub async fn attr(&self, name: &str) -> Result<Option<String>> {
        let command = format!("attribute {name:?}");
        let value = self
            .session
            .get(&command, &self.path(&format!("/attribute/{name}")))
            .await?;
        Ok(value.as_str().map(str::to_owned))
    }

    /// The DOM property `name` (e.g. `value` of an input as typed), `Null` when absent.
    pub async fn prop(&self, name: &str) -> Result<Value> {
        let command = format!("property {name:?}");
        self.session
            .get(&command, &self.path(&format!("/property/{name}")))
            .await
    }

    /// Whether it is displayed.
    pub async fn is_displayed(&self) -> Result<bool> {
        let value = self
            .session
            .get("is displayed", &self.path("/displayed"))
            .await?;
        value
            .as_bool()
            .with_context(|| format!("webdriver is displayed: expected a bool, got {value}"))
    }

    /// The first element matching `css` inside this one.
    pub async fn find(&self, css: &str) -> Result<Element> {
        let base = self.path("");
        self.session.find(&base, css).await
    }

    /// Every element matching `css` inside this one.
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let base = self.path("");
        self.session.find_all(&base, css).await
    }
}
