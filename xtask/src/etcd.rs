//! A 3-member etcd cluster and one `wasmos master --etcd` with one agent, as
//! child processes, for `cargo xtask bench e2e --etcd`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::dev::free_port;

/// Child processes killed (and the state dir removed) when dropped.
pub struct EtcdCluster {
    children: Vec<Child>,
    dir: PathBuf,
    pub endpoints: String,
    /// The master's URL and the client config it wrote.
    pub url: String,
    pub config: PathBuf,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl EtcdCluster {
    /// etcd ×3 on loopback (raft heartbeat 100 ms, election 600 ms), then a
    /// master on it and an agent with the whole machine, like `wasmos dev`.
    pub fn start(wasmos: &Path, name: &str) -> Result<EtcdCluster> {
        let dir = std::env::temp_dir().join(format!("wasmos-{name}-etcd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let members: Vec<(String, String, String)> =
            (0..3).map(|i| Ok((format!("e{i}"), free_port()?, free_port()?))).collect::<Result<_>>()?;
        let initial = members.iter().map(|(n, _, peer)| format!("{n}=http://{peer}")).collect::<Vec<_>>().join(",");
        let mut c = EtcdCluster {
            children: Vec::new(),
            dir: dir.clone(),
            endpoints: members.iter().map(|(_, client, _)| format!("http://{client}")).collect::<Vec<_>>().join(","),
            url: String::new(),
            config: dir.join("client.json"),
        };
        for (n, client, peer) in &members {
            let log = std::fs::File::create(dir.join(format!("{n}.log")))?;
            c.children.push(
                Command::new("etcd")
                    .args(["--name", n, "--data-dir"])
                    .arg(dir.join(n))
                    .args(["--listen-client-urls", &format!("http://{client}")])
                    .args(["--advertise-client-urls", &format!("http://{client}")])
                    .args(["--listen-peer-urls", &format!("http://{peer}")])
                    .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
                    .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
                    .args(["--heartbeat-interval", "100", "--election-timeout", "600", "--log-level", "warn"])
                    .args(["--quota-backend-bytes", &(8u64 << 30).to_string()])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .context("starting etcd (run `cargo xtask setup`: Debian's etcd-server)")?,
            );
        }
        let addr = free_port()?;
        c.url = format!("https://{addr}");
        c.children.push(
            Command::new(wasmos)
                .args(["master", "--listen", &addr, "--etcd", &c.endpoints, "--state-dir"])
                .arg(dir.join("master"))
                .arg("--client-config")
                .arg(&c.config)
                .spawn()
                .context("starting wasmos master")?,
        );
        let t0 = Instant::now();
        while !std::fs::read_to_string(&c.config).is_ok_and(|s| s.contains("token")) {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("wasmos master --etcd was not elected within 60 s; its messages are above");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let join = Command::new(wasmos)
            .env("WASMOS_CONFIG", &c.config)
            .args(["token", "create", "bench-agents", "--agent", "--master", &c.url])
            .output()?;
        if !join.status.success() {
            bail!("join token: {}", String::from_utf8_lossy(&join.stderr));
        }
        let join = String::from_utf8_lossy(&join.stdout).trim().to_string();
        c.children.push(
            Command::new(wasmos)
                .env("WASMOS_CONFIG", &c.config)
                .args(["agent", "--master", &c.url, "--join", &join, "--work-dir"])
                .arg(dir.join("agent"))
                .spawn()
                .context("starting wasmos agent")?,
        );
        loop {
            let o = Command::new(wasmos)
                .env("WASMOS_CONFIG", &c.config)
                .args(["agents", "--json", "--master", &c.url])
                .output()?;
            if o.status.success() && !o.stdout.is_empty() {
                return Ok(c);
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("the agent did not register within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
