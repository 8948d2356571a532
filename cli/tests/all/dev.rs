//! A real `wasmos dev` cluster as a child process, for CLI tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `wasmos dev` child process, killed when dropped (also when a test panics).
pub struct Cluster {
    child: Child,
    pub url: String,
    /// The client config `wasmos dev` wrote (URL, CA), as a user's would be.
    pub config: PathBuf,
    _state: tempfile::TempDir,
    /// Everything it printed on stderr so far.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// `wasmos dev` with more flags.
    pub fn start_with(extra: &[&str]) -> Cluster {
        let state = tempfile::tempdir().unwrap();
        let config = state.path().join("client.json");
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasmos"))
            .env("WASMOS_CONFIG", &config)
            .args(["dev", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state.path())
            .args(["--agent-resources", "cpus:2;mem:2GiB"])
            .args(extra)
            .env_remove("WASMOS_MASTER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start `wasmos dev`");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        // Keeps draining stderr after the address line so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut cluster = Cluster { child, url: String::new(), config, _state: state, log };
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    if let Some(rest) = line.split("master on ").nth(1) {
                        cluster.url = rest.split_whitespace().next().unwrap().to_string();
                        break;
                    }
                    seen.push(line);
                }
                Err(e) => panic!("`wasmos dev` printed no `master on` line ({e}); its stderr: {seen:#?}"),
            }
        }
        assert!(cluster.url.starts_with("https://127.0.0.1:"), "{}", cluster.url);
        // Its agents join and register in the background: wait for one.
        let t0 = std::time::Instant::now();
        loop {
            let o = cluster.cmd().args(["agents", "--json"]).output().unwrap();
            if o.status.success() && !o.stdout.is_empty() {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "no agent registered within 60 s; its stderr: {seen:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// What it printed on stderr so far.
    /// The `wasmos dev` process (to SIGSTOP it: every agent is cut off).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// host:port, as the Python framework takes it.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("https://")
    }

    /// Its state directory (`--state-dir`).
    pub fn state(&self) -> &std::path::Path {
        self._state.path()
    }

    /// The wasmos binary as a client of this cluster: its client config,
    /// nothing from the environment.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_wasmos"));
        c.env("WASMOS_CONFIG", &self.config).env_remove("WASMOS_MASTER").env_remove("WASMOS_CA_CERT");
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
