//! The task examples in other languages (examples/tasks/{hello-zig, hello-go,
//! hello-as, wordcount-py, upper-js}), built by `cargo xtask guests`, through
//! the real binary: locally with `wasmos run --json` and on a `wasmos dev`
//! cluster with `wasmos submit --wait --json`.
//!
//! The Python and JavaScript components embed a whole language runtime (12-18 MB
//! of Wasm, some seconds to compile in a debug build), so the local runs share
//! one compiled-module cache in CARGO_TARGET_TMPDIR: each component is compiled
//! once per machine, not once per run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::dev::Cluster;

fn guest(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guests").join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask guests` (or `cargo xtask test`), which installs the Zig, Go, \
         AssemblyScript, componentize-py and componentize-js toolchains when missing",
        p.display()
    );
    p
}

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("languages-module-cache")
}

/// `wasmos run --json [--input FILE] MODULE -- ARGS`: the one JSON object.
fn run_json(module: &Path, input: Option<&Path>, args: &[&str]) -> serde_json::Value {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wasmos"));
    c.env_remove("WASMOS_CACHE_DIR").args(["run", "--json", "--cache-dir"]).arg(cache_dir());
    if let Some(i) = input {
        c.arg("--input").arg(i);
    }
    let o = c.arg(module).arg("--").args(args).output().unwrap();
    one_json(&o)
}

