//! `cargo run -p fpnode-audio --example decode -- FILE > pcm`: writes the
//! decoded interleaved samples to stdout (s16le on the integer path, f32le
//! otherwise) and the stream's description to stderr, to compare a decode
//! with `ffmpeg -i FILE -f s16le -` by hand.
use std::io::Write;

use fpnode_audio::AudioError;
use fpnode_audio::decode::{AudioInfo, Flow, Pcm, PcmSink, Source, decode};

struct Dump(std::io::BufWriter<std::io::Stdout>);

impl PcmSink for Dump {
    fn start(&mut self, info: &AudioInfo) -> Result<(), AudioError> {
        eprintln!("{info:?}");
        Ok(())
    }

    fn push(&mut self, pcm: Pcm<'_>) -> Result<Flow, AudioError> {
        match pcm {
            Pcm::I16(s) => s
                .iter()
                .try_for_each(|x| self.0.write_all(&x.to_le_bytes()))?,
            Pcm::F32(s) => s
                .iter()
                .try_for_each(|x| self.0.write_all(&x.to_le_bytes()))?,
        }
        Ok(Flow::Continue)
    }
}

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: decode FILE > PCM");
        std::process::exit(2);
    };
    let mut sink = Dump(std::io::BufWriter::new(std::io::stdout()));
    match decode(Source::File(path.as_ref()), None, &mut sink) {
        Ok(done) => eprintln!(
            "{} frames, {} packets skipped",
            done.frames, done.skipped_packets
        ),
        Err(e) => {
            eprintln!("ERROR: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = sink.0.flush() {
        eprintln!("ERROR: {e}");
        std::process::exit(1);
    }
}
