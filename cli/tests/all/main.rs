//! wasmos CLI tests through the real binary: one binary, one module per command.

mod cluster;
mod dashboard;
mod dev;
mod edge;
mod ha;
mod languages;
mod maintenance;
mod python_remote;
mod recovery;
mod run;
mod security;
mod sim;
mod url_file;
