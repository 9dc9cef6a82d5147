//! How the node authenticates to NATS and secures the connection
//! (docs/replication.md "Security"): user and password, a token, an NKey
//! seed, or a `.creds` file (JWT + seed); TLS with a CA and optionally a
//! client certificate. Files are read and checked when the node starts, so a
//! bad path or seed stops it with a named error instead of a connection that
//! silently never succeeds.

use std::path::{Path, PathBuf};

use async_nats::ConnectOptions;

/// The connection's credentials and TLS settings.
#[derive(Clone, Default)]
pub struct NatsAuth {
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A file holding the NKey seed (`SU...`).
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and seed), as `nsc` writes it.
    pub creds_file: Option<PathBuf>,
    /// CA certificates (PEM) the server's certificate must chain to.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Refuse a connection without TLS (implied by any TLS file).
    pub tls_required: bool,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password or the token.
        f.debug_struct("NatsAuth")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("creds_file", &self.creds_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NatsAuthError {
    #[error("NATS credentials: {0}")]
    Invalid(String),
    #[error("NATS credentials: {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn readable(path: &Path) -> Result<String, NatsAuthError> {
    std::fs::read_to_string(path).map_err(|source| NatsAuthError::Unreadable {
        path: path.to_path_buf(),
        source,
    })
}

impl NatsAuth {
    /// Whether anything is configured beyond a plain connection.
    pub fn is_set(&self) -> bool {
        self.user.is_some()
            || self.token.is_some()
            || self.nkey_seed_file.is_some()
            || self.creds_file.is_some()
            || self.uses_tls()
    }

    fn uses_tls(&self) -> bool {
        self.tls_required
            || self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
    }

    /// `opts` with these credentials and TLS settings.
    pub async fn apply(&self, mut opts: ConnectOptions) -> Result<ConnectOptions, NatsAuthError> {
        let methods = [
            self.user.is_some() || self.password.is_some(),
            self.token.is_some(),
            self.nkey_seed_file.is_some(),
            self.creds_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(NatsAuthError::Invalid(
                "give one of user/password, token, NKey seed or .creds file".into(),
            ));
        }
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                opts = opts.user_and_password(user.clone(), password.clone());
            }
            (None, None) => {}
            _ => {
                return Err(NatsAuthError::Invalid(
                    "a user needs a password and a password a user".into(),
                ));
            }
        }
        if let Some(token) = &self.token {
            opts = opts.token(token.clone());
        }
        if let Some(path) = &self.nkey_seed_file {
            let seed = readable(path)?.trim().to_string();
            nkeys::KeyPair::from_seed(&seed).map_err(|e| {
                NatsAuthError::Invalid(format!("{}: not an NKey seed: {e}", path.display()))
            })?;
            opts = opts.nkey(seed);
        }
        if let Some(path) = &self.creds_file {
            let text = readable(path)?;
            opts = opts.credentials(&text).map_err(|e| {
                NatsAuthError::Invalid(format!("{}: not a .creds file: {e}", path.display()))
            })?;
        }
        if let Some(ca) = &self.tls_ca {
            readable(ca)?;
            opts = opts.add_root_certificates(ca.clone());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                readable(cert)?;
                readable(key)?;
                opts = opts.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            _ => {
                return Err(NatsAuthError::Invalid(
                    "a client certificate needs its key and a key its certificate".into(),
                ));
            }
        }
        if self.uses_tls() {
            opts = opts.require_tls(true);
        }
        Ok(opts)
    }
}
