//! Decoding with symphonia (and libopus for Opus), streamed: packets are read
//! and decoded one at a time and their samples handed to a [`PcmSink`], so a
//! file is never held whole in memory. Integer samples of at most 16 bits are
//! passed as `i16`, everything else as `f32`, the split libswresample makes
//! (docs/audio.md, "Decoding").
//!
//! Every failure is a named [`AudioError`]: the decoder runs under
//! `catch_unwind` (a malformed file must not take the process down) and
//! checks a wall-clock deadline between packets.

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use symphonia::core::audio::GenericAudioBufferRef;
use symphonia::core::codecs::CodecParameters;
use symphonia::core::codecs::audio::AudioCodecParameters;
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::codecs::registry::CodecRegistry;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, Track};
use symphonia::core::io::{MediaSource, MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia_common::apple::audio::alac::MagicCookie;

use crate::AudioError;
use crate::resample::SamplePath;

mod priming;

/// Decode errors in a row after which a stream is declared corrupt (single
/// bad packets are skipped, as FFmpeg does).
const MAX_ERRORS_IN_A_ROW: usize = 32;
/// Highest sample rate accepted (DXD is 352.8 kHz); a header claiming more
/// would make the resampler's filter bank huge.
pub const MAX_SAMPLE_RATE: u32 = 768_000;
/// Most channels accepted.
pub const MAX_CHANNELS: usize = 32;

/// What the container and codec say about the audio.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioInfo {
    /// Container: `wave`, `aiff`, `flac`, `mp3`, `ogg`, `isomp4`, `matroska`, `caf`, `aac`.
    pub format: &'static str,
    /// Codec short name (`pcm_s16le`, `flac`, `mp3`, `vorbis`, `opus`, `aac`, `alac`...).
    pub codec: &'static str,
    pub sample_rate: u32,
    pub channels: usize,
    /// Decoded bits per sample, for integer codecs.
    pub bits_per_sample: Option<u32>,
    /// Duration the container declares, in seconds.
    pub duration: Option<f64>,
    /// How the samples reach the sink.
    pub path: SamplePath,
}

/// Interleaved samples of one decoded packet.
#[derive(Debug, Clone, Copy)]
pub enum Pcm<'a> {
    I16(&'a [i16]),
    F32(&'a [f32]),
}

/// Whether the sink wants more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Receives the decoded audio.
pub trait PcmSink {
    /// Called once, before any samples.
    fn start(&mut self, info: &AudioInfo) -> Result<(), AudioError>;
    fn push(&mut self, pcm: Pcm<'_>) -> Result<Flow, AudioError>;
}

/// Where the audio comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    File(&'a Path),
    /// A file already opened (by a caller that checked where it lives), with
    /// its name's extension as a format hint.
    Handle {
        file: &'a File,
        extension: Option<&'a str>,
    },
    /// A whole upload in memory (its size is bounded by the caller).
    Bytes {
        data: &'a [u8],
        extension: Option<&'a str>,
    },
}

/// What one decode did.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub info: AudioInfo,
    /// Frames (samples per channel) decoded and pushed.
    pub frames: u64,
    /// Packets skipped as undecodable.
    pub skipped_packets: u64,
}

impl Decoded {
    /// The container's duration, or the decoded one when it has none.
    pub fn duration(&self) -> f64 {
        self.info
            .duration
            .unwrap_or(self.frames as f64 / f64::from(self.info.sample_rate.max(1)))
    }
}

fn codecs() -> &'static CodecRegistry {
    static REGISTRY: OnceLock<CodecRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut registry = CodecRegistry::new();
        symphonia::default::register_enabled_codecs(&mut registry);
        registry.register_audio_decoder::<symphonia_adapter_libopus::OpusDecoder>();
        registry
    })
}

/// Decodes `source` into `sink` until its end, the sink's `Stop`, an error or
/// `deadline`.
pub fn decode(
    source: Source<'_>,
    deadline: Option<Instant>,
    sink: &mut dyn PcmSink,
) -> Result<Decoded, AudioError> {
    match catch_unwind(AssertUnwindSafe(|| decode_inner(source, deadline, sink))) {
        Ok(result) => result,
        Err(panic) => Err(AudioError::DecoderPanic(panic_message(&*panic))),
    }
}

/// Packets skipped as undecodable, in all and in a row.
#[derive(Debug, Default)]
struct Skipped {
    total: u64,
    in_a_row: usize,
}

impl Skipped {
    /// Counts one; too many in a row make the stream corrupt.
    fn skip(&mut self, error: SymphoniaError) -> Result<(), AudioError> {
        self.total += 1;
        self.in_a_row += 1;
        if self.in_a_row >= MAX_ERRORS_IN_A_ROW {
            return Err(AudioError::Corrupt(error.to_string()));
        }
        Ok(())
    }
}

