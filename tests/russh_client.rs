//! Attempts the OpenSSH client will not make against a server that does not
//! offer them: a real password and keyboard-interactive request, sent by the
//! russh client. Both must be refused, logged, and leave the server serving.

use std::sync::Arc;

use bastion_tests::*;
use russh::client;
use russh::keys::{PublicKey, PublicKeyOrCertificate};

/// Accepts only the server's pinned host key.
struct Pinned(PublicKey);

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(matches!(key, PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.0.key_data()))
    }
}

#[tokio::test]
async fn password_and_keyboard_interactive_requests_are_refused() {
    require("ssh-keygen", "openssh-client");
    let dir = bastion_tests::tempdir();
    let key = ClientKey::generate(dir.path(), "alice", "ed25519", None);
    let server = ServerBuilder::new(dir.path()).authorize(&[&key]).start();
    let host_key = PublicKey::from_openssh(&server.host_public_key).unwrap();

    let config = Arc::new(client::Config::default());
    let mut session = client::connect(config.clone(), server.addr, Pinned(host_key.clone())).await.unwrap();
    let result = session.authenticate_password("root", "hunter2").await.unwrap();
    assert!(!result.success(), "password accepted");
    let result = session.authenticate_keyboard_interactive_start("root", None).await.unwrap();
    assert!(
        matches!(result, client::KeyboardInteractiveAuthResponse::Failure { .. }),
        "keyboard-interactive not refused: {result:?}"
    );

    let refused = server.wait_event("auth.refused", |e| e["method"] == "password");
    assert_eq!(refused["user"], "root");
    assert!(!server.proc.stderr().text().contains("hunter2"), "a password reached the log");
    server.wait_event("auth.refused", |e| e["method"] == "keyboard-interactive");

    // A fresh client still gets in with its key.
    let private = russh::keys::load_secret_key(&key.private, None).unwrap();
    let mut session = client::connect(config, server.addr, Pinned(host_key)).await.unwrap();
    let hash = session.best_supported_rsa_hash().await.unwrap().flatten();
    let result = session
        .authenticate_publickey("alice", russh::keys::PrivateKeyWithHashAlg::new(Arc::new(private), hash))
        .await
        .unwrap();
    assert!(result.success());
}
