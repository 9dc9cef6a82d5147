//! Offline commands: `fpnode import` (a stream of fingerprints into a new index
//! through the bulk builder) and `fpnode inspect` (what a data directory holds).
//! Both work on a data directory no node is serving: the index lock makes sure.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use fpnode_segments::bulk::{BulkBuilder, BulkOptions};
use fpnode_segments::catalog::{Catalog, valid_index_name};
use fpnode_segments::index::{IndexOptions, WAL_DIR};
use fpnode_segments::{Generation, Index, Position};

use crate::cli::{ExportArgs, ImportArgs, InspectArgs, RestoreArgs};

/// What [`prepare`] hands back: the catalog, the input reader and the build directory.
type Prepared = (Catalog, BufReader<Box<dyn Read>>, PathBuf);

/// Opens the data directory, checks that `index` is a valid name not present
/// there, opens the input (a file, or stdin for `-`/none) and prepares an empty
/// temporary directory `indexes/.<kind>-<index>` to build the index in.
fn prepare(
    data_dir: &Path,
    index: &str,
    input: Option<&str>,
    kind: &str,
) -> anyhow::Result<Prepared> {
    let catalog = Catalog::open(data_dir, Default::default())
        .with_context(|| format!("cannot open the data directory {}", data_dir.display()))?;
    let tmp = catalog.build_dir(kind, index)?;
    let input: Box<dyn Read> = match input {
        None | Some("-") => Box::new(std::io::stdin().lock()),
        Some(path) => Box::new(
            std::fs::File::open(path).with_context(|| format!("cannot open input {path}"))?,
        ),
    };
    Ok((catalog, BufReader::with_capacity(1 << 20, input), tmp))
}

