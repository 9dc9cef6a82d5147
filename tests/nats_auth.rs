//! The node's NATS connection against real nats-servers that require
//! credentials or TLS (docs/replication.md "Security"): user and password,
//! token, NKey, a `.creds` file (operator mode: JWTs signed here with
//! NKeys), TLS with a CA and with a client certificate. Each is accepted
//! when right and refused, loudly, when wrong; bad settings stop the node at
//! startup with a named error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/nats.rs"]
mod nats;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Api, Node};
use nats::NatsServer;
use serde_json::json;

/// A replica of `nats` started with `extra`.
async fn replica(nats: &NatsServer, extra: &[&str]) -> Node {
    let url = nats.url();
    let mut args = vec!["--mode", "replica", "--nats-url", url.as_str()];
    args.extend_from_slice(extra);
    Node::start(&args).await
}

/// The node writes through the stream: it is connected and authorized.
async fn writes_through_the_stream(node: &Node) {
    let api = Api::json(node);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = api.call("PUT", "/main", None).await;
        if a.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never connected: {}\n{}",
            a.body,
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = api
        .call("PUT", "/main/1", Some(json!({"hashes": [1, 2, 3]})))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let hit = api
        .call("POST", "/main/_search", Some(json!({"query": [1, 2, 3]})))
        .await;
    assert_eq!(hit.body["results"][0]["id"], 1, "{}", hit.body);
}

/// The node is refused: writes answer 503 and the log says why (`what`).
async fn refused(node: &Node, what: &str) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a = Api::json(node).call("PUT", "/main", None).await;
    assert_eq!(a.status, 503, "{}", a.body);
    let status = Api::json(node).call("GET", "/_health", None).await;
    assert_eq!(status.status, 200, "the node serves on, without the stream");
    let log = node.log().to_lowercase();
    assert!(log.contains(what), "{what}:\n{log}");
}

#[tokio::test]
async fn user_and_password() {
    let nats = NatsServer::start_with(
        "authorization {\n  user: fpnode\n  password: \"pa55-word-long-enough\"\n}\n",
    );
    let good = replica(
        &nats,
        &[
            "--nats-user",
            "fpnode",
            "--nats-password",
            "pa55-word-long-enough",
        ],
    )
    .await;
    writes_through_the_stream(&good).await;
    let bad = replica(
        &nats,
        &["--nats-user", "fpnode", "--nats-password", "wrong"],
    )
    .await;
    refused(&bad, "authorization violation").await;
    let none = replica(&nats, &[]).await;
    refused(&none, "authorization violation").await;
}

#[tokio::test]
async fn token() {
    let nats = NatsServer::start_with("authorization {\n  token: \"t0ken-for-the-stream\"\n}\n");
    let good = replica(&nats, &["--nats-token", "t0ken-for-the-stream"]).await;
    writes_through_the_stream(&good).await;
    let bad = replica(&nats, &["--nats-token", "not-the-token"]).await;
    refused(&bad, "authorization violation").await;
}

#[tokio::test]
async fn nkey() {
    let user = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with(&format!(
        "authorization {{\n  users = [ {{ nkey: \"{}\" }} ]\n}}\n",
        user.public_key()
    ));
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed");
    std::fs::write(&seed, format!("{}\n", user.seed().unwrap())).unwrap();
    let good = replica(&nats, &["--nats-nkey-seed-file", seed.to_str().unwrap()]).await;
    writes_through_the_stream(&good).await;
    let other = dir.path().join("other");
    std::fs::write(&other, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let bad = replica(&nats, &["--nats-nkey-seed-file", other.to_str().unwrap()]).await;
    refused(&bad, "authorization violation").await;
}

/// A JWT as nats-server reads them: `{typ, alg: ed25519-nkey}`, the claims,
/// the issuer's signature.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = json!({
        "jti": format!("{name}-{subject}"),
        "iat": 1_700_000_000,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = b64(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&signature))
}

