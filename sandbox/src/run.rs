//! Linking, preparing and running one task.

use std::sync::Arc;
use std::time::Instant;

use wasmos_model::{Outcome, OutcomeKind};
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, InstancePre, Module, Store, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::cache::ModuleHash;
use crate::control::{ActiveClock, Signal};
use crate::cpu::Fair;
use crate::engine::{MAX_INSTANCES_PER_TASK, MAX_MEMORIES_PER_TASK, MAX_TABLES_PER_TASK};
use crate::limiter::MemLimiter;
use crate::output::{Capture, Passthrough};
use crate::{Inner, Lane, ModuleKind, Prepared, RunRequest, SandboxError, Stdin, TaskControl};

/// The import module a core task may use, besides [`WASMOS_CORE`].
const WASI_P1: &str = "wasi_snapshot_preview1";
/// What a core task may import from wasmos: `(import "wasmos" "heartbeat" (func))`.
const WASMOS_CORE: &str = "wasmos";
const WASMOS_CORE_FUNCS: [&str; 1] = ["heartbeat"];
/// Fuel given to a metered run without a budget: effectively unlimited, still counted.
const UNLIMITED_FUEL: u64 = i64::MAX as u64;

/// A task store's data (also a hosted scheduler's).
pub(crate) struct TaskData {
    pub(crate) wasi: Wasi,
    pub(crate) limiter: MemLimiter,
    pub(crate) context: crate::TaskContext,
    pub(crate) progress: Option<Arc<std::sync::atomic::AtomicU32>>,
    /// Counts heartbeats (and progress reports) for a health check.
    pub(crate) heartbeats: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Capture and resume of a migratable core module.
    pub(crate) migration: crate::migrate::Migration,
    /// Where `context.log` lines go (the task's stderr).
    pub(crate) log_to: Option<Capture>,
    /// `host.log` lines of a scheduler callback, drained after each call.
    pub(crate) sched_logs: Vec<(crate::worlds::scheduler::wasmos::scheduler::types::LogLevel, String)>,
}

impl TaskData {
    pub(crate) fn beat(&self) {
        if let Some(h) = &self.heartbeats {
            h.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

pub(crate) enum Wasi {
    P1(WasiP1Ctx),
    P2 { ctx: WasiCtx, table: ResourceTable },
}

impl WasiView for TaskData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        match &mut self.wasi {
            Wasi::P2 { ctx, table } => WasiCtxView { ctx, table },
            // Invariant: component linkers are only used with P2 stores.
            Wasi::P1(_) => unreachable!("a core-module store was given to the component linker"),
        }
    }
}

fn p1_ctx(d: &mut TaskData) -> &mut WasiP1Ctx {
    match &mut d.wasi {
        Wasi::P1(c) => c,
        // Invariant: the core linker is only used with P1 stores.
        Wasi::P2 { .. } => unreachable!("a component store was given to the core-module linker"),
    }
}

pub(crate) struct Linkers {
    core: wasmtime::Linker<TaskData>,
    pub(crate) component: wasmtime::component::Linker<TaskData>,
}

impl Linkers {
    pub(crate) fn new(engine: &Engine) -> Result<Linkers, SandboxError> {
        let mut core = wasmtime::Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut core, p1_ctx)
            .map_err(|e| SandboxError::Config(format!("linking WASI preview1: {e:#}")))?;
        core.func_wrap_async(WASMOS_CORE, "heartbeat", |mut c: wasmtime::Caller<'_, TaskData>, (): ()| {
            Box::new(async move {
                c.data().beat();
                crate::migrate::safe_point(&mut c).await
            })
        })
        .map_err(|e| SandboxError::Config(format!("linking wasmos::heartbeat: {e:#}")))?;
        let mut component = wasmtime::component::Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component)
            .map_err(|e| SandboxError::Config(format!("linking WASI preview2: {e:#}")))?;
        use wasmtime::component::HasSelf;
        crate::worlds::task::Task::add_to_linker::<TaskData, HasSelf<TaskData>>(&mut component, |d| d)
            .map_err(|e| SandboxError::Config(format!("linking wasmos:task: {e:#}")))?;
        crate::worlds::scheduler::Scheduler::add_to_linker::<TaskData, HasSelf<TaskData>>(&mut component, |d| d)
            .map_err(|e| SandboxError::Config(format!("linking wasmos:scheduler: {e:#}")))?;
        Ok(Linkers { core, component })
    }
}

