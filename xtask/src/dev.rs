//! A `wasmos dev` cluster as a child process, for `demo` and `bench e2e`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long `wasmos dev` may take to write its URL (it opens the registry
/// and starts its agents first; a release build needs well under a second).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `wasmos dev`: killed, and its state dir removed, when dropped.
pub struct Dev {
    child: Child,
    state: PathBuf,
    /// Where its master serves, e.g. `https://127.0.0.1:40123`.
    pub url: String,
    /// The client config it wrote (URL, CA): what client commands and the
    /// e2e client read through `WASMOS_CONFIG`. Older builds ignore it.
    pub config: PathBuf,
}

impl Dev {
    /// Starts `wasmos dev` on a free loopback port with a fresh state dir
    /// (`std::env::temp_dir()/wasmos-<name>-<pid>`) and waits for the URL it
    /// writes to `--url-file`. Its messages go straight to our stderr, so no
    /// pipe can fill up and block it.
    pub fn start(wasmos: &Path, name: &str, extra: &[&str]) -> Result<Dev> {
        let state = std::env::temp_dir().join(format!("wasmos-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        if !knows_url_file(wasmos) {
            return Dev::start_legacy(wasmos, state, extra);
        }
        let url_file = state.join("url");
        let config = state.join("client.json");
        let child = Command::new(wasmos)
            .env("WASMOS_CONFIG", &config)
            .args(["dev", "--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--state-dir")
            .arg(&state)
            .arg("--url-file")
            .arg(&url_file)
            .spawn()
            .with_context(|| format!("starting {} dev", wasmos.display()))?;
        // From here on, every way out kills the child and removes `state`.
        let mut dev = Dev { child, state, url: String::new(), config };
        let t0 = Instant::now();
        loop {
            // Written atomically: either there is no file or it holds the URL.
            if let Ok(text) = std::fs::read_to_string(&url_file) {
                dev.url = text.trim().to_string();
                return Ok(dev);
            }
            if let Some(status) = dev.child.try_wait()? {
                bail!("wasmos dev exited ({status}) before it listened; its messages are above");
            }
            if t0.elapsed() > START_TIMEOUT {
                bail!(
                    "wasmos dev wrote no URL to {} within {} s; its messages are above",
                    url_file.display(),
                    START_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Dev {
    /// A build from before `--url-file` (an A/B against an older binary):
    /// a free port picked here, then wait until it accepts connections.
    fn start_legacy(wasmos: &Path, state: PathBuf, extra: &[&str]) -> Result<Dev> {
        let addr = free_port()?;
        let child = Command::new(wasmos)
            .args(["dev", "--listen", &addr])
            .args(extra)
            .arg("--state-dir")
            .arg(&state)
            .spawn()
            .with_context(|| format!("starting {} dev", wasmos.display()))?;
        let config = state.join("client.json");
        let mut dev = Dev { child, state, url: format!("http://{addr}"), config };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            if let Some(status) = dev.child.try_wait()? {
                bail!("wasmos dev exited ({status}) before it listened; its messages are above");
            }
            if t0.elapsed() > START_TIMEOUT {
                bail!("wasmos dev did not listen on {addr} within {} s", START_TIMEOUT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(dev)
    }

    /// The process id of `wasmos dev` (master and agents in one process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its state directory.
    pub fn state(&self) -> &Path {
        &self.state
    }
}

/// A loopback address with a port free right now.
pub fn free_port() -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(l.local_addr()?.to_string())
}

/// Whether this `wasmos` has `dev --url-file`.
fn knows_url_file(wasmos: &Path) -> bool {
    Command::new(wasmos)
        .args(["dev", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--url-file"))
        .unwrap_or(false)
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}
