//! The agent's link to the master: the connection, registration (and
//! reregistration), heartbeats and the command stream; and [`Backoff`], the
//! one retry schedule of every loop that waits for the master.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use wasmos_proto::v1;
use wasmos_proto::v1::agent_service_client::AgentServiceClient;
use wasmos_sandbox::Sandbox;
use wasmos_security::client::{AuthChannel, Target};

use crate::{Agent, AgentConfig, AgentError, executor};

/// Capped exponential backoff with jitter: the n-th wait is drawn between
/// half and all of `first`·2ⁿ, capped at `max`, so that many agents cut off
/// together do not all come back in the same instant; [`Backoff::reset`]
/// starts over. Pitfall: the first wait is about `first` even when `max` is
/// shorter.
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let rng = (t ^ ((std::process::id() as u64) << 32) ^ (&t as *const u64 as u64)) | 1;
        Backoff { first, next: first, max, rng }
    }

    /// `d` less a random part of up to half of it.
    fn jitter(&mut self, d: Duration) -> Duration {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = d.as_micros() as u64 / 2;
        d - Duration::from_micros(self.rng % (half + 1))
    }

    /// The next wait, doubling the one after it.
    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub async fn wait(&mut self) {
        let d = self.step();
        tokio::time::sleep(self.jitter(d)).await;
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A channel replaced when the agent's certificate is renewed.
pub(crate) type SharedChannel = Arc<RwLock<AuthChannel>>;

/// The channel to the master and the id it gave this agent.
pub(crate) struct Link {
    channel: SharedChannel,
    /// Empty until the first registration unless restored from the
    /// checkpoint; written only by [`register`].
    id: RwLock<String>,
    /// The newest leader epoch seen (registration answers and commands):
    /// commands from an older one (a deposed leader) are refused.
    epoch: std::sync::atomic::AtomicU64,
    /// When the master last answered (a registration, heartbeat, acknowledged
    /// update or command): how long the agent has been cut off.
    last_contact: std::sync::Mutex<std::time::Instant>,
    /// The master's heartbeat interval (ms): contact is due that often.
    heartbeat_ms: std::sync::atomic::AtomicU64,
    /// Successful registrations so far (the first is said, and each
    /// reregistration after the agent was cut off).
    registrations: std::sync::atomic::AtomicU64,
}

/// Past the heartbeat interval, how long without an answer before the agent
/// counts itself cut off (for `--on-disconnect stop-after`).
pub(crate) const CUT_OFF_GRACE: Duration = Duration::from_secs(1);

impl Link {
    /// The master answered just now.
    pub fn contact(&self) {
        *self.last_contact.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
    }

    /// How long the agent has been cut off: since the master last
    /// answered, less the heartbeat interval and a second's grace (by then
    /// the next answer was due). Zero while in touch.
    pub fn cut_off_for(&self) -> Duration {
        let since = self.last_contact.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
        let due = Duration::from_millis(self.heartbeat_ms.load(std::sync::atomic::Ordering::Relaxed)) + CUT_OFF_GRACE;
        since.saturating_sub(due)
    }

    pub fn set_heartbeat(&self, every: Duration) {
        self.heartbeat_ms.store(every.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Connects to the master as `target`, retrying with backoff until it answers.
    pub async fn connect(target: &Target, max_backoff: Duration) -> Result<AuthChannel, AgentError> {
        target.endpoint().map_err(AgentError::BadMaster)?;
        let mut backoff = Backoff::new(Duration::from_millis(100), max_backoff);
        loop {
            match target.connect().await {
                Ok(c) => return Ok(c),
                Err(_) => backoff.wait().await,
            }
        }
    }

    pub fn new(channel: SharedChannel, id: String) -> Link {
        Link {
            channel,
            id: RwLock::new(id),
            epoch: Default::default(),
            last_contact: std::sync::Mutex::new(std::time::Instant::now()),
            heartbeat_ms: std::sync::atomic::AtomicU64::new(1000),
            registrations: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// From now on, calls go through `channel` (a renewed certificate).
    pub fn set_channel(&self, channel: AuthChannel) {
        *self.channel.write().unwrap_or_else(|e| e.into_inner()) = channel;
    }

    /// Whether a command from leader epoch `epoch` may run here: not when
    /// a newer leader has been seen (0: a master that names none).
    pub fn accepts(&self, epoch: u64) -> bool {
        use std::sync::atomic::Ordering;
        let newest = self.epoch.fetch_max(epoch, Ordering::AcqRel);
        if epoch != 0 && epoch < newest {
            eprintln!("wasmos agent: refusing a command from master epoch {epoch}: epoch {newest} leads now");
            return false;
        }
        true
    }

    pub fn id(&self) -> String {
        self.id.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn client(&self) -> AgentServiceClient<AuthChannel> {
        AgentServiceClient::new(self.channel.read().unwrap_or_else(|e| e.into_inner()).clone())
            .max_decoding_message_size(wasmos_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(wasmos_proto::MAX_MESSAGE_BYTES)
    }
}

fn info(cfg: &AgentConfig) -> v1::AgentInfo {
    v1::AgentInfo {
        hostname: cfg.hostname.clone(),
        resources: Some(wasmos_proto::resources_to_wire(&cfg.resources)),
        attributes: cfg.attributes.iter().map(|(k, v)| v1::Attribute { key: k.clone(), value: v.clone() }).collect(),
        wasmtime_version: Sandbox::wasmtime_version().to_string(),
        target_triple: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        task_slots: cfg.sandbox.max_concurrent_tasks.saturating_add(cfg.sandbox.max_metered_tasks),
        cpu_cores: cfg.sandbox.cpu_cores as u32,
        cpu_limit: cfg.sandbox.cpu_limit.to_string(),
        engine_profile: wasmos_sandbox::EngineProfile::of(&cfg.sandbox).key(),
        precompiled_only: !cfg.sandbox.compile,
    }
}

/// Registers (or reregisters) and returns the heartbeat interval. It reports
/// the tasks running here and those with unacknowledged updates
/// ([`crate::updates::Updates::known_tasks`]).
pub(crate) async fn register(agent: &Agent) -> Result<Duration, tonic::Status> {
    let id = agent.link.id();
    let resp = agent
        .link
        .client()
        .register(v1::RegisterAgentRequest {
            info: Some(info(&agent.cfg)),
            agent_id: id.clone(),
            running_tasks: agent.updates.known_tasks(&id, agent.executor.live_statuses(&id)),
        })
        .await?
        .into_inner();
    let cut = agent.link.cut_off_for();
    agent.link.contact();
    // Said once per link: at the start, and after each break (a
    // reregistration follows only a broken stream, a master that forgot
    // the agent, or a new leader).
    match agent.link.registrations.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
        0 => eprintln!("wasmos agent: registered with the master as {}", resp.agent_id),
        _ if cut.is_zero() => eprintln!("wasmos agent: reregistered with the master as {}", resp.agent_id),
        _ => eprintln!("wasmos agent: reregistered with the master as {} after {cut:.1?} cut off", resp.agent_id),
    }
    if let Some(cp) = &agent.checkpoint {
        cp.set_agent_id(&resp.agent_id);
    }
    *agent.link.id.write().unwrap_or_else(|e| e.into_inner()) = resp.agent_id;
    // The master registered with is the one followed from now on (also one
    // whose state was reset, or moved from redb to etcd: its epoch starts over).
    agent.link.epoch.store(resp.epoch, std::sync::atomic::Ordering::Release);
    Ok(Duration::from_millis(resp.heartbeat_interval_ms.max(100)))
}

pub(crate) async fn heartbeats(agent: Arc<Agent>, every: Duration) {
    let mut t = tokio::time::interval(every);
    loop {
        t.tick().await;
        let id = agent.link.id();
        let mut stats = agent.executor.stats();
        stats.updates_dropped = agent.updates.dropped.load(std::sync::atomic::Ordering::Relaxed);
        let stats = Some(stats);
        let usage = agent.executor.usage(MAX_USAGE_REPORTED);
        if agent.link.client().heartbeat(v1::HeartbeatRequest { agent_id: id, stats, usage }).await.is_ok() {
            agent.link.contact();
        }
    }
}

/// Most running tasks whose use one heartbeat carries.
const MAX_USAGE_REPORTED: usize = 1000;

/// Follows the command stream for as long as the agent runs. Whenever it
/// ends or cannot be opened: waits (backoff), reregisters, opens it again.
/// Returns only when the master no longer accepts this agent's identity
/// (it was revoked): why.
pub(crate) async fn commands(agent: Arc<Agent>) -> String {
    let mut backoff = Backoff::new(Duration::from_millis(100), agent.cfg.max_backoff);
    loop {
        let stream = agent.link.client().commands(v1::AgentStreamRequest { agent_id: agent.link.id() }).await;
        match stream {
            Ok(s) => {
                backoff.reset();
                let mut s = s.into_inner();
                while let Ok(Some(cmd)) = s.message().await {
                    agent.link.contact();
                    if !agent.link.accepts(cmd.epoch) {
                        continue;
                    }
                    executor::handle(&agent, cmd);
                }
            }
            Err(st) if st.code() == tonic::Code::NotFound => {
                // The master forgot us (it restarted, or timed us out).
                let _ = register(&agent).await;
            }
            Err(st) if st.code() == tonic::Code::Unauthenticated => return st.message().to_string(),
            Err(_) => {}
        }
        backoff.wait().await;
        if let Err(st) = register(&agent).await
            && st.code() == tonic::Code::Unauthenticated
        {
            return st.message().to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(b: &mut Backoff, n: usize) -> Vec<u64> {
        (0..n).map(|_| b.step().as_millis() as u64).collect()
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_starts_over_on_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        // 100, 200, 400, 800, then 1600 capped to 1000
        assert_eq!(steps(&mut b, 6), [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(steps(&mut b, 2), [100, 200]);
    }

    #[tokio::test]
    async fn commands_from_an_older_epoch_are_refused() {
        let ch = Target { url: "http://127.0.0.1:1".into(), ..Default::default() }.connect_lazy().unwrap();
        let link = Link::new(Arc::new(RwLock::new(ch)), String::new());
        assert!(link.accepts(0));
        assert!(link.accepts(3));
        assert!(!link.accepts(2), "epoch 2 after 3");
        assert!(link.accepts(3) && link.accepts(4) && link.accepts(0));
        assert!(!link.accepts(3));
    }

    #[test]
    fn jittered_waits_stay_between_half_and_all_of_the_step_and_vary() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let d = Duration::from_millis(800);
        let waits: Vec<Duration> = (0..200).map(|_| b.jitter(d)).collect();
        assert!(waits.iter().all(|w| *w >= d / 2 && *w <= d), "{waits:?}");
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "only {} distinct waits of 200", distinct.len());
    }

    #[test]
    fn backoff_waits_first_once_even_above_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(30));
        assert_eq!(steps(&mut b, 3), [100, 30, 30]);
    }
}
