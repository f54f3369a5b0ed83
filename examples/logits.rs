//! Prints pipe's logits for a model and token ids as JSON, for comparing with other tools
//! (scripts/peft_check.py compares them with transformers and peft).
//!
//!     cargo run --release --example logits -- MODEL IDS(comma-separated) > out.json

use candle_core::Device;
use pipe::model::llama::KvCache;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, ids] = args.as_slice() else {
        eprintln!("usage: logits MODEL 1,2,3");
        std::process::exit(2);
    };
    let ids: Vec<u32> = ids.split(',').map(|x| x.trim().parse().expect("token id")).collect();
    let m = pipe::model::load::load(std::path::Path::new(model), &Device::Cpu).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let mut cache = KvCache::new(m.cfg.num_layers);
    let logits = m.forward_infer(&ids, &mut cache).expect("forward");
    let rows: Vec<Vec<f32>> = logits.to_vec2().expect("2-d logits");
    println!("{}", serde_json::json!({ "ids": ids, "logits": rows }));
}
