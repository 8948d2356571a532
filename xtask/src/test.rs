//! `cargo xtask test`: what CI runs (`.ci/run`), on a clean clone too.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::flags::{ChaosArgs, TestArgs};
use crate::util::run;
use crate::{chaos, guests, setup};

/// The chaos suite at a size that keeps CI short.
const CI_CHAOS: ChaosArgs = ChaosArgs { tasks: 600, framework_tasks: 40 };

/// `cargo xtask test [CARGO_TEST_ARGS]`: setup if needed, build the guests, run
/// every test of the workspace, then the chaos suite at CI size.
pub fn test(root: &Path, args: &TestArgs) -> Result<()> {
    guests::guests(root)?;
    // Cheap when already installed; covers machines whose guests were built
    // before the Python example existed.
    setup::setup_python(root)?;
    run(Command::new("cargo").current_dir(root).args(["test", "--workspace"]).args(&args.cargo_args))?;
    chaos::chaos(root, &CI_CHAOS)
}
