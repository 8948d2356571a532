//! `wasmos run` through the real binary, on guests built by `cargo xtask guests`.

use std::path::PathBuf;
use std::process::{Command, Output};

fn wasmos() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wasmos"));
    c.env_remove("WASMOS_CACHE_DIR").arg("run").arg("--no-cache");
    c
}

/// A guest built by `cargo xtask guests` (the README's test command builds them).
fn guest(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guests").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `cargo xtask guests` (or `cargo xtask test`) first", p.display());
    p
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "--json exits 0 when the run was carried out: {}", stderr(o));
    let text = stdout(o);
    assert_eq!(text.trim_end().lines().count(), 1, "exactly one JSON line: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn write_wat(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn rust_wasip1_hello_passes_output_through_and_summarises() {
    let o = wasmos().arg("--env").arg("GREETING=howdy").arg(guest("hello")).args(["--", "Ada"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("howdy, Ada!\n"), "{out}");
    // argv[0] is the module's file name
    assert!(out.contains(r#"argv: ["hello.wasm", "Ada"]"#), "{out}");
    let err = stderr(&o);
    assert!(err.contains("hello: done"), "{err}");
    let summary = err.lines().find(|l| l.starts_with("wasmos: ")).expect("a summary line");
    for key in ["finished", "exit=0", "cpu=", "peak_mem=", "wall="] {
        assert!(summary.contains(key), "{summary}");
    }
    assert!(!summary.contains("fuel="), "no budget, no fuel counted: {summary}");
    let o = wasmos().arg("--meter-fuel").arg(guest("hello")).output().unwrap();
    let err = stderr(&o);
    assert!(err.lines().any(|l| l.starts_with("wasmos: ") && l.contains(" fuel=")), "{err}");
}

#[test]
fn guest_exit_code_becomes_the_process_exit_code() {
    let o = wasmos().arg(guest("hello")).args(["--", "--exit", "3"]).output().unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("wasmos: failed exit=3"));
}

#[test]
fn json_has_exactly_the_documented_keys() {
    let o = wasmos().args(["--json", "--env", "GREETING=hi"]).arg(guest("hello")).args(["--", "Bo"]).output().unwrap();
    let v = json(&o);
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "cpu_time_ms",
            "exit_code",
            "fuel_consumed",
            "message",
            "outcome",
            "peak_memory_bytes",
            "stderr",
            "stderr_truncated",
            "stdout",
            "stdout_truncated",
            "wall_time_ms"
        ]
    );
    assert_eq!(v["outcome"], "finished");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["fuel_consumed"], serde_json::Value::Null, "no budget: fuel is not counted");
    assert!(v["cpu_time_ms"].as_f64().unwrap() > 0.0);
    assert!(v["peak_memory_bytes"].as_u64().unwrap() >= 65536);
    assert!(v["wall_time_ms"].as_f64().unwrap() > 0.0);
    assert!(v["stdout"].as_str().unwrap().starts_with("hi, Bo!"));
    assert_eq!(v["stderr"], "hello: done\n");
    assert_eq!(v["message"], serde_json::Value::Null);
}

#[test]
fn rust_component_runs_as_a_command() {
    let o = wasmos().arg("--json").arg(guest("hello-component")).args(["--", "1", "2", "39"]).output().unwrap();
    let v = json(&o);
    assert_eq!(v["outcome"], "finished", "{v}");
    assert_eq!(v["stdout"], "component says: sum = 42\n");
    // a component whose run fails exits 1
    let o = wasmos().arg(guest("hello-component")).args(["--", "x"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("\"x\" is not a number"));
}

#[test]
fn c_program_reads_files_through_dir() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("data.txt"), "twelve bytes").unwrap();
    let mapping = format!("{}::/in", tmp.path().display());
    let o = wasmos()
        .args(["--json", "--dir", &mapping])
        .arg(guest("hello-c"))
        .args(["--", "/in/data.txt"])
        .output()
        .unwrap();
    let v = json(&o);
    assert_eq!(v["outcome"], "finished", "{v}");
    assert_eq!(v["stdout"], "hello from C, 1 argument(s)\n/in/data.txt: 12 bytes\n");
    // Without --dir there is no filesystem: the file cannot be opened.
    let o = wasmos().arg("--json").arg(guest("hello-c")).args(["--", "/in/data.txt"]).output().unwrap();
    let v = json(&o);
    assert_eq!((v["outcome"].as_str(), v["exit_code"].as_i64()), (Some("failed"), Some(1)), "{v}");
    assert_eq!(v["stderr"], "cannot open /in/data.txt\n");
}

