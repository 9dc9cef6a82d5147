//! `cargo run -p fpnode-audio --example fpcalc -- FILE [LENGTH]`: prints the
//! raw fingerprint as `fpcalc -raw` does (for comparisons by hand).
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: fpcalc FILE [LENGTH]");
        std::process::exit(2);
    };
    let max_seconds = args.get(2).and_then(|s| s.parse().ok()).or(Some(120.0));
    let options = fpnode_audio::FingerprintOptions {
        max_seconds,
        deadline: None,
    };
    match fpnode_audio::fingerprint(fpnode_audio::decode::Source::File(path.as_ref()), &options) {
        Ok(fp) => {
            println!("DURATION={}", fp.duration as u64);
            let items: Vec<String> = fp.items.iter().map(|i| i.to_string()).collect();
            println!("FINGERPRINT={}", items.join(","));
        }
        Err(e) => {
            eprintln!("ERROR: {e}");
            std::process::exit(1);
        }
    }
}
