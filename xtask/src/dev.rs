//! A `wasmos dev` cluster as a child process, for `demo` and `bench e2e`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Starts `wasmos dev` on a free loopback port with a fresh state dir and
/// returns it with the URL it printed (its stderr keeps being drained).
pub fn start_dev(wasmos: &Path, state: &Path, extra: &[&str]) -> Result<(std::process::Child, String)> {
    use std::io::BufRead;
    let mut dev = Command::new(wasmos)
        .args(["dev", "--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--state-dir")
        .arg(state)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting wasmos dev")?;
    let mut lines = std::io::BufReader::new(dev.stderr.take().context("dev stderr")?).lines();
    let url = loop {
        let Some(line) = lines.next() else { bail!("wasmos dev exited before it listened") };
        let line = line?;
        eprintln!("{line}");
        if let Some(rest) = line.split("master on ").nth(1) {
            break rest.split_whitespace().next().unwrap_or_default().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((dev, url))
}
