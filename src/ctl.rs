//! `sluice ctl`: a thin command-line client of the admin HTTP API (src/admin/server.rs).
//!
//! Owns the HTTP/1.1 requests (hyper's client connection, one request per connection),
//! following `next` through paged lists, and printing: aligned tables for people, the
//! API's JSON as is with `--json`. main.rs parses the flags into a [`Request`] and
//! calls [`run`]. Knows nothing of the broker's internals: everything it shows comes
//! from the API, so it works against any sluice it can reach. Never retries a write.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("invalid --url {0:?}: expected http://HOST:PORT or https://HOST:PORT")]
    Url(String),
    #[error("https needs --cacert (the CA that signed the broker's certificate)")]
    NoCaCert,
    #[error("cannot read the CA certificates in {}: {why}", path.display())]
    CaCert {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP error talking to {addr}: {source}")]
    Http { addr: String, source: hyper::Error },
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("{status}: {message}")]
    Api { status: StatusCode, message: String },
    #[error("the API answered with something that is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// Where the API is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://HOST:PORT` or `https://HOST:PORT` (a path, if any, is ignored).
    pub url: String,
    pub token: Option<String>,
    /// PEM CA certificates to verify an https broker with.
    pub cacert: Option<std::path::PathBuf>,
    pub timeout: Duration,
}

/// What to do.
#[derive(Debug, Clone)]
pub enum Request {
    Clients,
    Sessions {
        by_backlog: bool,
    },
    Kick {
        client_id: String,
        discard_session: bool,
    },
    DeadLetters {
        query: Vec<(String, String)>,
    },
    Replay {
        selection: Value,
    },
    Purge {
        selection: Value,
    },
    Retained {
        filter: Option<String>,
    },
    ClearRetained {
        topic: String,
    },
    Stats,
}

/// Most items `ctl` lists, following pages.
pub const MAX_LISTED: usize = 100_000;

/// Runs `request` against `target` and returns what to print.
pub async fn run(target: &Target, request: &Request, json: bool) -> Result<String, CtlError> {
    let api = Api::new(target)?;
    let value = match request {
        Request::Clients => api.list("/api/v1/clients", &[]).await?,
        Request::Sessions { by_backlog } => {
            let q = if *by_backlog {
                vec![("sort".to_string(), "backlog".to_string())]
            } else {
                Vec::new()
            };
            api.list("/api/v1/sessions", &q).await?
        }
        Request::Kick {
            client_id,
            discard_session,
        } => {
            let mut path = format!("/api/v1/clients/{}", encode(client_id));
            if *discard_session {
                path.push_str("?discard_session=true");
            }
            api.call(Method::DELETE, &path, None).await?
        }
        Request::DeadLetters { query } => api.list("/api/v1/dead-letters", query).await?,
        Request::Replay { selection } => {
            api.call(
                Method::POST,
                "/api/v1/dead-letters/replay",
                Some(selection.to_string()),
            )
            .await?
        }
        Request::Purge { selection } => {
            api.call(
                Method::POST,
                "/api/v1/dead-letters/purge",
                Some(selection.to_string()),
            )
            .await?
        }
        Request::Retained { filter } => {
            let q: Vec<(String, String)> = filter
                .iter()
                .map(|f| ("topic".to_string(), f.clone()))
                .collect();
            api.list("/api/v1/retained", &q).await?
        }
        Request::ClearRetained { topic } => {
            let path = format!("/api/v1/retained?topic={}", encode(topic));
            api.call(Method::DELETE, &path, None).await?;
            Value::String(format!("cleared the retained message on {topic}"))
        }
        Request::Stats => api.call(Method::GET, "/api/v1/stats", None).await?,
    };
    if json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ));
    }
    Ok(render(request, &value))
}

/// Percent-encodes a query or path component.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

struct Api<'a> {
    target: &'a Target,
    authority: String,
    host: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// A rustls client trusting only the CA certificates in `path`.
