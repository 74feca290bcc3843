//! The one HTTP server sluice runs: `/metrics` for Prometheus, the admin API under
//! `/api/v1/`, and the console page at `/`.
//!
//! By default everything is served on the metrics address (`[metrics] listen`); with
//! `[admin] listen` the API and console get a port of their own and the metrics address
//! keeps `/metrics` only. Started by main.rs after the broker; stops on the broker's
//! shutdown. Requests are bounded: at most `[admin] max_concurrent_requests` at once
//! (more wait), a body of at most [`MAX_BODY`], and `[admin] request_timeout_secs` each.
//! A client has `request_timeout_secs` to send each request head, and at most
//! [`MAX_CONNECTIONS`] connections are open per port. Every API request passes [`guard`] (tokens, see src/admin/auth.rs); `/metrics` does
//! too when `[admin] metrics_require_token`. The console's static files need no token:
//! they hold no data, and the page asks for a token when the API wants one. Handlers
//! reach the broker only through [`Admin`]; none blocks the runtime. With `[admin]
//! cert_file`/`key_file` everything is served over HTTPS (rustls, built as for a TLS
//! listener, reloaded on SIGHUP); each handshake runs in its connection's task, bounded
//! by [`TLS_HANDSHAKE_TIMEOUT`].

use super::auth::{Tokens, Verdict};
use super::{Admin, AdminError, DeadLetterSelection, DEFAULT_PAGE, MAX_PAGE};
use crate::config::AdminConfig;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::RwLock;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::timeout::TimeoutLayer;

/// Largest request body accepted (a dead-letter selection is a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// A TLS handshake not finished within this is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections per port; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot load the admin token file")]
    Tokens(#[from] super::auth::TokenError),
    #[error("cannot set up HTTPS")]
    Tls(#[from] crate::listener::tls::TlsError),
}

/// The HTTPS acceptor, replaced whole on SIGHUP.
type Acceptor = Arc<RwLock<tokio_rustls::TlsAcceptor>>;

/// The rustls configuration for `[admin] cert_file`/`key_file`, built as a TLS
/// listener's is.
fn tls_acceptor(
    admin: &AdminConfig,
    bind: SocketAddr,
) -> Result<Option<tokio_rustls::TlsAcceptor>, ServerError> {
    if admin.cert_file.is_none() {
        return Ok(None);
    }
    let mut listener = crate::config::ListenerConfig::tcp(bind);
    listener.kind = crate::config::ListenerKind::Tls;
    listener.cert_file = admin.cert_file.clone();
    listener.key_file = admin.key_file.clone();
    let config = crate::listener::tls::server_config(&listener)?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(config)))
}

/// The sockets, bound before the broker starts so a taken port fails start-up cleanly.
pub struct Bound {
    /// Serves `/metrics` (and everything else unless `api` is set).
    main: Option<(TcpListener, SocketAddr)>,
    /// The API and console's own port (`[admin] listen`).
    api: Option<(TcpListener, SocketAddr)>,
    tokens: Arc<RwLock<Arc<Tokens>>>,
    token_file: Option<PathBuf>,
    tls: Option<Acceptor>,
    config: AdminConfig,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("main", &self.metrics_addr())
            .field("admin", &self.admin_addr())
            .field("https", &self.tls.is_some())
            .finish()
    }
}

/// Reloads the token file and the HTTPS certificate (SIGHUP); what fails to load keeps
/// the version in force, and the log says why.
#[derive(Clone)]
pub struct Reloader {
    tokens: Arc<RwLock<Arc<Tokens>>>,
    token_file: Option<PathBuf>,
    tls: Option<Acceptor>,
    config: AdminConfig,
}

