//! `wasmos sim` through the real binary: JSON output for a DRF scenario, the
//! table, and exit code 2 with the field named for malformed scenarios.

use std::path::PathBuf;
use std::process::{Command, Output};

fn sim(dir: &tempfile::TempDir, scenario: &str, json: bool) -> Output {
    let path: PathBuf = dir.path().join("scenario.json");
    std::fs::write(&path, scenario).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_wasmos"));
    c.arg("sim").arg(&path);
    if json {
        c.arg("--json");
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The DRF paper's example: 9 CPUs, 18 GB; A's tasks <1 CPU, 4 GB>, B's <3 CPUs, 1 GB>.
const DRF: &str = r#"{
  "seed": 1,
  "agents": [ {"id": "a1", "resources": "cpus:9;mem:18GiB"} ],
  "roles": { "r1": {"weight": 1.0} },
  "frameworks": [
    {"id": "A", "role": "r1", "task": "cpus:1;mem:4GiB", "tasks_per_offer": 1, "max_tasks": null},
    {"id": "B", "role": "r2", "task": "cpus:3;mem:1GiB", "tasks_per_offer": 1}
  ],
  "max_cycles": 1000
}"#;

#[test]
fn json_output_for_the_drf_example() {
    let dir = tempfile::tempdir().unwrap();
    let o = sim(&dir, DRF, true);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(text.trim_end().lines().count(), 1, "one JSON object on one line: {text}");
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    // A: 3 tasks = <3 CPU, 12 GB> = 12/18; B: 2 tasks = <6 CPU, 2 GB> = 6/9.
    assert_eq!(j["frameworks"]["A"]["tasks"], 3);
    assert_eq!(j["frameworks"]["A"]["allocated"], "cpus:3;mem:12GiB");
    assert_eq!(j["frameworks"]["A"]["dominant_share"], 0.6667);
    assert_eq!(j["frameworks"]["B"]["tasks"], 2);
    assert_eq!(j["frameworks"]["B"]["allocated"], "cpus:6;mem:2GiB");
    assert_eq!(j["frameworks"]["B"]["dominant_share"], 0.6667);
    assert_eq!(j["roles"]["r1"]["allocated"], "cpus:3;mem:12GiB");
    assert_eq!(j["roles"]["r2"]["dominant_share"], 0.6667);
    assert_eq!(j["cycles"], 5);
    assert_eq!(j["settled"], true);
}

#[test]
fn table_output_is_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let o = sim(&dir, DRF, false);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().position(|l| l.starts_with("FRAMEWORK")).expect(&text);
    assert!(lines[header + 1].starts_with("A "), "{text}");
    // Columns line up: SHARE starts at the same place in the header and the rows.
    let col = lines[header].find("SHARE").unwrap();
    assert_eq!(&lines[header + 1][col..], "0.6667", "{text}");
    assert_eq!(&lines[header + 2][col..], "0.6667", "{text}");
    assert!(text.contains("5 cycles (nothing more fits)"), "{text}");
}

#[test]
fn malformed_scenarios_exit_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let with_fw =
        |fw: &str| format!(r#"{{"agents": [{{"id": "a1", "resources": "cpus:1;mem:1GiB"}}], "frameworks": [{fw}]}}"#);
    let cases = [
        // unknown field
        (
            with_fw(r#"{"id": "A", "role": "r", "task": "cpus:1", "tasks_per_ofer": 1}"#),
            &["frameworks[0].tasks_per_ofer", "unknown field"][..],
        ),
        // bad resource string
        (with_fw(r#"{"id": "A", "role": "r", "task": "cpus:lots"}"#), &["frameworks[0].task", "not a number"][..]),
        // negative amount
        (with_fw(r#"{"id": "A", "role": "r", "task": "cpus:-2"}"#), &["frameworks[0].task", "negative amount"][..]),
        // unknown role reference
        (
            r#"{"agents": [{"id": "a1", "resources": "cpus:2", "reserved": {"nobody": "cpus:1"}}], "frameworks": []}"#
                .to_string(),
            &["agents[0].reserved.nobody", "role nobody is not defined"][..],
        ),
    ];
    for (scenario, words) in cases {
        for json in [false, true] {
            let o = sim(&dir, &scenario, json);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{scenario}: {err}");
            assert!(o.stdout.is_empty(), "nothing on stdout for a bad scenario");
            assert!(err.starts_with("wasmos sim: "), "{err}");
            for w in words {
                assert!(err.contains(w), "{err:?} should contain {w:?}");
            }
        }
    }
}

#[test]
fn a_missing_file_exits_2() {
    let o = Command::new(env!("CARGO_BIN_EXE_wasmos")).args(["sim", "/nonexistent/scenario.json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read /nonexistent/scenario.json"), "{}", stderr(&o));
}

/// A closed stdout (`wasmos sim ... | head -1`) ends the command quietly:
/// no panic, no backtrace (it used to panic with "Broken pipe").
#[test]
fn a_closed_stdout_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    // Enough frameworks that the table outgrows the pipe's buffer.
    let fws: Vec<String> = (0..3000).map(|i| format!(r#"{{"id": "f{i}", "role": "r", "task": "cpus:100"}}"#)).collect();
    let scenario =
        format!(r#"{{"agents": [{{"id": "a", "resources": "cpus:1;mem:1GiB"}}], "frameworks": [{}]}}"#, fws.join(","));
    let path = dir.path().join("big.json");
    std::fs::write(&path, scenario).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmos"))
        .arg("sim")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then hang up, as `head -1` does.
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut first).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(!first.is_empty());
    assert_eq!(stderr(&o), "", "nothing on stderr when stdout closes");
    assert!(o.status.success() || o.status.code() == Some(141), "{:?}", o.status);
}