pub fn import(args: ImportArgs) -> anyhow::Result<()> {
    let (catalog, mut reader, tmp) =
        prepare(&args.dir, &args.index, args.input.as_deref(), "import")?;
    let generation = catalog
        .reserve_generation(&args.index)
        .with_context(|| format!("cannot record the generation in {}", args.dir.display()))?;
    let opts = BulkOptions {
        run_postings: args.run_postings,
        runs_per_segment: args.runs_per_segment,
        fs: catalog.fs().clone(),
    };
    let mut builder = BulkBuilder::new(&tmp, Generation(generation), Position(args.version), opts)?;
    let started = Instant::now();
    crate::records::for_each(&mut reader, args.format, usize::MAX, |_, n, id, hashes| {
        builder
            .add(id, &hashes)
            .map_err(|e| crate::records::RecordError::Stopped(e.to_string()))?;
        if n.is_multiple_of(1_000_000) {
            eprintln!("  {n} fingerprints read in {:.0?}", started.elapsed());
        }
        Ok(())
    })?;
    let report = builder.finish()?;
    catalog
        .install(&args.index, generation, &tmp)
        .context("moving the index into place")?;
    println!(
        "imported {} fingerprints ({} postings) into index {} generation {} version {} in {:.1} s: {} bytes, {:.3} bytes/posting, {} temporary runs",
        report.fingerprints,
        report.postings,
        args.index,
        generation,
        args.version,
        report.elapsed.as_secs_f64(),
        report.segment_bytes,
        report.segment_bytes as f64 / report.postings.max(1) as f64,
        report.runs
    );
    Ok(())
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let (catalog, input, tmp) = prepare(&args.dir, &args.index, args.input.as_deref(), "restore")?;
    let started = Instant::now();
    let header = match fpnode_segments::archive::restore(input, &tmp, catalog.fs()) {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e).context("restoring the archive");
        }
    };
    let generation = header.generation.0;
    catalog
        .record_generation(&args.index, generation)
        .with_context(|| format!("cannot record the generation in {}", args.dir.display()))?;
    catalog
        .install(&args.index, generation, &tmp)
        .context("moving the index into place")?;
    println!(
        "restored index {} generation {} version {} ({} segments) in {:.1} s",
        args.index,
        generation,
        header.version,
        header.segments.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    use std::io::Write;
    if !valid_index_name(&args.index) {
        bail!(
            "invalid index name {:?}: use [A-Za-z0-9_-]{{1,255}}",
            args.index
        );
    }
    let catalog = Catalog::open(&args.dir, Default::default())
        .with_context(|| format!("cannot open the data directory {}", args.dir.display()))?;
    let Some((_, dir)) = catalog
        .current_generation(&args.index)
        .with_context(|| format!("no index {} in {}", args.index, args.dir.display()))?
    else {
        bail!("no index {} in {}", args.index, args.dir.display());
    };
    let index = Index::open(&dir, IndexOptions::default())
        .with_context(|| format!("cannot open index {}", args.index))?;
    let snapshot = index.snapshot();
    let ids: Vec<u32> = snapshot.live_ids().iter().collect();
    let out: Box<dyn Write> = match args.output.as_deref() {
        None | Some("-") => Box::new(std::io::stdout().lock()),
        Some(path) => {
            Box::new(std::fs::File::create(path).with_context(|| format!("cannot create {path}"))?)
        }
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    // In passes of id ranges: one range's fingerprints in memory at a time.
    for pass in ids.chunks(crate::records::EXPORT_PASS) {
        let (Some(&lo), Some(&hi)) = (pass.first(), pass.last()) else {
            continue;
        };
        let fingerprints = snapshot
            .dump_range(lo..=hi)
            .with_context(|| format!("reading index {}", args.index))?;
        for (id, hashes) in &fingerprints {
            crate::records::write(&mut out, args.format, *id, hashes)?;
        }
    }
    out.flush().context("writing the export")?;
    eprintln!("exported {} fingerprints of {}", ids.len(), args.index);
    Ok(())
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    if !args
        .dir
        .join(fpnode_segments::catalog::INDEXES_DIR)
        .is_dir()
    {
        bail!("no indexes in {}", args.dir.display());
    }
    let catalog = Catalog::open(&args.dir, Default::default())
        .with_context(|| format!("cannot open the data directory {}", args.dir.display()))?;
    let mut failed = Vec::new();
    for name in catalog.names()? {
        let Some((_, dir)) = catalog.current_generation(&name)? else {
            continue;
        };
        // One damaged index is reported, and the others are still inspected.
        if let Err(e) = inspect_index(&name, &dir, args.verify) {
            println!("index {name}\n  FAILED: {e:#}");
            failed.push(format!("{name}: {e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} index(es) failed to open or verify:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
    Ok(())
}

fn inspect_index(name: &str, dir: &Path, verify: bool) -> anyhow::Result<()> {
    let index = Index::open(dir, IndexOptions::default())
        .with_context(|| format!("cannot open index {name}"))?;
    let s = index.stats();
    println!("index {name}");
    println!("  generation        {}", s.generation);
    println!("  version           {}", s.applied);
    println!("  checkpoint        {}", s.checkpoint_position);
    println!("  fingerprints      {}", s.num_docs);
    println!(
        "  memory segments   {} ({} postings, replayed from the WAL)",
        s.memory_segments, s.memory_postings
    );
    println!("  WAL bytes         {}", dir_bytes(&dir.join(WAL_DIR)));
    println!(
        "  file segments     {} ({} bytes)",
        s.file_segments, s.file_bytes
    );
    let snap = index.snapshot();
    for v in &snap.segments {
        let seg = &v.segment;
        if let Some(f) = seg.as_file() {
            if verify {
                f.verify_all()
                    .with_context(|| format!("verifying {}", f.path().display()))?;
            }
            println!(
                "    {}  versions {}..={}  {} postings  {} bytes  {:.3} B/posting  {} ids  {} tombstones{}",
                seg.info.id,
                seg.info.min_position,
                seg.info.max_position,
                seg.info.num_postings,
                seg.size_bytes(),
                seg.size_bytes() as f64 / seg.info.num_postings.max(1) as f64,
                seg.docs.defined.len(),
                seg.docs.deleted.len(),
                if verify { "  verified" } else { "" }
            );
        }
    }
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}