/// Runs one of the sink's calls, turning a panic in fpnode's own analysis
/// into `AnalysisPanic` (kept apart from the decoder's, which the outer
/// guard names `DecoderPanic`).
fn guarded<T>(call: impl FnOnce() -> Result<T, AudioError>) -> Result<T, AudioError> {
    catch_unwind(AssertUnwindSafe(call))
        .unwrap_or_else(|panic| Err(AudioError::AnalysisPanic(panic_message(&*panic))))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

fn decode_inner(
    source: Source<'_>,
    deadline: Option<Instant>,
    sink: &mut dyn PcmSink,
) -> Result<Decoded, AudioError> {
    let mut hint = Hint::new();
    let mut priming = None;
    let media: Box<dyn MediaSource> = match source {
        Source::File(path) => {
            let extension = path.extension().and_then(|e| e.to_str());
            let (file, p) = prepare_file(File::open(path)?, extension, &mut hint)?;
            priming = p;
            Box::new(file)
        }
        Source::Handle { file, extension } => {
            let (file, p) = prepare_file(file.try_clone()?, extension, &mut hint)?;
            priming = p;
            Box::new(file)
        }
        Source::Bytes { data, extension } => {
            if data.is_empty() {
                return Err(AudioError::Empty);
            }
            if let Some(ext) = extension {
                hint.with_extension(ext);
            }
            if data.get(4..8) == Some(b"ftyp") {
                priming = priming::read(&mut Cursor::new(data));
            }
            Box::new(Cursor::new(data.to_vec()))
        }
    };
    let stream = MediaSourceStream::new(media, MediaSourceStreamOptions::default());
    let mut reader = symphonia::default::get_probe()
        .probe(
            &hint,
            stream,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| match e {
            SymphoniaError::IoError(io) if io.kind() != std::io::ErrorKind::UnexpectedEof => {
                AudioError::Io(io)
            }
            _ => AudioError::UnknownFormat,
        })?;
    let format = reader.format_info().short_name;
    let track = reader
        .tracks()
        .iter()
        .find(|t| matches!(&t.codec_params, Some(CodecParameters::Audio(p)) if p.sample_rate.is_some()))
        .cloned()
        .ok_or(AudioError::NoAudioTrack)?;
    let Some(CodecParameters::Audio(params)) = &track.codec_params else {
        return Err(AudioError::NoAudioTrack);
    };
    let mut decoder = codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(|e| AudioError::UnsupportedCodec(e.to_string()))?;
    let codec = decoder.codec_info().short_name;
    let sample_rate = params.sample_rate.unwrap_or(0);
    let channels = params.channels.as_ref().map(|c| c.count()).unwrap_or(0);
    let mut info = AudioInfo {
        format,
        codec,
        sample_rate,
        channels,
        bits_per_sample: params
            .bits_per_sample
            .or_else(|| alac_bit_depth(codec, params))
            // ADPCM decodes to 16 bits (left-aligned in i32 here), S16 in
            // FFmpeg: swresample's integer path.
            .or_else(|| codec.starts_with("adpcm").then_some(16)),
        duration: None,
        path: SamplePath::Float,
    };
    // Encoder delay to drop, in frames (MP4 edit lists; see priming.rs).
    let priming = if format == "isomp4" { priming } else { None };
    let mut to_skip = priming.map_or(0, |p| p.frames_at(sample_rate));
    info.duration = duration(&track, format, sample_rate, to_skip);
    let mut started = false;
    let mut frames = 0u64;
    let mut errors = Skipped::default();
    let mut ints: Vec<i16> = Vec::new();
    let mut floats: Vec<f32> = Vec::new();
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(AudioError::Timeout);
        }
        let packet = match reader.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            // A truncated file ends where its data ends.
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(SymphoniaError::IoError(e)) => return Err(AudioError::Io(e)),
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => {
                errors.skip(e)?;
                continue;
            }
        };
        if packet.track_id != track.id {
            continue;
        }
        let buffer = match decoder.decode(&packet) {
            Ok(b) => b,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(e) => {
                errors.skip(e)?;
                continue;
            }
        };
        errors.in_a_row = 0;
        if buffer.frames() == 0 {
            continue;
        }
        if !started {
            // The decoded buffer is the truth about rate and layout.
            info.sample_rate = buffer.spec().rate();
            info.channels = buffer.spec().channels().count();
            if info.sample_rate == 0 || info.channels == 0 {
                return Err(AudioError::Corrupt("zero sample rate or channels".into()));
            }
            if info.sample_rate > MAX_SAMPLE_RATE || info.channels > MAX_CHANNELS {
                return Err(AudioError::Unsupported(format!(
                    "{} Hz, {} channels (at most {MAX_SAMPLE_RATE} Hz and {MAX_CHANNELS} channels)",
                    info.sample_rate, info.channels
                )));
            }
            info.path = sample_path(&buffer, info.bits_per_sample);
            guarded(|| sink.start(&info))?;
            started = true;
        }
        if buffer.spec().channels().count() != info.channels
            || buffer.spec().rate() != info.sample_rate
        {
            return Err(AudioError::Corrupt(
                "the stream changes its sample rate or channels".into(),
            ));
        }
        let skip = to_skip.min(buffer.frames() as u64);
        to_skip -= skip;
        if skip == buffer.frames() as u64 {
            continue;
        }
        frames += buffer.frames() as u64 - skip;
        let from = skip as usize * info.channels;
        let flow = match info.path {
            SamplePath::Int16 => {
                to_i16(&buffer, &mut ints);
                guarded(|| sink.push(Pcm::I16(&ints[from..])))?
            }
            SamplePath::Float => {
                buffer.copy_to_vec_interleaved(&mut floats);
                guarded(|| sink.push(Pcm::F32(&floats[from..])))?
            }
        };
        if flow == Flow::Stop {
            break;
        }
    }
    let skipped = errors.total;
    if !started {
        return Err(if skipped > 0 {
            AudioError::Corrupt(format!("none of {skipped} packets decoded"))
        } else {
            AudioError::NoAudio
        });
    }
    Ok(Decoded {
        info,
        frames,
        skipped_packets: skipped,
    })
}

