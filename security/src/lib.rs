//! wasmos-security: the cluster's PKI (`pki`), bearer and join tokens
//! (`token`), grants (`grant`), and the two ends of TLS (`server`,
//! `client`). The master, the agent and the CLI share it; none of it knows
//! the master's state.

pub mod client;
pub mod grant;
pub mod pki;
pub mod server;
pub mod sign;
pub mod token;
pub use time;
