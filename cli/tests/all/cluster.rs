//! The cluster commands through the real binary against `wasmos dev`:
//! submit, tasks, agents, frameworks, logs, kill, pause, resume.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::dev::Cluster;

pub(crate) fn guest(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guests").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `cargo xtask guests` first", p.display());
    p
}

/// A client command as after `wasmos dev`: no flag, the client config says
/// where the master is and which CA to trust.
pub(crate) fn wasmos(c: &Cluster, args: &[&str]) -> Output {
    c.cmd().args(args).output().unwrap()
}

pub(crate) fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub(crate) fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub(crate) fn lines(o: &Output) -> Vec<serde_json::Value> {
    out(o).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn is_rfc3339_ms(v: &serde_json::Value) -> bool {
    // 2026-11-21T10:48:20.674Z
    v.as_str().is_some_and(|s| s.len() == 24 && s.ends_with('Z') && &s[10..11] == "T" && &s[19..20] == ".")
}

#[test]
fn submit_wait_then_inspect_with_tasks_agents_frameworks_logs() {
    let c = Cluster::start();
    let hello = guest("hello");
    let hello = hello.to_str().unwrap();
    let o = wasmos(&c, &["submit", "--wait", "--env", "GREETING=hey", hello, "--", "cluster"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).starts_with("hey, cluster!\n"), "{}", out(&o));
    let id = out(&o).lines().last().unwrap().split_whitespace().next().unwrap().to_string();
    assert!(out(&o).lines().last().unwrap().contains("finished exit=0"), "{}", out(&o));

    // --json: the run keys plus task_id, agent_id, state, one object per task
    let o = wasmos(&c, &["submit", "--wait", "--json", "--count", "3", hello, "--", "--exit", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let objs = lines(&o);
    assert_eq!(objs.len(), 3);
    for v in &objs {
        assert_eq!(v["outcome"], "failed");
        assert_eq!(v["exit_code"], 4);
        assert_eq!(v["state"], "failed");
        assert!(v["agent_id"].as_str().unwrap().starts_with("agent-"));
        assert!(v["stdout"].as_str().unwrap().contains("hello, "));
        for k in [
            "fuel_consumed",
            "cpu_time_ms",
            "peak_memory_bytes",
            "wall_time_ms",
            "stderr",
            "stdout_truncated",
            "message",
        ] {
            assert!(v.get(k).is_some(), "{k} missing: {v}");
        }
    }

    let o = wasmos(&c, &["tasks", "--json"]);
    let tasks = lines(&o);
    assert_eq!(tasks.len(), 4);
    let t = tasks.iter().find(|t| t["task_id"] == id.as_str()).unwrap();
    assert_eq!(t["state"], "finished");
    assert_eq!(t["outcome"], "finished");
    assert_eq!(t["exit_code"], 0);
    assert_eq!(t["framework"], "batch");
    assert_eq!(t["name"], "hello.wasm");
    for k in ["submitted_at", "started_at", "finished_at"] {
        assert!(is_rfc3339_ms(&t[k]), "{k}: {}", t[k]);
    }
    let o = wasmos(&c, &["tasks", "--state", "failed", "--json"]);
    assert_eq!(lines(&o).len(), 3);
    let o = wasmos(&c, &["tasks"]);
    let table = out(&o);
    assert!(table.starts_with("TASK "), "{table}");
    assert_eq!(table.lines().count(), 5);

    let o = wasmos(&c, &["logs", &id]);
    assert_eq!(out(&o), "hey, cluster!\nargv: [\"hello.wasm\", \"cluster\"]\n");
    assert_eq!(err(&o), "hello: done\n");

    let o = wasmos(&c, &["agents"]);
    assert!(out(&o).contains("cpus:2;mem:2GiB"), "{}", out(&o));
    assert!(out(&o).contains("48.0.8"));
    let o = wasmos(&c, &["frameworks", "--json"]);
    let fws = lines(&o);
    assert_eq!(fws[0]["framework_id"], "batch");
    assert_eq!(fws[0]["hosted"], true);

    // errors say what to do
    let o = wasmos(&c, &["logs", "no-such-task"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("no task"), "{}", err(&o));
    let o = c.cmd().args(["tasks", "--master", "https://127.0.0.1:1"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("start one with `wasmos dev`"), "{}", err(&o));
    let o = wasmos(&c, &["submit", "/etc/hostname"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("not a wasm module"), "{}", err(&o));
}

#[test]
fn kill_pause_resume_from_the_cli() {
    let c = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let spin_wasm = tmp.path().join("spin.wasm");
    std::fs::write(&spin_wasm, wat::parse_str(r#"(module (func (export "_start") (loop (br 0))))"#).unwrap()).unwrap();
    let o = wasmos(&c, &["submit", "--cpus", "1", spin_wasm.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let id = out(&o).trim().to_string();
    let state = || {
        let o = wasmos(&c, &["tasks", "--json"]);
        lines(&o).into_iter().find(|t| t["task_id"] == id.as_str()).unwrap()["state"].as_str().unwrap().to_string()
    };
    let wait = |want: &str| {
        for _ in 0..200 {
            if state() == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("task never reached {want}; it is {}", state());
    };
    wait("running");
    assert!(wasmos(&c, &["pause", &id]).status.success());
    wait("paused");
    assert!(wasmos(&c, &["resume", &id]).status.success());
    wait("running");
    assert!(wasmos(&c, &["kill", &id]).status.success());
    wait("killed");
    let o = wasmos(&c, &["kill", &id]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("already ended"), "{}", err(&o));
}

#[test]
fn task_components_and_input_locally_and_on_the_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let n = tmp.path().join("n.txt");
    std::fs::write(&n, "1000").unwrap();
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "one two\nthree four five\n").unwrap();
    let (n, text) = (n.to_str().unwrap(), text.to_str().unwrap());
    let primes = guest("primes");
    let wc = guest("wordcount");
    // Locally: a wasmos:task component gets --input as run's input ...
    let o = Command::new(env!("CARGO_BIN_EXE_wasmos"))
        .args(["run", "--no-cache", "--input", n])
        .arg(&primes)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), "168 primes below 1000\n");
    assert!(err(&o).contains("counting primes below 1000"), "context.log goes to stderr: {}", err(&o));
    // ... and an err result is a failed outcome with its message.
    let bad = tmp.path().join("bad.txt");
    std::fs::write(&bad, "many").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_wasmos"))
        .args(["run", "--no-cache", "--json", "--input", bad.to_str().unwrap()])
        .arg(&primes)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["outcome"], "failed");
    assert!(v["message"].as_str().unwrap().contains("is not a number"), "{v}");

    // On the cluster: --input reaches the task (run's input, or a command's stdin).
    let c = Cluster::start();
    let o = wasmos(&c, &["submit", "--wait", "--json", "--input", n, primes.to_str().unwrap()]);
    assert_eq!(lines(&o)[0]["stdout"], "168 primes below 1000\n", "{}", err(&o));
    let o = wasmos(&c, &["submit", "--wait", "--json", "--input", text, wc.to_str().unwrap()]);
    assert_eq!(lines(&o)[0]["stdout"], "2 5 24 -\n", "{}", err(&o));

    // A hosted framework through the CLI: deploy, submit jobs to it, list, remove.
    let sjf = guest("sjf");
    let o = wasmos(&c, &["framework", "deploy", "--name", "sjf", "--role", "batch", sjf.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = wasmos(
        &c,
        &[
            "submit",
            "--framework",
            "sjf",
            "--estimated-fuel",
            "10",
            "--wait",
            "--json",
            "--input",
            n,
            primes.to_str().unwrap(),
        ],
    );
    let v = &lines(&o)[0];
    assert_eq!(
        (v["state"].as_str(), v["stdout"].as_str()),
        (Some("finished"), Some("168 primes below 1000\n")),
        "{}",
        err(&o)
    );
    assert!(v["task_id"].as_str().unwrap().starts_with("sjf-job-"));
    let o = wasmos(&c, &["framework", "ls", "--json"]);
    let fws = lines(&o);
    let f = fws.iter().find(|f| f["name"] == "sjf").expect("listed");
    assert_eq!((f["hosted"].as_bool(), f["status"].as_str()), (Some(true), Some("active")));
    assert!(f["callbacks"].as_u64().unwrap() > 0);
    let o = wasmos(&c, &["framework", "rm", "sjf"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = wasmos(&c, &["submit", "--framework", "sjf", primes.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("no hosted framework"), "{}", err(&o));
}

/// Listings page: every task once, in order, whatever the page size, with
/// most of them already out of the master's memory; `--limit` stops early;
/// `submit --wait` keeps working among thousands of tasks.
#[test]
fn listings_page_through_history() {
    let c = Cluster::start_with(&["--max-completed-tasks", "100"]);
    let hello = guest("hello");
    let hello = hello.to_str().unwrap();
    let o = wasmos(&c, &["submit", "--wait", "--count", "2500", "--cpus", "0.01", "--mem", "4MiB", hello]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    // A tick later all but 100 of them are answered from the registry.
    std::thread::sleep(Duration::from_millis(1500));
    let o = wasmos(&c, &["tasks", "--json", "--page-size", "300"]);
    assert!(o.status.success(), "{}", err(&o));
    let all = lines(&o);
    assert_eq!(all.len(), 2500);
    let ids: Vec<&str> = all.iter().map(|t| t["task_id"].as_str().unwrap()).collect();
    let distinct: std::collections::HashSet<&&str> = ids.iter().collect();
    assert_eq!(distinct.len(), 2500);
    // ids count up within one submission: listed in that order
    let n = |s: &str| s.rsplit('-').next().unwrap().parse::<u64>().unwrap();
    assert!(ids.windows(2).all(|w| n(w[0]) < n(w[1])));
    assert!(all.iter().all(|t| t["state"] == "finished"));
    let o = wasmos(&c, &["tasks", "--limit", "7"]);
    assert_eq!(out(&o).lines().count(), 8, "{}", out(&o)); // header + 7
    // The oldest task's output, from the registry.
    let o = wasmos(&c, &["logs", ids[0]]);
    assert!(out(&o).starts_with("hello, "), "{}", out(&o));
    let o = wasmos(&c, &["submit", "--wait", hello, "--", "again"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).starts_with("hello, again!"), "{}", out(&o));
}

/// `wasmos task` (and `status`) shows a task's limits, use and history; ids
/// may be shortened to any unique prefix; `logs --stderr --tail`.
#[test]
fn a_task_by_any_unique_prefix_with_its_history() {
    let c = Cluster::start();
    let hello = guest("hello");
    let o = wasmos(&c, &["submit", "--wait", "--count", "2", "--fuel", "5000000", hello.to_str().unwrap(), "--", "x"]);
    assert!(o.status.success(), "{}", err(&o));
    let ids: Vec<String> =
        lines(&wasmos(&c, &["tasks", "--json"])).iter().map(|t| t["task_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 2);
    // task-TAG-N: everything but the last digit is shared, so ambiguous.
    let shared = &ids[0][..ids[0].rfind('-').unwrap() + 1];
    let o = wasmos(&c, &["task", shared]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("is ambiguous") && err(&o).contains(&ids[0]) && err(&o).contains(&ids[1]), "{}", err(&o));
    let o = wasmos(&c, &["task", "task-nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("no task"), "{}", err(&o));
    // A unique prefix: the whole id minus nothing but unique.
    let last = &ids[1];
    let o = wasmos(&c, &["status", last]);
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    for want in
        ["(finished)", "fuel", "5000000", "64.00 MiB", "args        x", "submitted", "launched", "running", "finished"]
    {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    let v: serde_json::Value = serde_json::from_str(&out(&wasmos(&c, &["task", "--json", last]))).unwrap();
    let states: Vec<&str> = v["events"].as_array().unwrap().iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["submitted", "staging", "running", "finished"], "{v}");
    assert_eq!(v["limits"]["fuel"], 5000000);
    // The same prefix rules for logs and kill.
    let o = wasmos(&c, &["logs", "--tail", "1", last]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).lines().count(), 1, "{}", out(&o));
    let o = wasmos(&c, &["logs", "--stderr", last]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "hello: done\n", "only its stderr, on stdout");
    let o = wasmos(&c, &["kill", shared]);
    assert_eq!(o.status.code(), Some(2));
}

/// A running task seen while it runs: `wasmos top` shows its use (from its
/// agent's heartbeats), `wasmos logs --follow` its output as it comes, and
/// ends when the task does.
#[test]
fn top_and_logs_follow_show_a_task_while_it_runs() {
    use std::io::BufRead;
    let c = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let n = dir.path().join("n.txt");
    std::fs::write(&n, "3000000000").unwrap();
    let o = wasmos(
        &c,
        &[
            "submit",
            "--cpus",
            "0.5",
            "--timeout",
            "10m",
            "--input",
            n.to_str().unwrap(),
            guest("primes").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", err(&o));
    let id = out(&o).trim().to_string();
    let mut follow = c
        .cmd()
        .args(["logs", "--follow", "--stderr", "--interval", "100ms", &id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(follow.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert_eq!(first, "counting primes below 3000000000 (attempt 1)\n", "its log, while it runs");
    assert!(follow.try_wait().unwrap().is_none(), "--follow goes on while the task runs");
    // top: fuel used so far and its rate, memory against the limit.
    let t0 = std::time::Instant::now();
    let frame = loop {
        let f = out(&wasmos(&c, &["top", "--once"]));
        let row = f.lines().find(|l| l.starts_with(&id)).unwrap_or_default().to_string();
        let fuel = row.split_whitespace().nth(4).unwrap_or("0");
        if fuel != "0" {
            break f;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no use reported: {f}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        frame.contains("FUEL/S") && frame.contains("/64MiB") && frame.contains("/10m") && frame.contains("running"),
        "{frame}"
    );
    let v: serde_json::Value = lines(&wasmos(&c, &["tasks", "--state", "running", "--json"])).remove(0);
    assert_eq!(v["task_id"], id.as_str());
    assert!(wasmos(&c, &["kill", &id]).status.success());
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = follow.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "--follow did not end with the task");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
}

/// A WASI command from WAT, written where the CLI can read it.
pub(crate) fn wat_file(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(format!("{name}.wasm"));
    std::fs::write(&p, wat::parse_str(text).unwrap()).unwrap();
    p
}

pub(crate) fn count_state(c: &Cluster, state: &str) -> usize {
    lines(&wasmos(c, &["tasks", "--state", state, "--json"])).len()
}

pub(crate) fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "{what} within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cpu_shares_hold_on_an_agent_and_tasks_past_its_slots_are_starting() {
    // An agent of 2 cores with 4 sandbox slots.
    let c = Cluster::start_with(&["--max-tasks", "4"]);
    let dir = tempfile::tempdir().unwrap();
    let sleep = wat_file(dir.path(), "sleep", &crate::maintenance::sleeper(6));
    let spin =
        wat_file(dir.path(), "spin", r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))"#);

    // Six sleepers, four slots: four RUNNING, two STARTING (not RUNNING).
    let o = wasmos(&c, &["submit", "--count", "6", "--cpus", "0.1", "--mem", "1MiB", sleep.to_str().unwrap()]);
    assert!(o.status.success(), "{}", err(&o));
    wait_for("four sleepers running", 30, || count_state(&c, "running") == 4);
    // The other two wait for a slot, not running and not failed (STARTING
    // once their launch reached the agent; the agent's report below counts
    // them whatever the order of updates).
    assert_eq!(count_state(&c, "starting") + count_state(&c, "staging"), 2, "two wait for a slot");
    let agent = &lines(&wasmos(&c, &["agents", "--json"]))[0];
    assert_eq!(agent["slots"], 4 + wasmos_sandbox::DEFAULT_MAX_METERED_TASKS as u64, "{agent}");
    assert!(agent["cpu_cores"].as_u64().unwrap() >= 1, "{agent}");
    wait_for("the agent's report of its slots", 10, || {
        let a = &lines(&wasmos(&c, &["agents", "--json"]))[0];
        a["slots_in_use"] == 4 && a["tasks_starting"] == 2
    });
    wait_for("all six to finish", 60, || count_state(&c, "finished") == 6);

    // Four spinners on two cores, two of cpus 0.25 and two of 0.75.
    let mut ids = Vec::new();
    for cpus in ["0.25", "0.75"] {
        let o = wasmos(
            &c,
            &["submit", "--count", "2", "--cpus", cpus, "--mem", "1MiB", "--timeout", "2m", spin.to_str().unwrap()],
        );
        assert!(o.status.success(), "{}", err(&o));
        ids.extend(out(&o).split_whitespace().map(str::to_string));
    }
    assert_eq!(ids.len(), 4, "{ids:?}");
    wait_for("four spinners running", 30, || count_state(&c, "running") == 4);
    std::thread::sleep(Duration::from_secs(4));
    for id in &ids {
        assert!(wasmos(&c, &["kill", id]).status.success());
    }
    wait_for("the spinners killed", 30, || count_state(&c, "killed") == 4);
    let cpu: Vec<f64> = ids
        .iter()
        .map(|id| {
            let t = &lines(&wasmos(&c, &["task", id, "--json"]))[0];
            t["cpu_time_ms"].as_f64().unwrap_or_else(|| panic!("no cpu time: {t}"))
        })
        .collect();
    let ratio = (cpu[2] + cpu[3]) / (cpu[0] + cpu[1]);
    // About 1 without shares; other tests share these two cores meanwhile.
    assert!((1.8..=4.5).contains(&ratio), "cpus:0.75 got {ratio:.2}x the CPU of cpus:0.25: {cpu:?} ms");
}
