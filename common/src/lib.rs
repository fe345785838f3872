//! Code that more than one binary of the project needs, kept once:
//! - [`login`]: the AWS-identity login protocol spoken by `bastion login`
//!   (the laptop) and `bastion-sshd` (the server);
//! - [`region`]: what an AWS region says about its partition and endpoints
//!   (`dns-sidecar`, `bastion-sshd`'s default STS endpoint).
//!
//! No network and no AWS SDK here: both sides stay testable without either.

pub mod login;
pub mod region;
