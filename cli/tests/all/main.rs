//! wasmos CLI tests through the real binary: one binary, one module per command.

mod run;
mod sim;
