//! Artifacts precompiled elsewhere: a sandbox without compiling runs what a
//! `Precompiler` built for its profile, and refuses an artifact for another
//! target or module, by its envelope and by wasmtime's own checks.

use wasmos_sandbox::{
    ArtifactHeader, EngineProfile, ModuleHash, OutcomeKind, Precompiler, Sandbox, SandboxConfig, TaskControl,
};

use crate::{limits, req, text, wat};

fn edge_sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig { max_concurrent_tasks: 4, max_metered_tasks: 2, compile: false, ..Default::default() })
        .expect("sandbox builds")
}

const HELLO: &str = r#"(data (i32.const 16) "precompiled\n")
    (func (export "_start") (drop (call $write (i32.const 1) (i32.const 16) (i32.const 12))))"#;

#[tokio::test]
async fn an_artifact_for_this_profile_runs_and_one_for_another_target_or_module_is_refused() {
    let sb = edge_sandbox();
    let bytes = wat(HELLO);
    let hash = ModuleHash::of(&bytes);
    // Without a compiler, the wasm itself is refused with what to do.
    let e = sb.prepare(&bytes).unwrap_err().to_string();
    assert!(e.contains("runs only artifacts the master precompiled"), "{e}");

    let pre = Precompiler::default();
    let ours = sb.profile();
    let art = pre.precompile(&ours, false, &hash.to_hex(), &bytes).unwrap();
    let p = sb.load_precompiled(hash, &art).unwrap();
    let o = sb.run(&p, req(limits()), &TaskControl::new()).await;
    assert_eq!(o.kind, OutcomeKind::Finished, "{o:?}");
    assert_eq!(text(&o.stdout), "precompiled\n");

    // The metered lane has its own artifact; fuel is counted there.
    let metered_art = pre.precompile(&ours, true, &hash.to_hex(), &bytes).unwrap();
    assert!(sb.load_precompiled_metered(&p, &art).unwrap_err().to_string().contains("plain lane, not the metered"));
    sb.load_precompiled_metered(&p, &metered_art).unwrap();
    let mut l = limits();
    l.meter_fuel = true;
    let o = sb.run(&p, req(l), &TaskControl::new()).await;
    assert_eq!(o.kind, OutcomeKind::Finished, "{o:?}");
    assert!(o.fuel_consumed > 0);

    // Compiled for aarch64: the envelope names another profile.
    let arm = EngineProfile {
        target: if cfg!(target_arch = "aarch64") { "x86_64-unknown-linux-gnu" } else { "aarch64-unknown-linux-gnu" }
            .into(),
        cpu_features: vec![],
        ..ours.clone()
    };
    let other = edge_sandbox();
    let arm_art = pre.precompile(&arm, false, &hash.to_hex(), &bytes).unwrap();
    let e = other.load_precompiled(hash, &arm_art).unwrap_err().to_string();
    assert!(e.contains("refusing an artifact compiled for another engine"), "{e}");
    // ... and with its envelope forged to name this profile, wasmtime refuses the code.
    let (head, code) = ArtifactHeader::unwrap(&arm_art).unwrap();
    let forged = ArtifactHeader { profile: ours.key(), ..head }.wrap(code);
    let e = other.load_precompiled(hash, &forged).unwrap_err().to_string();
    assert!(e.contains("refusing an artifact this engine cannot run") && e.contains("architecture"), "{e}");
    // Another module's artifact under this hash.
    let e = other.load_precompiled(ModuleHash([7; 32]), &art).unwrap_err().to_string();
    assert!(e.contains("the master sent the wrong artifact"), "{e}");
    // Junk.
    assert!(other.load_precompiled(hash, b"\x7fELF").unwrap_err().to_string().contains("not a wasmos artifact"));
    // An unknown CPU feature or another wasmtime is not compiled for.
    let bad = EngineProfile { cpu_features: vec!["has_teleport".into()], ..ours.clone() };
    assert!(Precompiler::check(&bad).unwrap_err().contains("unknown cpu feature"));
    let old = EngineProfile { wasmtime: "47.0.0".into(), ..ours };
    assert!(Precompiler::check(&old).unwrap_err().contains("same wasmos version"));
}
