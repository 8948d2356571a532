//! The dashboard in a real browser (headless Chromium driven over WebDriver
//! by chromedriver, both installed by `cargo xtask setup`), and `/metrics`
//! through `promtool check metrics`. Screenshots of every view go to
//! `target/dashboard/`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::dev::Cluster;

fn guest(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/guests/{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `cargo xtask guests` first", p.display());
    p.to_string_lossy().into_owned()
}

fn tool(name: &str) -> String {
    let found = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().unwrap();
    assert!(
        found.status.success(),
        "{name} is not installed: run `cargo xtask setup` (it installs chromium, chromium-driver and prometheus)"
    );
    String::from_utf8_lossy(&found.stdout).trim().to_string()
}

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out(&o)
}

fn screenshots() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(tool("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut d = Driver { child, port, session: String::new() };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(30), "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": tool("chromium"),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--ignore-certificate-errors"],
            },
        }}});
        let v = d.call("POST", "/session", Some(caps));
        d.session = v["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
        d
    }

    /// One WebDriver command (HTTP/1.1, one connection each).
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // The head, then Content-Length bytes of JSON.
        let mut raw = Vec::new();
        let mut buf = [0u8; 65536];
        let (at, len) = loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "chromedriver closed without an answer");
            raw.extend_from_slice(&buf[..n]);
            if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..p]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                    .expect("a Content-Length");
                break (p + 4, len);
            }
        };
        while raw.len() < at + len {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "chromedriver closed mid-answer");
            raw.extend_from_slice(&buf[..n]);
        }
        let v: Value = serde_json::from_slice(&raw[at..at + len]).unwrap_or(Value::Null);
        v["value"].clone()
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn go(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url })));
    }

    fn js(&self, script: &str) -> Value {
        self.call("POST", &self.s("/execute/sync"), Some(json!({ "script": script, "args": [] })))
    }

    /// Waits until `script` (an expression) is truthy; its value.
    fn until(&self, what: &str, script: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.js(&format!("return {script};"));
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "{what}: not within 20 s; page: {}", self.text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn text(&self) -> Value {
        self.js("return document.body.innerText.slice(0, 2000);")
    }

    /// Shows a view and waits until its data is on the page.
    fn view(&self, hash: &str, name: &str) {
        self.js(&format!("location.hash = {};", json!(hash)));
        self.until(
            &format!("view {name}"),
            &format!("document.body.dataset.view === {} && document.body.dataset.loaded === '1'", json!(name)),
        );
    }

    fn screenshot(&self, name: &str) {
        let b64 = self.call("GET", &self.s("/screenshot"), None);
        let png = base64_decode(b64.as_str().expect("a screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
    }

    fn element(&self, css: &str) -> String {
        let v = self.call("POST", &self.s("/element"), Some(json!({ "using": "css selector", "value": css })));
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("no {css}: {v}"))
            .to_string()
    }

    /// Types into the field `css` and clicks `button`, as a person would.
    fn type_and_click(&self, css: &str, text: &str, button: &str) {
        let field = self.element(css);
        self.call("POST", &self.s(&format!("/element/{field}/value")), Some(json!({ "text": text })));
        let b = self.element(button);
        self.call("POST", &self.s(&format!("/element/{b}/click")), Some(json!({})));
    }

    fn window(&self, width: u32, height: u32) {
        self.call("POST", &self.s("/window/rect"), Some(json!({ "width": width, "height": height })));
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, c)| n | (val(*c) as u32) << (18 - 6 * i));
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A running task made to stay put: primes over a big input, paused.
fn paused_task(c: &Cluster) -> String {
    let dir = tempfile::tempdir().unwrap();
    let n = dir.path().join("n.txt");
    std::fs::write(&n, "2000000000").unwrap();
    let id = ok(c
        .cmd()
        .args(["submit", "--cpus", "0.5", "--timeout", "10m", "--input", n.to_str().unwrap(), &guest("primes")])
        .output()
        .unwrap())
    .trim()
    .to_string();
    let t0 = Instant::now();
    loop {
        let o = c.cmd().args(["pause", &id]).output().unwrap();
        if o.status.success() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
    let t0 = Instant::now();
    while !out(&c.cmd().args(["tasks", "--state", "paused", "--json"]).output().unwrap()).contains(&id) {
        assert!(t0.elapsed() < Duration::from_secs(30), "the task did not pause");
        std::thread::sleep(Duration::from_millis(100));
    }
    id
}

#[test]
fn the_dashboard_shows_what_the_operator_api_says_and_follows_live() {
    let c = Cluster::start();
    ok(c.cmd()
        .args(["submit", "--wait", "--count", "5", "--meter-fuel", &guest("hello"), "--", "dashboard"])
        .output()
        .unwrap());
    let paused = paused_task(&c);
    let admin = wasmos_security::client::ClientConfig::read(&c.config).unwrap().unwrap().token.unwrap();

    let d = Driver::start();
    d.go(&format!("{}/", c.url));
    // No cookie yet: the login page.
    d.until("the login page", "document.body.dataset.view === 'login'");
    d.screenshot("login");
    d.type_and_click("#token-input", "wsmt_not-a-token", "#login-button");
    d.until("a refusal", "document.querySelector('#login-error').innerText");
    d.js("document.querySelector('#token-input').value = '';");
    d.type_and_click("#token-input", &admin, "#login-button");
    d.until("the overview", "document.body.dataset.view === 'overview' && document.body.dataset.loaded === '1'");

    // The overview's numbers are the Operator API's.
    let metric = |k: &str| -> f64 {
        let v = d.js(&format!("return document.querySelector('[data-metric=\"{k}\"]').innerText;"));
        v.as_str()
            .unwrap_or_else(|| panic!("no data-metric {k}: {v}"))
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{k}: {v}"))
    };
    let count = |args: &[&str]| json_lines(&out(&c.cmd().args(args).output().unwrap())).len() as f64;
    d.until(
        "five finished tasks",
        "document.querySelector('[data-metric=\"tasks-finished\"]').innerText.trim() === '5'",
    );
    assert_eq!(metric("tasks-finished"), count(&["tasks", "--state", "finished", "--json"]));
    assert_eq!(metric("tasks-paused"), 1.0);
    assert_eq!(metric("tasks-running"), count(&["tasks", "--state", "running", "--json"]));
    assert_eq!(metric("agents-active"), count(&["agents", "--json"]));
    assert_eq!(metric("agents-total"), count(&["agents", "--json"]));
    assert_eq!(metric("resources-total-cpus"), 2.0, "the dev agent's cpus:2");
    assert_eq!(metric("resources-allocated-cpus"), 0.5, "the paused task's cpus");
    assert_eq!(d.js("return document.querySelector('#live').innerText;"), json!("live"));
    d.screenshot("overview");

    // Agents, frameworks and roles list what the API lists.
    let agents = json_lines(&out(&c.cmd().args(["agents", "--json"]).output().unwrap()));
    d.view("#/agents", "agents");
    for a in &agents {
        let id = a["agent_id"].as_str().unwrap();
        d.until(&format!("agent {id}"), &format!("document.querySelector('tr[data-agent-id=\"{id}\"]')"));
    }
    d.screenshot("agents");
    d.view("#/frameworks", "frameworks");
    d.until("the batch framework", "document.querySelector('tr[data-framework-id=\"batch\"]')");
    d.screenshot("frameworks");
    ok(c.cmd().args(["role", "set", "eng", "--weight", "2", "--limit", "cpus:1"]).output().unwrap());
    d.view("#/roles", "roles");
    d.until("role eng", "document.querySelector('tr[data-role=\"eng\"]')");
    d.screenshot("roles");

    // The task list, and a task page with its events and output.
    d.view("#/tasks", "tasks");
    let rows = d.js("return document.querySelectorAll('tr[data-task-id]').length;");
    assert_eq!(rows, json!(6), "{}", d.text());
    let state = d.js(&format!(
        "return document.querySelector('tr[data-task-id=\"{paused}\"] td[data-field=\"state\"]').innerText;"
    ));
    assert_eq!(state, json!("paused"));
    d.screenshot("tasks");
    let finished = json_lines(&out(&c.cmd().args(["tasks", "--state", "finished", "--json"]).output().unwrap()));
    let done = finished[0]["task_id"].as_str().unwrap().to_string();
    d.view(&format!("#/tasks/{done}"), "task");
    assert_eq!(d.js("return document.querySelector('#task-state').innerText;"), json!("finished"));
    d.until("its output", "document.querySelector('pre#stdout').innerText.includes('hello, dashboard')");
    let fuel = d.js("return document.querySelector('#fuel-used').innerText;");
    assert!(finished[0]["fuel_consumed"].as_u64().is_some_and(|f| f > 0), "{}", finished[0]);
    assert_eq!(fuel.as_str().map(str::trim), Some(finished[0]["fuel_consumed"].to_string().as_str()));
    let cpu = d.js("return document.querySelector('#cpu-used').innerText;");
    assert!(cpu.as_str().is_some_and(|c| !c.trim().is_empty()), "the task page shows its CPU time: {cpu}");
    let events = d.js("return [...document.querySelectorAll('#events tbody tr')].map(r => r.innerText).join('\\n');");
    let events = events.as_str().unwrap().to_string();
    for step in ["submitted", "launched", "running", "finished"] {
        assert!(events.contains(step), "the task's history lacks {step}: {events}");
    }
    d.screenshot("task");

    // Live: a task submitted while the list is open appears without a reload.
    d.view("#/tasks", "tasks");
    let marker = d.js("window.__same_page = 1; return 1;");
    assert_eq!(marker, json!(1));
    let new = ok(c.cmd().args(["submit", &guest("hello")]).output().unwrap()).trim().to_string();
    d.until("the new task, pushed", &format!("document.querySelector('tr[data-task-id=\"{new}\"]')"));
    d.until(
        "its end, pushed",
        &format!(
            "document.querySelector('tr[data-task-id=\"{new}\"] td[data-field=\"state\"]').innerText === 'finished'"
        ),
    );
    assert_eq!(d.js("return window.__same_page;"), json!(1), "the page was reloaded");

    // On a phone.
    d.window(390, 844);
    d.view("#/", "overview");
    d.screenshot("overview-phone");
    d.view(&format!("#/tasks/{done}"), "task");
    d.screenshot("task-phone");
    d.window(1280, 900);

    // A token that may view only role a sees none of batch's tasks.
    let a = ok(c.cmd().args(["token", "create", "a-viewer", "--grant", "view:a"]).output().unwrap()).trim().to_string();
    d.js("document.querySelector('#logout-button').click();");
    d.until("the login page again", "document.body.dataset.view === 'login'");
    d.type_and_click("#token-input", &a, "#login-button");
    d.view("#/tasks", "tasks");
    assert_eq!(d.js("return document.querySelectorAll('tr[data-task-id]').length;"), json!(0), "{}", d.text());
    d.view("#/", "overview");
    assert_eq!(metric("tasks-finished"), 0.0);
}

#[test]
fn metrics_are_prometheus_text_that_promtool_accepts() {
    let c = Cluster::start();
    ok(c.cmd().args(["submit", "--wait", "--count", "3", &guest("hello")]).output().unwrap());
    let text = ok(c.cmd().args(["metrics"]).output().unwrap());
    let promtool = tool("promtool");
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = check.wait_with_output().unwrap();
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // What the issue names is there, with what happened.
    for name in [
        "wasmos_tasks{state=\"finished\"} 3",
        "wasmos_tasks_ended_total{reason=",
        "wasmos_tasks_submitted_total 3",
        "wasmos_task_launch_latency_seconds_count 3",
        "wasmos_task_run_seconds_bucket",
        "wasmos_agents{status=\"active\"} 1",
        "wasmos_frameworks{kind=\"batch\"} 1",
        "wasmos_offers_total{event=\"sent\"}",
        "wasmos_offers_total{event=\"accepted\"}",
        "wasmos_allocation_cycle_seconds_count",
        "wasmos_registry_commit_seconds_count",
        "wasmos_registry_commit_records_bucket",
        "wasmos_status_updates_total{source=\"agent\"}",
        "wasmos_role_allocated{",
        "wasmos_role_dominant_share{role=\"batch\"}",
        "wasmos_agent_resources{agent=",
        "wasmos_agent_module_cache_total{agent=",
        "wasmos_agent_tasks_ended_total{agent=",
        "wasmos_cluster_resources{resource=\"cpus\"} 2",
    ] {
        assert!(text.contains(name), "no {name} in:\n{text}");
    }
    // Without a token, or with one that does not view every role: refused.
    let o = c.cmd().args(["metrics", "--token", "wsmt_nope"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let narrow =
        ok(c.cmd().args(["token", "create", "narrow", "--grant", "view:a"]).output().unwrap()).trim().to_string();
    let o = c.cmd().args(["metrics", "--token", &narrow]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("view:*"), "{}", String::from_utf8_lossy(&o.stderr));
}
