//! The `sluice` command: parse flags, load and validate the config, run the broker until
//! SIGINT/SIGTERM, then shut down within the grace period.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::broker::Broker;
use sluice::config::{Config, ListenerConfig, ListenerKind, DEFAULT_CONFIG_TOML};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// sluice: an MQTT 3.1/3.1.1/5.0 broker whose acknowledged QoS 1 messages are never lost.
///
/// With no arguments it serves plain MQTT on 127.0.0.1:1883, keeps its data in ./data and
/// serves Prometheus metrics, the admin API and the console on 127.0.0.1:9641 (/metrics,
/// /api/v1/..., /). When ready it prints one line, `sluice ready mqtt=ADDR ...`, naming
/// every bound address (mqtt=, mqtts=, ws=, wss=, metrics=, admin=).
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about)]
struct Cli {
    /// TOML config file (see `sluice config` for every option and its default).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Plain MQTT listener address, replacing the config's listeners; repeatable; port 0
    /// picks a free port.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Vec<SocketAddr>,
    /// Directory for the durable log.
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// HTTP address for /metrics, and for the admin API and console unless
    /// --admin-listen gives them their own (port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<SocketAddr>,
    /// A port of their own for the admin API and console (overrides `[admin] listen`).
    #[arg(long, value_name = "HOST:PORT")]
    admin_listen: Option<SocketAddr>,
    /// TLS listener address (needs --tls-cert and --tls-key); added to the listeners.
    #[arg(long, value_name = "HOST:PORT", requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Option<SocketAddr>,
    /// MQTT over WebSocket listener address (path /mqtt); added to the listeners.
    #[arg(long, value_name = "HOST:PORT")]
    ws_listen: Option<SocketAddr>,
    /// PEM certificate chain for --tls-listen.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls-listen.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: --tls-listen then requires client certificates signed by it.
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Seconds between `$SYS/broker/...` updates; 0 publishes none (overrides
    /// `[metrics] sys_interval_secs`).
    #[arg(long, value_name = "SECS")]
    sys_interval: Option<u64>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the commented default configuration file.
    Config,
    /// Inspect or repair the durable log in the data dir (the broker must be stopped).
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Inspect and act on a running broker through its admin HTTP API (tables, or the
    /// API's JSON with --json).
    Ctl(Box<CtlArgs>),
    /// Work with the dead-letter queue of a running broker.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Add or update USER in a mosquitto-format password file (PBKDF2-SHA512, `$7$`,
    /// readable by mosquitto too). The password is read from --password or from the
    /// first line of standard input.
    Passwd {
        /// The password file; created if missing.
        file: PathBuf,
        user: String,
        #[arg(long)]
        password: Option<String>,
        /// PBKDF2 iterations. The default suits machine credentials (long random
        /// secrets); raise it for passwords people choose (OWASP: 210000).
        #[arg(long, default_value_t = sluice::auth::DEFAULT_PBKDF2_ITERATIONS,
              value_parser = clap::value_parser!(u32).range(1..))]
        iterations: u32,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Re-publish dead letters to their original topics: the same as
    /// `sluice ctl dead-letters replay`, through the admin API. Each selected dead letter
    /// leaves the queue only after its re-publish is durable; the others stay.
    Replay(Box<DlqReplayArgs>),
}

#[derive(Debug, clap::Args)]
struct DlqReplayArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    select: DeadLetterSelect,
}

#[derive(Debug, clap::Args)]
struct CtlArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: CtlCommand,
}

/// Where the admin API is, and how to print its answers.
#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// The admin API: http://HOST:PORT (the `admin=` of the ready line).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9641")]
    url: String,
    /// Bearer token for a broker that wants one (default: $SLUICE_ADMIN_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// PEM CA certificates to verify an https:// broker with.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Bound, in seconds, on each request.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout_secs: u64,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Connected clients.
    Clients,
    /// Sessions, online and offline persistent ones, with their backlog.
    Sessions {
        /// Most queued first.
        #[arg(long)]
        by_backlog: bool,
    },
    /// Disconnect a client (MQTT 5: DISCONNECT 0x98 Administrative action).
    Kick {
        client_id: String,
        /// Also end its session; what it held becomes session_expired dead letters.
        #[arg(long)]
        discard_session: bool,
    },
    /// List, replay or purge dead letters.
    #[command(name = "dead-letters")]
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// List or clear retained messages.
    Retained {
        #[command(subcommand)]
        action: RetainedAction,
    },
    /// The broker's counters and gauges (what $SYS publishes).
    Stats,
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// List the queued dead letters (all, or those selected).
    List(DeadLetterSelect),
    /// Re-publish the selected dead letters to their original topics; each is removed
    /// only after its re-publish is durable.
    Replay(DeadLetterSelect),
    /// Remove the selected dead letters for good.
    Purge(DeadLetterSelect),
}

#[derive(Debug, Subcommand)]
enum RetainedAction {
    /// Retained messages (all, or those matching --topic).
    List {
        /// An MQTT filter.
        #[arg(long, value_name = "FILTER")]
        topic: Option<String>,
    },
    /// Clear the retained message on TOPIC.
    Clear { topic: String },
}

