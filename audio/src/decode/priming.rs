//! The encoder delay an MP4 file declares in its edit list (`elst`), which
//! symphonia's isomp4 reader does not apply: AAC encoders prepend priming
//! samples (1024 for FFmpeg's, 2112 for Apple's) and the first edit's
//! `media_time` says where presentation starts. FFmpeg skips those frames
//! (and keeps the end as decoded), so fpcalc fingerprints from there; so do
//! we (docs/audio.md, "Decoding").
//!
//! Only the atoms on the path `moov/trak/{mdia/{mdhd,hdlr},edts/elst}` are
//! read, each bounded, so a malformed file costs a few reads, never a scan.

use std::io::{Read, Seek, SeekFrom};

/// At most this many bytes of one atom are read into memory (a `moov` is
/// walked by seeking, never read whole).
const MAX_LEAF: u64 = 1 << 16;
/// Atoms visited before giving up (a hostile file cannot make us loop).
const MAX_ATOMS: usize = 4096;

/// Frames at the start of the first sound track to drop, in that track's
/// media time scale, with the scale; `None` when the file is not MP4 or
/// declares no delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priming {
    pub media_time: u64,
    pub timescale: u32,
}

impl Priming {
    /// The delay in frames at `sample_rate`.
    pub fn frames_at(&self, sample_rate: u32) -> u64 {
        if self.timescale == 0 || self.timescale == sample_rate {
            return self.media_time;
        }
        (u128::from(self.media_time) * u128::from(sample_rate) / u128::from(self.timescale)) as u64
    }
}

/// Reads the first sound track's priming from an MP4 `reader`; any read or
/// format problem means "no priming" (symphonia reports the real error).
pub fn read<R: Read + Seek>(reader: &mut R) -> Option<Priming> {
    let end = reader.seek(SeekFrom::End(0)).ok()?;
    let mut walker = Walker { reader, visited: 0 };
    let (moov, moov_end) = walker.find(0, end, b"moov")?;
    let mut at = moov;
    while let Some((trak, trak_end)) = walker.find(at, moov_end, b"trak") {
        if let Some(priming) = walker.sound_track(trak, trak_end) {
            return Some(priming);
        }
        at = trak_end;
    }
    None
}

struct Walker<'a, R> {
    reader: &'a mut R,
    visited: usize,
}

impl<R: Read + Seek> Walker<'_, R> {
    /// The body range of the first atom of type `kind` in `[from, to)`.
    fn find(&mut self, mut from: u64, to: u64, kind: &[u8; 4]) -> Option<(u64, u64)> {
        while from + 8 <= to {
            self.visited += 1;
            if self.visited > MAX_ATOMS {
                return None;
            }
            self.reader.seek(SeekFrom::Start(from)).ok()?;
            let mut header = [0u8; 8];
            self.reader.read_exact(&mut header).ok()?;
            let size32 = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            let (size, body) = match size32 {
                0 => (to - from, from + 8),
                1 => {
                    let mut large = [0u8; 8];
                    self.reader.read_exact(&mut large).ok()?;
                    (u64::from_be_bytes(large), from + 16)
                }
                n => (u64::from(n), from + 8),
            };
            let atom_end = from.checked_add(size)?;
            if size < body - from || atom_end > to {
                return None;
            }
            if &header[4..8] == kind {
                return Some((body, atom_end));
            }
            from = atom_end;
        }
        None
    }

    fn leaf(&mut self, from: u64, to: u64) -> Option<Vec<u8>> {
        let len = to.checked_sub(from)?.min(MAX_LEAF);
        self.reader.seek(SeekFrom::Start(from)).ok()?;
        let mut data = vec![0u8; len as usize];
        self.reader.read_exact(&mut data).ok()?;
        Some(data)
    }

    fn sound_track(&mut self, trak: u64, trak_end: u64) -> Option<Priming> {
        let (mdia, mdia_end) = self.find(trak, trak_end, b"mdia")?;
        let (hdlr, hdlr_end) = self.find(mdia, mdia_end, b"hdlr")?;
        let hdlr = self.leaf(hdlr, hdlr_end)?;
        // version/flags (4), pre_defined (4), handler_type (4).
        if hdlr.get(8..12)? != b"soun" {
            return None;
        }
        let (mdhd, mdhd_end) = self.find(mdia, mdia_end, b"mdhd")?;
        let mdhd = self.leaf(mdhd, mdhd_end)?;
        let timescale = match mdhd.first()? {
            0 => be_u32(&mdhd, 12)?,
            1 => be_u32(&mdhd, 20)?,
            _ => return None,
        };
        let (edts, edts_end) = self.find(trak, trak_end, b"edts")?;
        let (elst, elst_end) = self.find(edts, edts_end, b"elst")?;
        let elst = self.leaf(elst, elst_end)?;
        let version = *elst.first()?;
        let entries = be_u32(&elst, 4)?;
        let entry_size = if version == 1 { 20 } else { 12 };
        // The first edit that maps media (an empty edit, media_time -1,
        // only delays presentation and is skipped as FFmpeg skips it).
        for i in 0..entries.min(16) as usize {
            let at = 8 + i * entry_size;
            let media_time = if version == 1 {
                be_u64(&elst, at + 8)? as i64
            } else {
                i64::from(be_u32(&elst, at + 4)? as i32)
            };
            if media_time < 0 {
                continue;
            }
            return (media_time > 0).then_some(Priming {
                media_time: media_time as u64,
                timescale,
            });
        }
        None
    }
}

