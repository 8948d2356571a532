//! wasmos-proto: placeholder until the cluster issue (see ARCHITECTURE.md).