#[derive(Debug, Clone, clap::Args)]
struct DeadLetterSelect {
    /// Only this reason (repeatable): queue_full, max_attempts, expired, too_large,
    /// no_subscribers, session_expired.
    #[arg(long = "reason", value_name = "REASON", value_parser = sluice::replay::parse_reason)]
    reasons: Vec<sluice::dead_letter::DeadLetterReason>,
    /// Only those whose original topic matches this MQTT filter (repeatable).
    #[arg(long = "topic", value_name = "FILTER")]
    topics: Vec<String>,
    /// Only this dead letter id (repeatable; see the ID column of `list`).
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<u64>,
    /// Every dead letter (replay and purge need a selection or --all).
    #[arg(long)]
    all: bool,
}

impl DeadLetterSelect {
    fn is_empty(&self) -> bool {
        self.reasons.is_empty() && self.topics.is_empty() && self.ids.is_empty()
    }

    fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "reasons": self.reasons.iter().map(|r| r.label()).collect::<Vec<_>>(),
            "topics": self.topics,
            "ids": self.ids,
            "all": self.all,
        })
    }

    fn query(&self) -> Vec<(String, String)> {
        let mut q = Vec::new();
        q.extend(
            self.reasons
                .iter()
                .map(|r| ("reason".into(), r.label().into())),
        );
        q.extend(self.topics.iter().map(|t| ("topic".into(), t.clone())));
        q.extend(self.ids.iter().map(|i| ("id".into(), i.to_string())));
        q
    }
}

#[derive(Debug, Subcommand)]
enum StoreAction {
    /// Read the whole log and report on it; corruption is reported with file and offset.
    Check {
        /// Cut the log at its first corrupt record (and drop later segments) so the
        /// broker can start with the longest valid prefix. What follows the cut is lost.
        #[arg(long)]
        salvage: bool,
    },
}