fn be_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn atom(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }

    fn mp4(handler: &[u8; 4], media_times: &[i32]) -> Vec<u8> {
        let mut hdlr = vec![0u8; 8];
        hdlr.extend_from_slice(handler);
        hdlr.extend_from_slice(&[0u8; 12]);
        let mut mdhd = vec![0u8; 12];
        mdhd.extend_from_slice(&44100u32.to_be_bytes());
        mdhd.extend_from_slice(&[0u8; 8]);
        let mdia = [atom(b"mdhd", &mdhd), atom(b"hdlr", &hdlr)].concat();
        let mut elst = vec![0u8; 4];
        elst.extend_from_slice(&(media_times.len() as u32).to_be_bytes());
        for t in media_times {
            elst.extend_from_slice(&1000u32.to_be_bytes());
            elst.extend_from_slice(&t.to_be_bytes());
            elst.extend_from_slice(&0x0001_0000u32.to_be_bytes());
        }
        let trak = [
            atom(b"tkhd", &[0u8; 84]),
            atom(b"edts", &atom(b"elst", &elst)),
            atom(b"mdia", &mdia),
        ]
        .concat();
        [
            atom(b"ftyp", b"M4A \0\0\0\0"),
            atom(b"mdat", &[7u8; 100]),
            atom(
                b"moov",
                &[atom(b"mvhd", &[0u8; 100]), atom(b"trak", &trak)].concat(),
            ),
        ]
        .concat()
    }

    #[test]
    fn reads_the_first_mapped_edit_of_the_sound_track() {
        let p = read(&mut Cursor::new(mp4(b"soun", &[-1, 2112]))).unwrap();
        assert_eq!(
            p,
            Priming {
                media_time: 2112,
                timescale: 44100
            }
        );
        assert_eq!(p.frames_at(44100), 2112);
        assert_eq!(p.frames_at(22050), 1056);
    }

    #[test]
    fn none_without_delay_sound_or_moov() {
        assert_eq!(read(&mut Cursor::new(mp4(b"soun", &[0]))), None);
        assert_eq!(read(&mut Cursor::new(mp4(b"vide", &[1024]))), None);
        assert_eq!(read(&mut Cursor::new(b"RIFF....WAVEfmt ".to_vec())), None);
        assert_eq!(read(&mut Cursor::new(Vec::new())), None);
    }

    #[test]
    fn truncated_or_lying_sizes_give_none_not_a_panic() {
        let whole = mp4(b"soun", &[1024]);
        let expected = Priming {
            media_time: 1024,
            timescale: 44100,
        };
        for cut in 0..whole.len() {
            let got = read(&mut Cursor::new(whole[..cut].to_vec()));
            assert!(
                got.is_none() || got == Some(expected),
                "cut at {cut}: {got:?}"
            );
        }
        let mut lying = whole.clone();
        lying[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(read(&mut Cursor::new(lying)), None);
    }
}