pub(crate) enum Pre {
    Core(InstancePre<TaskData>),
    Component(CommandPre<TaskData>),
    Task(crate::worlds::task::TaskPre<TaskData>),
}

const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];

/// Core module or component, from a binary's header.
#[cfg(feature = "compiler")]
pub(crate) fn detect_binary(bytes: &[u8]) -> Result<ModuleKind, SandboxError> {
    if bytes.len() >= 8 && bytes.starts_with(b"\0asm") {
        return detect(bytes);
    }
    Err(SandboxError::InvalidModule(
        "not a wasm binary: it does not start with the wasm magic 00 61 73 6d; upload the .wasm file".into(),
    ))
}

fn detect(bytes: &[u8]) -> Result<ModuleKind, SandboxError> {
    if bytes.len() >= 8 && bytes.starts_with(b"\0asm") {
        return if bytes[4..8] == CORE_VERSION {
            Ok(ModuleKind::Core)
        } else if bytes[6..8] == [1, 0] {
            Ok(ModuleKind::Component)
        } else {
            Err(SandboxError::InvalidModule(format!(
                "unsupported wasm binary version {:?}; build it with a current toolchain (wasm32-wasip1 or wasm32-wasip2)",
                &bytes[4..8]
            )))
        };
    }
    if bytes.starts_with(b"\0asm") {
        return Err(SandboxError::InvalidModule(format!(
            "module is truncated: {} bytes, shorter than a wasm header; the file is incomplete",
            bytes.len()
        )));
    }
    // Maybe WAT text (handy for local runs); the wat parser says what is wrong.
    match std::str::from_utf8(bytes) {
        Ok(text) if text.trim_start().starts_with('(') => {
            let trimmed = text.trim_start();
            let body = trimmed[1..].trim_start();
            if body.starts_with("component") { Ok(ModuleKind::Component) } else { Ok(ModuleKind::Core) }
        }
        _ => {
            let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
            Err(SandboxError::InvalidModule(format!(
                "not a wasm module: it starts with bytes [{}] instead of the wasm magic 00 61 73 6d; \
                 build it for wasm32-wasip1 or wasm32-wasip2",
                head.join(" ")
            )))
        }
    }
}

#[cfg(feature = "compiler")]
fn invalid(e: wasmtime::Error) -> SandboxError {
    SandboxError::InvalidModule(format!(
        "module is not valid wasm: {e:#}; rebuild it for wasm32-wasip1 or wasm32-wasip2"
    ))
}

/// Core modules may import only WASI preview1; say exactly which import is not.
fn check_core_imports(module: &Module) -> Result<(), SandboxError> {
    let foreign: Vec<String> = module
        .imports()
        .filter(|i| i.module() != WASI_P1 && !(i.module() == WASMOS_CORE && WASMOS_CORE_FUNCS.contains(&i.name())))
        .map(|i| format!("`{}::{}`", i.module(), i.name()))
        .collect();
    if !foreign.is_empty() {
        return Err(SandboxError::UnsupportedImport(format!(
            "unsupported import{} {}: a core task may import only from `{WASI_P1}` (WASI preview1) \
             and `{WASMOS_CORE}::heartbeat`; link it as a wasm32-wasip1 command with no undefined symbols",
            if foreign.len() > 1 { "s" } else { "" },
            foreign.join(", ")
        )));
    }
    if module.get_export("_start").is_none() {
        return Err(SandboxError::InvalidModule(
            "module has no `_start` export: it is a library (reactor), not a command; build it as a wasm32-wasip1 binary"
                .into(),
        ));
    }
    Ok(())
}

fn link_error(kind: ModuleKind, e: wasmtime::Error) -> SandboxError {
    let what = match kind {
        ModuleKind::Core => format!("a core task may import only WASI preview1 (`{WASI_P1}`) functions"),
        ModuleKind::Component | ModuleKind::TaskComponent => {
            "a component task may import only WASI 0.2 (wasi:cli, wasi:io, wasi:clocks, wasi:filesystem, \
             wasi:random, wasi:sockets) interfaces and must export wasi:cli/run"
                .to_string()
        }
    };
    SandboxError::UnsupportedImport(format!("unsupported import: {e:#}; {what}"))
}

