//! `wasmos keygen` and `wasmos sign`: ed25519 signatures over a module's
//! SHA-256, for roles that require signed modules (`wasmos role set ROLE
//! --require-signed PUBKEY`). `wasmos submit` and `wasmos framework deploy`
//! send MODULE.wasm.sig along when it exists.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sha2::{Digest, Sha256};

use crate::client;

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Writes PREFIX.key (the private key, mode 0600) and PREFIX.pub.
    #[arg(long, value_name = "PREFIX", default_value = "wasmos-signing")]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// The private key file from `wasmos keygen`.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Where the signature goes [default: MODULE.wasm.sig]
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[arg(value_name = "MODULE.wasm")]
    pub module: PathBuf,
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub fn keygen(a: KeygenArgs) -> ExitCode {
    let (private, public) = wasmos_security::sign::keygen();
    let (key, pubf) = (with_suffix(&a.out, ".key"), with_suffix(&a.out, ".pub"));
    if key.exists() {
        return client::fail("keygen", format!("{} exists; pick another --out or remove it", key.display()));
    }
    if let Err(e) = wasmos_security::pki::write_atomic(&key, private.as_bytes(), 0o600)
        .and_then(|()| wasmos_security::pki::write_atomic(&pubf, format!("{public}\n").as_bytes(), 0o644))
    {
        return client::fail("keygen", e);
    }
    println!("{public}");
    eprintln!(
        "wasmos keygen: private key in {} (keep it), public key in {}; require it with `wasmos role set ROLE --require-signed {public}`",
        key.display(),
        pubf.display()
    );
    ExitCode::SUCCESS
}

pub fn sign(a: SignArgs) -> ExitCode {
    let run = || -> Result<PathBuf, String> {
        let private = std::fs::read_to_string(&a.key).map_err(|e| format!("cannot read {}: {e}", a.key.display()))?;
        let bytes =
            std::fs::read(&a.module).map_err(|e| format!("cannot read {}: {e}; check the path", a.module.display()))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        let sig = wasmos_security::sign::sign(&private, &sha).map_err(|e| format!("{}: {e}", a.key.display()))?;
        let out = a.out.clone().unwrap_or_else(|| with_suffix(&a.module, ".sig"));
        wasmos_security::pki::write_atomic(&out, format!("{sig}\n").as_bytes(), 0o644)?;
        Ok(out)
    };
    match run() {
        Ok(out) => {
            eprintln!("wasmos sign: signature in {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => client::fail("sign", e),
    }
}

/// The signature to send with `module`: `flag`'s file, else MODULE.sig if
/// it exists, else none.
pub fn signature_for(module: &Path, flag: Option<&Path>) -> Result<String, String> {
    let path = match flag {
        Some(p) => p.to_path_buf(),
        None => {
            let p = with_suffix(module, ".sig");
            if !p.exists() {
                return Ok(String::new());
            }
            p
        }
    };
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("cannot read the signature {}: {e}", path.display()))
}