/// Checks `file` is not empty, reads an MP4's priming (files starting with
/// `ftyp`), and rewinds it for the demuxer.
fn prepare_file(
    mut file: File,
    extension: Option<&str>,
    hint: &mut Hint,
) -> Result<(File, Option<priming::Priming>), AudioError> {
    if let Some(ext) = extension {
        hint.with_extension(ext);
    }
    if file.metadata()?.len() == 0 {
        return Err(AudioError::Empty);
    }
    let mut head = [0u8; 8];
    let priming = match file.read_exact(&mut head) {
        Ok(()) if &head[4..8] == b"ftyp" => priming::read(&mut file),
        _ => None,
    };
    file.seek(SeekFrom::Start(0))?;
    Ok((file, priming))
}

/// ALAC's bit depth, from its magic cookie: MP4 does not report it, and a
/// 16-bit ALAC track takes swresample's integer path in FFmpeg (S16P), so it
/// must here too.
fn alac_bit_depth(codec: &str, params: &AudioCodecParameters) -> Option<u32> {
    if codec != "alac" {
        return None;
    }
    let cookie = MagicCookie::read(params.extra_data.as_deref()?).ok()?;
    Some(u32::from(cookie.bit_depth))
}

/// The container's duration of `track`, in seconds.
///
/// As FFmpeg reports it (fpcalc prints it): an MP3's counts its encoder
/// delay and padding (whole MPEG frames), an MP4's starts after the edit
/// list's priming.
fn duration(track: &Track, format: &str, sample_rate: u32, priming: u64) -> Option<f64> {
    if let (Some(mut frames), true) = (track.num_frames, sample_rate > 0) {
        if format == "mp3" {
            frames += u64::from(track.delay.unwrap_or(0)) + u64::from(track.padding.unwrap_or(0));
        }
        return Some(frames.saturating_sub(priming) as f64 / f64::from(sample_rate));
    }
    let (tb, dur) = (track.time_base?, track.duration?);
    let seconds = dur.get() as f64 * f64::from(tb);
    Some((seconds - priming as f64 / f64::from(sample_rate.max(1))).max(0.0))
}

/// swresample works in `S16P` for integer input of at most 16 bits.
fn sample_path(buffer: &GenericAudioBufferRef<'_>, bits: Option<u32>) -> SamplePath {
    match buffer {
        GenericAudioBufferRef::U8(_)
        | GenericAudioBufferRef::S8(_)
        | GenericAudioBufferRef::U16(_)
        | GenericAudioBufferRef::S16(_) => SamplePath::Int16,
        GenericAudioBufferRef::S32(_) | GenericAudioBufferRef::S24(_)
            if bits.is_some_and(|b| b <= 16) =>
        {
            SamplePath::Int16
        }
        _ => SamplePath::Float,
    }
}

/// Integer samples of at most 16 bits as i16, as swresample converts them:
/// unsigned re-centred (`(u8 - 128) << 8`), wider containers (FLAC and ALAC
/// decode into left-aligned i32) shifted down 16 bits; symphonia's own
/// conversions do exactly that, without dither.
fn to_i16(buffer: &GenericAudioBufferRef<'_>, out: &mut Vec<i16>) {
    buffer.copy_to_vec_interleaved(out);
}