pub(crate) fn prepare(inner: &Inner, bytes: &[u8]) -> Result<Arc<Prepared>, SandboxError> {
    let hash = ModuleHash::of(bytes);
    if let Some(p) = inner.plain.cache.get(&hash) {
        return Ok(p);
    }
    if !inner.cfg.compile {
        return Err(no_compiler(&hash));
    }
    let kind = detect(bytes)?;
    let pre = compile(&inner.plain, &hash, kind, bytes)?;
    let kind = if matches!(pre, Pre::Task(_)) { ModuleKind::TaskComponent } else { kind };
    let prepared =
        Arc::new(Prepared { hash, kind, pre, bytes: Some(bytes.into()), metered: tokio::sync::OnceCell::new() });
    inner.plain.cache.insert(prepared.clone());
    Ok(prepared)
}

fn no_compiler(hash: &ModuleHash) -> SandboxError {
    SandboxError::InvalidModule(format!(
        "module {hash} was given as wasm, but this sandbox has no compiler (wasmos-edge): it runs only artifacts \
         the master precompiled for its engine profile"
    ))
}

/// Loads an artifact precompiled for one lane of this sandbox ([`crate::Precompiler`]
/// on the master), after checking its envelope names `hash` and this
/// engine's profile; wasmtime then checks the code itself.
///
/// Safety of `deserialize`: artifacts come only from the master, over its
/// authenticated channel; the master is trusted with the code agents run
/// anyway. wasmtime still refuses code for another architecture, CPU
/// features, settings or version.
pub(crate) fn load_precompiled(
    inner: &Inner,
    hash: &ModuleHash,
    metered: bool,
    artifact: &[u8],
) -> Result<(ModuleKind, Pre), SandboxError> {
    use crate::precompiled::{ArtifactHeader, ArtifactKind};
    let (head, code) = ArtifactHeader::unwrap(artifact)?;
    if head.module != hash.to_hex() {
        return Err(SandboxError::InvalidModule(format!(
            "the artifact is of module {}, not {hash}; the master sent the wrong artifact",
            head.module
        )));
    }
    if head.metered != metered {
        return Err(SandboxError::InvalidModule(format!(
            "the artifact was compiled for the {} lane, not the {} one",
            if head.metered { "metered" } else { "plain" },
            if metered { "metered" } else { "plain" }
        )));
    }
    let ours = crate::EngineProfile::of(&inner.cfg);
    if head.profile != ours.key() {
        return Err(SandboxError::InvalidModule(format!(
            "refusing an artifact compiled for another engine: it is for {} but this agent is {ours}; \
             the master must compile for the profile this agent registered with",
            head.profile
        )));
    }
    let lane = if metered { &inner.metered } else { &inner.plain };
    let refused =
        |e: wasmtime::Error| SandboxError::InvalidModule(format!("refusing an artifact this engine cannot run: {e:#}"));
    Ok(match head.kind {
        ArtifactKind::Core => {
            let module = unsafe { Module::deserialize(&lane.engine, code) }.map_err(refused)?;
            (ModuleKind::Core, link_core(lane, module)?)
        }
        ArtifactKind::Component => {
            let c = unsafe { wasmtime::component::Component::deserialize(&lane.engine, code) }.map_err(refused)?;
            let pre = link_component(lane, c)?;
            let kind = if matches!(pre, Pre::Task(_)) { ModuleKind::TaskComponent } else { ModuleKind::Component };
            (kind, pre)
        }
    })
}

/// The module compiled for the metered lane: once, on its first metered run.
pub(crate) async fn metered_pre<'a>(inner: &Arc<Inner>, module: &'a Prepared) -> Result<&'a Pre, SandboxError> {
    let r = module
        .metered
        .get_or_init(|| async {
            let (inner, hash) = (inner.clone(), module.hash);
            let Some(bytes) = module.bytes.clone() else {
                return Err(SandboxError::InvalidModule(format!(
                    "module {hash} has no metered-lane artifact loaded here; this agent runs only precompiled \
                     artifacts (load one with Sandbox::load_precompiled_metered)"
                )));
            };
            let kind = if module.kind == ModuleKind::Core { ModuleKind::Core } else { ModuleKind::Component };
            tokio::task::spawn_blocking(move || compile(&inner.metered, &hash, kind, &bytes))
                .await
                .unwrap_or_else(|e| Err(SandboxError::InvalidModule(format!("module compilation crashed: {e}"))))
        })
        .await;
    r.as_ref().map_err(Clone::clone)
}

