//! The task's own sandbox directory: created only when the task asks for one,
//! filled with its input files, preopened as `/`, removed afterwards unless kept.

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file placed in the sandbox directory before the task starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// Relative path inside the sandbox (`data/in.txt`); no `..`, not absolute.
    pub path: String,
    pub contents: Vec<u8>,
}

/// What the task gets for a filesystem. The default is nothing at all.
#[derive(Debug, Clone, Default)]
pub struct SandboxDirSpec {
    /// Give the task a (possibly empty) directory even without input files.
    pub enabled: bool,
    /// Files to write into it first; any file implies a directory.
    pub files: Vec<InputFile>,
    /// Where to create it; `None` picks a fresh name under the sandbox root.
    /// The directory must not exist yet.
    pub path: Option<PathBuf>,
    /// Leave the directory in place after the run (for inspecting outputs).
    pub keep: bool,
}

impl SandboxDirSpec {
    pub(crate) fn wanted(&self) -> bool {
        self.enabled || !self.files.is_empty()
    }
}

/// A created sandbox directory; removed on drop unless kept.
#[derive(Debug)]
pub(crate) struct TaskDir {
    path: PathBuf,
    keep: bool,
}

impl TaskDir {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TaskDir {
    fn drop(&mut self) {
        // An untouched directory goes with one rmdir; otherwise remove it all.
        if !self.keep && std::fs::remove_dir(&self.path).is_err() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Checks an input file path: relative, plain components only.
pub(crate) fn check_relative(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if path.is_empty() || path.contains('\0') {
        return Err(format!(
            "input file path {path:?} is empty or contains NUL; give a relative path like data/in.txt"
        ));
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "input file path {path:?} leaves the sandbox (absolute or '..'); give a relative path like data/in.txt"
                ));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(format!("input file path {path:?} names no file; give a relative path like data/in.txt"));
    }
    Ok(out)
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// Creates the directory and writes the input files through a capability
/// handle, so a file path can never land outside it. On any error nothing is
/// left behind.
pub(crate) fn create(spec: &SandboxDirSpec, root: &Path, label: &str) -> Result<Option<TaskDir>, String> {
    if !spec.wanted() {
        return Ok(None);
    }
    let checked: Vec<(PathBuf, &[u8])> = spec
        .files
        .iter()
        .map(|f| check_relative(&f.path).map(|p| (p, f.contents.as_slice())))
        .collect::<Result<_, _>>()?;
    let path = match &spec.path {
        Some(p) => p.clone(),
        None => {
            let safe: String = label
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
                .take(64)
                .collect();
            root.join(format!("{safe}-{}-{}", std::process::id(), NEXT_DIR.fetch_add(1, Ordering::Relaxed)))
        }
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create sandbox root {}: {e}", parent.display()))?;
    }
    std::fs::create_dir(&path).map_err(|e| format!("cannot create sandbox directory {}: {e}", path.display()))?;
    // From here on, dropping `dir` cleans up.
    let dir = TaskDir { path, keep: spec.keep };
    let cap = cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority())
        .map_err(|e| format!("cannot open sandbox directory {}: {e}", dir.path().display()))?;
    for (rel, contents) in checked {
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            cap.create_dir_all(parent)
                .map_err(|e| format!("cannot create {} in the sandbox: {e}", parent.display()))?;
        }
        cap.write(&rel, contents).map_err(|e| format!("cannot write input file {}: {e}", rel.display()))?;
    }
    Ok(Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_only() {
        assert_eq!(check_relative("a/b.txt").unwrap(), PathBuf::from("a/b.txt"));
        assert_eq!(check_relative("./a").unwrap(), PathBuf::from("a"));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", ".", "a\0b"] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nothing_left_behind_on_bad_input() {
        let root = std::env::temp_dir().join(format!("wasmos-fs-test-{}", std::process::id()));
        let spec = SandboxDirSpec {
            files: vec![InputFile { path: "../escape".into(), contents: vec![] }],
            ..Default::default()
        };
        assert!(create(&spec, &root, "t").is_err());
        let leftover = std::fs::read_dir(&root).map(|d| d.count()).unwrap_or(0);
        assert_eq!(leftover, 0);
        let spec = SandboxDirSpec {
            files: vec![InputFile { path: "d/in.txt".into(), contents: b"hi".to_vec() }],
            ..Default::default()
        };
        let dir = create(&spec, &root, "t").unwrap().unwrap();
        assert_eq!(std::fs::read(dir.path().join("d/in.txt")).unwrap(), b"hi");
        let p = dir.path().to_path_buf();
        drop(dir);
        assert!(!p.exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
