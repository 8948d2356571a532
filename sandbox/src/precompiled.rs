//! Code compiled somewhere else: the [`EngineProfile`] an engine's code must
//! fit (target, CPU features, the settings that shape code, the wasmtime
//! version), the envelope an artifact travels in, and — with the `compiler`
//! feature — the [`Precompiler`] a master runs for its agents' kinds.
//!
//! An agent reports its profile when it registers; the master compiles each
//! module once per (module, profile, lane) and the agent loads the artifact
//! instead of compiling. The agent checks the envelope names its own module
//! and profile, and wasmtime then checks the code itself (architecture, CPU
//! features, tunables, version): an artifact for anything else is refused,
//! never run.

use std::fmt;

use crate::{SandboxConfig, SandboxError};

/// Which CPU features compiled code may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CpuFeatures {
    /// What this CPU has (detected at start).
    #[default]
    Native,
    /// Only the architecture's base: artifacts run on every CPU of the kind.
    Baseline,
}

impl std::str::FromStr for CpuFeatures {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(CpuFeatures::Native),
            "baseline" => Ok(CpuFeatures::Baseline),
            _ => Err(format!("unknown cpu features {s:?}; give native or baseline")),
        }
    }
}

/// Cranelift ISA flags an artifact may enable, with the name the CPU
/// reports for each (as wasmtime checks them when it loads an artifact).
#[cfg_attr(not(any(feature = "compiler", target_arch = "x86_64")), allow(dead_code))]
const X86_FLAGS: &[(&str, &str)] = &[
    ("has_cmpxchg16b", "cmpxchg16b"),
    ("has_sse3", "sse3"),
    ("has_ssse3", "ssse3"),
    ("has_sse41", "sse4.1"),
    ("has_sse42", "sse4.2"),
    ("has_popcnt", "popcnt"),
    ("has_avx", "avx"),
    ("has_avx2", "avx2"),
    ("has_fma", "fma"),
    ("has_bmi1", "bmi1"),
    ("has_bmi2", "bmi2"),
    ("has_lzcnt", "lzcnt"),
];
#[cfg_attr(not(any(feature = "compiler", target_arch = "aarch64")), allow(dead_code))]
const AARCH64_FLAGS: &[(&str, &str)] =
    &[("has_lse", "lse"), ("has_pauth", "paca"), ("has_fp16", "fp16"), ("has_dotprod", "dotprod")];

/// The ISA flags this CPU supports, sorted.
fn native_flags() -> Vec<String> {
    #[allow(unused_mut)]
    let mut v: Vec<String> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    for (flag, feat) in X86_FLAGS {
        let has = match *feat {
            "cmpxchg16b" => std::arch::is_x86_feature_detected!("cmpxchg16b"),
            "sse3" => std::arch::is_x86_feature_detected!("sse3"),
            "ssse3" => std::arch::is_x86_feature_detected!("ssse3"),
            "sse4.1" => std::arch::is_x86_feature_detected!("sse4.1"),
            "sse4.2" => std::arch::is_x86_feature_detected!("sse4.2"),
            "popcnt" => std::arch::is_x86_feature_detected!("popcnt"),
            "avx" => std::arch::is_x86_feature_detected!("avx"),
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            "bmi1" => std::arch::is_x86_feature_detected!("bmi1"),
            "bmi2" => std::arch::is_x86_feature_detected!("bmi2"),
            "lzcnt" => std::arch::is_x86_feature_detected!("lzcnt"),
            _ => false,
        };
        if has {
            v.push(flag.to_string());
        }
    }
    #[cfg(target_arch = "aarch64")]
    for (flag, feat) in AARCH64_FLAGS {
        let has = match *feat {
            "lse" => std::arch::is_aarch64_feature_detected!("lse"),
            "paca" => std::arch::is_aarch64_feature_detected!("paca"),
            "fp16" => std::arch::is_aarch64_feature_detected!("fp16"),
            "dotprod" => std::arch::is_aarch64_feature_detected!("dotprod"),
            _ => false,
        };
        if has {
            v.push(flag.to_string());
        }
    }
    v.sort();
    v
}

