//! The row order of the Q and K projections in GGUF, both ways.
//!
//! llama.cpp's converter reorders the rows of the Llama Q and K projections for its interleaved
//! RoPE (`permute` in `convert_hf_to_gguf.py`): within each head, rows `[2, d/2]` (Hugging Face,
//! rotate-half RoPE) are stored as `[d/2, 2]`. Which architectures it does this for, and to
//! which tensors, is [`super::arch`]'s ([`TensorSpec::gguf_permute_heads`]); [`super::load`]
//! undoes it with [`unpermute`], the GGUF export redoes it with [`permute`].
//!
//! [`TensorSpec::gguf_permute_heads`]: super::arch::TensorSpec::gguf_permute_heads

/// Moves whole rows of a `[rows, cols]` matrix: row `r` of the output is row `from(r)` of `w`.
/// Rows of anything: values, or the bytes of a block-quantized row (`cols` = bytes per row).
fn reorder_rows<T: Copy + Default>(w: &[T], rows: usize, cols: usize, from: impl Fn(usize) -> usize) -> Vec<T> {
    let mut out = vec![T::default(); w.len()];
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
pub fn permute<T: Copy + Default>(w: &[T], rows: usize, cols: usize, heads: usize) -> Vec<T> {
    let hd = rows / heads;
    // Output row (h, i, j) in [heads, d/2, 2] order comes from input row (h, j, i).
    reorder_rows(w, rows, cols, |dst| {
        let (h, i, j) = (dst / hd, (dst % hd) / 2, dst % 2);
        h * hd + j * (hd / 2) + i
    })
}

/// llama.cpp order -> Hugging Face order; the inverse of [`permute`].
pub fn unpermute<T: Copy + Default>(w: &[T], rows: usize, cols: usize, heads: usize) -> Vec<T> {
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
}
