//! The `sluice` command: parse flags, load and validate the config, run the broker until
//! SIGINT/SIGTERM, then shut down within the grace period.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::broker::Broker;
use sluice::config::{Config, ListenerConfig, ListenerKind, DEFAULT_CONFIG_TOML};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// sluice: an MQTT 3.1/3.1.1/5.0 broker whose acknowledged QoS 1 messages are never lost.
///
/// With no arguments it serves plain MQTT on 127.0.0.1:1883, keeps its data in ./data and
/// serves Prometheus metrics on 127.0.0.1:9641/metrics. When ready it prints one line,
/// `sluice ready mqtt=ADDR ...`, naming every bound address.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about)]
struct Cli {
    /// TOML config file (see `sluice config` for every option and its default).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Plain MQTT listener address, replacing the config's listeners; repeatable; port 0
    /// picks a free port.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Vec<SocketAddr>,
    /// Directory for the durable log.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Prometheus metrics address (port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<SocketAddr>,
    /// Seconds between `$SYS/broker/...` updates; 0 publishes none.
    #[arg(long, value_name = "SECS", default_value_t = sluice::sys::DEFAULT_SYS_INTERVAL.as_secs())]
    sys_interval: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the commented default configuration file.
    Config,
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
    init_logging();
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
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
    let sys_interval = Duration::from_secs(cli.sys_interval);
    match runtime.block_on(run(config, sys_interval)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
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
            .map(|&bind| ListenerConfig {
                bind,
                kind: ListenerKind::Tcp,
            })
            .collect();
    }
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(addr) = cli.metrics_listen {
        config.metrics.listen = addr;
    }
    config.validate()?;
    Ok(config)
}

async fn run(config: Config, sys_interval: Duration) -> anyhow::Result<()> {
    // Before the broker starts, so every metric handle it takes is the real one.
    let handle = sluice::metrics::install(config.metrics.enabled)
        .context("cannot install the metrics recorder")?;
    // Bound before the store opens: a taken metrics port fails start-up cleanly.
    let metrics_listener = match &handle {
        Some(_) => Some(
            sluice::metrics::bind(config.metrics.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.metrics.listen))?,
        ),
        None => None,
    };
    let running = Broker::start(config).await.context("start-up failed")?;
    let broker = &running.broker;
    let mut ready = String::from("sluice ready");
    for addr in &running.mqtt_addrs {
        ready.push_str(&format!(" mqtt={addr}"));
    }
    if let (Some(handle), Some((listener, addr))) = (&handle, metrics_listener) {
        let b = Arc::clone(broker);
        let refresh: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            sluice::sys::sample(&b, false);
        });
        tokio::spawn(sluice::metrics::serve(
            listener,
            handle.clone(),
            broker.shutdown.clone(),
            refresh,
        ));
        ready.push_str(&format!(" metrics={addr}"));
    }
    sluice::sys::start(broker, sys_interval, handle);
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{ready}").context("cannot write the ready line")?;
        stdout.flush().context("cannot write the ready line")?;
    }
    tracing::info!(addrs = ?running.mqtt_addrs, "sluice is ready");
    wait_for_signal().await?;
    tracing::info!("shutting down");
    running.broker.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