/// This machine's target triple, as Cranelift names it.
pub fn host_triple() -> String {
    let env = if cfg!(target_env = "musl") { "musl" } else { "gnu" };
    format!("{}-unknown-{}-{env}", std::env::consts::ARCH, std::env::consts::OS)
}

/// Everything compiled code must fit to run on an engine: two engines with
/// equal profiles run each other's artifacts. Its [`EngineProfile::key`] is
/// what agents report and the master caches artifacts by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EngineProfile {
    /// A target triple (`x86_64-unknown-linux-gnu`, `aarch64-unknown-linux-gnu`)
    /// or `pulley64` (wasmtime's interpreter).
    pub target: String,
    /// Cranelift ISA flags the code may use (`has_avx2`), sorted.
    pub cpu_features: Vec<String>,
    /// The largest memory a task may have: it sets the memory reservation,
    /// which shapes bounds checks.
    pub max_task_mem: u64,
    pub max_wasm_stack: usize,
    /// wasmtime's version: artifacts never cross versions.
    pub wasmtime: String,
}

impl EngineProfile {
    /// The profile of a sandbox built from `cfg` on this machine.
    pub fn of(cfg: &SandboxConfig) -> EngineProfile {
        let target = cfg.target.clone().unwrap_or_else(host_triple);
        let pulley = target.starts_with("pulley");
        let cpu_features =
            if pulley || cfg.cpu_features == CpuFeatures::Baseline { Vec::new() } else { native_flags() };
        EngineProfile {
            target,
            cpu_features,
            max_task_mem: cfg.max_task_mem,
            max_wasm_stack: cfg.max_wasm_stack,
            wasmtime: crate::Sandbox::wasmtime_version().to_string(),
        }
    }

    /// The canonical text of the profile:
    /// `target=..;features=a,b;mem=N;stack=N;wasmtime=V`.
    pub fn key(&self) -> String {
        format!(
            "target={};features={};mem={};stack={};wasmtime={}",
            self.target,
            self.cpu_features.join(","),
            self.max_task_mem,
            self.max_wasm_stack,
            self.wasmtime
        )
    }

    /// Parses [`EngineProfile::key`]; says what is wrong otherwise.
    pub fn parse(key: &str) -> Result<EngineProfile, String> {
        let mut fields = std::collections::HashMap::new();
        for part in key.split(';') {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!("engine profile part {part:?} is not key=value; the agent sent a damaged profile")
            })?;
            if fields.insert(k, v).is_some() {
                return Err(format!("engine profile names {k:?} twice"));
            }
        }
        let get = |k: &str| fields.get(k).copied().ok_or_else(|| format!("engine profile {key:?} has no {k}="));
        let num = |k: &str| -> Result<u64, String> {
            get(k)?.parse::<u64>().map_err(|_| format!("engine profile's {k}= is not a number"))
        };
        let mut cpu_features: Vec<String> =
            get("features")?.split(',').filter(|f| !f.is_empty()).map(str::to_string).collect();
        cpu_features.sort();
        let p = EngineProfile {
            target: get("target")?.to_string(),
            cpu_features,
            max_task_mem: num("mem")?,
            max_wasm_stack: num("stack")? as usize,
            wasmtime: get("wasmtime")?.to_string(),
        };
        if fields.len() != 5 {
            return Err(format!(
                "engine profile {key:?} has unknown parts; this master knows target, features, mem, stack, wasmtime"
            ));
        }
        Ok(p)
    }

    /// The CPU architecture (`x86_64`, `aarch64`, `pulley64`), as placement
    /// constraints name it (`arch=aarch64`).
    pub fn arch(&self) -> &str {
        self.target.split('-').next().unwrap_or(&self.target)
    }

    /// A short stable name of the profile for file names: 16 hex digits.
    pub fn short_hash(&self) -> String {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(self.key().as_bytes())[..8])
    }
}

impl fmt::Display for EngineProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// Whether an artifact holds a core module or a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    Core,
    Component,
}

