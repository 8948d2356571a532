//! Whole clusters in one test process: a master and agents on real loopback
//! sockets (port 0), driven through the public gRPC APIs only.

mod batch;
mod history;
mod hosted;
mod roles;
mod scheduler;

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use wasmos_model::Resources;
use wasmos_proto::v1;
use wasmos_security::client::{AuthChannel as Channel, Target};

pub struct Cluster {
    pub url: String,
    pub channel: Channel,
    /// The admin token (`admin:*`) the master made at its start.
    pub token: String,
    stop: watch::Sender<bool>,
    agent_stops: Vec<watch::Sender<bool>>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A master plus `agents` agents, each offering `resources`.
pub async fn cluster(agents: usize, resources: &str) -> Cluster {
    cluster_with(agents, resources, |_| {}).await
}

pub async fn cluster_with(
    agents: usize,
    resources: &str,
    tweak: impl FnOnce(&mut wasmos_host::MasterConfig),
) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut cfg = wasmos_host::MasterConfig::new(dir.path().join("master"));
    cfg.batch_refuse = Duration::from_millis(50);
    // The master's logic, over plaintext loopback; TLS and tokens are
    // tested through the binary, like a user runs it (cli tests).
    cfg.transport = wasmos_host::Transport::Insecure;
    tweak(&mut cfg);
    let handle = wasmos_host::start(cfg).unwrap();
    // A first start: the master made an admin token; the tests call with it.
    let token = handle.admin_token().expect("a first start makes an admin token");
    let join = handle.create_join_token("test-agents", 0, Duration::ZERO).await.unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let mut rx = stop_rx.clone();
    tokio::spawn(wasmos_host::serve_with(handle, listener, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    let mut agent_stops = Vec::new();
    for i in 0..agents {
        let mut acfg = wasmos_agent::AgentConfig::new(url.clone(), dir.path().join(format!("agent{i}")));
        acfg.resources = Resources::parse(resources).unwrap();
        acfg.join_token = Some(join.clone());
        acfg.hostname = format!("test-agent-{i}");
        acfg.sandbox.max_concurrent_tasks = 64;
        acfg.attributes = vec![("index".into(), i.to_string())];
        let mut rx = stop_rx.clone();
        let (astop, arx) = watch::channel(false);
        let mut arx = arx;
        agent_stops.push(astop);
        tokio::spawn(wasmos_agent::run(acfg, async move {
            tokio::select! {
                _ = rx.wait_for(|s| *s) => {}
                _ = arx.wait_for(|s| *s) => {}
            }
        }));
    }
    let channel =
        Target { url: url.clone(), ca_pem: None, identity: None, token: Some(token.clone()) }.connect().await.unwrap();
    let c = Cluster { url, channel, token, stop, agent_stops, _dir: dir };
    // Wait until every agent has registered.
    for _ in 0..200 {
        let n = c.operator().list_agents(v1::ListAgentsRequest::default()).await.unwrap().into_inner().agents.len();
        if n == agents {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("agents did not register");
}

impl Cluster {
    /// Stops agent `i` the way a crash would look to the master: its process
    /// (here: its task) goes away and heartbeats stop.
    pub fn stop_agent(&self, i: usize) {
        let _ = self.agent_stops[i].send(true);
    }

    pub fn operator(&self) -> v1::operator_client::OperatorClient<Channel> {
        v1::operator_client::OperatorClient::new(self.channel.clone())
    }
    pub fn scheduler(&self) -> v1::scheduler_client::SchedulerClient<Channel> {
        v1::scheduler_client::SchedulerClient::new(self.channel.clone())
    }

    /// Uploads a WAT module; returns its sha256.
    pub async fn upload_wat(&self, text: &str) -> String {
        let bytes = wat::parse_str(text).unwrap();
        self.upload(bytes).await
    }

    pub async fn upload(&self, bytes: Vec<u8>) -> String {
        let sha = hex::encode(Sha256::digest(&bytes));
        let mut art = v1::artifacts_client::ArtifactsClient::new(self.channel.clone());
        let r = art
            .upload(tokio_stream::iter(vec![v1::Chunk { sha256: sha.clone(), data: bytes, ..Default::default() }]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.sha256, sha);
        sha
    }

    pub async fn task(&self, id: &str) -> v1::TaskSummary {
        self.operator().get_task(v1::GetTaskRequest { task_id: id.into() }).await.unwrap().into_inner()
    }

    /// Polls until the task is in `state` (or any terminal state if `None`);
    /// a task not launched yet (unknown to the master) is waited for too.
    pub async fn wait_task(&self, id: &str, state: Option<v1::TaskState>) -> v1::TaskSummary {
        for _ in 0..1000 {
            let Ok(t) =
                self.operator().get_task(v1::GetTaskRequest { task_id: id.into() }).await.map(|t| t.into_inner())
            else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let done = match state {
                Some(s) => t.state == s as i32,
                None => wasmos_proto::state_from_wire(t.state).is_some_and(|s| s.is_terminal()),
            };
            if done {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("task {id} never reached {state:?}: {:?}", self.task(id).await);
    }
}

/// A WASI command that prints `text` and exits 0.
pub fn echo_wat(text: &str) -> String {
    format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 64) "{text}")
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const {len}))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        len = text.len()
    )
}

/// A guest built by `cargo xtask guests`.
pub fn guest(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests").join(format!("{name}.wasm"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask guests` first", p.display()))
}

/// Loops forever (ended by kill or timeout).
pub const SPIN: &str = r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))"#;

pub fn resources(s: &str) -> Option<v1::Resources> {
    Some(wasmos_proto::resources_to_wire(&Resources::parse(s).unwrap()))
}

pub fn spec(id: &str, sha: &str, res: &str) -> v1::TaskSpec {
    v1::TaskSpec {
        task_id: id.into(),
        name: id.into(),
        module_sha256: sha.into(),
        args: vec![],
        env: Default::default(),
        resources: resources(res),
        limits: None,
        files: vec![],
        sandbox_dir: false,
        input: vec![],
        attempt: 0,
        signature: String::new(),
        health: None,
        migratable: false,
        resume: Vec::new(),
        on_disconnect: String::new(),
    }
}
