//! Live migration of a core module at a safe point (Binaryen's asyncify).
//!
//! A module made migratable (`wasmos submit --migratable`: every global
//! exported as `__wasmos_global_N`, then `wasm-opt --asyncify` with the
//! `wasmos` `heartbeat` import as the one that unwinds) can be captured at a
//! heartbeat: when its control asks for a capture, the heartbeat grows the
//! memory by one page for asyncify's buffer and starts unwinding; the Wasm
//! stack unwinds into that buffer, `_start` returns, and the run ends with a
//! [`Snapshot`]: linear memory, the exported globals, and the fuel and time
//! used up to the heartbeat. Another sandbox resumes it: memory and globals
//! restored, `asyncify_start_rewind`, `_start` again; the rewind reaches the
//! same heartbeat, which stops it and sets the fuel counter back to what was
//! used at the capture, so the run's total fuel is an undisturbed run's.
//!
//! What qualifies: a WASI preview1 module with asyncify's exports and one
//! exported memory, at a heartbeat, whose memory may grow by a page. Its
//! WASI state beyond stdout/stderr (open files, stdin read so far, a
//! sandbox directory) does not travel: the agent captures only tasks with
//! no sandbox directory and no input.

use std::time::Duration;

use wasmtime::{AsContextMut, Caller, Instance, Val};

use crate::run::TaskData;

/// The prefix of the exports that name a migratable module's globals.
pub const GLOBAL_EXPORT: &str = "__wasmos_global_";
/// Bytes of the buffer asyncify saves the stack in (four pages).
const BUFFER: u32 = 4 * 65536;
/// The largest memory a run may have to be captured: its snapshot travels
/// in one status update and one launch (`MAX_MESSAGE_BYTES` is 16 MiB, and
/// output rides along). A larger run is not captured and runs to the
/// drain's deadline.
pub const MAX_SNAPSHOT_MEMORY: u64 = 8 << 20;

/// A captured run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub memory: Vec<u8>,
    /// Exported mutable globals by export name.
    pub globals: Vec<(String, GlobalValue)>,
    /// Where asyncify's buffer is in `memory`.
    pub data_ptr: u32,
    /// Fuel used up to the safe point (metered runs).
    pub fuel: u64,
    pub cpu_time: Duration,
    pub wall_time: Duration,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GlobalValue {
    I32(i32),
    I64(i64),
    /// Bits.
    F32(u32),
    F64(u64),
}

/// A run's migration state (core modules).
#[derive(Default)]
pub(crate) struct Migration {
    pub metered: bool,
    pub initial_fuel: u64,
    /// Asked to capture at the next safe point.
    pub wanted: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Unwinding into the buffer at this address.
    pub unwinding: Option<u32>,
    pub captured_fuel: u64,
    /// Rewinding a resumed run; the fuel used before its capture.
    pub rewinding: Option<u64>,
}

fn func<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    caller: &mut Caller<'_, TaskData>,
    name: &str,
) -> Option<wasmtime::TypedFunc<P, R>> {
    caller.get_export(name)?.into_func()?.typed::<P, R>(&*caller).ok()
}

/// The `wasmos` `heartbeat` import of a core module: a safe point.
pub(crate) async fn safe_point(caller: &mut Caller<'_, TaskData>) -> wasmtime::Result<()> {
    let m = &caller.data().migration;
    let (metered, initial) = (m.metered, m.initial_fuel);
    if let Some(fuel_before) = m.rewinding {
        // A resumed run is back where it was captured.
        if let Some(stop) = func::<(), ()>(caller, "asyncify_stop_rewind") {
            stop.call_async(&mut *caller, ()).await?;
        }
        caller.data_mut().migration.rewinding = None;
        if metered {
            caller.set_fuel(initial.saturating_sub(fuel_before))?;
        }
        return Ok(());
    }
    let wanted = m.wanted.as_ref().is_some_and(|w| w.load(std::sync::atomic::Ordering::Relaxed));
    if !wanted || m.unwinding.is_some() {
        return Ok(());
    }
    let Some(start) = func::<i32, ()>(caller, "asyncify_start_unwind") else { return Ok(()) };
    let Some(mem) = caller.get_export("memory").and_then(|e| e.into_memory()) else { return Ok(()) };
    let fuel = if metered { initial.saturating_sub(caller.get_fuel().unwrap_or(initial)) } else { 0 };
    if mem.data_size(&*caller) as u64 + BUFFER as u64 > MAX_SNAPSHOT_MEMORY {
        return Ok(());
    }
    // The buffer: pages of its own at the end of memory (the program's
    // allocator grows past them).
    let Ok(pages) = mem.grow(&mut *caller, (BUFFER / 65536) as u64) else { return Ok(()) };
    let Some((ptr, end)) = u32::try_from(pages * 65536).ok().and_then(|p| Some((p, p.checked_add(BUFFER)?))) else {
        return Ok(());
    };
    mem.write(&mut *caller, ptr as usize, &(ptr + 8).to_le_bytes())?;
    mem.write(&mut *caller, ptr as usize + 4, &end.to_le_bytes())?;
    let m = &mut caller.data_mut().migration;
    m.unwinding = Some(ptr);
    m.captured_fuel = fuel;
    start.call_async(&mut *caller, ptr as i32).await
}

