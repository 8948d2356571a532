//! `--url-file` of `wasmos master` and `wasmos dev`: the URL a script reads
//! instead of parsing the human messages.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed when dropped (also when a test panics).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `wasmos CMD --listen 127.0.0.1:0 --state-dir DIR/state ARGS`, stderr in DIR/stderr.
fn spawn(cmd: &str, dir: &Path, args: &[&str]) -> Proc {
    let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_wasmos"))
        .args([cmd, "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.join("state"))
        .args(args)
        .env_remove("WASMOS_MASTER")
        .env("WASMOS_CONFIG", dir.join("client.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Proc(child)
}

/// Waits for `file` to appear while `p` runs; returns its text.
fn wait_for_file(p: &mut Proc, file: &Path, dir: &Path) -> String {
    let t0 = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            return text;
        }
        let stderr = || std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
        if let Some(status) = p.0.try_wait().unwrap() {
            panic!("exited with {status} before writing {}; its stderr:\n{}", file.display(), stderr());
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no {} after 60 s; stderr:\n{}", file.display(), stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `wasmos agents` with the client config the master wrote in `dir`.
fn agents(url: &str, dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmos"))
        .args(["agents", "--json", "--master", url])
        .env("WASMOS_CONFIG", dir.join("client.json"))
        .output()
        .unwrap()
}

#[test]
fn master_and_dev_write_the_url_they_serve_on() {
    for cmd in ["master", "dev"] {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("url");
        let mut p = spawn(cmd, tmp.path(), &["--url-file", file.to_str().unwrap()]);
        let text = wait_for_file(&mut p, &file, tmp.path());
        // One line, the picked port (not 0), and a master answering there.
        let url = text.strip_suffix('\n').unwrap_or_else(|| panic!("{cmd}: {text:?} has no newline"));
        let port: u16 = url.strip_prefix("https://127.0.0.1:").and_then(|p| p.parse().ok()).unwrap_or(0);
        assert_ne!(port, 0, "{cmd}: {url:?}");
        let o = agents(url, tmp.path());
        assert_eq!(o.status.code(), Some(0), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
        // No temp file left beside it.
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!names.iter().any(|n| n.to_string_lossy().contains(".tmp")), "{cmd}: {names:?}");
    }
}

#[test]
fn an_unwritable_url_file_is_a_clear_error() {
    for cmd in ["master", "dev"] {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("no-such-dir/url");
        let mut p = spawn(cmd, tmp.path(), &["--url-file", file.to_str().unwrap()]);
        let status = p.0.wait().unwrap();
        let stderr = std::fs::read_to_string(tmp.path().join("stderr")).unwrap();
        assert_eq!(status.code(), Some(2), "{cmd}: {stderr}");
        assert!(
            stderr.contains(&format!("wasmos {cmd}: cannot write --url-file {}: ", file.display()))
                && stderr.contains("check that its directory exists"),
            "{cmd}: {stderr}"
        );
    }
}
