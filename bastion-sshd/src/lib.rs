//! bastion-sshd: a tunnel-only SSH server for a bastion in a public subnet.
//! Public-key authentication and direct-tcpip channels; nothing else.
//!
//! The binary is `src/main.rs`; the modules are a library so that the fuzz
//! targets (`tests/fuzz`) reach the parsers and the policy directly.

pub mod auth;
pub mod authorized_keys;
pub mod aws_login;
pub mod check_config;
pub mod cli;
pub mod config;
pub mod handler;
pub mod healthcheck;
pub mod hostkey;
pub mod identity_rules;
pub mod interfaces;
pub mod keygen;
pub mod keys;
pub mod limits;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod options;
pub mod policy;
pub mod privileges;
pub mod reload;
pub mod resolve;
pub mod server;
pub mod session;
pub mod tunnel;
pub mod usage;