/// After `_start` returned: the snapshot, if it returned because it unwound.
pub(crate) async fn captured(
    mut store: impl AsContextMut<Data = TaskData>,
    instance: &Instance,
) -> wasmtime::Result<Option<Snapshot>> {
    let Some(ptr) = store.as_context().data().migration.unwinding else { return Ok(None) };
    if let Ok(stop) = instance.get_typed_func::<(), ()>(&mut store, "asyncify_stop_unwind") {
        stop.call_async(&mut store, ()).await?;
    }
    let mem = instance.get_memory(&mut store, "memory").ok_or_else(|| wasmtime::Error::msg("no memory export"))?;
    let memory = mem.data(&store).to_vec();
    let mut globals = Vec::new();
    let names: Vec<String> = instance.exports(&mut store).map(|e| e.name().to_string()).collect();
    for name in names {
        let Some(g) = instance.get_global(&mut store, &name) else { continue };
        if g.ty(&store).mutability() != wasmtime::Mutability::Var {
            continue;
        }
        let v = match g.get(&mut store) {
            Val::I32(v) => GlobalValue::I32(v),
            Val::I64(v) => GlobalValue::I64(v),
            Val::F32(v) => GlobalValue::F32(v),
            Val::F64(v) => GlobalValue::F64(v),
            _ => continue,
        };
        globals.push((name, v));
    }
    let fuel = store.as_context().data().migration.captured_fuel;
    Ok(Some(Snapshot { memory, globals, data_ptr: ptr, fuel, ..Default::default() }))
}

/// Before `_start` of a resumed run: memory and globals as captured, and
/// asyncify set to rewind.
pub(crate) async fn restore(
    mut store: impl AsContextMut<Data = TaskData>,
    instance: &Instance,
    snap: &Snapshot,
) -> wasmtime::Result<()> {
    let rewind = instance.get_typed_func::<i32, ()>(&mut store, "asyncify_start_rewind").map_err(|_| {
        wasmtime::Error::msg("the module has no asyncify exports: it is not the migratable module that was captured")
    })?;
    let mem = instance.get_memory(&mut store, "memory").ok_or_else(|| wasmtime::Error::msg("no memory export"))?;
    let have = mem.data_size(&store) as u64;
    let want = snap.memory.len() as u64;
    if want > have {
        mem.grow(&mut store, (want - have).div_ceil(65536))?;
    }
    mem.write(&mut store, 0, &snap.memory)?;
    for (name, v) in &snap.globals {
        let g = instance
            .get_global(&mut store, name)
            .ok_or_else(|| wasmtime::Error::msg(format!("the snapshot names global {name}, which the module lacks")))?;
        let v = match *v {
            GlobalValue::I32(v) => Val::I32(v),
            GlobalValue::I64(v) => Val::I64(v),
            GlobalValue::F32(v) => Val::F32(v),
            GlobalValue::F64(v) => Val::F64(v),
        };
        g.set(&mut store, v)?;
    }
    rewind.call_async(&mut store, snap.data_ptr as i32).await?;
    store.as_context_mut().data_mut().migration.rewinding = Some(snap.fuel);
    Ok(())
}
