//! Code that more than one binary of the project needs, kept once:
//! - [`login`]: the AWS-identity login protocol spoken by `bastion login`
//!   (the laptop) and `bastion-sshd` (the server);
//! - [`emf`]: CloudWatch Embedded Metric Format records (both server binaries);
//! - [`region`]: what an AWS region says about its partition and endpoints
//!   (`dns-sidecar`, `bastion-sshd`'s default STS endpoint);
//! - [`signed`] (feature `signed`): one SigV4-signed AWS request, for the
//!   binaries that hold credentials (dns-sidecar, bastion), never bastion-sshd;
//!   [`ec2`] and [`ecs`] are the calls made with it (the sidecar finds its
//!   address and stops its idle service; `bastion proxy` wakes the service).
//!
//! The protocol and the region rules need no network and no AWS SDK.

#[cfg(feature = "signed")]
pub mod ec2;
#[cfg(feature = "signed")]
pub mod ecs;
pub mod emf;
pub mod login;
pub mod region;
#[cfg(feature = "signed")]
pub mod signed;