/// What an artifact's envelope says about the code it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactHeader {
    /// SHA-256 (hex) of the Wasm it was compiled from.
    pub module: String,
    pub kind: ArtifactKind,
    /// Compiled for the metered (fuel-counting) lane.
    pub metered: bool,
    /// The [`EngineProfile::key`] it was compiled for.
    pub profile: String,
}

const MAGIC: &str = "wasmos-artifact/1\n";
/// Longest envelope header read before giving up on a damaged artifact.
const MAX_HEADER: usize = 4096;

impl ArtifactHeader {
    /// The envelope: a text header, an empty line, then wasmtime's bytes.
    pub fn wrap(&self, code: &[u8]) -> Vec<u8> {
        let head = format!(
            "{MAGIC}module={}\nkind={}\nlane={}\nprofile={}\n\n",
            self.module,
            match self.kind {
                ArtifactKind::Core => "core",
                ArtifactKind::Component => "component",
            },
            if self.metered { "metered" } else { "plain" },
            self.profile
        );
        let mut out = Vec::with_capacity(head.len() + code.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(code);
        out
    }

    /// Splits an envelope into its header and wasmtime's bytes.
    pub fn unwrap(artifact: &[u8]) -> Result<(ArtifactHeader, &[u8]), SandboxError> {
        let bad = |why: &str| {
            SandboxError::InvalidModule(format!(
                "not a wasmos artifact ({why}); the master's compiled-artifact cache is damaged or from another version"
            ))
        };
        let rest = artifact.strip_prefix(MAGIC.as_bytes()).ok_or_else(|| bad("no wasmos-artifact/1 header"))?;
        let end =
            rest.windows(2).take(MAX_HEADER).position(|w| w == b"\n\n").ok_or_else(|| bad("the header never ends"))?;
        let head = std::str::from_utf8(&rest[..end]).map_err(|_| bad("the header is not text"))?;
        let (mut module, mut kind, mut lane, mut profile) = (None, None, None, None);
        for line in head.lines() {
            match line.split_once('=') {
                Some(("module", v)) => module = Some(v.to_string()),
                Some(("kind", "core")) => kind = Some(ArtifactKind::Core),
                Some(("kind", "component")) => kind = Some(ArtifactKind::Component),
                Some(("lane", "plain")) => lane = Some(false),
                Some(("lane", "metered")) => lane = Some(true),
                Some(("profile", v)) => profile = Some(v.to_string()),
                _ => return Err(bad(&format!("unknown header line {line:?}"))),
            }
        }
        let h = ArtifactHeader {
            module: module.ok_or_else(|| bad("no module="))?,
            kind: kind.ok_or_else(|| bad("no kind="))?,
            metered: lane.ok_or_else(|| bad("no lane="))?,
            profile: profile.ok_or_else(|| bad("no profile="))?,
        };
        Ok((h, &rest[end + 2..]))
    }
}

/// Compiles modules for other engines' profiles (the master, for its agents).
/// Keeps one engine per (profile, lane); each compile is blocking.
#[cfg(feature = "compiler")]
#[derive(Default)]
pub struct Precompiler {
    engines: std::sync::Mutex<std::collections::HashMap<(String, bool), wasmtime::Engine>>,
}

#[cfg(feature = "compiler")]
impl fmt::Debug for Precompiler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Precompiler").finish_non_exhaustive()
    }
}

#[cfg(feature = "compiler")]
impl Precompiler {
    /// Whether this master can compile for `profile`, and why not.
    pub fn check(profile: &EngineProfile) -> Result<(), String> {
        if profile.wasmtime != crate::Sandbox::wasmtime_version() {
            return Err(format!(
                "the agent runs wasmtime {} but this master compiles with wasmtime {}; run the same wasmos version on both",
                profile.wasmtime,
                crate::Sandbox::wasmtime_version()
            ));
        }
        if profile.max_task_mem < 64 << 10 || profile.max_task_mem > 4 << 30 {
            return Err(format!("the agent's max task memory of {} bytes is out of range", profile.max_task_mem));
        }
        if profile.max_wasm_stack < 64 << 10 || profile.max_wasm_stack > 1 << 30 {
            return Err(format!("the agent's wasm stack of {} bytes is out of range", profile.max_wasm_stack));
        }
        let known = match profile.arch() {
            "x86_64" => X86_FLAGS,
            "aarch64" => AARCH64_FLAGS,
            _ => &[],
        };
        if let Some(f) = profile.cpu_features.iter().find(|f| !known.iter().any(|(k, _)| k == f)) {
            return Err(format!("unknown cpu feature {f:?} for {}", profile.arch()));
        }
        Ok(())
    }