fn tls_connector(path: &std::path::Path) -> Result<tokio_rustls::TlsConnector, CtlError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let bad = |why: String| CtlError::CaCert {
        path: path.to_owned(),
        why,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

impl<'a> Api<'a> {
    fn new(target: &'a Target) -> Result<Api<'a>, CtlError> {
        let url = if target.url.contains("://") {
            target.url.clone()
        } else {
            format!("http://{}", target.url)
        };
        let uri: Uri = url.parse().map_err(|_| CtlError::Url(target.url.clone()))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("http") => (None, 80),
            Some("https") => {
                let cacert = target.cacert.as_deref().ok_or(CtlError::NoCaCert)?;
                (Some(tls_connector(cacert)?), 443)
            }
            _ => return Err(CtlError::Url(target.url.clone())),
        };
        let host = uri
            .host()
            .ok_or_else(|| CtlError::Url(target.url.clone()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(default_port);
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Api {
            target,
            authority,
            host,
            tls,
        })
    }

    /// Every page of a list (up to [`MAX_LISTED`] items), as one `{"items": [...]}`.
    async fn list(&self, path: &str, query: &[(String, String)]) -> Result<Value, CtlError> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut q: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{k}={}", encode(v)))
                .collect();
            q.push("limit=1000".into());
            if let Some(a) = &after {
                q.push(format!("after={}", encode(a)));
            }
            let page = self
                .call(Method::GET, &format!("{path}?{}", q.join("&")), None)
                .await?;
            if let Some(Value::Array(got)) = page.get("items") {
                items.extend(got.iter().cloned());
            }
            after = page.get("next").and_then(Value::as_str).map(str::to_string);
            if after.is_none() || items.len() >= MAX_LISTED {
                break;
            }
        }
        Ok(serde_json::json!({ "items": items }))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Value, CtlError> {
        let t = self.target.timeout;
        tokio::time::timeout(t, self.call_inner(method, path, body))
            .await
            .map_err(|_| CtlError::Timeout(self.authority.clone(), t))?
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Value, CtlError> {
        let addr = self.authority.clone();
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|source| CtlError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let req = self.request(method, path, body)?;
        match &self.tls {
            None => exchange(TokioIo::new(stream), req, &addr).await,
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|_| CtlError::Url(self.target.url.clone()))?;
                let stream = tls
                    .connect(name, stream)
                    .await
                    .map_err(|source| CtlError::Tls {
                        addr: addr.clone(),
                        source,
                    })?;
                exchange(TokioIo::new(stream), req, &addr).await
            }
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<hyper::Request<Full<Bytes>>, CtlError> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority);
        if let Some(token) = &self.target.token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        Ok(req.body(Full::new(Bytes::from(body.unwrap_or_default())))?)
    }
}

