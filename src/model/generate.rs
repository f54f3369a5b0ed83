//! Text generation with the KV cache: greedy decoding or seeded temperature / top-p sampling.

use candle_core::Result;
use rand::{Rng, SeedableRng};

use super::ggml_cpu::ActRounding;
use super::llama::{KvCache, Model};

/// Generates a continuation of `prompt_ids`: greedy when `temperature` is 0, else seeded
/// temperature / top-p sampling; stops before any token in `stop` or after `max_new` tokens.
pub fn generate(
    model: &Model,
    prompt_ids: &[u32],
    stop: &[u32],
    max_new: usize,
    temperature: f64,
    top_p: f64,
    seed: u64,
) -> Result<Vec<u32>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    decode(
        model,
        prompt_ids,
        stop,
        max_new,
        |v| if temperature <= 0.0 { argmax(v) } else { sample(v, temperature, top_p, &mut rng) },
    )
}

/// The decoding loop: `pick` chooses each next token from the last position's logits.
pub fn decode(
    model: &Model,
    prompt_ids: &[u32],
    stop: &[u32],
    max_new: usize,
    pick: impl FnMut(&[f32]) -> u32,
) -> Result<Vec<u32>> {
    decode_with(model, None, prompt_ids, stop, max_new, pick)
}

/// [`decode`] with the matmuls `acts` names fed Q8_0 activations, as llama.cpp's CPU backend
/// computes a Q8_0 file (see [`super::ggml_cpu`]).
pub fn decode_with(
    model: &Model,
    acts: Option<&ActRounding>,
    prompt_ids: &[u32],
    stop: &[u32],
    max_new: usize,
    mut pick: impl FnMut(&[f32]) -> u32,
) -> Result<Vec<u32>> {
    let mut cache = KvCache::new(model.cfg.num_layers);
    let mut logits = model.forward_infer_with(prompt_ids, &mut cache, acts)?;
    let mut out = Vec::new();
    for _ in 0..max_new {
        let last = logits.get(logits.dim(0)? - 1)?;
        let v: Vec<f32> = last.to_vec1()?;
        let next = pick(&v);
        if stop.contains(&next) {
            break;
        }
        out.push(next);
        logits = model.forward_infer_with(&[next], &mut cache, acts)?;
    }
    Ok(out)
}

/// The index of the largest value (the first one on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(v: &[f32], temperature: f64, top_p: f64, rng: &mut impl Rng) -> u32 {
    let max = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<(usize, f64)> = v.iter().enumerate().map(|(i, x)| (i, (f64::from(x - max) / temperature).exp())).collect();
    let z: f64 = p.iter().map(|x| x.1).sum();
    p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for (i, w) in p {
        kept.push((i, w / z));
        mass += w / z;
        if mass >= top_p {
            break;
        }
    }
    let r: f64 = rng.random::<f64>() * mass;
    let mut acc = 0.0;
    for (i, w) in &kept {
        acc += w;
        if acc >= r {
            return *i as u32;
        }
    }
    kept.last().map(|x| x.0 as u32).unwrap_or(0)
}