impl Reloader {
    pub fn reload(&self) {
        if let Some(path) = &self.token_file {
            match Tokens::load(path) {
                Ok(t) => {
                    tracing::info!(tokens = t.len(), "admin token file reloaded");
                    *self.tokens.write() = Arc::new(t);
                }
                Err(e) => {
                    tracing::error!(error = %e, "admin token reload failed; keeping the previous tokens")
                }
            }
        }
        if let Some(tls) = &self.tls {
            let bind = SocketAddr::from(([127, 0, 0, 1], 0));
            match tls_acceptor(&self.config, bind) {
                Ok(Some(fresh)) => {
                    *tls.write() = fresh;
                    tracing::info!("admin HTTPS certificate reloaded");
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "admin HTTPS reload failed; keeping the previous certificate")
                }
            }
        }
    }
}

async fn bind_one(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let bind_err = |source| ServerError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    Ok((listener, local))
}

impl Bound {
    /// Binds the metrics address (when metrics are on) and `[admin] listen`, and loads
    /// the token file. With metrics off and no `[admin] listen`, nothing is served.
    pub async fn bind(
        metrics_enabled: bool,
        metrics_listen: SocketAddr,
        admin: &AdminConfig,
    ) -> Result<Bound, ServerError> {
        let tokens = match &admin.token_file {
            Some(path) => Tokens::load(path)?,
            None => Tokens::default(),
        };
        let main = if metrics_enabled {
            Some(bind_one(metrics_listen).await?)
        } else {
            None
        };
        let api = match admin.listen {
            Some(addr) => Some(bind_one(addr).await?),
            None => None,
        };
        let tls = tls_acceptor(admin, metrics_listen)?.map(|a| Arc::new(RwLock::new(a)));
        Ok(Bound {
            main,
            api,
            tokens: Arc::new(RwLock::new(Arc::new(tokens))),
            token_file: admin.token_file.clone(),
            tls,
            config: admin.clone(),
        })
    }

    /// Where `/metrics` is served, when metrics are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.main.as_ref().map(|(_, a)| *a)
    }

    /// Where the API and console are served.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().or(self.main.as_ref()).map(|(_, a)| *a)
    }

    pub fn reloader(&self) -> Reloader {
        Reloader {
            tokens: Arc::clone(&self.tokens),
            token_file: self.token_file.clone(),
            tls: self.tls.clone(),
            config: self.config.clone(),
        }
    }

    /// Starts serving until `shutdown`. `prometheus` is None when metrics are off;
    /// `before_render` refreshes the sampled gauges before each scrape.
    pub fn serve(
        self,
        admin: Admin,
        config: AdminConfig,
        prometheus: Option<PrometheusHandle>,
        before_render: Arc<dyn Fn() + Send + Sync>,
        shutdown: CancellationToken,
    ) {
        let state = AppState {
            admin,
            tokens: self.tokens,
            config: Arc::new(config),
            prometheus,
            before_render,
        };
        let limits = |router: Router| {
            router
                .layer(DefaultBodyLimit::max(MAX_BODY))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    Duration::from_secs(state.config.request_timeout_secs),
                ))
                .layer(GlobalConcurrencyLimitLayer::new(
                    state.config.max_concurrent_requests,
                ))
        };
        let metrics = metrics_routes(&state);
        let api = api_routes(&state);
        let tls = self.tls;
        let conns = || ConnLimits {
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            header_timeout: Duration::from_secs(state.config.request_timeout_secs),
        };
        match (self.main, self.api) {
            (Some(main), None) => spawn(main.0, limits(metrics.merge(api)), tls, conns(), shutdown),
            (main, Some(api_listener)) => {
                if let Some(main) = main {
                    spawn(
                        main.0,
                        limits(metrics),
                        tls.clone(),
                        conns(),
                        shutdown.clone(),
                    );
                }
                spawn(api_listener.0, limits(api), tls, conns(), shutdown);
            }
            (None, None) => {}
        }
    }
}

fn spawn(
    listener: TcpListener,
    router: Router,
    tls: Option<Acceptor>,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    tokio::spawn(serve_loop(
        listener,
        router.fallback(not_found),
        tls,
        limits,
        shutdown,
    ));
}