fn one_json(o: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "--json exits 0: {}\n{text}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(text.trim_end().lines().count(), 1, "exactly one JSON line: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn assert_finished(v: &serde_json::Value) {
    assert_eq!(v["outcome"], "finished", "{v}");
    assert_eq!(v["exit_code"], 0, "{v}");
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

const TEXT: &str = "The cat and the hat.\nThe cat sat; the hat didn't.\n";

/// What wordcount-py returns for TEXT.
fn check_wordcount(v: &serde_json::Value) {
    assert_finished(v);
    // Most frequent first, ties alphabetically.
    let expected =
        r#"{"words": 11, "distinct": 6, "top": {"the": 4, "cat": 2, "hat": 2, "and": 1, "didn't": 1, "sat": 1}}"#;
    assert_eq!(v["stdout"], format!("{expected}\n"), "{v}");
    assert!(v["stderr"].as_str().unwrap().contains("wordcount: 11 words, 6 distinct"), "context.log: {v}");
}

#[test]
fn zig_command_greets_with_its_args() {
    let v = run_json(&guest("hello-zig"), None, &["Ada", "Lovelace"]);
    assert_finished(&v);
    assert_eq!(v["stdout"], "hello from Zig, Ada Lovelace!\nargs: 2\n", "{v}");
    let v = run_json(&guest("hello-zig"), None, &[]);
    assert_eq!(v["stdout"], "hello from Zig!\nargs: 0\n", "{v}");
}

#[test]
fn go_command_greets_with_its_args() {
    let v = run_json(&guest("hello-go"), None, &["Ada", "Lovelace"]);
    assert_finished(&v);
    assert_eq!(v["stdout"], "hello from Go, Ada Lovelace!\nargs: 2\n", "{v}");
}

#[test]
fn assemblyscript_command_greets_with_its_args() {
    let v = run_json(&guest("hello-as"), None, &["Ada", "Lovelace"]);
    assert_finished(&v);
    assert_eq!(v["stdout"], "hello from AssemblyScript, Ada Lovelace!\nargs: 2\n", "{v}");
    let v = run_json(&guest("hello-as"), None, &[]);
    assert_eq!(v["stdout"], "hello from AssemblyScript!\nargs: 0\n", "{v}");
}

#[test]
fn python_component_counts_words_and_fails_on_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let wc = guest("wordcount-py");
    check_wordcount(&run_json(&wc, Some(&write(&tmp, "text.txt", TEXT.as_bytes())), &[]));

    // Without --input a component gets empty input.
    let v = run_json(&wc, None, &[]);
    assert_finished(&v);
    assert_eq!(v["stdout"], "{\"words\": 0, \"distinct\": 0, \"top\": {}}\n", "{v}");

    // An err result: outcome failed with the component's message.
    let v = run_json(&wc, Some(&write(&tmp, "bad.bin", b"caf\xe9 \xff")), &[]);
    assert_eq!(v["outcome"], "failed", "{v}");
    assert!(v["message"].as_str().unwrap().contains("input is not UTF-8 text"), "{v}");
    assert_eq!(v["stdout"], "", "{v}");
}

#[test]
fn javascript_component_upper_cases_its_input_and_fails_on_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let up = guest("upper-js");
    let v = run_json(&up, Some(&write(&tmp, "text.txt", "hello, wasm — ünïcode\n".as_bytes())), &[]);
    assert_finished(&v);
    assert_eq!(v["stdout"], "HELLO, WASM — ÜNÏCODE\n", "{v}");
    assert!(v["stderr"].as_str().unwrap().contains("upper-js: 22 characters"), "context.log: {v}");

    // Several chunks, so report-progress is called several times.
    let long = "abc ".repeat(5000);
    let v = run_json(&up, Some(&write(&tmp, "long.txt", long.as_bytes())), &[]);
    assert_finished(&v);
    assert_eq!(v["stdout"].as_str().unwrap(), long.to_uppercase());

    let v = run_json(&up, None, &[]);
    assert_eq!(v["outcome"], "failed", "{v}");
    assert!(v["message"].as_str().unwrap().contains("empty input"), "{v}");

    let v = run_json(&up, Some(&write(&tmp, "bad.bin", b"caf\xe9 \xff")), &[]);
    assert_eq!(v["outcome"], "failed", "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("input is not UTF-8 text"), "an err, not a trap: {v}");
}

/// `wasmos submit --wait --json`: the one task's JSON object.
fn submit_json(c: &Cluster, module: &Path, input: Option<&Path>, args: &[&str]) -> serde_json::Value {
    let mut cmd = c.cmd();
    cmd.args(["submit", "--wait", "--json"]);
    if let Some(i) = input {
        cmd.arg("--input").arg(i);
    }
    let o = cmd.arg(module).arg("--").args(args).output().unwrap();
    let v = one_json(&o);
    assert_eq!(v["state"], v["outcome"], "{v}");
    assert!(v["agent_id"].as_str().is_some_and(|a| a.starts_with("agent-")), "{v}");
    v
}

#[test]
fn zig_go_and_assemblyscript_commands_run_on_a_cluster() {
    let c = Cluster::start();
    for (name, lang) in [("hello-zig", "Zig"), ("hello-go", "Go"), ("hello-as", "AssemblyScript")] {
        let v = submit_json(&c, &guest(name), None, &["cluster"]);
        assert_finished(&v);
        assert_eq!(v["stdout"], format!("hello from {lang}, cluster!\nargs: 1\n"), "{v}");
    }
}

#[test]
fn python_and_javascript_components_run_on_a_cluster_with_input() {
    let tmp = tempfile::tempdir().unwrap();
    let text = write(&tmp, "text.txt", TEXT.as_bytes());
    let c = Cluster::start();
    check_wordcount(&submit_json(&c, &guest("wordcount-py"), Some(&text), &[]));
    let v = submit_json(&c, &guest("upper-js"), Some(&text), &[]);
    assert_finished(&v);
    assert_eq!(v["stdout"].as_str().unwrap(), TEXT.to_uppercase(), "{v}");
}

#[test]
fn python_and_javascript_schedulers_run_jobs_as_hosted_frameworks() {
    let c = Cluster::start();
    let wasmos = |args: &[&str]| {
        let o = c.cmd().args(args).output().unwrap();
        let (out, err) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.status.code(), Some(0), "wasmos {args:?}: {out}\n{err}");
        out
    };
    for (name, task, lang) in [("fifo-py", "hello-zig", "Zig"), ("fifo-js", "hello-as", "AssemblyScript")] {
        let sched = guest(name);
        wasmos(&["framework", "deploy", sched.to_str().unwrap(), "--name", name, "--role", "eng", "--config", "{}"]);
        let task = guest(task);
        let out = wasmos(&["submit", "--framework", name, "--wait", "--json", "--count", "3", task.to_str().unwrap()]);
        let objs: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(objs.len(), 3, "{out}");
        for v in &objs {
            assert_finished(v);
            assert_eq!(v["state"], "finished", "{v}");
            assert_eq!(v["stdout"], format!("hello from {lang}!\nargs: 0\n"), "{v}");
        }
        let ls = wasmos(&["framework", "ls"]);
        let row = ls.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {ls}"));
        assert!(row.contains("active"), "{ls}");
    }
}
