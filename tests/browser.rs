//! A real browser over the `ws` listener: headless Chromium opens tests/browser/index.html,
//! where MQTT.js (npm `mqtt`, installed by `npm ci --prefix tests/browser`) connects,
//! subscribes to `sensors/#` and lists what arrives; `mosquitto_pub` publishes over plain
//! MQTT; the test reads the page through the DevTools protocol, checks the messages are
//! there, and saves a screenshot to `target/artifacts/browser-ws.png`.
//!
//! Skips, saying why, only when Chromium cannot start. Set SLUICE_CHROMIUM to use another
//! binary than `chromium`.

mod common;

use common::{mosquitto_pub, within, Broker};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const CHROMIUM_START: Duration = Duration::from_secs(30);
const PAGE_WAIT: Duration = Duration::from_secs(30);

/// Chromium, killed on drop.
struct Chromium {
    child: Child,
    /// `ws://127.0.0.1:PORT/devtools/browser/ID`
    browser_ws: String,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts headless Chromium on `url`; Err says why it could not start.
fn start_chromium(url: &str, profile: &Path) -> Result<Chromium, String> {
    let binary = std::env::var("SLUICE_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let mut child = Command::new(&binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=900,600",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {binary}: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + CHROMIUM_START;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(at) = line.find("ws://") {
                    if line.contains("DevTools listening on") {
                        return Ok(Chromium {
                            browser_ws: line[at..].trim().to_owned(),
                            child,
                            stderr: rx,
                        });
                    }
                }
                seen.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                return Err(format!(
                    "{binary} gave no DevTools address within {CHROMIUM_START:?} (exit {status:?}):\n{}",
                    seen.join("\n")
                ));
            }
        }
    }
}

/// One DevTools connection (a page's or the browser's).
struct Cdp {
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
}

impl Cdp {
    async fn connect(ws_url: &str) -> Cdp {
        let host = ws_url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .expect("DevTools host");
        let tcp = TcpStream::connect(host).await.expect("connect to DevTools");
        let (ws, _) = within(
            common::WAIT,
            "DevTools upgrade",
            tokio_tungstenite::client_async(ws_url, tcp),
        )
        .await
        .expect("DevTools WebSocket");
        Cdp { ws, next_id: 1 }
    }

    /// Sends a command and returns its `result` (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(Message::Text(msg.into())).await.expect("send");
        within(common::WAIT, method, async {
            loop {
                let frame = self.ws.next().await.expect("DevTools open").expect("read");
                let Message::Text(text) = frame else { continue };
                let v: Value = serde_json::from_str(&text).expect("JSON");
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        })
        .await
    }

    /// Evaluates `expr` in the page; its value as a string.
    async fn eval(&mut self, expr: &str) -> String {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
            )
            .await;
        r["result"]["value"].as_str().unwrap_or_default().to_owned()
    }

    /// Polls `expr` until `ok` holds of its value, within PAGE_WAIT.
    async fn wait_for(&mut self, expr: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let v = self.eval(expr).await;
            if ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} still {v:?} after {PAGE_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The page target's DevTools address, from the browser's `/json/list`.
fn page_ws_url(browser_ws: &str) -> String {
    let host = browser_ws
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .expect("DevTools host");
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let mut s = std::net::TcpStream::connect(host).expect("DevTools HTTP");
        s.set_read_timeout(Some(common::WAIT)).expect("timeout");
        write!(
            s,
            "GET /json/list HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .expect("GET");
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("[]");
        let targets: Value = serde_json::from_str(body).unwrap_or(json!([]));
        if let Some(url) = targets.as_array().and_then(|ts| {
            ts.iter()
                .find(|t| {
                    t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with("file:"))
                })
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        }) {
            return url.to_owned();
        }
        assert!(Instant::now() < deadline, "no page target: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

#[tokio::test]
async fn mqtt_js_in_headless_chromium_receives_mosquitto_pub_messages() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/index.html");
    let mqtt_js = page.with_file_name("node_modules/mqtt/dist/mqtt.min.js");
    assert!(
        mqtt_js.exists(),
        "{} is missing: run `npm ci --prefix tests/browser` (as .ci/run does)",
        mqtt_js.display()
    );
    let b = Broker::spawn(None, &["--ws-listen", "127.0.0.1:0"]);
    let ws = b.addr_of("ws", 0);
    let profile = tempfile::TempDir::new().expect("profile dir");
    let url = format!("file://{}?port={}", page.display(), ws.port());
    let chromium = match start_chromium(&url, profile.path()) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIPPED: Chromium cannot start, so the browser test did not run: {why}");
            return;
        }
    };
    let mut cdp = Cdp::connect(&page_ws_url(&chromium.browser_ws)).await;
    let status = "document.getElementById('status').textContent";
    let got = cdp
        .wait_for(status, |s| s == "subscribed" || s.starts_with("error"))
        .await;
    let log: Vec<String> = chromium.stderr.try_iter().collect();
    assert_eq!(got, "subscribed", "Chromium stderr:\n{}", log.join("\n"));
    b.wait_for_log("client_id=browser-test", common::WAIT);
    for (topic, payload) in [
        ("sensors/temperature", "21.5"),
        ("sensors/humidity", "40"),
        ("other/ignored", "x"),
    ] {
        mosquitto_pub(
            b.port(),
            "mqttv311",
            &["-t", topic, "-m", payload, "-q", "1"],
        )
        .await;
    }
    let items =
        "Array.from(document.querySelectorAll('#messages li')).map(li => li.textContent).join('|')";
    let shown = cdp
        .wait_for(items, |s| s.split('|').count() >= 2 && !s.is_empty())
        .await;
    assert_eq!(shown, "sensors/temperature 21.5|sensors/humidity 40");
    let shot = cdp
        .call("Page.captureScreenshot", json!({ "format": "png" }))
        .await;
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("base64 PNG");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = artifacts_dir().join("browser-ws.png");
    std::fs::write(&path, &png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
    assert!(
        b.metric("sluice_listener_connections{listener=\"ws\"}") >= 1.0,
        "the browser is counted on the ws listener"
    );
}
