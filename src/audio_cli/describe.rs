//! `fpnode describe FILE...`: the 25-D descriptor of each file as one JSON
//! line, `{"file", "descriptor": {25 fields}, "metadata": {...}}`: the
//! fields and metadata `POST /fingerprint` answers (docs/audio.md, "The
//! descriptor").

use std::process::ExitCode;

use fpnode_audio::decode::Source;
use fpnode_audio::descriptor::{DescribeOptions, describe};

use crate::cli::DescribeArgs;

pub fn run(args: &DescribeArgs) -> ExitCode {
    let options = DescribeOptions {
        max_seconds: args.length.filter(|s| *s > 0.0),
        deadline: None,
    };
    super::run_files(
        &args.files,
        args.jobs,
        |path| describe(Source::File(path), &options),
        |path, d, _| {
            let line = serde_json::json!({
                "file": path.display().to_string(),
                "descriptor": d.descriptor,
                "metadata": {
                    "duration_sec": d.duration,
                    "sample_rate": d.info.sample_rate,
                    "channels": d.info.channels,
                    "format": d.info.format,
                    "codec": d.info.codec,
                },
            });
            format!("{line}\n")
        },
    )
}