/// Compiles (or loads from the lane's disk cache) and links a module for one lane.
#[cfg(feature = "compiler")]
fn compile(lane: &Lane, hash: &ModuleHash, kind: ModuleKind, bytes: &[u8]) -> Result<Pre, SandboxError> {
    let disk = lane.cache.disk_path(hash, kind == ModuleKind::Component);
    match kind {
        ModuleKind::TaskComponent => unreachable!("detect() never says TaskComponent"),
        ModuleKind::Core => {
            let module = load_or_compile(
                lane,
                disk.as_deref(),
                bytes,
                |e, b| unsafe { Module::deserialize(e, b) },
                |e, b| Module::new(e, b),
                |m| m.serialize(),
            )?;
            link_core(lane, module)
        }
        ModuleKind::Component => {
            use wasmtime::component::Component;
            let component = load_or_compile(
                lane,
                disk.as_deref(),
                bytes,
                |e, b| unsafe { Component::deserialize(e, b) },
                |e, b| Component::new(e, b),
                |c| c.serialize(),
            )?;
            link_component(lane, component)
        }
    }
}

#[cfg(not(feature = "compiler"))]
fn compile(_: &Lane, hash: &ModuleHash, _: ModuleKind, _: &[u8]) -> Result<Pre, SandboxError> {
    Err(no_compiler(hash))
}

fn link_core(lane: &Lane, module: Module) -> Result<Pre, SandboxError> {
    check_core_imports(&module)?;
    Ok(Pre::Core(lane.linkers.core.instantiate_pre(&module).map_err(|e| link_error(ModuleKind::Core, e))?))
}

fn link_component(lane: &Lane, component: wasmtime::component::Component) -> Result<Pre, SandboxError> {
    let ipre = lane.linkers.component.instantiate_pre(&component).map_err(|e| link_error(ModuleKind::Component, e))?;
    match CommandPre::new(ipre.clone()) {
        Ok(c) => Ok(Pre::Component(c)),
        Err(e1) => match crate::worlds::task::TaskPre::new(ipre) {
            Ok(t) => Ok(Pre::Task(t)),
            Err(e2) => Err(SandboxError::UnsupportedImport(format!(
                "component exports neither wasi:cli/run ({e1:#}) nor the wasmos:task `run` function \
                 ({e2:#}); build it as a WASI 0.2 command (wasm32-wasip2) or for the wasmos:task world"
            ))),
        },
    }
}

/// Loads a serialized artifact from the disk cache, or compiles and stores one.
#[cfg(feature = "compiler")]
///
/// Safety of `deserialize`: the cache directory holds only files this module
/// wrote (atomically, via rename) for an engine with the same compatibility
/// hash; wasmtime additionally checks the header and version. Artifacts are
/// read into memory rather than mapped, so a file changed under us later can
/// never fault a running task.
fn load_or_compile<T>(
    lane: &Lane,
    disk: Option<&std::path::Path>,
    bytes: &[u8],
    deserialize: impl Fn(&Engine, &[u8]) -> wasmtime::Result<T>,
    compile: impl Fn(&Engine, &[u8]) -> wasmtime::Result<T>,
    serialize: impl Fn(&T) -> wasmtime::Result<Vec<u8>>,
) -> Result<T, SandboxError> {
    if let Some(path) = disk.filter(|p| p.exists()) {
        if let Ok(t) = std::fs::read(path).map_err(wasmtime::Error::from).and_then(|b| deserialize(&lane.engine, &b)) {
            crate::cache::ModuleCache::touch(path);
            lane.cache.note_disk_hit();
            return Ok(t);
        }
        // Stale or damaged: recompile and overwrite.
        let _ = std::fs::remove_file(path);
    }
    let t = compile(&lane.engine, bytes).map_err(invalid)?;
    lane.cache.note_compile();
    if let Some(path) = disk
        && let Ok(ser) = serialize(&t)
    {
        lane.cache.store(path, &ser);
    }
    Ok(t)
}

/// How the execution future ended.
enum Ended {
    Returned(wasmtime::Result<i32>),
    /// A `wasmos:task` component's `run` returned `err(message)`.
    TaskError(String),
    InstantiateFailed(wasmtime::Error),
    Killed,
    TimedOut,
    /// A migratable module unwound at a safe point (see `migrate.rs`).
    Captured(Box<crate::migrate::Snapshot>),
}

