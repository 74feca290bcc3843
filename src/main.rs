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
    /// TLS listener address (needs --tls-cert and --tls-key); added to the listeners.
    #[arg(long, value_name = "HOST:PORT", requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for --tls-listen.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls-listen.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: --tls-listen then requires client certificates signed by it.
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
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
    match runtime.block_on(run(config)) {
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
            .map(|&bind| ListenerConfig::tcp(bind))
            .collect();
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
    config.validate()?;
    Ok(config)
}

async fn run(config: Config) -> anyhow::Result<()> {
    // Signals are watched before anything is announced, so a SIGTERM right after the
    // ready line is an orderly shutdown, not the default kill.
    let signals = Signals::new()?;
    let running = Broker::start(config).await.context("start-up failed")?;
    let mut ready = String::from("sluice ready");
    for (scheme, addr) in &running.listener_addrs {
        ready.push_str(&format!(" {scheme}={addr}"));
    }
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{ready}").context("cannot write the ready line")?;
        stdout.flush().context("cannot write the ready line")?;
    }
    tracing::info!(addrs = ?running.mqtt_addrs, "sluice is ready");
    signals.wait_for_shutdown(&running.broker).await;
    tracing::info!("shutting down");
    running.broker.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGINT/SIGTERM stop the broker; SIGHUP reloads certificates, passwords and ACLs.
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

    async fn wait_for_shutdown(mut self, broker: &Broker) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading certificates, password and ACL files");
                    broker.reload();
                }
            }
        }
    }
}
