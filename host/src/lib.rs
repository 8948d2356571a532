//! wasmos-host: placeholder until the cluster issue (see ARCHITECTURE.md).