    fn engine(&self, profile: &EngineProfile, metered: bool) -> Result<wasmtime::Engine, SandboxError> {
        Self::check(profile).map_err(SandboxError::Config)?;
        let key = (profile.key(), metered);
        let mut engines = self.engines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = engines.get(&key) {
            return Ok(e.clone());
        }
        let no_target = |e: wasmtime::Error| {
            SandboxError::Config(format!(
                "Cranelift cannot compile for {}: {e}; start that agent with --target pulley64 (the interpreter)",
                profile.target
            ))
        };
        let mut c = crate::engine::code_config(profile, metered);
        c.target(&profile.target).map_err(no_target)?;
        for f in &profile.cpu_features {
            // Safety: `check` allowed only flags wasmtime itself tests for
            // when it loads an artifact, so code using a feature the agent's
            // CPU lacks is refused there rather than run.
            unsafe {
                c.cranelift_flag_enable(f);
            }
        }
        let engine = wasmtime::Engine::new(&c).map_err(no_target)?;
        engines.insert(key, engine.clone());
        Ok(engine)
    }

    /// Compiles `wasm` (whose SHA-256 is `module`) for `profile`'s engine and
    /// lane, in the envelope agents load.
    pub fn precompile(
        &self,
        profile: &EngineProfile,
        metered: bool,
        module: &str,
        wasm: &[u8],
    ) -> Result<Vec<u8>, SandboxError> {
        let engine = self.engine(profile, metered)?;
        let (kind, code) = match crate::run::detect_binary(wasm)? {
            crate::ModuleKind::Core => (ArtifactKind::Core, engine.precompile_module(wasm)),
            _ => (ArtifactKind::Component, engine.precompile_component(wasm)),
        };
        let code = code.map_err(|e| {
            SandboxError::InvalidModule(format!(
                "module is not valid wasm: {e:#}; rebuild it for wasm32-wasip1 or wasm32-wasip2"
            ))
        })?;
        Ok(ArtifactHeader { module: module.to_string(), kind, metered, profile: profile.key() }.wrap(&code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_key_parses_back_to_itself_and_damage_is_named() {
        let p = EngineProfile {
            target: "aarch64-unknown-linux-gnu".into(),
            cpu_features: vec!["has_lse".into()],
            max_task_mem: 1 << 30,
            max_wasm_stack: 512 << 10,
            wasmtime: "48.0.8".into(),
        };
        assert_eq!(EngineProfile::parse(&p.key()).unwrap(), p);
        assert_eq!(p.arch(), "aarch64");
        assert!(EngineProfile::parse("target=x;features=;mem=a;stack=1;wasmtime=1").unwrap_err().contains("mem"));
        assert!(EngineProfile::parse("target=x").unwrap_err().contains("no features="));
        assert!(EngineProfile::parse(&format!("{};extra=1", p.key())).unwrap_err().contains("unknown parts"));
    }

    #[test]
    fn an_envelope_unwraps_to_its_header_and_code_and_junk_is_refused() {
        let h = ArtifactHeader {
            module: "ab".repeat(32),
            kind: ArtifactKind::Component,
            metered: true,
            profile: "target=pulley64;features=;mem=65536;stack=65536;wasmtime=48.0.8".into(),
        };
        let code = b"\x7fELF\n\nbinary";
        let art = h.wrap(code);
        let (back, rest) = ArtifactHeader::unwrap(&art).unwrap();
        assert_eq!((back, rest), (h, &code[..]));
        assert!(ArtifactHeader::unwrap(b"\0asm\x01\0\0\0").unwrap_err().to_string().contains("not a wasmos artifact"));
        assert!(ArtifactHeader::unwrap(b"wasmos-artifact/1\nkind=elf\n\n").is_err());
    }
}
