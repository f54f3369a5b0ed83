//! The verification gate: an exported GGUF is checked before anyone serves it.
//!
//! | check | passes when |
//! |---|---|
//! | `metadata` | every key/value reads back equal to what was written |
//! | `tensors` | the file loads with pipe's own loader (names, Q/K order, shapes, config) and every tensor is within its type's error bound of the source (relative RMS error, [`error_bound`]) |
//! | `tokenizer` | the tokenizer built from the file encodes the samples to the training tokenizer's ids |
//! | `llama.cpp tokenizer` | llama.cpp's `llama-tokenize` on the file gives the same ids |
//! | `llama.cpp greedy` | F32/F16/BF16/Q8_0: `llama-simple`'s greedy continuation of each prompt equals pipe's on the same file for the first N tokens, or the two part only at a near-tie (pipe's top-2 logit margin below `tie_margin` where they part; reported) |
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
use crate::model::generate::{argmax, decode};
use crate::model::gguf_names::gguf_name;
use crate::model::llama::Model;
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
/// type may have. The bounds sit about twice above what the default model's tensors measure
/// (BENCHMARKS.md), so a wrong block layout, scale or row order fails while honest rounding
/// passes.
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
                push(self.llama_greedy(l, &loaded));
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
        let (a, b) = (self.source.hf_tensors(), loaded.hf_tensors());
        if a.len() != b.len() {
            return Check::new(NAME, false, format!("{} tensors read back, the source has {}", b.len(), a.len()));
        }
        let mut worst = (0f64, String::new());
        for ((name, src), (name2, got)) in a.iter().zip(&b) {
            let fail = |m: String| Check::new(NAME, false, format!("`{name}`: {m}"));
            if name != name2 || src.dims() != got.dims() {
                return fail(format!("reads back as `{name2}` {:?}, source {:?}", got.dims(), src.dims()));
            }
            let kind = gguf_name(name)
                .and_then(|g| file.tensor(&g).map(|t| t.ggml_type.id()))
                .and_then(GgmlKind::from_id)
                .unwrap_or(GgmlKind::F32);
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
    /// a difference is a difference in how the file is read, not rounding of the export.
    fn llama_greedy(&self, l: &LlamaCpp, exported: &Model) -> Check {
        const NAME: &str = "llama.cpp greedy";
        if !matches!(self.file_type, FileType::F32 | FileType::F16 | FileType::BF16 | FileType::Q8_0) {
            return Check::skipped(NAME, format!("{} is compared by perplexity", self.file_type.name()));
        }
        if self.prompts.is_empty() {
            return Check::skipped(NAME, "no prompts");
        }
        let (mut exact, mut ties) = (0usize, Vec::new());
        for p in &self.prompts {
            let ids = match self.tokenizer.encode(p.as_str(), true) {
                Ok(e) => e.get_ids().to_vec(),
                Err(e) => return Check::new(NAME, false, format!("{p:?}: {e}")),
            };
            let mut margins = Vec::new();
            let ours = decode(exported, &ids, &self.stop, self.greedy_tokens, |v| {
                let best = argmax(v) as usize;
                let second = v.iter().enumerate().filter(|(i, _)| *i != best).map(|(_, x)| *x).fold(f32::NEG_INFINITY, f32::max);
                margins.push(v[best] - second);
                best as u32
            });
            let ours = match ours {
                Ok(g) => g,
                Err(e) => return Check::new(NAME, false, format!("{p:?}: pipe's model: {e}")),
            };
            let got = match l.greedy(self.gguf, p, self.greedy_tokens) {
                Ok(b) => b,
                Err(e) => return Check::new(NAME, false, e.to_string()),
            };
            // Compare bytes, token by token: the pieces of the prompt and of our tokens, as
            // llama-simple prints them.
            let mut bytes = Vec::new();
            let mut ends = Vec::new();
            for id in ids.iter().chain(&ours) {
                match token_bytes(self.tokenizer, *id) {
                    Some(b) => bytes.extend(b),
                    None => return Check::new(NAME, false, format!("{p:?}: token {id} is not in the vocabulary")),
                }
                ends.push(bytes.len());
            }
            // ends[i]: where token i of ours ends; ends[ids.len() - 1]: where the prompt ends.
            let prompt_end = ids.len().checked_sub(1).map_or(0, |i| ends[i]);
            let ends = &ends[ids.len()..];
            let common = bytes.iter().zip(&got).take_while(|(a, b)| a == b).count();
            if common == bytes.len() && common == got.len() {
                exact += 1;
                continue;
            }
            // The first of our tokens whose bytes llama.cpp did not print.
            let k = ends.iter().position(|&e| e > common).unwrap_or(ours.len());
            // Token k is where the two part. A near-tie there (llama.cpp rounds activations to
            // f16 or 8 bits inside its matmuls; pipe keeps f32) is reported, not failed.
            let margin = margins.get(k).copied().unwrap_or(f32::INFINITY);
            let start = if k == 0 { prompt_end } else { ends[k - 1] };
            let tail = |s: &[u8]| String::from_utf8_lossy(&s[start.min(s.len())..(start + 48).min(s.len())]).into_owned();
            let detail = format!(
                "{p:?}: token {k} differs: pipe {:?}, llama.cpp {:?}; pipe's top-2 logit margin there {margin:.4}",
                tail(&bytes),
                tail(&got)
            );
            if margin >= self.tie_margin {
                return Check::new(NAME, false, format!("{detail} (not a near-tie: bound {})", self.tie_margin));
            }
            ties.push(format!("token {k} (margin {margin:.4})"));
        }
        let ties = if ties.is_empty() {
            String::new()
        } else {
            format!("; {} part at a near-tie (top-2 margin below {}): {}", ties.len(), self.tie_margin, ties.join(", "))
        };
        Check::new(
            NAME,
            true,
            format!(
                "llama-simple's greedy continuation equals pipe's on the same file for {exact} of {} prompts ({} tokens each){ties}",
                self.prompts.len(),
                self.greedy_tokens
            ),
        )
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
