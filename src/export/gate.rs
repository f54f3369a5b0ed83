//! The verification gate: an exported GGUF is checked before anyone serves it.
//!
//! | check | passes when |
//! |---|---|
//! | `metadata` | every key/value reads back equal to what was written |
//! | `tensors` | the file loads with pipe's own loader (names, Q/K order, shapes, config) and every tensor is within its type's error bound of the source (relative RMS error, [`error_bound`]) |
//! | `tokenizer` | the tokenizer built from the file encodes the samples to the training tokenizer's ids |
//! | `llama.cpp tokenizer` | llama.cpp's `llama-tokenize` on the file gives the same ids |
//! | `llama.cpp greedy` | F32/F16/BF16/Q8_0: `llama-simple`'s greedy continuation of each prompt equals pipe's on the same file for the first N tokens, or the two part only at a near-tie (pipe's top-2 logit margin below `tie_margin` where they part; reported). For Q8_0 weights pipe rounds the activations to Q8_0 before those matmuls, as llama.cpp's CPU backend does; the unquantized source's agreement is reported for information |
//! | `llama.cpp perplexity` | quantized below 8 bits: perplexity on the held-out text within a stated fraction of an F16 export's |
//!
//! The llama.cpp checks run when the tools are found (see [`super::llamacpp`]) and are listed as
//! skipped otherwise.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::llamacpp::LlamaCpp;
use super::Written;
use crate::gguf::ftype::FileType;
use crate::gguf::quant::GgmlKind;
use crate::gguf::GgufFile;
use crate::model::generate::{argmax, decode_with};
use crate::model::ggml_cpu::ActRounding;
use crate::model::llama::Model;
use crate::model::lora::Module;
use crate::tokenizer::fast::token_bytes;

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The check's name (table above).
    pub name: &'static str,
    /// `pass`, `fail` or `skipped`.
    pub status: &'static str,
    /// What was compared and what came out.
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, ok: bool, detail: String) -> Check {
        Check { name, status: if ok { "pass" } else { "fail" }, detail }
    }
    fn skipped(name: &'static str, why: impl Into<String>) -> Check {
        Check { name, status: "skipped", detail: why.into() }
    }
    /// True unless the check failed.
    pub fn ok(&self) -> bool {
        self.status != "fail"
    }
}

/// The largest relative RMS error (`rms(dequantized - source) / rms(source)`) a tensor of this
/// type may have. The bounds sit about twice above what the default model's tensors measure,
/// so a wrong block layout, scale or row order fails while honest rounding passes.
pub fn error_bound(kind: GgmlKind) -> f64 {
    match kind {
        GgmlKind::F32 => 0.0,
        GgmlKind::F16 => 1e-3,
        GgmlKind::BF16 => 8e-3,
        GgmlKind::Q8_0 => 1.5e-2,
        GgmlKind::Q6_K => 4e-2,
        GgmlKind::Q5_0 | GgmlKind::Q5_1 | GgmlKind::Q5_K => 8e-2,
        GgmlKind::Q4_0 | GgmlKind::Q4_1 | GgmlKind::Q4_K => 1.6e-1,
    }
}

/// Everything the gate compares the file against.
pub struct Gate<'a> {
    /// The model that was exported.
    pub source: &'a Model,
    /// The training tokenizer.
    pub tokenizer: &'a tokenizers::Tokenizer,
    /// The written file and what went into it.
    pub gguf: &'a Path,
    /// What [`super::write_gguf`] reported.
    pub written: &'a Written,
    /// The file type written.
    pub file_type: FileType,
    /// Texts the two tokenizers must agree on.
    pub samples: Vec<String>,
    /// Prompts, already rendered in the chat template, for the greedy check.
    pub prompts: Vec<String>,
    /// Tokens the greedy check stops at (end of generation).
    pub stop: Vec<u32>,
    /// Tokens compared per prompt.
    pub greedy_tokens: usize,
    /// A greedy continuation may part from llama.cpp's only where pipe's top-2 logit margin is
    /// below this (a near-tie that rounding inside llama.cpp's matmuls can flip).
    pub tie_margin: f32,
    /// Held-out text for the perplexity check, and an F16 export of the same model to compare with.
    pub perplexity: Option<(PathBuf, PathBuf)>,
    /// Allowed perplexity increase over F16, as a fraction.
    pub ppl_tolerance: f64,
    /// llama.cpp, when found.
    pub llama: Option<LlamaCpp>,
    /// A scratch folder.
    pub scratch: PathBuf,
}