pub(crate) async fn run(
    inner: &Arc<Inner>,
    module: &Arc<Prepared>,
    req: RunRequest,
    control: &TaskControl,
    acct: Arc<crate::cpu::Account>,
) -> Outcome {
    let started = Instant::now();
    let limits = &req.limits;
    let fail = |msg: String| {
        let mut o = Outcome::error(msg);
        o.wall_time = started.elapsed();
        o
    };
    if limits.mem > inner.cfg.max_task_mem {
        return fail(format!(
            "mem limit of {} bytes is over this sandbox's max_task_mem of {} bytes; ask for less memory",
            limits.mem, inner.cfg.max_task_mem
        ));
    }
    if control.signal() == Signal::Kill {
        let mut o = fail("killed before it started".into());
        o.kind = OutcomeKind::Killed;
        return o;
    }

    // Only runs that need fuel pay for counting it.
    let metered = limits.fuel.is_some() || limits.meter_fuel;
    let (lane, pre) = if metered {
        match metered_pre(inner, module).await {
            Ok(pre) => (&inner.metered, pre),
            Err(e) => return fail(e.to_string()),
        }
    } else {
        (&inner.plain, &module.pre)
    };
    // Wait for a pool slot: past the lane's capacity, runs queue here (the
    // task is STARTING until it has one), neither holding nor waiting for a core.
    let _permit = match lane.slots.try_acquire() {
        Ok(p) => p,
        Err(_) => {
            inner.cpu.withdraw(&acct);
            tokio::select! {
                p = lane.slots.acquire() => match p {
                    Ok(p) => p,
                    Err(_) => return fail("the sandbox is shutting down; retry on another agent".into()),
                },
                _ = control.killed() => {
                    let mut o = fail("killed before it started".into());
                    o.kind = OutcomeKind::Killed;
                    return o;
                }
            }
        }
    };
    control.mark_started();
    inner.cpu.arrive(&acct);

    let dir = match crate::fs::create(&req.sandbox_dir, &inner.cfg.sandbox_root, &req.name) {
        Ok(d) => d,
        Err(msg) => return fail(msg),
    };

    let passthrough = |p| {
        if req.passthrough { p } else { Passthrough::None }
    };
    let stdout = Capture::new(limits.max_output, passthrough(Passthrough::Stdout));
    let stderr = Capture::new(limits.max_output, passthrough(Passthrough::Stderr));
    control.attach_output(stdout.clone(), stderr.clone());
    let mut b = WasiCtxBuilder::new();
    b.args(&req.args).envs(&req.env).stdout(stdout.clone()).stderr(stderr.clone()).allow_tcp(false).allow_udp(false);
    let stdin = match req.stdin {
        Stdin::Closed if !req.input.is_empty() && module.kind != ModuleKind::TaskComponent => {
            Stdin::Bytes(req.input.clone())
        }
        other => other,
    };
    match stdin {
        Stdin::Closed => {}
        Stdin::Bytes(v) => {
            b.stdin(MemoryInputPipe::new(v));
        }
        Stdin::Inherit => {
            b.stdin(wasmtime_wasi::cli::stdin());
        }
    }
    if let Some(d) = &dir
        && let Err(e) = b.preopened_dir(d.path(), "/", FsPerms::ReadWrite)
    {
        return fail(format!("cannot preopen the sandbox directory {}: {e:#}", d.path().display()));
    }
    for hd in &req.host_dirs {
        let perms = if hd.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
        if let Err(e) = b.preopened_dir(&hd.host, &hd.guest, perms) {
            return fail(format!("cannot open directory {}: {e:#}; check that it exists", hd.host.display()));
        }
    }
    let wasi = match module.kind {
        ModuleKind::Core => Wasi::P1(b.build_p1()),
        ModuleKind::Component | ModuleKind::TaskComponent => Wasi::P2 { ctx: b.build(), table: ResourceTable::new() },
    };
    let limiter = MemLimiter::new(
        limits.mem,
        MAX_INSTANCES_PER_TASK as usize,
        MAX_TABLES_PER_TASK as usize,
        MAX_MEMORIES_PER_TASK as usize,
    );
    let mut store = Store::new(
        &lane.engine,
        TaskData {
            wasi,
            limiter,
            context: req.context.clone(),
            progress: req.progress.clone(),
            heartbeats: req.heartbeats.clone(),
            migration: crate::migrate::Migration {
                metered,
                initial_fuel: limits.fuel.unwrap_or(UNLIMITED_FUEL),
                wanted: Some(control.capture_flag()),
                ..Default::default()
            },
            log_to: Some(stderr.clone()),
            sched_logs: Vec::new(),
        },
    );
    store.limiter(|d| &mut d.limiter);
    let initial_fuel = limits.fuel.unwrap_or(UNLIMITED_FUEL);
    if metered {
        // Cannot fail: the metered lane counts fuel.
        let _ = store.set_fuel(initial_fuel);
    }
    // A resumed run: its output so far, and the time it used, carry over.
    let (prior_wall, prior_cpu) = match &req.resume {
        Some(s) => {
            stdout.push_bytes(&s.stdout);
            stderr.push_bytes(&s.stderr);
            (s.wall_time, s.cpu_time)
        }
        None => Default::default(),
    };
    let clock = Arc::new(ActiveClock::start(limits.timeout.saturating_sub(prior_wall)));
    let cb_clock = clock.clone();
    let (cb_control, cb_acct) = (control.clone(), acct.clone());
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |ctx| {
        let fuel = if metered { initial_fuel.saturating_sub(ctx.get_fuel().unwrap_or(initial_fuel)) } else { 0 };
        cb_control.note_use(fuel, ctx.data().limiter.used());
        Ok(if cb_clock.expired() {
            UpdateDeadline::Interrupt
        } else if cb_control.signal() != Signal::Run || cb_acct.should_yield() {
            // A kill or pause is seen at the next poll: yield to it.
            crate::cpu::yield_turn(&cb_acct)
        } else {
            UpdateDeadline::Continue(1)
        })
    });

    let ended = {
        let mut fut = Fair::new(execute(&mut store, pre, &req.input, &stdout, req.resume.as_deref()), acct.clone());
        let mut rx = control.subscribe();
        loop {
            let signal = *rx.borrow_and_update();
            match signal {
                Signal::Kill => break Ended::Killed,
                Signal::Pause => {
                    clock.pause();
                    fut.withdraw();
                }
                Signal::Run => clock.resume(),
            }
            let running = signal == Signal::Run;
            let remaining = clock.remaining();
            tokio::select! {
                biased;
                changed = rx.changed() => {
                    // The control outlives this call (we hold a reference), so the
                    // channel cannot close; if it somehow did, keep running.
                    if changed.is_err() { break fut.await; }
                }
                r = &mut fut, if running => break r,
                _ = tokio::time::sleep(remaining), if running => {
                    if clock.expired() { break Ended::TimedOut; }
                }
            }
        }
    };

    let fuel_consumed = if metered { initial_fuel.saturating_sub(store.get_fuel().unwrap_or(initial_fuel)) } else { 0 };
    let data = store.data();
    let peak_memory_bytes = data.limiter.peak();
    let refused = data.limiter.refused.clone();
    drop(store);
    let (stdout, stdout_truncated) = stdout.take();
    let (stderr, stderr_truncated) = stderr.take();
    let (wall_time, cpu_time) = (started.elapsed() + prior_wall, acct.total() + prior_cpu);
    let ended = match ended {
        Ended::Captured(mut snap) => {
            snap.wall_time = wall_time;
            snap.cpu_time = cpu_time;
            snap.stdout = stdout.clone();
            snap.stderr = stderr.clone();
            control.put_snapshot(*snap);
            Ended::Captured(Box::default())
        }
        other => other,
    };
    let (kind, exit_code, message) = classify(ended, refused, limits);
    Outcome {
        kind,
        exit_code,
        fuel_consumed,
        peak_memory_bytes,
        wall_time,
        cpu_time,
        fuel_metered: metered,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        message,
    }
}

