//! Bearer tokens and their roles (docs/operations.md "Authentication"):
//! parsed from a file or the environment, kept only as SHA-256 digests, and
//! looked up in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Write,
    Admin,
}

/// A token list that does not parse: where and why.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("{source_name}: entry {entry}: {why}")]
    Entry {
        source_name: String,
        entry: usize,
        why: &'static str,
    },
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// The tokens in force: `(SHA-256 of the token, role)`.
#[derive(Debug, Default, Clone)]
pub struct TokenSet {
    entries: Vec<([u8; 32], Role)>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// RFC 6750's b64token characters.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)
}

impl TokenSet {
    /// Parses entries `<role>:<token>` (or `<role>:sha256:<64 hex digits>`,
    /// the token's digest, so the file need not hold the token itself),
    /// separated by newlines, spaces or commas; a line starting with `#` is
    /// a comment. Tokens: at least 16 characters of `A-Za-z0-9-._~+/=`.
    pub fn parse(text: &str, source_name: &str) -> Result<TokenSet, TokensError> {
        let mut set = TokenSet::default();
        let entries = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split([' ', '\t', ',']))
            .filter(|e| !e.is_empty());
        for (i, entry) in entries.enumerate() {
            let bad = |why| TokensError::Entry {
                source_name: source_name.to_string(),
                entry: i + 1,
                why,
            };
            let (role, token) = entry
                .split_once(':')
                .ok_or_else(|| bad("not <role>:<token>"))?;
            let role = match role {
                "read" => Role::Read,
                "write" => Role::Write,
                "admin" => Role::Admin,
                _ => return Err(bad("role is not read, write or admin")),
            };
            let hash = match token.strip_prefix("sha256:") {
                Some(hex) => {
                    let mut out = [0u8; 32];
                    // ASCII hex digits only, checked before slicing: a
                    // multi-byte character would put a slice off a char
                    // boundary.
                    let digits = hex.as_bytes();
                    if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
                        return Err(bad("a sha256 digest is 64 hex digits"));
                    }
                    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
                        let nibble = |d: u8| (d as char).to_digit(16).unwrap_or(0) as u8;
                        *o = nibble(pair[0]) << 4 | nibble(pair[1]);
                    }
                    out
                }
                None => {
                    if token.len() < 16 {
                        return Err(bad("token shorter than 16 characters"));
                    }
                    if !token.bytes().all(is_token_char) {
                        return Err(bad("token has a character outside A-Za-z0-9-._~+/="));
                    }
                    digest(token.as_bytes())
                }
            };
            set.entries.push((hash, role));
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn extend(&mut self, other: TokenSet) {
        self.entries.extend(other.entries);
    }

    /// The highest role of `token`, comparing its digest with every entry
    /// in constant time (no early exit: the time does not tell which entry,
    /// or how much of one, matched).
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let presented = digest(token.as_bytes());
        let mut best: Option<Role> = None;
        for (hash, role) in &self.entries {
            let matched: bool = hash.ct_eq(&presented).into();
            if matched && best.is_none_or(|b| *role > b) {
                best = Some(*role);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn entries_roles_digests_and_errors() {
        let reader = "r".repeat(16);
        let hex: String = digest(b"writer-token-0123")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let text = format!(
            "# tokens\nread:{reader}\n  write:sha256:{hex}, admin:adminadminadmin1\n\n# admin:x\n"
        );
        let set = TokenSet::parse(&text, "t").unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.role_of(&reader), Some(Role::Read));
        assert_eq!(set.role_of("writer-token-0123"), Some(Role::Write));
        assert_eq!(set.role_of("adminadminadmin1"), Some(Role::Admin));
        assert_eq!(set.role_of("adminadminadmin"), None);
        assert_eq!(set.role_of(""), None);
        // The same token under two roles: the higher one.
        let both = TokenSet::parse(&format!("read:{reader} admin:{reader}"), "t").unwrap();
        assert_eq!(both.role_of(&reader), Some(Role::Admin));

        for (bad, why) in [
            ("reader", "not <role>:<token>"),
            ("root:aaaaaaaaaaaaaaaa", "role is not read, write or admin"),
            ("read:short", "token shorter than 16 characters"),
            ("read:aaaaaaaaaaaaaaa\u{e9}", "token has a character"),
            ("read:sha256:abc", "a sha256 digest is 64 hex digits"),
            // 64 bytes with multi-byte characters (a pasted dash): a
            // named error, not a slice off a char boundary.
            (
                "read:sha256:\u{2013}123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd",
                "a sha256 digest is 64 hex digits",
            ),
            (
                "read:sha256:0\u{e9}23456789abcdef0123456789abcdef0123456789abcdef0123456789abcde",
                "a sha256 digest is 64 hex digits",
            ),
        ] {
            let e = TokenSet::parse(&format!("read:{reader}\n{bad}"), "f").unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("f: entry 2: "), "{text}");
            assert!(text.contains(why), "{bad}: {text}");
        }
        assert_eq!(TokenSet::parse("# nothing\n", "t").unwrap().len(), 0);
    }
}
