//! Content negotiation and the two wire formats.
//!
//! Request format: the `Content-Type`; without one, MessagePack if there is a
//! body, else JSON; any other type is `415 UnsupportedMediaType`. Response format:
//! `Accept` if it names JSON or MessagePack, else the request's format.
//!
//! Responses are built as an [`Out`] tree whose map keys know both spellings:
//! JSON uses full field names, MessagePack the first letter (`version` -> `v`),
//! except keys marked `full` (index stats, `_status`) and user keys (metadata),
//! which are the same in both. Request decoders accept both spellings (serde
//! aliases), so one struct serves both formats.

use std::borrow::Cow;

use axum::http::{HeaderMap, header};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use super::error::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    MsgPack,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::MsgPack => "application/vnd.msgpack",
        }
    }

    fn from_media_type(value: &str) -> Option<Format> {
        let mt = value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mt.as_str() {
            "application/json" => Some(Format::Json),
            "application/vnd.msgpack" | "application/msgpack" | "application/x-msgpack" => {
                Some(Format::MsgPack)
            }
            _ => None,
        }
    }
}

/// The format of the request body.
pub fn request_format(headers: &HeaderMap, has_body: bool) -> Result<Format, ApiError> {
    match headers.get(header::CONTENT_TYPE) {
        None => Ok(if has_body {
            Format::MsgPack
        } else {
            Format::Json
        }),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(Format::from_media_type)
            .ok_or(ApiError::UnsupportedMediaType),
    }
}

/// The format of the response.
pub fn response_format(headers: &HeaderMap, has_body: bool) -> Format {
    if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        for part in accept.split(',') {
            if let Some(f) = Format::from_media_type(part) {
                return f;
            }
        }
    }
    request_format(headers, has_body).unwrap_or(Format::Json)
}

/// Decodes a request body in `format`.
pub fn decode<T: serde::de::DeserializeOwned>(format: Format, body: &[u8]) -> Result<T, ApiError> {
    match format {
        Format::Json => serde_json::from_slice(body).map_err(|_| ApiError::BadRequest),
        Format::MsgPack => rmp_serde::from_slice(body).map_err(|_| ApiError::BadRequest),
    }
}

/// A map key with its two spellings.
#[derive(Clone, Debug)]
pub struct Key {
    long: Cow<'static, str>,
    short: Option<&'static str>,
}

/// A struct field: first letter in MessagePack.
pub fn field(name: &'static str) -> Key {
    Key {
        long: Cow::Borrowed(name),
        short: Some(&name[..1]),
    }
}

/// A key spelled the same in both formats.
pub fn full(name: &'static str) -> Key {
    Key {
        long: Cow::Borrowed(name),
        short: None,
    }
}

/// A user-provided key (metadata), never shortened.
pub fn user(name: String) -> Key {
    Key {
        long: Cow::Owned(name),
        short: None,
    }
}

/// A response value.
#[derive(Clone, Debug)]
pub enum Out {
    Map(Vec<(Key, Out)>),
    List(Vec<Out>),
    UInt(u64),
    Bool(bool),
    Str(String),
    /// `null` / MessagePack nil.
    Nil,
}

impl Out {
    pub fn map(entries: impl IntoIterator<Item = (Key, Out)>) -> Out {
        Out::Map(entries.into_iter().collect())
    }

    pub fn empty() -> Out {
        Out::Map(Vec::new())
    }

    pub fn encode(&self, format: Format) -> Vec<u8> {
        let view = OutIn { out: self, format };
        match format {
            Format::Json => serde_json::to_vec(&view).unwrap_or_else(|_| b"{}".to_vec()),
            Format::MsgPack => rmp_serde::to_vec(&view).unwrap_or_else(|_| vec![0x80]),
        }
    }
}

struct OutIn<'a> {
    out: &'a Out,
    format: Format,
}

impl Serialize for OutIn<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.out {
            Out::Map(entries) => {
                let mut m = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    let key: &str = match (self.format, k.short) {
                        (Format::MsgPack, Some(short)) => short,
                        _ => &k.long,
                    };
                    m.serialize_entry(
                        key,
                        &OutIn {
                            out: v,
                            format: self.format,
                        },
                    )?;
                }
                m.end()
            }
            Out::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&OutIn {
                        out: v,
                        format: self.format,
                    })?;
                }
                seq.end()
            }
            Out::UInt(n) => s.serialize_u64(*n),
            Out::Bool(b) => s.serialize_bool(*b),
            Out::Str(v) => s.serialize_str(v),
            Out::Nil => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn keys_are_shortened_in_msgpack_only_where_marked() {
        let out = Out::map([
            (field("version"), Out::UInt(3)),
            (full("num_docs"), Out::UInt(1)),
            (user("artist".into()), Out::Str("x".into())),
        ]);
        assert_eq!(
            String::from_utf8(out.encode(Format::Json)).unwrap(),
            r#"{"version":3,"num_docs":1,"artist":"x"}"#
        );
        let v: serde_json::Value = rmp_serde::from_slice(&out.encode(Format::MsgPack)).unwrap();
        assert_eq!(v, serde_json::json!({"v": 3, "num_docs": 1, "artist": "x"}));
    }

    #[test]
    fn negotiation_follows_content_type_then_body_then_accept() {
        let mut h = HeaderMap::new();
        assert_eq!(request_format(&h, false), Ok(Format::Json));
        assert_eq!(request_format(&h, true), Ok(Format::MsgPack));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(request_format(&h, true), Ok(Format::Json));
        assert_eq!(response_format(&h, true), Format::Json);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, application/vnd.msgpack"),
        );
        assert_eq!(response_format(&h, true), Format::MsgPack);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(
            request_format(&h, true),
            Err(ApiError::UnsupportedMediaType)
        );
    }
}