/// What bounds the connections of one port.
#[derive(Clone)]
struct ConnLimits {
    /// One permit per open connection; at [`MAX_CONNECTIONS`] the accept loop waits.
    permits: Arc<tokio::sync::Semaphore>,
    /// Time a client has to send each request head (idle keep-alive included).
    header_timeout: Duration,
}

/// Accepts connections until `shutdown`. Each gets its own task for the TLS handshake
/// (bounded) and its requests, so a slow client holds up nobody else; a client that
/// sends no complete request head within the header timeout is dropped, and at most
/// [`MAX_CONNECTIONS`] are open at once.
async fn serve_loop(
    listener: TcpListener,
    router: Router,
    tls: Option<Acceptor>,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = Arc::clone(&limits.permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let acceptor = tls.as_ref().map(|t| t.read().clone());
        let service = hyper_util::service::TowerToHyperService::new(
            router.clone().layer(axum::Extension(ConnectInfo(peer))),
        );
        let shutdown = shutdown.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let served = match acceptor {
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        served = conn => served,
                    }
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let stream = match handshake.await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "admin TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        served = conn => served,
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "admin HTTP connection ended");
            }
        });
    }
}

#[derive(Clone)]
struct AppState {
    admin: Admin,
    tokens: Arc<RwLock<Arc<Tokens>>>,
    config: Arc<AdminConfig>,
    prometheus: Option<PrometheusHandle>,
    before_render: Arc<dyn Fn() + Send + Sync>,
}

fn metrics_routes(state: &AppState) -> Router {
    let router = Router::new().route("/metrics", get(render_metrics));
    let router = if state.config.metrics_require_token {
        router.layer(middleware::from_fn_with_state(state.clone(), guard))
    } else {
        router
    };
    router.with_state(state.clone())
}

fn api_routes(state: &AppState) -> Router {
    let api = Router::new()
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/clients/{id}", get(client).delete(kick))
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/sessions/{id}", get(session))
        .route("/api/v1/subscriptions", get(subscriptions))
        .route("/api/v1/retained", get(retained).delete(clear_retained))
        .route("/api/v1/dead-letters", get(dead_letters))
        .route("/api/v1/dead-letters/replay", post(replay))
        .route("/api/v1/dead-letters/purge", post(purge))
        .route("/api/v1/delayed", get(delayed))
        .route("/api/v1/delayed/{id}", delete(cancel_delayed))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/{*rest}", get(api_not_found).fallback(api_not_found))
        .layer(middleware::from_fn_with_state(state.clone(), guard));
    Router::new()
        .merge(api)
        .merge(super::console::routes())
        .with_state(state.clone())
}

/// A JSON error: `{"error": "...", "param": "..."}`.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<&'static str>,
}

fn error(status: StatusCode, message: impl Into<String>, param: Option<&'static str>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
            param,
        }),
    )
        .into_response()
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match &self {
            AdminError::BadParam { param, .. } => {
                error(StatusCode::BAD_REQUEST, self.to_string(), Some(param))
            }
            AdminError::NotFound(_) => error(StatusCode::NOT_FOUND, self.to_string(), None),
            AdminError::Store(_) => error(StatusCode::SERVICE_UNAVAILABLE, self.to_string(), None),
            AdminError::Failed(_) => {
                error(StatusCode::INTERNAL_SERVER_ERROR, self.to_string(), None)
            }
        }
    }
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not found: try /metrics, /api/v1/stats or /",
        None,
    )
}

async fn api_not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such API endpoint", None)
}

