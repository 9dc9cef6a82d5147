//! Little-endian readers shared by the file formats.

/// Little-endian readers over byte slices that never panic: callers check bounds
/// first, these return 0 past the end (caught by checksums and bounds checks).
#[inline]
pub fn le_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

#[inline]
pub fn le_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}
