//! wasmos-guest: what a guest author imports.
//!
//! Today a wasmos task is a plain WASI program: a `wasm32-wasip1` command or a
//! `wasm32-wasip2` component exporting `wasi:cli/run` — nothing from this crate
//! is needed (see `examples/tasks/`). The `wasmos:task` and `wasmos:scheduler`
//! bindings and their ergonomic wrappers arrive with the frameworks issue.