/// Checks the request's bearer token (see [`Tokens::decide`]): 401 or 403, or on.
async fn guard(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let write = !matches!(*request.method(), Method::GET | Method::HEAD);
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().as_bytes().to_vec());
    let loopback = state.config.loopback_without_token && peer.ip().is_loopback();
    let tokens = Arc::clone(&state.tokens.read());
    match tokens.decide(loopback, bearer.as_deref(), write) {
        Verdict::Allow => next.run(request).await,
        Verdict::Unauthenticated => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "a bearer token is needed (Authorization: Bearer TOKEN)",
                None,
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        Verdict::Forbidden => error(
            StatusCode::FORBIDDEN,
            "this token is read-only; the request needs a read-write token",
            None,
        ),
    }
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = &state.prometheus else {
        return error(StatusCode::NOT_FOUND, "metrics are disabled", None);
    };
    (state.before_render)();
    let body = handle.render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Query parameters, repeats kept, each checked by name.
struct Params(Vec<(String, String)>);

impl Params {
    fn one(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(',').map(str::to_string))
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// Refuses parameters the endpoint does not know, naming the first.
    fn only(&self, known: &[&'static str]) -> Result<(), AdminError> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(AdminError::BadParam {
                param: "query",
                why: format!("unknown parameter {k:?} (known: {})", known.join(", ")),
            }),
            None => Ok(()),
        }
    }

    fn limit(&self) -> Result<usize, AdminError> {
        match self.one("limit") {
            None => Ok(DEFAULT_PAGE),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
                _ => Err(AdminError::BadParam {
                    param: "limit",
                    why: format!("{v:?} is not a number from 1 to {MAX_PAGE}"),
                }),
            },
        }
    }

    fn flag(&self, name: &'static str) -> Result<bool, AdminError> {
        match self.one(name) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(v) => Err(AdminError::BadParam {
                param: name,
                why: format!("{v:?} is not true or false"),
            }),
        }
    }
}

type Q = Query<Vec<(String, String)>>;
type ApiResult<T> = Result<Json<T>, AdminError>;

const PAGING: [&str; 2] = ["limit", "after"];

async fn clients(
    State(s): State<AppState>,
    Query(q): Q,
) -> ApiResult<super::Page<super::ClientEntry>> {
    let p = Params(q);
    p.only(&PAGING)?;
    Ok(Json(s.admin.clients(p.one("after"), p.limit()?)))
}