/// Exit code for a bad configuration (EX_CONFIG is 78; sysexits' EX_USAGE, 64, is what
/// operators' scripts expect from us for any bad input at start-up).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Config) = cli.command {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Dlq {
        command: DlqCommand::Replay(args),
    }) = cli.command
    {
        let DlqReplayArgs { api, select } = *args;
        return ctl(CtlArgs {
            api,
            command: CtlCommand::DeadLetters {
                action: DeadLetterAction::Replay(select),
            },
        });
    }
    if let Some(Command::Ctl(args)) = cli.command {
        return ctl(*args);
    }
    if let Some(Command::Passwd {
        file,
        user,
        password,
        iterations,
    }) = &cli.command
    {
        return report(passwd(file, user, password.as_deref(), *iterations));
    }
    init_logging();
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(Command::Store {
        action: StoreAction::Check { salvage },
    }) = cli.command
    {
        return report(store_check(&config.data_dir, salvage));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sys_interval = Duration::from_secs(config.metrics.sys_interval_secs);
    match runtime.block_on(run(config, sys_interval)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice ctl`: exit 0 on success, 1 on any error (the API's message is printed).
fn ctl(args: CtlArgs) -> ExitCode {
    use sluice::ctl::Request;
    let request = match args.command {
        CtlCommand::Clients => Request::Clients,
        CtlCommand::Sessions { by_backlog } => Request::Sessions { by_backlog },
        CtlCommand::Kick {
            client_id,
            discard_session,
        } => Request::Kick {
            client_id,
            discard_session,
        },
        CtlCommand::DeadLetters { action } => match action {
            DeadLetterAction::List(sel) => Request::DeadLetters { query: sel.query() },
            DeadLetterAction::Replay(sel) | DeadLetterAction::Purge(sel)
                if sel.is_empty() && !sel.all =>
            {
                eprintln!("sluice ctl: select dead letters with --reason, --topic, --id or --all");
                return ExitCode::from(2);
            }
            DeadLetterAction::Replay(sel) => Request::Replay {
                selection: sel.body(),
            },
            DeadLetterAction::Purge(sel) => Request::Purge {
                selection: sel.body(),
            },
        },
        CtlCommand::Retained { action } => match action {
            RetainedAction::List { topic } => Request::Retained { filter: topic },
            RetainedAction::Clear { topic } => Request::ClearRetained { topic },
        },
        CtlCommand::Stats => Request::Stats,
    };
    let api = args.api;
    let target = sluice::ctl::Target {
        url: api.url,
        token: api
            .token
            .or_else(|| std::env::var("SLUICE_ADMIN_TOKEN").ok()),
        cacert: api.cacert,
        timeout: Duration::from_secs(api.timeout_secs),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sluice::ctl::run(&target, &request, api.json)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn passwd(file: &Path, user: &str, password: Option<&str>, iterations: u32) -> anyhow::Result<()> {
    let password = match password {
        Some(p) => p.to_owned(),
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    anyhow::ensure!(!password.is_empty(), "refusing an empty password");
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let updated = sluice::auth::upsert_password_line_with_iterations(
        &text,
        user,
        password.as_bytes(),
        iterations,
    )?;
    write_private(file, updated.as_bytes())
        .with_context(|| format!("cannot write {}", file.display()))?;
    println!("{user} written to {}", file.display());
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file and a rename, mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn store_check(dir: &Path, salvage: bool) -> anyhow::Result<()> {
    let _lock = sluice::store::lock_dir(dir).context("the store must not be in use")?;
    if salvage {
        let r = sluice::store::salvage(dir).context("salvage failed")?;
        match &r.truncated_at {
            Some((file, offset)) => println!(
                "cut {} at offset {offset}: {}; removed {} later segment(s); {} bytes dropped; {} records kept",
                file.display(),
                r.why.as_deref().unwrap_or("corrupt record"),
                r.removed_segments.len(),
                r.bytes_dropped,
                r.records_kept
            ),
            None => println!("nothing to salvage: {} records, all valid", r.records_kept),
        }
        return Ok(());
    }
    match sluice::store::check(dir) {
        Ok(r) => {
            println!(
                "ok: {} segment(s), {} records, {} bytes ({} live); {} session(s), {} queued message(s), {} retained",
                r.segments, r.records, r.bytes, r.live_bytes, r.sessions, r.queued_entries, r.retained
            );
            if let Some((file, offset)) = r.torn_tail {
                println!(
                    "torn tail in {} at offset {offset}: start-up will truncate it",
                    file.display()
                );
            }
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e)
            .context("the log is corrupt; `sluice store check --salvage` cuts it at the damage")),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(cli: &Cli) -> Result<Config, sluice::config::ConfigError> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if !cli.listen.is_empty() {
        config.listeners = cli
            .listen
            .iter()
            .map(|&bind| ListenerConfig::tcp(bind))
            .collect();
    }
    if let Some(bind) = cli.ws_listen {
        let mut ws = ListenerConfig::tcp(bind);
        ws.kind = ListenerKind::Ws;
        config.listeners.push(ws);
    }
    if let Some(bind) = cli.tls_listen {
        let mut tls = ListenerConfig::tcp(bind);
        tls.kind = ListenerKind::Tls;
        tls.cert_file = cli.tls_cert.clone();
        tls.key_file = cli.tls_key.clone();
        tls.client_ca_file = cli.tls_client_ca.clone();
        tls.require_client_cert = cli.tls_client_ca.is_some();
        config.listeners.push(tls);
    }
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(addr) = cli.metrics_listen {
        config.metrics.listen = addr;
    }
    if let Some(addr) = cli.admin_listen {
        config.admin.listen = Some(addr);
    }
    if let Some(secs) = cli.sys_interval {
        config.metrics.sys_interval_secs = secs;
    }
    config.validate()?;
    Ok(config)
}

async fn run(config: Config, sys_interval: Duration) -> anyhow::Result<()> {
    // Signals are watched before anything is announced, so a SIGTERM right after the
    // ready line is an orderly shutdown, not the default kill.
    let signals = Signals::new()?;
    // Before the broker starts, so every metric handle it takes is the real one.
    let handle = sluice::metrics::install(config.metrics.enabled)
        .context("cannot install the metrics recorder")?;
    // Bound before the store opens: a taken HTTP port fails start-up cleanly.
    let http = sluice::admin::server::Bound::bind(
        config.metrics.enabled,
        config.metrics.listen,
        &config.admin,
    )
    .await
    .context("cannot start the HTTP server")?;
    let admin_config = config.admin.clone();
    let running = Broker::start(config).await.context("start-up failed")?;
    let broker = &running.broker;
    let mut ready = String::from("sluice ready");
    for (scheme, addr) in &running.listener_addrs {
        ready.push_str(&format!(" {scheme}={addr}"));
    }
    if let (Some(_), Some(addr)) = (&handle, http.metrics_addr()) {
        ready.push_str(&format!(" metrics={addr}"));
    }
    if let Some(addr) = http.admin_addr() {
        ready.push_str(&format!(" admin={addr}"));
    }

    let tokens = http.reloader();
    let b = Arc::clone(broker);
    let refresh: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        sluice::sys::sample(&b, false);
    });
    http.serve(
        sluice::admin::Admin::new(Arc::clone(broker)),
        admin_config,
        handle.clone(),
        refresh,
        broker.shutdown.clone(),
    );
    sluice::sys::start(broker, sys_interval, handle);
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{ready}").context("cannot write the ready line")?;
        stdout.flush().context("cannot write the ready line")?;
    }
    tracing::info!(addrs = ?running.mqtt_addrs, "sluice is ready");
    signals
        .wait_for_shutdown(&running.broker, &|| tokens.reload())
        .await;
    tracing::info!("shutting down");
    running.broker.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGINT/SIGTERM stop the broker; SIGHUP reloads certificates, passwords, ACLs and the
/// admin tokens.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
        })
    }

    async fn wait_for_shutdown(mut self, broker: &Broker, reload_tokens: &dyn Fn()) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading certificates, password, ACL and admin token files");
                    broker.reload();
                    reload_tokens();
                }
            }
        }
    }
}
