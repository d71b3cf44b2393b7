//! Encodes or applies one patch, for measuring (the delta benchmark runs it under a timer):
//!
//! ```text
//! delta encode <algorithm|smallest> BASE TARGET PATCH   (prints the algorithm used)
//! delta decode <algorithm> BASE PATCH OUT
//! delta decode-file zstd-window BASE PATCH OUT   (an image patch: the base read from its file)
//! ```

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::process::ExitCode;

use qx_delta::{
    decode, decode_file, encode, smallest, DeltaAlgorithm, ALGORITHMS, IMAGE_ALGORITHM,
};

fn algorithm(name: &str) -> Option<DeltaAlgorithm> {
    let image = std::iter::once(IMAGE_ALGORITHM);
    ALGORITHMS
        .iter()
        .copied()
        .chain(image)
        .find(|a| a.as_str() == name)
}

fn run(args: &[String]) -> Result<String, String> {
    let read = |p: &String| std::fs::read(p).map_err(|e| format!("{p}: {e}"));
    match args {
        [verb, algo, base, target, patch] if verb == "encode" => {
            let (base, target) = (read(base)?, read(target)?);
            let (a, bytes) = if algo == "smallest" {
                smallest(ALGORITHMS, &base, &target)
                    .map_err(|e| e.to_string())?
                    .ok_or("no algorithm")?
            } else {
                let a = algorithm(algo).ok_or("unknown algorithm")?;
                (a, encode(a, &base, &target).map_err(|e| e.to_string())?)
            };
            std::fs::write(patch, bytes).map_err(|e| e.to_string())?;
            Ok(a.as_str().to_owned())
        }
        [verb, algo, base, patch, out] if verb == "decode" => {
            let a = algorithm(algo).ok_or("unknown algorithm")?;
            let base = read(base)?;
            let patch = File::open(patch).map_err(|e| e.to_string())?;
            let out = BufWriter::new(File::create(out).map_err(|e| e.to_string())?);
            let n = decode(a, &base, patch, out, u32::MAX.into()).map_err(|e| e.to_string())?;
            Ok(n.to_string())
        }
        [verb, algo, base, patch, out] if verb == "decode-file" => {
            let a = algorithm(algo).ok_or("unknown algorithm")?;
            let open = |p: &String| File::open(p).map_err(|e| format!("{p}: {e}"));
            let out = BufWriter::new(File::create(out).map_err(|e| e.to_string())?);
            let n = decode_file(a, &open(base)?, BufReader::new(open(patch)?), out, u64::MAX)
                .map_err(|e| e.to_string())?;
            Ok(n.to_string())
        }
        _ => Err(
            "usage: delta encode <algorithm|smallest> BASE TARGET PATCH | \
                  delta decode[-file] <algorithm> BASE PATCH OUT"
                .to_owned(),
        ),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("delta: {e}");
            ExitCode::FAILURE
        }
    }
}
