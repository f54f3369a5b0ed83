//! How a model's tensors are named and ordered in GGUF, both ways.
//!
//! llama.cpp names tensors `blk.N.attn_q.weight` where Hugging Face says
//! `model.layers.N.self_attn.q_proj.weight`, and its converter reorders the rows of the Llama
//! Q and K projections for its interleaved RoPE (`permute` in `convert_hf_to_gguf.py`): within
//! each head, rows `[2, d/2]` (Hugging Face, rotate-half RoPE) are stored as `[d/2, 2]`.
//! Qwen2 keeps Hugging Face order. [`super::load`] reads with [`hf_name`] and [`unpermute`];
//! the GGUF export writes with [`gguf_name`] and [`permute`].

/// (Hugging Face module path under `model.layers.N.`, llama.cpp module name).
const BLOCK: [(&str, &str); 9] = [
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// (Hugging Face name, llama.cpp name) of the tensors outside the blocks.
const GLOBAL: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// llama.cpp tensor name -> Hugging Face name; `None` for tensors with no Hugging Face twin
/// (`rope_freqs.weight`).
pub fn hf_name(gguf: &str) -> Option<String> {
    if let Some((hf, _)) = GLOBAL.iter().find(|(_, g)| *g == gguf) {
        return Some(hf.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (module, suffix) = tail.rsplit_once('.')?;
    let (hf, _) = BLOCK.iter().find(|(_, g)| *g == module)?;
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Hugging Face tensor name -> llama.cpp name; `None` for names outside the decoder.
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some((_, g)) = GLOBAL.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (module, suffix) = tail.rsplit_once('.')?;
    let (_, g) = BLOCK.iter().find(|(h, _)| *h == module)?;
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// Moves whole rows of a `[rows, cols]` matrix: row `r` of the output is row `from(r)` of `w`.
fn reorder_rows(w: &[f32], rows: usize, cols: usize, from: impl Fn(usize) -> usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for dst in 0..rows {
        let src = from(dst);
        out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
    }
    out
}

/// Row `r` of head `h` in Hugging Face order, as (head, half, index within half).
fn split(r: usize, hd: usize) -> (usize, usize, usize) {
    let half = hd / 2;
    (r / hd, (r % hd) / half, r % half)
}

/// Hugging Face order -> llama.cpp order, as the converter does:
/// `w.reshape(heads, 2, d/2, cols).swapaxes(1, 2)`.
pub fn permute(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    // Output row (h, i, j) in [heads, d/2, 2] order comes from input row (h, j, i).
    reorder_rows(w, rows, cols, |dst| {
        let (h, i, j) = (dst / hd, (dst % hd) / 2, dst % 2);
        h * hd + j * (hd / 2) + i
    })
}

/// llama.cpp order -> Hugging Face order; the inverse of [`permute`].
pub fn unpermute(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    reorder_rows(w, rows, cols, |dst| {
        let (h, j, i) = split(dst, hd);
        h * hd + i * 2 + j
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_the_converters_permutation() {
        // The converter: w.reshape(heads, 2, d/2, cols).swapaxes(1, 2), written out by hand.
        let (heads, hd, cols) = (2, 4, 3);
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    let src = h * hd + j * (hd / 2) + i;
                    let dst = h * hd + i * 2 + j;
                    gguf[dst * cols..(dst + 1) * cols].copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(permute(&hf, rows, cols, heads), gguf);
        assert_eq!(unpermute(&gguf, rows, cols, heads), hf);
    }

    #[test]
    fn names_map_both_ways() {
        assert_eq!(hf_name("blk.3.attn_q.weight").unwrap(), "model.layers.3.self_attn.q_proj.weight");
        assert_eq!(hf_name("blk.0.attn_k.bias").unwrap(), "model.layers.0.self_attn.k_proj.bias");
        assert_eq!(hf_name("token_embd.weight").unwrap(), "model.embed_tokens.weight");
        assert_eq!(hf_name("rope_freqs.weight"), None);
        for g in ["token_embd.weight", "output.weight", "output_norm.weight", "blk.11.ffn_down.weight", "blk.2.attn_v.bias"] {
            assert_eq!(gguf_name(&hf_name(g).unwrap()).unwrap(), g);
        }
        assert_eq!(gguf_name("model.rotary_emb.inv_freq"), None);
    }
}
