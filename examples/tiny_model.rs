//! Writes a random tiny Hugging Face folder of an architecture around a tokenizer, as the tests do.
//!
//!     cargo run --example tiny_model -- OUT_DIR TOKENIZER_DIR [MODEL_TYPE] [HIDDEN]
//!
//! `MODEL_TYPE` is config.json's name of the architecture (default `llama`).
//!
//! `HIDDEN` (default 32) sets the hidden size; the head dim is a quarter of it, so 256 gives
//! head dim 64, which the CUDA attention kernels take (smaller ones run the generic path).

use std::collections::HashMap;

use candle_core::Device;
use pipe::model::config::{Arch, Config};
use pipe::model::llama::Model;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: tiny_model OUT_DIR TOKENIZER_DIR [{}] [HIDDEN]", Arch::hf_model_types().replace(", ", "|"));
        std::process::exit(2);
    }
    let (out, tok_dir) = (std::path::Path::new(&args[1]), std::path::Path::new(&args[2]));
    let Some(arch) = Arch::from_hf_model_type(args.get(3).map(String::as_str)) else {
        eprintln!("unknown architecture `{}` (one of {})", args[3], Arch::hf_model_types());
        std::process::exit(2);
    };
    let tok = pipe::tokenizer::load::load(&tok_dir.join("tokenizer.json")).expect("tokenizer");
    let hidden: usize = args.get(4).map(|h| h.parse().expect("HIDDEN: a number")).unwrap_or(32);
    let cfg = Config::tiny(arch, tok.tokenizer.get_vocab_size(true), hidden);
    let model = Model::random_with_std(cfg.clone(), 1234, 0.2, &Device::Cpu).expect("model");
    std::fs::create_dir_all(out).expect("mkdir");
    let tensors: HashMap<String, candle_core::Tensor> = model.hf_tensors().into_iter().collect();
    candle_core::safetensors::save(&tensors, out.join("model.safetensors")).expect("save");
    std::fs::write(out.join("config.json"), cfg.to_hf_json(None, tok.eos.as_ref().map(|e| e.0), "float32").to_string())
        .expect("config");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok_dir.join(f), out.join(f)).expect("copy tokenizer");
    }
}
