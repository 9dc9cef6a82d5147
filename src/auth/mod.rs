//! Bearer-token authentication for the HTTP API (docs/operations.md
//! "Authentication"): off unless tokens are configured (fpindex has none);
//! on, every request but the health probes needs `Authorization: Bearer
//! <token>` whose role covers the endpoint (`policy`). Tokens come from
//! `--auth-tokens-file` and/or `FPNODE_AUTH_TOKENS`; SIGHUP reloads the
//! file (a file that no longer parses keeps the tokens in force).

pub mod policy;
pub mod tokens;

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::api::codec;
use crate::api::error::ApiError;
use policy::Access;
use tokens::{Role, TokenSet, TokensError};

/// A request made inside the process (the legacy protocol's backend):
/// carries its role instead of a token. Only code can set an extension.
#[derive(Debug, Clone, Copy)]
pub struct Internal(pub Role);

/// The tokens in force and where they come from.
#[derive(Debug)]
pub struct Auth {
    file: Option<PathBuf>,
    env: Option<String>,
    tokens: ArcSwap<TokenSet>,
}

impl Auth {
    /// `None` when no tokens are configured (authentication off).
    pub fn load(
        file: Option<PathBuf>,
        env: Option<String>,
    ) -> Result<Option<Arc<Auth>>, TokensError> {
        if file.is_none() && env.is_none() {
            return Ok(None);
        }
        let auth = Auth {
            file,
            env,
            tokens: ArcSwap::from_pointee(TokenSet::default()),
        };
        auth.tokens.store(Arc::new(auth.read()?));
        Ok(Some(Arc::new(auth)))
    }

    fn read(&self) -> Result<TokenSet, TokensError> {
        let mut set = match &self.env {
            Some(text) => TokenSet::parse(text, "FPNODE_AUTH_TOKENS")?,
            None => TokenSet::default(),
        };
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
                path: path.display().to_string(),
                source,
            })?;
            set.extend(TokenSet::parse(&text, &path.display().to_string())?);
        }
        Ok(set)
    }

    /// Reads the tokens again; on error the ones in force stay.
    pub fn reload(&self) -> Result<usize, TokensError> {
        let set = self.read()?;
        let n = set.len();
        self.tokens.store(Arc::new(set));
        metrics::gauge!("fpnode_auth_tokens").set(n as f64);
        Ok(n)
    }

    pub fn len(&self) -> usize {
        self.tokens.load().len()
    }

    fn role_of(&self, token: &str) -> Option<Role> {
        self.tokens.load().role_of(token)
    }
}

/// Reloads `auth` on every SIGHUP, for the life of the process.
pub fn reload_on_sighup(auth: Arc<Auth>) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match auth.reload() {
                Ok(n) => {
                    metrics::counter!("fpnode_auth_reloads_total", "outcome" => "ok").increment(1);
                    tracing::info!(tokens = n, "auth tokens reloaded");
                }
                Err(e) => {
                    metrics::counter!("fpnode_auth_reloads_total", "outcome" => "error")
                        .increment(1);
                    tracing::error!(error = %e, tokens = auth.len(), "auth tokens not reloaded: the previous ones stay in force");
                }
            }
        }
    });
    Ok(())
}

/// Takes SIGHUP when no tokens are configured: logged, nothing reloaded
/// (its default action would end the process).
pub fn sighup_without_tokens() -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: authentication is off, no tokens to reload");
        }
    });
    Ok(())
}

/// The request's bearer token: the `Authorization` header, or for the
/// change feeds (which browsers open with `EventSource` and `WebSocket`,
/// neither of which can send headers) an `access_token` query parameter.
fn presented(req: &Request) -> Option<String> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    if !req.uri().path().ends_with("/_changes") {
        return None;
    }
    req.uri().query()?.split('&').find_map(|kv| {
        let token = kv.strip_prefix("access_token=")?;
        Some(
            percent_encoding::percent_decode_str(token)
                .decode_utf8_lossy()
                .into_owned(),
        )
    })
}

/// The request without its `access_token` query parameter: handlers (and
/// replicas behind a proxy) never see the token in a URL.
fn without_access_token(mut req: Request) -> Request {
    let Some(query) = req.uri().query() else {
        return req;
    };
    if !query.split('&').any(|kv| kv.starts_with("access_token=")) {
        return req;
    }
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.starts_with("access_token=") && !kv.is_empty())
        .collect();
    let path = req.uri().path();
    let path_and_query = if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}

fn refuse(req: &Request, error: ApiError, reason: &'static str) -> Response {
    metrics::counter!("fpnode_auth_failures_total", "reason" => reason).increment(1);
    let format = codec::response_format(req.headers(), false);
    let mut res = crate::api::error_response(format, error);
    if error == ApiError::Unauthorized || error == ApiError::InvalidToken {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"fpnode\""),
        );
    }
    res
}

/// The middleware: lets a request through when its token's role covers
/// the endpoint.
pub async fn authorize(
    State(auth): State<Option<Arc<Auth>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(auth) = auth else {
        return next.run(req).await;
    };
    let Access::Needs(needed) = policy::required(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    // A token from the query (a browser's feed) moves to the header, so a
    // proxy forwards it to its replica as it forwards any client's token.
    let mut from_query = None;
    let role = match req.extensions().get::<Internal>() {
        Some(Internal(role)) => Some(*role),
        None => {
            let Some(token) = presented(&req) else {
                return refuse(&req, ApiError::Unauthorized, "missing");
            };
            match auth.role_of(&token) {
                Some(role) => {
                    if !req.headers().contains_key(header::AUTHORIZATION) {
                        from_query = HeaderValue::from_str(&format!("Bearer {token}")).ok();
                    }
                    Some(role)
                }
                None => return refuse(&req, ApiError::InvalidToken, "invalid"),
            }
        }
    };
    if role.is_some_and(|r| r >= needed) {
        let mut req = without_access_token(req);
        if let Some(value) = from_query {
            req.headers_mut().insert(header::AUTHORIZATION, value);
        }
        next.run(req).await
    } else {
        refuse(&req, ApiError::Forbidden, "forbidden")
    }
}
