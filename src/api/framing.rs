//! Cutting a streamed request body into change objects, as the bytes arrive
//! (`POST /:index/_stream`, docs/api.md): NDJSON lines or a sequence of
//! MessagePack values, each one `_update` change (`{"insert": {...}}`,
//! `{"delete": {...}}`, or their one-letter forms). Memory is bounded: at most
//! one unfinished item (up to [`MAX_ITEM_BYTES`]) is held, never the body.

use std::io::Cursor;

use bytes::{Buf, BytesMut};

use super::types::ChangeIn;

/// The largest line (or MessagePack value) accepted: a fingerprint of the
/// most hashes a change may carry, with room to spare.
pub const MAX_ITEM_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    Ndjson,
    MsgPack,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("item {item} is longer than {MAX_ITEM_BYTES} bytes")]
    TooLong { item: u64 },
    #[error("item {item} is not a change object: {message}")]
    Invalid { item: u64, message: String },
    #[error("the body ends inside item {item}")]
    Truncated { item: u64 },
}

impl FrameError {
    /// The 1-based number of the item (line) at fault.
    pub fn item(&self) -> u64 {
        match self {
            FrameError::TooLong { item }
            | FrameError::Invalid { item, .. }
            | FrameError::Truncated { item } => *item,
        }
    }
}

/// Takes body chunks in, gives change objects out.
#[derive(Debug)]
pub struct Framer {
    format: StreamFormat,
    buf: BytesMut,
    /// Items (NDJSON: lines, blank ones included) taken so far.
    items: u64,
    /// NDJSON: how far `buf` was searched for a newline already.
    scanned: usize,
    /// MessagePack: an unfinished value is decoded again only once `buf`
    /// holds this many bytes (twice what the last try had), so a large
    /// value arriving in small chunks is not decoded once per chunk.
    retry_at: usize,
}

impl Framer {
    pub fn new(format: StreamFormat) -> Framer {
        Framer {
            format,
            buf: BytesMut::new(),
            items: 0,
            scanned: 0,
            retry_at: 0,
        }
    }

    /// Items (lines) taken so far.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// True while an unfinished MessagePack value waits for more bytes
    /// before it is decoded again.
    pub fn waiting(&self) -> bool {
        self.retry_at > 0
    }

    /// Decode the unfinished value at the next `next`, however few bytes
    /// came since the last try (the body paused: what arrived must apply).
    pub fn poke(&mut self) {
        self.retry_at = 0;
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete change, or `None` until more bytes are pushed.
    pub fn next(&mut self) -> Result<Option<ChangeIn>, FrameError> {
        match self.format {
            StreamFormat::Ndjson => self.next_line(false),
            StreamFormat::MsgPack => self.next_value(false),
        }
    }

    /// At the end of the body: the last change, if an unterminated line or
    /// value is left; `None` once everything was taken.
    pub fn finish(&mut self) -> Result<Option<ChangeIn>, FrameError> {
        match self.format {
            StreamFormat::Ndjson => self.next_line(true),
            StreamFormat::MsgPack => self.next_value(true),
        }
    }

    fn next_line(&mut self, eof: bool) -> Result<Option<ChangeIn>, FrameError> {
        loop {
            let end = match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                Some(i) => self.scanned + i,
                None if eof && !self.buf.is_empty() => self.buf.len(),
                None => {
                    self.scanned = self.buf.len();
                    if self.buf.len() > MAX_ITEM_BYTES {
                        return Err(FrameError::TooLong {
                            item: self.items + 1,
                        });
                    }
                    return Ok(None);
                }
            };
            self.items += 1;
            if end > MAX_ITEM_BYTES {
                return Err(FrameError::TooLong { item: self.items });
            }
            let line = self.buf.split_to(end);
            if !self.buf.is_empty() {
                self.buf.advance(1);
            }
            self.scanned = 0;
            let text = line.strip_suffix(b"\r").unwrap_or(&line);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return serde_json::from_slice(text)
                .map(Some)
                .map_err(|e| FrameError::Invalid {
                    item: self.items,
                    message: e.to_string(),
                });
        }
    }

    fn next_value(&mut self, eof: bool) -> Result<Option<ChangeIn>, FrameError> {
        if self.buf.is_empty() || (!eof && self.buf.len() < self.retry_at) {
            return Ok(None);
        }
        let mut cursor = Cursor::new(&self.buf[..]);
        match rmp_serde::from_read::<_, ChangeIn>(&mut cursor) {
            Ok(change) => {
                let used = cursor.position() as usize;
                self.items += 1;
                if used > MAX_ITEM_BYTES {
                    return Err(FrameError::TooLong { item: self.items });
                }
                self.buf.advance(used);
                self.retry_at = 0;
                Ok(Some(change))
            }
            Err(e) if is_eof(&e) => {
                let item = self.items + 1;
                if eof {
                    Err(FrameError::Truncated { item })
                } else if self.buf.len() > MAX_ITEM_BYTES {
                    Err(FrameError::TooLong { item })
                } else {
                    self.retry_at = self.buf.len().saturating_mul(2).max(4096);
                    Ok(None)
                }
            }
            Err(e) => Err(FrameError::Invalid {
                item: self.items + 1,
                message: e.to_string(),
            }),
        }
    }
}