fn creds_file(path: &Path, user_jwt: &str, user: &nkeys::KeyPair) {
    std::fs::write(
        path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
}

#[tokio::test]
async fn creds_file_in_operator_mode() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let system = nkeys::KeyPair::new_account();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "op",
        json!({"type": "operator", "version": 2, "system_account": system.public_key()}),
    );
    let unlimited = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "fpnode",
        json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        json!({"type": "account", "version": 2}),
    );
    let nats = NatsServer::start_with(&format!(
        "operator: \"{operator_jwt}\"\nsystem_account: \"{}\"\nresolver: MEMORY\n\
         resolver_preload: {{\n  {}: \"{account_jwt}\"\n  {}: \"{system_jwt}\"\n}}\n",
        system.public_key(),
        account.public_key(),
        system.public_key(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let user = nkeys::KeyPair::new_user();
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "replica",
        json!({"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}),
    );
    let creds = dir.path().join("replica.creds");
    creds_file(&creds, &user_jwt, &user);
    let good = replica(&nats, &["--nats-creds", creds.to_str().unwrap()]).await;
    writes_through_the_stream(&good).await;
    // A user signed by an account the server does not know.
    let stranger = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let user_jwt = jwt(
        &stranger,
        &user.public_key(),
        "stranger",
        json!({"type": "user", "version": 2}),
    );
    let bad_creds = dir.path().join("stranger.creds");
    creds_file(&bad_creds, &user_jwt, &user);
    let bad = replica(&nats, &["--nats-creds", bad_creds.to_str().unwrap()]).await;
    refused(&bad, "authorization violation").await;
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate for 127.0.0.1 and a client certificate,
    /// all as PEM files.
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        write("ca.pem", ca.self_signed(&ca_key).unwrap().pem());
        let issuer = Issuer::new(ca, ca_key);
        for (name, san) in [("server", "127.0.0.1"), ("client", "fpnode-replica")] {
            let params = CertificateParams::new(vec![san.to_string()]).unwrap();
            let key = KeyPair::generate().unwrap();
            write(
                &format!("{name}.pem"),
                params.signed_by(&key, &issuer).unwrap().pem(),
            );
            write(&format!("{name}-key.pem"), key.serialize_pem());
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// A nats-server with TLS on this PKI's server certificate, plus `more`
    /// lines in its `tls` block.
    fn server(&self, more: &str) -> NatsServer {
        NatsServer::start_with(&format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n{more}}}\n",
            self.path("server.pem"),
            self.path("server-key.pem"),
        ))
    }
}

#[tokio::test]
async fn tls_with_a_ca_and_a_client_certificate() {
    let pki = Pki::new();
    let nats = pki.server(&format!(
        "  ca_file: \"{}\"\n  verify: true\n",
        pki.path("ca.pem")
    ));
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client-key.pem"),
    );
    let good = replica(
        &nats,
        &[
            "--nats-tls-ca",
            &ca,
            "--nats-tls-cert",
            &cert,
            "--nats-tls-key",
            &key,
        ],
    )
    .await;
    writes_through_the_stream(&good).await;
    // No client certificate: the server refuses the handshake.
    let no_cert = replica(&nats, &["--nats-tls-ca", &ca]).await;
    refused(&no_cert, "nats client error").await;
    // The server's certificate does not chain to a known CA.
    let no_ca = replica(&nats, &["--nats-tls-cert", &cert, "--nats-tls-key", &key]).await;
    refused(&no_ca, "nats client error").await;
}

/// A server with TLS but no client certificates: the CA alone is enough,
/// and a client without it does not trust the server.
#[tokio::test]
async fn tls_with_a_ca_only() {
    let pki = Pki::new();
    let nats = pki.server("");
    let good = replica(&nats, &["--nats-tls-ca", &pki.path("ca.pem")]).await;
    writes_through_the_stream(&good).await;
    let untrusting = replica(&nats, &["--nats-tls-required"]).await;
    refused(&untrusting, "nats client error").await;
}

#[test]
fn bad_nats_settings_stop_the_node_with_a_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let seed = dir.path().join("seed");
    std::fs::write(&seed, "not a seed").unwrap();
    let seed = seed.to_str().unwrap();
    for (args, says) in [
        (
            vec![
                "--nats-token",
                "t0ken-for-the-stream",
                "--nats-user",
                "u",
                "--nats-password",
                "p",
            ],
            "give one of user/password, token, NKey seed or .creds file",
        ),
        (vec!["--nats-user", "u"], "a user needs a password"),
        (vec!["--nats-nkey-seed-file", seed], "not an NKey seed"),
        (
            vec!["--nats-creds", "/nonexistent/x.creds"],
            "/nonexistent/x.creds",
        ),
        (
            vec!["--nats-tls-cert", "/nonexistent/c.pem"],
            "a client certificate needs its key",
        ),
        (
            vec!["--nats-tls-ca", "/nonexistent/ca.pem"],
            "/nonexistent/ca.pem",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fpnode"))
            .args(["--mode", "replica", "--port", "0", "--dir"])
            .arg(&data)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{args:?} started");
        assert!(
            stderr.contains(says) || stdout.contains(says),
            "{args:?}: {stderr}{stdout}"
        );
    }
}