/// Sends `req` over `io` (one request, HTTP/1.1) and reads the JSON answer.
async fn exchange<IO>(
    io: TokioIo<IO>,
    req: hyper::Request<Full<Bytes>>,
    addr: &str,
) -> Result<Value, CtlError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    {
        let http = |source| CtlError::Http {
            addr: addr.to_string(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(http)?;
        tokio::spawn(connection);
        let response = sender.send_request(req).await.map_err(http)?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(http)?
            .to_bytes();
        if status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let value: Result<Value, _> = serde_json::from_slice(&bytes);
        if !status.is_success() {
            let message = value
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(CtlError::Api { status, message });
        }
        value.map_err(CtlError::NotJson)
    }
}

/// A cell of a table: strings as they are, null as `-`, the rest as JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.get("filter").map(cell).unwrap_or_else(|| cell(x)))
            .collect::<Vec<_>>()
            .join(","),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Aligned columns `(header, field)` of `items`, then a count line.
fn table(items: &[Value], columns: &[(&str, &str)]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| columns.iter().map(|(_, f)| cell(&i[*f])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(c, (h, _))| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (c, text) in cells.iter().enumerate() {
            let pad = widths[c].saturating_sub(text.chars().count());
            l.push_str(text);
            if c + 1 < cells.len() {
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(columns.iter().map(|(h, _)| *h).collect(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    let _ = writeln!(out, "({} total)", items.len());
    out
}

fn render(request: &Request, v: &Value) -> String {
    let items = v
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match request {
        Request::Clients => table(
            &items,
            &[
                ("CLIENT ID", "client_id"),
                ("USER", "username"),
                ("PEER", "peer"),
                ("LISTENER", "listener"),
                ("MQTT", "protocol"),
                ("CONNECTED SINCE", "connected_since"),
                ("KEEPALIVE", "keep_alive_secs"),
                ("INFLIGHT", "inflight"),
                ("QUEUED", "queued"),
            ],
        ),
        Request::Sessions { .. } => table(
            &items,
            &[
                ("CLIENT ID", "client_id"),
                ("ONLINE", "online"),
                ("QUEUED", "queued"),
                ("BYTES", "queued_bytes"),
                ("INFLIGHT", "inflight"),
                ("OLDEST (S)", "oldest_queued_age_secs"),
                ("EXPIRY (S)", "expiry_secs"),
                ("SUBSCRIPTIONS", "subscriptions"),
            ],
        ),
        Request::DeadLetters { .. } => table(
            &items,
            &[
                ("ID", "id"),
                ("REASON", "reason"),
                ("TOPIC", "original_topic"),
                ("PUBLISHER", "publisher"),
                ("SUBSCRIBER", "subscriber"),
                ("ATTEMPTS", "attempts"),
                ("FIRST SEEN", "first_seen"),
                ("BYTES", "payload_bytes"),
                ("PREVIEW", "preview"),
            ],
        ),
        Request::Retained { .. } => table(
            &items,
            &[
                ("TOPIC", "topic"),
                ("QOS", "qos"),
                ("BYTES", "payload_bytes"),
                ("RECEIVED", "received_at"),
                ("PREVIEW", "preview"),
            ],
        ),
        Request::Kick { client_id, .. } => {
            let mut out = String::new();
            if v["disconnected"] == true {
                let _ = writeln!(out, "disconnected {client_id} (DISCONNECT 0x98)");
            }
            if v["session_discarded"] == true {
                let _ = writeln!(
                    out,
                    "ended the session of {client_id}; what it held is now session_expired dead letters"
                );
            }
            out
        }
        Request::Replay { .. } => {
            let mut out = format!("replayed {}", cell(&v["replayed"]));
            if let Some(map) = v["by_reason"].as_object().filter(|m| !m.is_empty()) {
                let parts: Vec<String> = map
                    .iter()
                    .map(|(k, n)| format!("{k}: {}", cell(n)))
                    .collect();
                let _ = write!(out, " ({})", parts.join(", "));
            }
            out.push('\n');
            let again = v["no_subscribers_again"].as_u64().unwrap_or(0);
            if again > 0 {
                let _ = writeln!(
                    out,
                    "{again} found no subscriber again and are dead letters again"
                );
            }
            out
        }
        Request::Purge { .. } => format!("purged {}\n", cell(&v["purged"])),
        Request::ClearRetained { .. } => format!("{}\n", cell(v)),
        Request::Stats => {
            let mut out = String::new();
            if let Some(map) = v.as_object() {
                for (k, val) in map {
                    let _ = writeln!(out, "{k:<30} {}", cell(val));
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_count() {
        let items = vec![
            serde_json::json!({"a": "x", "b": 1}),
            serde_json::json!({"a": "longer", "b": null}),
        ];
        let t = table(&items, &[("A", "a"), ("B", "b")]);
        assert_eq!(t, "A       B\nx       1\nlonger  -\n(2 total)\n");
    }

    #[test]
    fn encodes_query_components() {
        assert_eq!(encode("a/#"), "a%2F%23");
        assert_eq!(encode("c-1_x.y~"), "c-1_x.y~");
    }
}
