//! Chromaprint's compressed fingerprint (what `fpcalc` prints and AcoustID's
//! API takes): one byte of algorithm, a 24-bit big-endian item count, then
//! the XOR of each item with the one before as bit positions: 3-bit gaps
//! (7 = "see the exception stream") and 5-bit exceptions, both packed from
//! the low bit; URL-safe base64 without padding (docs/audio.md).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::AudioError;

/// The largest item count the 24-bit header holds.
const MAX_ITEMS: usize = (1 << 24) - 1;

/// Compresses `items` of `algorithm` (1 for fpcalc's default, TEST2).
/// Fingerprints longer than 2^24 - 1 items are cut to that (about 60 days
/// of audio).
pub fn compress(items: &[u32], algorithm: u8) -> String {
    let items = &items[..items.len().min(MAX_ITEMS)];
    let mut normal = BitWriter::default();
    let mut exceptions = BitWriter::default();
    let mut prev = 0u32;
    for (i, &item) in items.iter().enumerate() {
        let mut v = if i == 0 { item } else { item ^ prev };
        prev = item;
        let (mut bit, mut last) = (1u32, 0u32);
        while v != 0 {
            if v & 1 == 1 {
                let gap = bit - last;
                if gap >= 7 {
                    normal.push(7, 3);
                    exceptions.push(gap - 7, 5);
                } else {
                    normal.push(gap, 3);
                }
                last = bit;
            }
            v >>= 1;
            bit += 1;
        }
        normal.push(0, 3);
    }
    let n = items.len();
    let mut bytes = vec![algorithm, (n >> 16) as u8, (n >> 8) as u8, n as u8];
    bytes.extend(normal.finish());
    bytes.extend(exceptions.finish());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decompresses a fingerprint string: its algorithm and items.
pub fn decompress(text: &str) -> Result<(u8, Vec<u32>), AudioError> {
    let bad = |why: &str| AudioError::BadFingerprint(why.to_string());
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('=').as_bytes())
        .map_err(|e| bad(&format!("not URL-safe base64: {e}")))?;
    if bytes.len() < 4 {
        return Err(bad("shorter than its 4-byte header"));
    }
    let algorithm = bytes[0];
    let count =
        (usize::from(bytes[1]) << 16) | (usize::from(bytes[2]) << 8) | usize::from(bytes[3]);
    let body = &bytes[4..];
    // Each item takes at least one 3-bit terminator.
    if count * 3 > body.len() * 8 {
        return Err(bad("item count larger than the data"));
    }
    let mut normal = BitReader::new(body);
    let mut gaps = Vec::new();
    let mut terminators = 0;
    while terminators < count {
        let g = normal
            .read(3)
            .ok_or_else(|| bad("normal stream ends early"))?;
        if g == 0 {
            terminators += 1;
        }
        gaps.push(g);
    }
    let used = normal.bits_read().div_ceil(8);
    let mut exceptions = BitReader::new(&body[used..]);
    let mut items = Vec::with_capacity(count);
    let (mut value, mut bit, mut prev) = (0u32, 0u32, 0u32);
    for g in gaps {
        if g == 0 {
            let item = if items.is_empty() {
                value
            } else {
                prev ^ value
            };
            items.push(item);
            prev = item;
            value = 0;
            bit = 0;
            continue;
        }
        let mut gap = g;
        if g == 7 {
            gap += exceptions
                .read(5)
                .ok_or_else(|| bad("exception stream ends early"))?;
        }
        bit += gap;
        if bit > 32 {
            return Err(bad("bit position past 32"));
        }
        value |= 1 << (bit - 1);
    }
    Ok((algorithm, items))
}

#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u32,
    n: u32,
}

impl BitWriter {
    fn push(&mut self, v: u32, bits: u32) {
        self.acc |= (v & ((1 << bits) - 1)) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    fn read(&mut self, bits: usize) -> Option<u32> {
        let mut v = 0u32;
        for k in 0..bits {
            let byte = *self.data.get((self.pos + k) / 8)?;
            v |= u32::from((byte >> ((self.pos + k) % 8)) & 1) << k;
        }
        self.pos += bits;
        Some(v)
    }

    fn bits_read(&self) -> usize {
        self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_known_fingerprint_compresses_as_chromaprint_does() {
        // Items {1, 0}: bit 1 of the first, bit 1 of the XOR: normal stream
        // 1, 0, 1, 0 in 3-bit fields from the low bit.
        let bytes = URL_SAFE_NO_PAD
            .decode(compress(&[1, 0], 0))
            .unwrap_or_default();
        assert_eq!(bytes, vec![0, 0, 0, 2, 0b0100_0001, 0b0000_0000]);
        // A gap of 7 or more goes to the exception stream: bit 8 set.
        let bytes = URL_SAFE_NO_PAD
            .decode(compress(&[1 << 7], 1))
            .unwrap_or_default();
        assert_eq!(bytes, vec![1, 0, 0, 1, 0b0000_0111, 0b0000_0001]);
    }

    #[test]
    fn garbage_gets_a_named_error() {
        for text in ["", "AQ", "not base64!", "AQAAZA"] {
            assert!(
                matches!(decompress(text), Err(AudioError::BadFingerprint(_))),
                "{text}"
            );
        }
    }

    proptest! {
        #[test]
        fn decompress_inverts_compress(items in proptest::collection::vec(any::<u32>(), 0..300)) {
            let text = compress(&items, 1);
            prop_assert_eq!(decompress(&text).ok(), Some((1u8, items)));
        }

        #[test]
        fn decompress_never_panics(text in "[A-Za-z0-9_-]{0,200}") {
            let _ = decompress(&text);
        }
    }
}
