//! Which role each endpoint needs (docs/operations.md "Authentication"),
//! from the method and the path alone, before any handler runs.

use axum::http::Method;

use super::tokens::Role;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Liveness and readiness probes: no token.
    Open,
    Needs(Role),
}

/// The role `method path` needs. Paths nothing serves need `read`, so an
/// unauthenticated client learns nothing from them. The probes are the
/// exception, for orchestrators that send no token: `/:index/_health` tells
/// whether an index exists (fpindex's behaviour), and `/_ready` names the
/// indexes that are not ready and why (docs/operations.md, "Authentication").
pub fn required(method: &Method, path: &str) -> Access {
    use Access::{Needs, Open};
    use Role::{Admin, Read, Write};
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let reads = matches!(*method, Method::GET | Method::HEAD);
    match segments.as_slice() {
        ["_health"] | ["_ready"] | ["health"] | [_, "_health"] => Open,
        ["_metrics"] | ["_changes"] => Needs(Read),
        ["_fingerprint"] | ["fingerprint"] => Needs(Read),
        ["_jobs"] | ["_jobs", _] => Needs(if reads { Read } else { Admin }),
        ["_debug", ..] => Needs(Admin),
        [_index] => Needs(if reads { Read } else { Admin }),
        [_, "_search" | "_status" | "_changes"] => Needs(Read),
        [_, "_snapshot"] => Needs(Admin),
        [_, "_update" | "_stream" | "_import"] => Needs(Write),
        [_, _id] => Needs(if reads { Read } else { Write }),
        _ => Needs(Read),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_has_its_role() {
        use Access::{Needs, Open};
        use Role::{Admin, Read, Write};
        for (method, path, access) in [
            (Method::GET, "/_health", Open),
            (Method::GET, "/_ready", Open),
            (Method::HEAD, "/main/_health", Open),
            (Method::GET, "/health", Open),
            (Method::GET, "/_metrics", Needs(Read)),
            (Method::GET, "/_changes", Needs(Read)),
            (Method::POST, "/fingerprint", Needs(Read)),
            (Method::POST, "/_fingerprint", Needs(Read)),
            (Method::GET, "/_jobs", Needs(Read)),
            (Method::GET, "/_jobs/3", Needs(Read)),
            (Method::POST, "/_jobs", Needs(Admin)),
            (Method::DELETE, "/_jobs/3", Needs(Admin)),
            (Method::POST, "/_debug/fail/main/writer", Needs(Admin)),
            (Method::GET, "/main", Needs(Read)),
            (Method::HEAD, "/main", Needs(Read)),
            (Method::PUT, "/main", Needs(Admin)),
            (Method::DELETE, "/main", Needs(Admin)),
            (Method::POST, "/main/_search", Needs(Read)),
            (Method::GET, "/main/_status", Needs(Read)),
            (Method::GET, "/main/_changes", Needs(Read)),
            (Method::GET, "/main/_snapshot", Needs(Admin)),
            (Method::POST, "/main/_update", Needs(Write)),
            (Method::POST, "/main/_stream", Needs(Write)),
            (Method::POST, "/main/_import", Needs(Write)),
            (Method::GET, "/main/12", Needs(Read)),
            (Method::PUT, "/main/12", Needs(Write)),
            (Method::DELETE, "/main/12", Needs(Write)),
            (Method::GET, "/a/b/c", Needs(Read)),
            (Method::GET, "/", Needs(Read)),
        ] {
            assert_eq!(required(&method, path), access, "{method} {path}");
        }
    }
}