async fn execute(
    store: &mut Store<TaskData>,
    pre: &Pre,
    input: &[u8],
    stdout: &Capture,
    resume: Option<&crate::migrate::Snapshot>,
) -> Ended {
    match pre {
        Pre::Core(pre) => {
            let instance = match pre.instantiate_async(&mut *store).await {
                Ok(i) => i,
                Err(e) => return Ended::InstantiateFailed(e),
            };
            let start = match instance.get_typed_func::<(), ()>(&mut *store, "_start") {
                Ok(f) => f,
                Err(e) => return Ended::InstantiateFailed(e),
            };
            if let Some(snap) = resume
                && let Err(e) = crate::migrate::restore(&mut *store, &instance, snap).await
            {
                return Ended::InstantiateFailed(e.context("cannot resume the captured run"));
            }
            let r = start.call_async(&mut *store, ()).await;
            if r.is_ok() {
                match crate::migrate::captured(&mut *store, &instance).await {
                    Ok(Some(snap)) => return Ended::Captured(Box::new(snap)),
                    Ok(None) => {}
                    Err(e) => return Ended::Returned(Err(e)),
                }
            }
            Ended::Returned(r.map(|()| 0))
        }
        Pre::Component(pre) => {
            let command = match pre.instantiate_async(&mut *store).await {
                Ok(c) => c,
                Err(e) => return Ended::InstantiateFailed(e),
            };
            Ended::Returned(command.wasi_cli_run().call_run(&mut *store).await.map(|r| if r.is_ok() { 0 } else { 1 }))
        }
        Pre::Task(pre) => {
            let task = match pre.instantiate_async(&mut *store).await {
                Ok(t) => t,
                Err(e) => return Ended::InstantiateFailed(e),
            };
            match task.call_run(&mut *store, input).await {
                Ok(Ok(out)) => {
                    stdout.push_bytes(&out);
                    Ended::Returned(Ok(0))
                }
                Ok(Err(msg)) => Ended::TaskError(msg),
                Err(e) => Ended::Returned(Err(e)),
            }
        }
    }
}

