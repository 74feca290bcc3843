//! A real NATS cluster for the cluster tests: `nats-server` processes on loopback, each
//! with JetStream and a route to the others, killed on drop.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsCluster {
    servers: Vec<Child>,
    pub client_ports: Vec<u16>,
    confs: Vec<PathBuf>,
    logs: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

fn spawn_server(conf: &PathBuf, log: &PathBuf) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("nats log");
    Command::new("nats-server")
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(out))
        .spawn()
        .expect("nats-server must be installed (Debian package nats-server)")
}

/// Ports the kernel just handed out (closed again: nats-server binds them next).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

impl NatsCluster {
    /// Starts `n` clustered servers with JetStream and waits until they have elected a
    /// JetStream metadata leader (bounded).
    pub fn start(n: usize) -> NatsCluster {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let ports = free_ports(2 * n);
        let (client_ports, route_ports) = ports.split_at(n);
        let mut servers = Vec::new();
        let mut confs = Vec::new();
        let mut logs = Vec::new();
        for i in 0..n {
            let routes: Vec<String> = route_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            let conf = dir.path().join(format!("n{i}.conf"));
            let mut f = std::fs::File::create(&conf).expect("nats config");
            writeln!(
                f,
                "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: sluice-test, listen: 127.0.0.1:{}, routes: [{}] }}",
                client_ports[i],
                dir.path().join(format!("js{i}")).display(),
                route_ports[i],
                routes.join(", ")
            )
            .expect("write nats config");
            let log = dir.path().join(format!("n{i}.log"));
            servers.push(spawn_server(&conf, &log));
            confs.push(conf);
            logs.push(log);
        }
        let cluster = NatsCluster {
            servers,
            client_ports: client_ports.to_vec(),
            confs,
            logs,
            _dir: dir,
        };
        cluster.wait_for("metadata leader", Duration::from_secs(30));
        cluster
    }

    /// Kills every server (the cluster nodes are cut off from NATS).
    pub fn stop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }

    /// Starts every server again on its ports and data, and waits for a new JetStream
    /// metadata leader.
    pub fn restart(&mut self) {
        let before: usize = self
            .logs
            .iter()
            .map(|l| {
                std::fs::read_to_string(l)
                    .unwrap_or_default()
                    .matches("metadata leader")
                    .count()
            })
            .sum();
        self.servers = self
            .confs
            .iter()
            .zip(&self.logs)
            .map(|(c, l)| spawn_server(c, l))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now: usize = self
                .logs
                .iter()
                .map(|l| {
                    std::fs::read_to_string(l)
                        .unwrap_or_default()
                        .matches("metadata leader")
                        .count()
                })
                .sum();
            if now > before {
                return;
            }
            assert!(Instant::now() < deadline, "NATS cluster did not come back");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `nats_urls` value for sluice's config.
    pub fn urls_toml(&self) -> String {
        let urls: Vec<String> = self
            .client_ports
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{p}\""))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs.iter().any(|l| {
                std::fs::read_to_string(l)
                    .unwrap_or_default()
                    .contains(needle)
            }) {
                return;
            }
            if Instant::now() >= deadline {
                let all: Vec<String> = self
                    .logs
                    .iter()
                    .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                    .collect();
                panic!("NATS cluster: {needle:?} not logged within {timeout:?}\n{all:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

/// A sluice config joining the cluster as `node`.
pub fn node_config(nats: &NatsCluster, node: &str, extra: &str) -> String {
    format!(
        "[cluster]\nenabled = true\nnode = \"{node}\"\nnats_urls = {}\nreplicas = {}\nforward_timeout_ms = 10000\n{extra}",
        nats.urls_toml(),
        nats.client_ports.len().min(3)
    )
}