#[test]
fn limits_map_to_outcomes_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let spin = write_wat(&tmp, "spin.wat", r#"(module (func (export "_start") (loop (br 0))))"#);
    let o = wasmos().args(["--timeout", "200ms"]).arg(&spin).output().unwrap();
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    assert!(stderr(&o).contains("timed_out"));
    let o = wasmos().args(["--fuel", "100000"]).arg(&spin).output().unwrap();
    assert_eq!(o.status.code(), Some(125));
    let o = wasmos().args(["--json", "--fuel", "100000"]).arg(&spin).output().unwrap();
    let v = json(&o);
    assert_eq!((v["outcome"].as_str(), v["fuel_consumed"].as_u64()), (Some("out_of_fuel"), Some(100000)));

    let bomb = write_wat(
        &tmp,
        "bomb.wat",
        r#"(module (memory 1) (func (export "_start")
             (loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable))"#,
    );
    let o = wasmos().args(["--json", "--mem", "1MiB"]).arg(&bomb).output().unwrap();
    let v = json(&o);
    assert_eq!(v["outcome"], "out_of_memory", "{v}");
    assert_eq!(v["peak_memory_bytes"], 1 << 20);

    let flood = write_wat(
        &tmp,
        "flood.wat",
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1) (data (i32.const 64) "xxxxxxxxxxxxxxxx")
          (func (export "_start") (local $i i32)
            (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 16))
            (loop (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if 0 (i32.lt_u (local.get $i) (i32.const 1000))))))"#,
    );
    let o = wasmos().args(["--json", "--max-output", "1KiB"]).arg(&flood).output().unwrap();
    let v = json(&o);
    assert_eq!(v["outcome"], "finished");
    assert_eq!(v["stdout"].as_str().unwrap().len(), 1024);
    assert_eq!(v["stdout_truncated"], true);
}

#[test]
fn bad_modules_are_error_outcomes() {
    let tmp = tempfile::tempdir().unwrap();
    let not_wasm = tmp.path().join("readme.wasm");
    std::fs::write(&not_wasm, "this is text").unwrap();
    let o = wasmos().arg(&not_wasm).output().unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("not a wasm module"), "{}", stderr(&o));

    let mut truncated = std::fs::read(guest("hello")).unwrap();
    truncated.truncate(truncated.len() / 2);
    let cut = tmp.path().join("cut.wasm");
    std::fs::write(&cut, truncated).unwrap();
    let v = json(&wasmos().arg("--json").arg(&cut).output().unwrap());
    assert_eq!(v["outcome"], "error");
    assert!(v["message"].as_str().unwrap().contains("not valid wasm"), "{v}");

    let imports =
        write_wat(&tmp, "imp.wat", r#"(module (import "env" "host_secret" (func)) (func (export "_start")))"#);
    let v = json(&wasmos().arg("--json").arg(&imports).output().unwrap());
    assert_eq!(v["outcome"], "error");
    assert!(v["message"].as_str().unwrap().contains("`env::host_secret`"), "{v}");
}

#[test]
fn usage_errors_exit_2_with_a_hint() {
    let o = wasmos().args(["--mem", "lots"]).arg(guest("hello")).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("KiB/MiB/GiB"), "{}", stderr(&o));
    let o = wasmos().arg("/no/such/module.wasm").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read /no/such/module.wasm"));
    let o = wasmos().args(["--env", "NOEQUALS"]).arg(guest("hello")).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("K=V"));
}

#[test]
fn disk_cache_is_used_across_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_wasmos"))
            .args(["run", "--json", "--cache-dir"])
            .arg(tmp.path())
            .arg(guest("hello"))
            .output()
            .unwrap()
    };
    assert_eq!(json(&run())["outcome"], "finished");
    let artifacts: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().filter_map(Result::ok).collect();
    assert_eq!(artifacts.len(), 1);
    let before = artifacts[0].metadata().unwrap().len();
    assert_eq!(json(&run())["outcome"], "finished");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    assert_eq!(artifacts[0].metadata().unwrap().len(), before);
}
