//! A real etcd cluster on loopback ports for the several-masters tests
//! (`chaos_ha.rs`, the CLI's `ha` tests, the e2e bench with `--etcd`): each
//! member a child process of Debian's `etcd` (`cargo xtask setup` installs
//! it), killed when dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One etcd member.
pub struct Member {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// `n` members on loopback (raft heartbeat 100 ms, election timeout
/// 600 ms: a 1 s lease is the shortest etcd grants then).
pub struct EtcdCluster {
    pub members: Vec<Member>,
    initial: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The etcd binary: `$WASMOS_ETCD`, else `etcd` on the PATH.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("WASMOS_ETCD").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("etcd"))
}

impl EtcdCluster {
    pub fn start(dir: &Path, n: usize) -> EtcdCluster {
        let mut members: Vec<Member> = (0..n)
            .map(|i| {
                let name = format!("e{i}");
                Member {
                    client_url: format!("http://127.0.0.1:{}", free_port()),
                    peer_url: format!("http://127.0.0.1:{}", free_port()),
                    data_dir: dir.join(&name),
                    log: dir.join(format!("{name}.log")),
                    name,
                    child: None,
                }
            })
            .collect();
        let initial = members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        let mut c = EtcdCluster { members: Vec::new(), initial };
        for m in members.iter_mut() {
            c.spawn(m, "new");
        }
        c.members = members;
        c
    }

    fn spawn(&self, m: &mut Member, state: &str) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log).expect("etcd log");
        let child = Command::new(etcd_bin())
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url, "--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url, "--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &self.initial, "--initial-cluster-state", state])
            .args(["--heartbeat-interval", "100", "--election-timeout", "600"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd ({e}); run `cargo xtask setup` (Debian's etcd-server)"));
        m.child = Some(child);
    }

    /// The client URLs, comma-separated (what `--etcd` takes).
    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.client_url.clone()).collect::<Vec<_>>().join(",")
    }

    /// `kill -9` of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data dir.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let mut m = std::mem::replace(
            &mut self.members[i],
            Member {
                name: String::new(),
                client_url: String::new(),
                peer_url: String::new(),
                data_dir: PathBuf::new(),
                log: PathBuf::new(),
                child: None,
            },
        );
        self.spawn(&mut m, "existing");
        self.members[i] = m;
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// Waits until a write goes through (a raft leader and a quorum).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        let urls: Vec<String> =
            self.members.iter().filter(|m| m.child.is_some()).map(|m| m.client_url.clone()).collect();
        while t0.elapsed() < timeout {
            if let Ok(mut c) = etcd_client::Client::connect(&urls, None).await
                && tokio::time::timeout(Duration::from_secs(2), c.put("/probe", "1", None))
                    .await
                    .is_ok_and(|r| r.is_ok())
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Every value `key` ever had, with its revision, read back from etcd's
/// history (a watch from revision 1; none of it compacted).
pub async fn key_history(endpoints: &str, key: &str) -> Result<Vec<(i64, String)>, String> {
    let urls: Vec<&str> = endpoints.split(',').collect();
    let mut c = etcd_client::Client::connect(&urls, None).await.map_err(|e| e.to_string())?;
    let now = c.get(key, None).await.map_err(|e| e.to_string())?;
    let last = now.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0);
    let mut out = Vec::new();
    if last == 0 {
        return Ok(out);
    }
    let opts = etcd_client::WatchOptions::new().with_start_revision(1);
    let mut stream = c.watch(key, Some(opts)).await.map_err(|e| e.to_string())?;
    while let Some(resp) = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .map_err(|_| "etcd history: no answer within 10 s".to_string())?
        .map_err(|e| e.to_string())?
    {
        if resp.compact_revision() > 0 {
            return Err(format!("etcd history of {key} was compacted at {}", resp.compact_revision()));
        }
        for ev in resp.events() {
            if let Some(kv) = ev.kv() {
                out.push((kv.mod_revision(), kv.value_str().unwrap_or("").to_string()));
            }
        }
        if out.last().is_some_and(|(r, _)| *r >= last) {
            break;
        }
    }
    Ok(out)
}

/// Checks the `EPOCH URL` stamps every leader's write left: each epoch was
/// written by one master only, and never after a newer epoch (a deposed
/// leader wrote nothing). Returns the failures and the epochs seen.
pub fn check_epochs(history: &[(i64, String)]) -> (Vec<String>, usize) {
    let mut failures = Vec::new();
    let mut by_epoch: std::collections::BTreeMap<u64, String> = Default::default();
    let mut newest = 0u64;
    for (rev, v) in history {
        let Some((e, url)) = v.split_once(' ') else {
            failures.push(format!("revision {rev}: commit stamp {v:?} is not `EPOCH URL`"));
            continue;
        };
        let e: u64 = e.parse().unwrap_or(0);
        if let Some(other) = by_epoch.get(&e)
            && other != url
        {
            failures.push(format!("epoch {e} was written by {other} and by {url} (revision {rev})"));
        }
        by_epoch.entry(e).or_insert_with(|| url.to_string());
        if e < newest {
            failures.push(format!("revision {rev}: {url} wrote in epoch {e} after epoch {newest} had written"));
        }
        newest = newest.max(e);
    }
    (failures, by_epoch.len())
}
