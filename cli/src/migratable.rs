//! `wasmos submit --migratable`: a WASI preview1 module made capturable at
//! its safe points, so a drain with `--migrate` can move it between agents.
//!
//! Two steps. Every global is exported (`__wasmos_global_N`), because the
//! host can read and set only exported globals (a C or Rust module keeps its
//! stack pointer in one). Then Binaryen's asyncify (`wasm-opt --asyncify`,
//! Debian's `binaryen`) instruments every function that can reach the
//! `wasmos` `heartbeat` import, so that at a heartbeat the host can unwind
//! the Wasm stack into linear memory and, on another agent, rewind it.

use std::io::Write;
use std::process::{Command, Stdio};

use wasm_encoder::reencode::Reencode;
use wasmos_sandbox::migrate::GLOBAL_EXPORT;

/// The module, made migratable; an error says what to do.
pub fn make(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" || bytes[4..8] != [1, 0, 0, 0] {
        return Err(
            "--migratable needs a WASI preview1 core module (wasm32-wasip1); components cannot be migrated".into()
        );
    }
    let exported = export_globals(bytes)?;
    asyncify(&exported)
}

/// Re-encodes the module with an export for every global not exported yet.
fn export_globals(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut globals = 0u32;
    let mut exported = std::collections::HashSet::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| format!("module is not valid wasm: {e}"))? {
            wasmparser::Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    let imp = imp.map_err(|e| e.to_string())?;
                    if matches!(imp.ty, wasmparser::TypeRef::Global(_)) {
                        globals += 1;
                    }
                }
            }
            wasmparser::Payload::GlobalSection(r) => globals += r.count(),
            wasmparser::Payload::ExportSection(r) => {
                for e in r {
                    let e = e.map_err(|e| e.to_string())?;
                    if e.kind == wasmparser::ExternalKind::Global {
                        exported.insert(e.index);
                    }
                }
            }
            _ => {}
        }
    }
    struct Exporter {
        globals: u32,
        exported: std::collections::HashSet<u32>,
    }
    impl Reencode for Exporter {
        type Error = std::convert::Infallible;
        fn parse_export_section(
            &mut self,
            exports: &mut wasm_encoder::ExportSection,
            section: wasmparser::ExportSectionReader<'_>,
        ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
            wasm_encoder::reencode::utils::parse_export_section(self, exports, section)?;
            for g in (0..self.globals).filter(|g| !self.exported.contains(g)) {
                exports.export(&format!("{GLOBAL_EXPORT}{g}"), wasm_encoder::ExportKind::Global, g);
            }
            Ok(())
        }
    }
    let mut module = wasm_encoder::Module::new();
    let mut r = Exporter { globals, exported };
    r.parse_core_module(&mut module, wasmparser::Parser::new(0), bytes)
        .map_err(|e| format!("cannot re-encode the module: {e}"))?;
    Ok(module.finish())
}

/// Runs `wasm-opt --asyncify` with the heartbeat as the one import that unwinds.
fn asyncify(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let (input, output) = (dir.path().join("in.wasm"), dir.path().join("out.wasm"));
    std::fs::write(&input, bytes).map_err(|e| format!("cannot write {}: {e}", input.display()))?;
    let run = Command::new("wasm-opt")
        .arg(&input)
        .args(["--asyncify", "--pass-arg=asyncify-imports@wasmos.heartbeat", "-O1", "-o"])
        .arg(&output)
        .stdin(Stdio::null())
        .output();
    match run {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(
            "--migratable needs Binaryen's wasm-opt on the PATH: install it (`apt-get install binaryen`, or `cargo xtask setup`)"
                .into(),
        ),
        Err(e) => Err(format!("cannot run wasm-opt: {e}")),
        Ok(o) if !o.status.success() => {
            let _ = std::io::stderr().write_all(&o.stderr);
            Err(format!("wasm-opt --asyncify failed ({}); the module may use features Binaryen does not know", o.status))
        }
        Ok(_) => std::fs::read(&output).map_err(|e| format!("cannot read {}: {e}", output.display())),
    }
}
