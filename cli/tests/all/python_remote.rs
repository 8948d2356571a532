//! The Python remote framework example (`examples/frameworks/python-remote/`)
//! against a real `wasmos dev` cluster: a framework in another language,
//! using grpcio stubs generated from our .proto, through the Scheduler API.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::dev::Cluster;

const TASKS: usize = 20;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

#[test]
fn python_framework_runs_tasks_through_the_scheduler_api() {
    let module = repo().join("target/guests/hello.wasm");
    assert!(module.exists(), "{} is missing: run `cargo xtask guests` (or `cargo xtask test`) first", module.display());
    let py = Command::new("python3").args(["-c", "import grpc, grpc_tools"]).output();
    assert!(
        py.as_ref().is_ok_and(|o| o.status.success()),
        "python3 with grpcio and grpcio-tools is needed: run `cargo xtask setup` \
         (or `python3 -m pip install -r examples/frameworks/python-remote/requirements.txt`): {py:?}"
    );

    let cluster = Cluster::start();
    // As a user after `wasmos dev`: the script reads the client config.
    let out = Command::new("python3")
        .env("WASMOS_CONFIG", &cluster.config)
        .env_remove("WASMOS_MASTER")
        .arg(repo().join("examples/frameworks/python-remote/framework.py"))
        .args(["--master", cluster.addr(), "--module"])
        .arg(&module)
        .args(["--tasks", &TASKS.to_string(), "--timeout", "90"])
        .stdin(Stdio::null())
        .output()
        .expect("cannot run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "framework.py failed\nstdout:\n{stdout}\nstderr:\n{stderr}");

    let lines = json_lines(&stdout);
    let tasks: Vec<_> = lines.iter().filter(|v| v.get("task_id").is_some()).collect();
    assert_eq!(tasks.len(), TASKS, "one line per task: {stdout}");
    let mut ids: Vec<&str> = tasks.iter().map(|t| t["task_id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), TASKS, "task ids are unique: {ids:?}");
    for t in &tasks {
        assert_eq!(t["state"], "finished", "{t}");
        assert_eq!(t["exit_code"], 0, "{t}");
        assert!(t["stdout"].as_str().unwrap().starts_with("hello, "), "{t}");
    }
    let summary = &lines.last().expect("a summary line")["summary"];
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["finished_ok"], TASKS, "{summary}");
    assert!(summary["acknowledged"].as_u64().unwrap() >= TASKS as u64, "terminal updates are acknowledged: {summary}");
    let fw = summary["framework_id"].as_str().expect("the summary names the framework").to_string();

    // The master's view, through the CLI and the Operator API.
    let listed = cluster.cmd().args(["tasks", "--json"]).output().unwrap();
    assert_eq!(listed.status.code(), Some(0), "{}", String::from_utf8_lossy(&listed.stderr));
    let all = json_lines(&String::from_utf8_lossy(&listed.stdout));
    let mine: Vec<_> = all.iter().filter(|t| t["framework"] == fw.as_str()).collect();
    assert_eq!(mine.len(), TASKS, "the master lists the framework's tasks: {all:#?}");
    for t in &mine {
        assert_eq!(t["state"], "finished", "{t}");
        assert_eq!(t["exit_code"], 0, "{t}");
        assert!(ids.contains(&t["task_id"].as_str().unwrap()), "{t}");
    }
}
