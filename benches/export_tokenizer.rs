//! Benchmark helper (not a benchmark): exports the tokenizer `pipe` builds from a GGUF model as a
//! Hugging Face `tokenizer.json`, so the Python baseline of bench/run.sh uses exactly the same
//! tokenizer as the `tokenize` node.
//!
//! usage: cargo bench --bench export_tokenizer -- MODEL.gguf OUT/tokenizer.json
//! (run without paths, e.g. by a plain `cargo bench`, it prints the usage and exits 0).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench` to harness = false targets; ignore flags.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let [gguf, out] = args.as_slice() else {
        eprintln!("usage: cargo bench --bench export_tokenizer -- MODEL.gguf OUT/tokenizer.json");
        return Ok(());
    };
    let file = pipe::gguf::GgufFile::open(&PathBuf::from(gguf))?;
    let tok = pipe::tokenizer::gguf::from_gguf(&file)?;
    let out = PathBuf::from(out);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, tok.to_tokenizer_json())?;
    let eos = tok.eos_id.and_then(|id| tok.tokenizer.id_to_token(id).map(|t| (id, t)));
    eprintln!("wrote {} (pre-tokenizer {}, eos {:?})", out.display(), tok.pre, eos);
    Ok(())
}