/// True if decoding stopped for want of bytes (more may come).
fn is_eof(e: &rmp_serde::decode::Error) -> bool {
    use rmp_serde::decode::Error;
    match e {
        Error::InvalidMarkerRead(io) | Error::InvalidDataRead(io) => {
            io.kind() == std::io::ErrorKind::UnexpectedEof
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(changes: &[ChangeIn]) -> Vec<(char, u64)> {
        changes
            .iter()
            .map(|c| match c {
                ChangeIn::Insert(i) => ('i', i.id),
                ChangeIn::Delete(d) => ('d', d.id),
            })
            .collect()
    }

    /// Feeds `body` in chunks of `n` bytes; returns every change or the error.
    fn frame(format: StreamFormat, body: &[u8], n: usize) -> Result<Vec<ChangeIn>, FrameError> {
        let mut f = Framer::new(format);
        let mut out = Vec::new();
        for chunk in body.chunks(n.max(1)) {
            f.push(chunk);
            while let Some(c) = f.next()? {
                out.push(c);
            }
        }
        while let Some(c) = f.finish()? {
            out.push(c);
        }
        Ok(out)
    }

    #[test]
    fn ndjson_lines_in_any_chunking_give_the_same_changes() {
        let body = b"{\"insert\":{\"id\":1,\"hashes\":[1,2]}}\n\r\n{\"d\":{\"i\":2}}\r\n\n{\"i\":{\"i\":3,\"h\":[]}}";
        for n in [1, 2, 7, 1000] {
            let got = frame(StreamFormat::Ndjson, body, n).unwrap();
            assert_eq!(
                ids(&got),
                vec![('i', 1), ('d', 2), ('i', 3)],
                "chunks of {n}"
            );
        }
    }

    #[test]
    fn a_bad_ndjson_line_is_named_by_its_number() {
        let body = b"{\"insert\":{\"id\":1,\"hashes\":[1]}}\n\n{\"insert\":{\"id\":2}}\n";
        let e = frame(StreamFormat::Ndjson, body, 5).unwrap_err();
        assert!(matches!(e, FrameError::Invalid { item: 3, .. }), "{e:?}");
    }

    #[test]
    fn a_line_over_the_limit_is_refused_without_waiting_for_its_end() {
        let mut f = Framer::new(StreamFormat::Ndjson);
        f.push(b"{\"insert\":{\"id\":1,\"hashes\":[1]}}\n");
        assert!(f.next().unwrap().is_some());
        let chunk = vec![b' '; 1 << 20];
        let mut refused = None;
        for _ in 0..6 {
            f.push(&chunk);
            if let Err(e) = f.next() {
                refused = Some(e);
                break;
            }
        }
        assert_eq!(refused, Some(FrameError::TooLong { item: 2 }));
    }

    #[test]
    fn msgpack_values_in_any_chunking_give_the_same_changes() {
        let mut body = Vec::new();
        for (i, kind) in [(1u64, "insert"), (2, "delete"), (3, "i")] {
            let v = if kind == "delete" {
                serde_json::json!({ kind: { "id": i } })
            } else {
                serde_json::json!({ kind: { "id": i, "hashes": [i, i + 1] } })
            };
            body.extend(rmp_serde::to_vec(&v).unwrap());
        }
        for n in [1, 3, 1000] {
            let got = frame(StreamFormat::MsgPack, &body, n).unwrap();
            assert_eq!(
                ids(&got),
                vec![('i', 1), ('d', 2), ('i', 3)],
                "chunks of {n}"
            );
        }
        // Cut inside the last value: named as truncated, item 3.
        let e = frame(StreamFormat::MsgPack, &body[..body.len() - 2], 4).unwrap_err();
        assert_eq!(e, FrameError::Truncated { item: 3 });
    }

    #[test]
    fn a_msgpack_value_that_is_not_a_change_is_invalid() {
        let body = rmp_serde::to_vec(&serde_json::json!([1, 2, 3])).unwrap();
        let e = frame(StreamFormat::MsgPack, &body, 2).unwrap_err();
        assert!(matches!(e, FrameError::Invalid { item: 1, .. }), "{e:?}");
    }
}