async fn client(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<super::ClientEntry> {
    Ok(Json(s.admin.client(&id)?))
}

async fn kick(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Q,
) -> ApiResult<super::KickOutcome> {
    let p = Params(q);
    p.only(&["discard_session"])?;
    let discard = p.flag("discard_session")?;
    let admin = s.admin.clone();
    Ok(Json(
        detached(async move { admin.kick(&id, discard).await }).await?,
    ))
}

async fn sessions(
    State(s): State<AppState>,
    Query(q): Q,
) -> ApiResult<super::Page<super::SessionEntry>> {
    let p = Params(q);
    p.only(&["limit", "after", "sort"])?;
    let by_backlog = match p.one("sort") {
        None | Some("client_id") => false,
        Some("backlog") => true,
        Some(v) => {
            return Err(AdminError::BadParam {
                param: "sort",
                why: format!("{v:?} is not backlog or client_id"),
            })
        }
    };
    Ok(Json(s.admin.sessions(
        by_backlog,
        p.one("after"),
        p.limit()?,
    )?))
}

async fn session(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<super::SessionEntry> {
    Ok(Json(s.admin.session(&id)?))
}

async fn subscriptions(
    State(s): State<AppState>,
    Query(q): Q,
) -> ApiResult<super::Page<super::SubscriptionEntry>> {
    let p = Params(q);
    p.only(&["limit", "after", "filter", "topic"])?;
    Ok(Json(s.admin.subscriptions(
        p.one("filter"),
        p.one("topic"),
        p.one("after"),
        p.limit()?,
    )?))
}

async fn retained(
    State(s): State<AppState>,
    Query(q): Q,
) -> ApiResult<super::Page<super::RetainedEntry>> {
    let p = Params(q);
    p.only(&["limit", "after", "topic"])?;
    Ok(Json(s.admin.retained(
        p.one("topic"),
        p.one("after"),
        p.limit()?,
    )?))
}

async fn clear_retained(State(s): State<AppState>, Query(q): Q) -> Result<StatusCode, AdminError> {
    let p = Params(q);
    p.only(&["topic"])?;
    let topic = p.one("topic").ok_or(AdminError::BadParam {
        param: "topic",
        why: "the topic to clear is required".into(),
    })?;
    let (admin, topic) = (s.admin.clone(), topic.to_string());
    detached(async move { admin.clear_retained(&topic).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delayed(
    State(s): State<AppState>,
    Query(q): Q,
) -> ApiResult<super::Page<super::DelayedEntry>> {
    let p = Params(q);
    p.only(&PAGING)?;
    Ok(Json(s.admin.delayed(p.one("after"), p.limit()?)))
}

async fn cancel_delayed(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, AdminError> {
    let id: u64 = id.parse().map_err(|_| AdminError::BadParam {
        param: "id",
        why: format!("{id:?} is not a delayed message id"),
    })?;
    let admin = s.admin.clone();
    detached(async move { admin.cancel_delayed(id).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn selection_from_query(p: &Params) -> Result<DeadLetterSelection, AdminError> {
    let mut ids = Vec::new();
    for v in p.all("id") {
        ids.push(v.parse().map_err(|_| AdminError::BadParam {
            param: "id",
            why: format!("{v:?} is not a dead letter id"),
        })?);
    }
    Ok(DeadLetterSelection {
        reasons: p.all("reason"),
        topics: p.all("topic"),
        ids,
        all: false,
    })
}

async fn dead_letters(
    State(s): State<AppState>,
    Query(q): Q,
) -> ApiResult<super::Page<super::DeadLetterEntry>> {
    let p = Params(q);
    p.only(&["limit", "after", "reason", "topic", "id"])?;
    let sel = selection_from_query(&p)?;
    let after = match p.one("after") {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| AdminError::BadParam {
            param: "after",
            why: format!("{v:?} is not a dead letter id"),
        })?),
    };
    Ok(Json(s.admin.dead_letters(&sel, after, p.limit()?)?))
}

/// The body of replay and purge: a JSON [`DeadLetterSelection`].
fn selection_from_body(body: &Bytes) -> Result<DeadLetterSelection, AdminError> {
    serde_json::from_slice(body).map_err(|e| AdminError::BadParam {
        param: "body",
        why: format!(
            "expected {{\"reasons\": [..], \"topics\": [..], \"ids\": [..], \"all\": bool}}: {e}"
        ),
    })
}

/// Runs an action to its end in a task of its own: a request that times out or whose
/// client goes away must not stop a replay or purge halfway (the letters it has taken
/// out of the queue would stay out until a restart).
async fn detached<T, F>(work: F) -> Result<T, AdminError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, AdminError>> + Send + 'static,
{
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(e) => Err(AdminError::Failed(e.to_string())),
    }
}

async fn replay(State(s): State<AppState>, body: Bytes) -> Result<Response, AdminError> {
    let sel = selection_from_body(&body)?;
    let admin = s.admin.clone();
    let out = detached(async move { admin.replay(&sel).await }).await?;
    let status = if out.error.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok((status, Json(out)).into_response())
}

async fn purge(State(s): State<AppState>, body: Bytes) -> ApiResult<super::PurgeOutcome> {
    let sel = selection_from_body(&body)?;
    let admin = s.admin.clone();
    Ok(Json(
        detached(async move { admin.purge(&sel).await }).await?,
    ))
}

async fn stats(State(s): State<AppState>) -> Json<super::Stats> {
    Json(s.admin.stats())
}

async fn cluster(State(s): State<AppState>) -> ApiResult<super::ClusterInfo> {
    s.admin
        .cluster()
        .map(Json)
        .ok_or_else(|| AdminError::NotFound("this broker is not in cluster mode".into()))
}