impl Gate<'_> {
    /// Runs every check; the caller fails the export when any check fails.
    pub fn run(&self, mut progress: impl FnMut(&Check)) -> Vec<Check> {
        let mut out = Vec::new();
        let mut push = |c: Check| {
            progress(&c);
            out.push(c);
        };
        let file = match GgufFile::open(self.gguf) {
            Ok(f) => f,
            Err(e) => {
                push(Check::new("metadata", false, format!("the file does not read back: {e}")));
                return out;
            }
        };
        push(self.metadata(&file));
        let loaded = match crate::model::load::load(self.gguf, &candle_core::Device::Cpu) {
            Ok(m) => m,
            Err(e) => {
                push(Check::new("tensors", false, format!("pipe's loader rejects the file: {e}")));
                return out;
            }
        };
        push(self.tensors(&file, &loaded));
        push(self.tokenizer(&file));
        match &self.llama {
            None => {
                push(Check::skipped("llama.cpp", format!("llama.cpp not found in {}", super::llamacpp::search_description())))
            }
            Some(l) => {
                push(self.llama_tokenizer(l));
                push(self.llama_greedy(l, &file, &loaded));
                push(self.llama_perplexity(l));
            }
        }
        out
    }

    fn metadata(&self, file: &GgufFile) -> Check {
        let want = &self.written.metadata;
        if file.metadata.len() != want.len() {
            return Check::new("metadata", false, format!("{} keys read back, {} written", file.metadata.len(), want.len()));
        }
        for ((k1, v1), (k2, v2)) in file.metadata.iter().zip(want) {
            if k1 != k2 || v1 != v2 {
                return Check::new("metadata", false, format!("key `{k2}` reads back as `{k1}` with a different value"));
            }
        }
        Check::new("metadata", true, format!("{} keys read back equal", want.len()))
    }

    fn tensors(&self, file: &GgufFile, loaded: &Model) -> Check {
        const NAME: &str = "tensors";
        // GGUF stores the float hyper-parameters as f32, and Llama 3 RoPE scaling as the
        // `rope_freqs.weight` tensor rather than as config.
        let stored = |c: &crate::model::config::Config| crate::model::config::Config {
            rms_norm_eps: f64::from(c.rms_norm_eps as f32),
            rope_theta: f64::from(c.rope_theta as f32),
            rope_scaling: None,
            ..c.clone()
        };
        if stored(&loaded.cfg) != stored(&self.source.cfg) {
            return Check::new(NAME, false, format!("config reads back as {:?}, source is {:?}", loaded.cfg, self.source.cfg));
        }
        let (a, b) = (self.source.named_tensors(), loaded.named_tensors());
        if a.len() != b.len() {
            return Check::new(NAME, false, format!("{} tensors read back, the source has {}", b.len(), a.len()));
        }
        let mut worst = (0f64, String::new());
        for ((spec, src), (spec2, got)) in a.iter().zip(&b) {
            let (name, name2) = (&spec.hf, &spec2.hf);
            let fail = |m: String| Check::new(NAME, false, format!("`{name}`: {m}"));
            if name != name2 || src.dims() != got.dims() {
                return fail(format!("reads back as `{name2}` {:?}, source {:?}", got.dims(), src.dims()));
            }
            let kind = file.tensor(&spec.gguf).map(|t| t.ggml_type.id()).and_then(GgmlKind::from_id).unwrap_or(GgmlKind::F32);
            let (x, y): (Vec<f32>, Vec<f32>) = match (flat(src), flat(got)) {
                (Ok(x), Ok(y)) => (x, y),
                (Err(e), _) | (_, Err(e)) => return fail(e.to_string()),
            };
            let err = rel_rms(&x, &y);
            if err > error_bound(kind) || err.is_nan() {
                return fail(format!("relative RMS error {err:.3e} exceeds the {} bound {:.1e}", kind.name(), error_bound(kind)));
            }
            if err / error_bound(kind).max(f64::MIN_POSITIVE) > worst.0 {
                worst = (err / error_bound(kind).max(f64::MIN_POSITIVE), format!("{name} ({}: {err:.2e})", kind.name()));
            }
        }
        let worst = if worst.1.is_empty() { "all exact".to_string() } else { format!("closest to its bound: {}", worst.1) };
        Check::new(NAME, true, format!("{} tensors load with pipe's loader within their type's bound; {worst}", a.len()))
    }

    fn tokenizer(&self, file: &GgufFile) -> Check {
        const NAME: &str = "tokenizer";
        let tk = match crate::tokenizer::gguf::from_gguf(file) {
            Ok(t) => t,
            Err(e) => return Check::new(NAME, false, format!("no tokenizer can be built from the file: {e}")),
        };
        for s in &self.samples {
            let want = self.tokenizer.encode(s.as_str(), false).map(|e| e.get_ids().to_vec());
            let got = tk.encode(s, false);
            match (want, got) {
                (Ok(w), Ok(g)) if w == g => {}
                (Ok(w), Ok(g)) => {
                    return Check::new(
                        NAME,
                        false,
                        format!("{s:?}: the file's tokenizer gives {g:?}, the training tokenizer {w:?}"),
                    )
                }
                (Err(e), _) => return Check::new(NAME, false, format!("{s:?}: {e}")),
                (_, Err(e)) => return Check::new(NAME, false, format!("{s:?}: {e}")),
            }
        }
        Check::new(NAME, true, format!("{} sample texts give identical ids", self.samples.len()))
    }

    fn llama_tokenizer(&self, l: &LlamaCpp) -> Check {
        const NAME: &str = "llama.cpp tokenizer";
        for s in &self.samples {
            let want = match self.tokenizer.encode(s.as_str(), false) {
                Ok(e) => e.get_ids().to_vec(),
                Err(e) => return Check::new(NAME, false, format!("{s:?}: {e}")),
            };
            match l.tokenize(self.gguf, s, &self.scratch) {
                Ok(g) if g == want => {}
                Ok(g) => {
                    return Check::new(NAME, false, format!("{s:?}: llama.cpp gives {g:?}, the training tokenizer {want:?}"))
                }
                Err(e) => return Check::new(NAME, false, e.to_string()),
            }
        }
        Check::new(
            NAME,
            true,
            format!("llama-tokenize gives the training tokenizer's ids on {} sample texts", self.samples.len()),
        )
    }

    /// `exported` is the file as pipe loads it: llama.cpp and pipe decode the same weights, so
    /// a difference is a difference in how the file is read, not rounding of the export. For
    /// the matmuls whose weight the file stores as Q8_0, pipe's decode rounds the activations
    /// to Q8_0 blocks first, as llama.cpp's CPU backend does ([`crate::model::ggml_cpu`]). How
    /// the unquantized source model's greedy output compares is reported too, for information.
    fn llama_greedy(&self, l: &LlamaCpp, file: &GgufFile, exported: &Model) -> Check {
        const NAME: &str = "llama.cpp greedy";
        if !matches!(self.file_type, FileType::F32 | FileType::F16 | FileType::BF16 | FileType::Q8_0) {
            return Check::skipped(NAME, format!("{} is compared by perplexity", self.file_type.name()));
        }
        if self.prompts.is_empty() {
            return Check::skipped(NAME, "no prompts");
        }
        let acts = q8_0_matmuls(file, exported.cfg.num_layers);
        let acts = (acts.count() > 0).then(|| acts.with_f16_attention());
        let (mut exact, mut ties, mut source_exact) = (0usize, Vec::new(), 0usize);
        for p in &self.prompts {
            let ids = match self.tokenizer.encode(p.as_str(), true) {
                Ok(e) => e.get_ids().to_vec(),
                Err(e) => return Check::new(NAME, false, format!("{p:?}: {e}")),
            };
            let (ours, margins) = match greedy(exported, acts.as_ref(), &ids, &self.stop, self.greedy_tokens) {
                Ok(g) => g,
                Err(e) => return Check::new(NAME, false, format!("{p:?}: pipe's model: {e}")),
            };
            let got = match l.greedy(self.gguf, p, self.greedy_tokens) {
                Ok(b) => b,
                Err(e) => return Check::new(NAME, false, e.to_string()),
            };
            if acts.is_some() {
                match greedy(self.source, None, &ids, &self.stop, self.greedy_tokens) {
                    Ok((src, _)) => match self.parting(&ids, &src, &got) {
                        Ok(None) => source_exact += 1,
                        Ok(Some(_)) => {}
                        Err(e) => return Check::new(NAME, false, format!("{p:?}: {e}")),
                    },
                    Err(e) => return Check::new(NAME, false, format!("{p:?}: the source model: {e}")),
                }
            }
            let (first, k, ours_tail, got_tail) = match self.parting(&ids, &ours, &got) {
                Ok(None) => {
                    exact += 1;
                    continue;
                }
                Ok(Some(x)) => x,
                Err(e) => return Check::new(NAME, false, format!("{p:?}: {e}")),
            };
            // The two part at one of tokens first..=k (see `parting`). A near-tie there (rounding
            // that pipe's reference does not reproduce bit for bit) is reported, not failed.
            let margin =
                margins.get(first..=k.min(margins.len().saturating_sub(1))).and_then(|m| m.iter().copied().reduce(f32::min));
            let margin = margin.unwrap_or(f32::INFINITY);
            let at = if first == k { format!("token {k}") } else { format!("tokens {first}-{k}") };
            let detail = format!(
                "{p:?}: {at} differ: pipe {ours_tail:?}, llama.cpp {got_tail:?}; pipe's smallest top-2 logit margin there {margin:.4}"
            );
            if margin >= self.tie_margin {
                return Check::new(NAME, false, format!("{detail} (not a near-tie: bound {})", self.tie_margin));
            }
            ties.push(format!("{at} (margin {margin:.4})"));
        }
        let ties = if ties.is_empty() {
            String::new()
        } else {
            format!("; {} part at a near-tie (top-2 margin below {}): {}", ties.len(), self.tie_margin, ties.join(", "))
        };
        let how = match &acts {
            Some(a) => format!(
                " with Q8_0 activations in its {} Q8_0 matmuls and flash attention over an F16 KV cache, as llama.cpp's CPU backend computes them",
                a.count()
            ),
            None => String::new(),
        };
        let source = if acts.is_some() {
            format!(
                "; for information, the unquantized source model's own greedy continuation equals llama.cpp's on the file for {source_exact} of {}",
                self.prompts.len()
            )
        } else {
            String::new()
        };
        Check::new(
            NAME,
            true,
            format!(
                "llama-simple's greedy continuation equals pipe's on the same file{how} for {exact} of {} prompts ({} tokens each){ties}{source}",
                self.prompts.len(),
                self.greedy_tokens
            ),
        )
    }

    /// Where pipe's continuation `ours` of the prompt `ids` and llama-simple's output `got`
    /// (the prompt's pieces, then each generated token's, as bytes) part: `None` when they are
    /// equal, else the range `first..=k` of our tokens where the choice that parted them was
    /// made, and up to 48 bytes of each side from token `first` on.
    ///
    /// `k` is our first token whose bytes llama.cpp did not print. llama-simple prints bytes, not
    /// token ids, and a character outside ASCII may be spelled by several byte tokens: where the
    /// two part inside such a character, llama.cpp may have chosen a different token already at
    /// the token that began the character (`177` and `30746` both start with the same lead byte,
    /// so the bytes agree one token longer than the choices did). `first` is that token: the one
    /// holding the first byte of the UTF-8 character in which they part.
    fn parting(&self, ids: &[u32], ours: &[u32], got: &[u8]) -> Result<Option<(usize, usize, String, String)>, String> {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for id in ids.iter().chain(ours) {
            match token_bytes(self.tokenizer, *id) {
                Some(b) => bytes.extend(b),
                None => return Err(format!("token {id} is not in the vocabulary")),
            }
            ends.push(bytes.len());
        }
        // ends[i]: where token i of ours ends; ends[ids.len() - 1]: where the prompt ends.
        let prompt_end = ids.len().checked_sub(1).map_or(0, |i| ends[i]);
        let ends = &ends[ids.len()..];
        let common = bytes.iter().zip(got).take_while(|(a, b)| a == b).count();
        if common == bytes.len() && common == got.len() {
            return Ok(None);
        }
        let k = ends.iter().position(|&e| e > common).unwrap_or(ours.len());
        // The lead byte of the character the first differing byte belongs to.
        let mut char_start = common.min(bytes.len());
        while char_start > 0 && bytes.get(char_start).is_some_and(|b| b & 0xC0 == 0x80) {
            char_start -= 1;
        }
        let first = ends.iter().position(|&e| e > char_start).unwrap_or(ours.len()).min(k);
        let start = if first == 0 { prompt_end } else { ends[first - 1] };
        let tail = |s: &[u8]| String::from_utf8_lossy(&s[start.min(s.len())..(start + 48).min(s.len())]).into_owned();
        Ok(Some((first, k, tail(&bytes), tail(got))))
    }

    fn llama_perplexity(&self, l: &LlamaCpp) -> Check {
        const NAME: &str = "llama.cpp perplexity";
        let Some((text, reference)) = &self.perplexity else {
            return Check::skipped(NAME, "no held-out text, or the type is compared by greedy decoding");
        };
        if l.perplexity.is_none() {
            return Check::skipped(NAME, "llama-perplexity not found");
        }
        let ctx = 128;
        let (q, f) = match (l.perplexity(self.gguf, text, ctx), l.perplexity(reference, text, ctx)) {
            (Ok(q), Ok(f)) => (q, f),
            (Err(e), _) | (_, Err(e)) => return Check::new(NAME, false, e.to_string()),
        };
        let rise = q / f - 1.0;
        Check::new(
            NAME,
            rise <= self.ppl_tolerance,
            format!(
                "{} perplexity {q:.4} vs F16 {f:.4} ({:+.2}%, bound +{:.0}%), {ctx}-token chunks",
                self.file_type.name(),
                rise * 100.0,
                self.ppl_tolerance * 100.0
            ),
        )
    }
}

