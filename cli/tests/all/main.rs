//! wasmos CLI tests through the real binary: one binary, one module per command.

mod python_remote;
mod run;
mod sim;
