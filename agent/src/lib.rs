//! wasmos-agent: placeholder until the cluster issue (see ARCHITECTURE.md).