/// pipe's greedy continuation of `ids` and its top-2 logit margin at each step.
fn greedy(
    model: &Model,
    acts: Option<&ActRounding>,
    ids: &[u32],
    stop: &[u32],
    n: usize,
) -> candle_core::Result<(Vec<u32>, Vec<f32>)> {
    let mut margins = Vec::new();
    let out = decode_with(model, acts, ids, stop, n, |v| {
        let best = argmax(v) as usize;
        let second = v.iter().enumerate().filter(|(i, _)| *i != best).map(|(_, x)| *x).fold(f32::NEG_INFINITY, f32::max);
        margins.push(v[best] - second);
        best as u32
    })?;
    Ok((out, margins))
}

/// The matmuls llama.cpp's CPU backend feeds Q8_0 activations in `file`: the projections and
/// the output head whose weight the file stores as Q8_0 (the head is `token_embd.weight` when
/// there is no `output.weight`).
pub fn q8_0_matmuls(file: &GgufFile, layers: usize) -> ActRounding {
    let q8 = |name: &str| file.tensor(name).and_then(|t| GgmlKind::from_id(t.ggml_type.id())) == Some(GgmlKind::Q8_0);
    let mut acts = ActRounding::none(layers);
    for l in 0..layers {
        for (m, n) in [
            (Module::Q, "attn_q"),
            (Module::K, "attn_k"),
            (Module::V, "attn_v"),
            (Module::O, "attn_output"),
            (Module::Gate, "ffn_gate"),
            (Module::Up, "ffn_up"),
            (Module::Down, "ffn_down"),
        ] {
            if q8(&format!("blk.{l}.{n}.weight")) {
                acts = acts.with_q8_0(l, m);
            }
        }
    }
    let head = if file.tensor("output.weight").is_some() { "output.weight" } else { "token_embd.weight" };
    if q8(head) {
        acts = acts.with_q8_0_head();
    }
    acts
}

fn flat(t: &candle_core::Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()
}

/// `rms(y - x) / rms(x)`; 0 when both are all zeros.
pub fn rel_rms(x: &[f32], y: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in x.iter().zip(y) {
        num += f64::from(b - a).powi(2);
        den += f64::from(*a).powi(2);
    }
    if num == 0.0 {
        0.0
    } else {
        (num / den.max(f64::MIN_POSITIVE)).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_rms_error() {
        assert_eq!(rel_rms(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
        assert_eq!(rel_rms(&[1.0, 1.0], &[1.0, 1.0]), 0.0);
        assert!((rel_rms(&[1.0, -1.0], &[1.1, -0.9]) - 0.1).abs() < 1e-6);
        assert!(rel_rms(&[0.0], &[1.0]) > 1e6);
    }
}