/// Renders a trap or error: the cause, then the wasm backtrace if there is one.
fn describe(e: &wasmtime::Error) -> String {
    let mut msg = e.root_cause().to_string();
    if let Some(bt) = e.downcast_ref::<WasmBacktrace>() {
        let frames = bt.to_string();
        if !frames.trim().is_empty() {
            msg.push('\n');
            msg.push_str(frames.trim_end());
        }
    }
    msg
}

fn classify(
    ended: Ended,
    refused: Option<String>,
    limits: &wasmos_model::Limits,
) -> (OutcomeKind, Option<i32>, Option<String>) {
    use OutcomeKind::*;
    let timeout = wasmos_model::format_duration(limits.timeout);
    match ended {
        Ended::Killed => (Killed, None, Some("killed".into())),
        Ended::Captured(_) => (Killed, None, Some("captured at a safe point, to resume elsewhere".into())),
        Ended::TimedOut => (TimedOut, None, Some(format!("timed out after {timeout} of running time"))),
        Ended::Returned(Ok(0)) => (Finished, Some(0), None),
        Ended::TaskError(msg) => (Failed, Some(1), Some(msg)),
        Ended::Returned(Ok(code)) => (Failed, Some(code), Some(format!("exited with code {code}").to_string())),
        Ended::InstantiateFailed(e) => match refused {
            Some(r) => (OutOfMemory, None, Some(format!("{r} (while instantiating: {})", e.root_cause()))),
            None if e.downcast_ref::<Trap>().is_some() => (Failed, None, Some(describe(&e))),
            None => (Error, None, Some(format!("cannot instantiate the module: {e:#}"))),
        },
        Ended::Returned(Err(e)) => {
            if let Some(exit) = e.downcast_ref::<I32Exit>() {
                return if exit.0 == 0 {
                    (Finished, Some(0), None)
                } else {
                    let note = refused.map(|r| format!("; before exiting, a {r}")).unwrap_or_default();
                    (Failed, Some(exit.0), Some(format!("exited with code {}{note}", exit.0)))
                };
            }
            match (e.downcast_ref::<Trap>(), refused) {
                (Some(Trap::OutOfFuel), _) => {
                    let budget = limits.fuel.map(|f| f.to_string()).unwrap_or_else(|| "unlimited".into());
                    (OutOfFuel, None, Some(format!("out of fuel: used the whole budget of {budget}; raise --fuel")))
                }
                (Some(Trap::Interrupt), _) => {
                    (TimedOut, None, Some(format!("timed out after {timeout} of running time\n{}", describe(&e))))
                }
                (_, Some(r)) => (OutOfMemory, None, Some(format!("{r}\n{}", describe(&e)))),
                (_, None) => (Failed, None, Some(describe(&e))),
            }
        }
    }
}
