//! The file-segment format across versions: a version-1 file written by the
//! code before filters still opens and answers; a version-2 file carries a
//! membership filter covered by the metadata checksum.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use fpnode_segments::file_segment::{FORMAT_VERSION, FileSegment, FileSegmentWriter, OpenOptions};
use fpnode_segments::segment::DocSets;
use fpnode_segments::{Error, Fs, Position, SegmentId};

/// The fixture's fingerprints: ids 1..=300, 12 hashes each (the formula the
/// fixture was written with, at commit 4716ce8).
fn hashes(id: u32) -> Vec<u32> {
    (0..12u32)
        .map(|k| {
            id.wrapping_mul(2_654_435_761)
                .wrapping_add(k.wrapping_mul(40_503))
        })
        .collect()
}

fn matches(seg: &FileSegment, id: u32) -> Vec<u32> {
    let mut q = hashes(id);
    q.sort_unstable();
    q.dedup();
    let mut found = Vec::new();
    seg.collect_matches(&q, &mut |i| found.push(i)).unwrap();
    found
}

#[test]
fn a_version_1_segment_still_opens_and_answers() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-0000000000000015.fpseg");
    let seg = FileSegment::open(&path, Some(SegmentId(0x15)), OpenOptions::default()).unwrap();
    seg.verify_all().unwrap();
    let info = seg.info();
    assert_eq!(
        (info.min_position, info.max_position),
        (Position(3), Position(9))
    );
    assert_eq!(info.num_postings, 3600);
    assert_eq!(seg.docs().defined.len(), 300);
    assert!(seg.docs().deleted.contains(1000));
    assert!(seg.filter().is_none(), "version 1 has no filter");
    for id in [1, 150, 300] {
        let found = matches(&seg, id);
        assert_eq!(
            found.iter().filter(|&&i| i == id).count(),
            12,
            "id {id}: {found:?}"
        );
    }
    assert_eq!(seg.cursor().count(), 3600);
}

fn write_v2(dir: &Path) -> std::path::PathBuf {
    let mut postings: Vec<u64> = (1u32..=300)
        .flat_map(|id| {
            hashes(id)
                .into_iter()
                .map(move |h| (u64::from(h) << 32) | u64::from(id))
        })
        .collect();
    postings.sort_unstable();
    postings.dedup();
    let mut w =
        FileSegmentWriter::create(dir, SegmentId(0x16), Fs::default(), postings.len() as u64)
            .unwrap();
    for p in postings {
        w.push(p).unwrap();
    }
    let mut docs = DocSets::default();
    docs.defined.insert_range(1..=300);
    w.finish(&docs, Position(1), Position(2)).unwrap().0
}

#[test]
fn a_version_2_segment_has_a_filter_holding_every_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_v2(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
        FORMAT_VERSION
    );
    let seg = FileSegment::open(&path, Some(SegmentId(0x16)), OpenOptions::default()).unwrap();
    let filter = seg.filter().expect("a small segment gets a filter");
    // 3,600 postings at 12 bits each, in whole 256-bit blocks: 169 of them,
    // after a 64-byte header (one region).
    assert_eq!(filter.len_bytes(), 64 + 169 * 32);
    for id in 1..=300 {
        assert!(hashes(id).iter().all(|&h| filter.contains(h)), "id {id}");
        assert_eq!(matches(&seg, id).iter().filter(|&&i| i == id).count(), 12);
    }
    let absent = (0..10_000u32)
        .filter(|&h| !filter.contains(h.wrapping_mul(7) | 1))
        .count();
    assert!(
        absent > 9_000,
        "a filter passing {} of 10,000 other hashes",
        10_000 - absent
    );
}

#[test]
fn a_flipped_filter_byte_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_v2(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let seg = FileSegment::open(&path, None, OpenOptions::default()).unwrap();
    let filter_len = seg.filter().unwrap().len_bytes();
    drop(seg);
    // The filter sits just before the 144-byte footer.
    let at = bytes.len() - 144 - filter_len / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    match FileSegment::open(&path, None, OpenOptions::default()) {
        Err(Error::Corrupt { reason, .. }) => {
            assert!(reason.contains("metadata checksum"), "{reason}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// Rewrites footer field `index` (a u64) of the version-2 file at `path`,
/// with a footer checksum that matches: what a crafted file can claim.
fn forge_footer_field(path: &Path, index: usize, value: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let footer = bytes.len() - 144;
    bytes[footer + 8 * index..footer + 8 * index + 8].copy_from_slice(&value.to_le_bytes());
    let crc = crc32fast::hash(&bytes[footer..footer + 128]);
    bytes[footer + 128..footer + 132].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, &bytes).unwrap();
}

#[test]
fn forged_section_sizes_are_refused_not_a_panic() {
    // Fields 13 and 14: the filter's offset and length; 12: the deleted
    // ids' length. Values chosen so u64 sums would wrap into a layout that
    // seems to add up.
    for (index, value) in [
        (14, u64::MAX - 31),
        (13, u64::MAX - 200),
        (12, u64::MAX),
        (14, 0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = write_v2(dir.path());
        forge_footer_field(&path, index, value);
        match FileSegment::open(&path, None, OpenOptions::default()) {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("field {index} = {value:#x}: expected Corrupt, got {other:?}"),
        }
    }
}
