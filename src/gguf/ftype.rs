//! Which element type each tensor gets in a GGUF file of a given file type,
//! as `llama-quantize` decides it.
//!
//! # What
//!
//! A llama.cpp "file type" ([`FileType`], `enum llama_ftype`; the
//! `general.file_type` key) names a mixture, not one type: in a `Q4_K_M` file
//! most matrices are Q4_K, some are Q6_K, norms stay F32, and matrices whose
//! rows do not split into 256-value blocks get a 32-value type instead.
//! [`tensor_kind`] gives the [`GgmlKind`] `llama-quantize` picks for one
//! tensor of a dense decoder model, from the file type, the tensor's GGUF
//! name and dimensions and a little about the model ([`ModelInfo`]).
//!
//! # How (llama.cpp's rules, `src/llama-quant.cpp`)
//!
//! The port follows `llama_tensor_get_type` and the functions it calls, for
//! the file types in [`FileType`] and dense decoder architectures (for these
//! rules they differ only in which models are "70B", which the caller says
//! in [`ModelInfo`]), with llama-quantize's default options (no `--imatrix`, `--pure`,
//! `--output-tensor-type`, `--token-embedding-type`, `--tensor-type` or
//! `--leave-output-tensor`):
//!
//! 1. Only some tensors are quantized at all (`tensor_allows_quantization`):
//!    at least 2-D (`ggml_n_dims`, trailing 1s dropped), the name ends in
//!    `weight` and is not a norm (`_norm.weight`), plus a list of special
//!    tensors of other architectures. The others keep their type; for pipe,
//!    whose tensors are `f32`, that is [`GgmlKind::F32`] (convert_hf_to_gguf
//!    writes norms and biases as F32 too).
//! 2. For F32, F16 and BF16 files every other tensor gets that type, and no
//!    further rule applies (they are not "quantized" types to ggml).
//! 3. Otherwise start from the file type's default ([`FileType::default_kind`]),
//!    then by tensor category (`llama_tensor_get_type_impl`):
//!    * `output.weight`, and `token_embd.weight` when the model has no
//!      `output.weight` (tied embeddings): Q8_0 if the row length is not a
//!      multiple of the default type's block size, else Q6_K unless the default
//!      is Q8_0.
//!    * `attn_v.weight` of layer `i` of `n`: in Q4_K_M and Q5_K_M files Q6_K
//!      when `use_more_bits(i, n)` (`i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2`);
//!      in Q4_K_S files Q5_K for the first 4 layers. A "70B" model (80 layers;
//!      for Llama only with grouped-query attention) then turns Q4_K into Q5_K.
//!    * `ffn_down.weight` of layer `i` of `n`: Q6_K when `use_more_bits(i, n)`
//!      in Q4_K_M and Q5_K_M files; Q5_K for `i < n/8` in Q4_K_S files.
//!    * Everything else keeps the default.
//! 4. Fallback (`tensor_type_fallback`): when the row length (`dims[0]`) is
//!    not a multiple of the chosen type's block size, Q4_K becomes Q5_0, Q5_K
//!    Q5_1 and Q6_K Q8_0; if even that (or a 32-value type) does not fit, F16.
//!    SmolLM2's 576-wide rows are the common case: most of a Q4_K_M SmolLM2 is
//!    Q5_0.
//!
//! # Limits
//!
//! * llama.cpp counts `attn_v` and `ffn_down` tensors in file order (sorted by
//!   layer, then name) to get `i`; this port reads `i` from the `blk.N.` prefix,
//!   which is the same for every dense decoder's file (each layer has exactly
//!   one of each). `n` is [`ModelInfo::n_layer`].
//! * Mixture-of-experts, Falcon, the IQ/Q2_K/Q3_K file types and
//!   llama-quantize's options are not ported.
//! * llama-quantize also reorders tensors (non-layer tensors first, then by
//!   layer number, then by name); that is the writer's concern, not this
//!   module's.

use std::fmt;
use std::str::FromStr;

use super::quant::GgmlKind;

/// A llama.cpp output file type (`enum llama_ftype`), as `llama-quantize`
/// takes it on the command line.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// All tensors F32 (`LLAMA_FTYPE_ALL_F32`, 0).
    F32,
    /// Matrices F16 (1).
    F16,
    /// Matrices BF16 (32).
    BF16,
    /// Matrices Q8_0 (7).
    Q8_0,
    /// Matrices Q4_0, output Q6_K (2).
    Q4_0,
    /// Matrices Q4_1, output Q6_K (3).
    Q4_1,
    /// Matrices Q5_0, output Q6_K (8).
    Q5_0,
    /// Matrices Q5_1, output Q6_K (9).
    Q5_1,
    /// Matrices Q4_K, some Q5_K near the input (14).
    Q4_K_S,
    /// Matrices Q4_K, about half of `attn_v` and `ffn_down` Q6_K (15).
    Q4_K_M,
    /// Matrices Q5_K, output Q6_K (16).
    Q5_K_S,
    /// Matrices Q5_K, about half of `attn_v` and `ffn_down` Q6_K (17).
    Q5_K_M,
    /// Matrices Q6_K (18).
    Q6_K,
}

impl FileType {
    /// Every supported file type.
    pub const ALL: [FileType; 13] = [
        FileType::F32,
        FileType::F16,
        FileType::BF16,
        FileType::Q8_0,
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::Q4_K_S,
        FileType::Q4_K_M,
        FileType::Q5_K_S,
        FileType::Q5_K_M,
        FileType::Q6_K,
    ];

    /// The `llama_ftype` value, stored as `general.file_type`.
    pub fn id(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q4_K_S => 14,
            FileType::Q4_K_M => 15,
            FileType::Q5_K_S => 16,
            FileType::Q5_K_M => 17,
            FileType::Q6_K => 18,
            FileType::BF16 => 32,
        }
    }

    /// The name `llama-quantize` uses (`"Q4_K_M"`).
    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "F32",
            FileType::F16 => "F16",
            FileType::BF16 => "BF16",
            FileType::Q8_0 => "Q8_0",
            FileType::Q4_0 => "Q4_0",
            FileType::Q4_1 => "Q4_1",
            FileType::Q5_0 => "Q5_0",
            FileType::Q5_1 => "Q5_1",
            FileType::Q4_K_S => "Q4_K_S",
            FileType::Q4_K_M => "Q4_K_M",
            FileType::Q5_K_S => "Q5_K_S",
            FileType::Q5_K_M => "Q5_K_M",
            FileType::Q6_K => "Q6_K",
        }
    }

    /// The type most matrices get (`llama_ftype_get_default_type`).
    pub fn default_kind(self) -> GgmlKind {
        match self {
            FileType::F32 => GgmlKind::F32,
            FileType::F16 => GgmlKind::F16,
            FileType::BF16 => GgmlKind::BF16,
            FileType::Q8_0 => GgmlKind::Q8_0,
            FileType::Q4_0 => GgmlKind::Q4_0,
            FileType::Q4_1 => GgmlKind::Q4_1,
            FileType::Q5_0 => GgmlKind::Q5_0,
            FileType::Q5_1 => GgmlKind::Q5_1,
            FileType::Q4_K_S | FileType::Q4_K_M => GgmlKind::Q4_K,
            FileType::Q5_K_S | FileType::Q5_K_M => GgmlKind::Q5_K,
            FileType::Q6_K => GgmlKind::Q6_K,
        }
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown file type name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown GGUF file type `{name}`: supported are F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K")]
pub struct FileTypeError {
    /// The name given.
    pub name: String,
}

impl FromStr for FileType {
    type Err = FileTypeError;

    /// Parses a `llama-quantize` name, in any case (`q4_k_m`).
    fn from_str(s: &str) -> Result<Self, FileTypeError> {
        FileType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(s)).ok_or_else(|| FileTypeError { name: s.to_string() })
    }
}

/// What the type choice needs to know about the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelInfo {
    /// Number of layers (`block_count`).
    pub n_layer: u32,
    /// llama.cpp's size class `LLM_TYPE_70B`, the only one its type rules look at (which
    /// models it covers depends on the architecture: the model code's
    /// `Arch::is_llama_cpp_70b` says).
    pub llama_cpp_70b: bool,
    /// True when the file has no `output.weight` and `token_embd.weight`
    /// serves as the output projection too.
    pub tied_embeddings: bool,
}

impl ModelInfo {
    /// A model of `n_layer` layers, not "70B", with untied embeddings (see the `with_*`
    /// builders).
    pub fn new(n_layer: u32) -> Self {
        ModelInfo { n_layer, llama_cpp_70b: false, tied_embeddings: false }
    }

    /// Sets [`ModelInfo::llama_cpp_70b`].
    pub fn with_llama_cpp_70b(self, llama_cpp_70b: bool) -> Self {
        ModelInfo { llama_cpp_70b, ..self }
    }

    /// Sets [`ModelInfo::tied_embeddings`].
    pub fn with_tied_embeddings(self, tied_embeddings: bool) -> Self {
        ModelInfo { tied_embeddings, ..self }
    }
}

/// The element type `llama-quantize` gives tensor `name` (GGUF dimensions
/// `dims`, row length first) in a file of type `ftype`.
///
/// See the module docs for the rules. Tensors llama.cpp leaves alone (1-D
/// tensors, norms) get [`GgmlKind::F32`].
pub fn tensor_kind(ftype: FileType, model: &ModelInfo, name: &str, dims: &[u64]) -> GgmlKind {
    if !allows_quantization(name, dims) {
        return GgmlKind::F32;
    }
    let default = ftype.default_kind();
    if matches!(default, GgmlKind::F32 | GgmlKind::F16 | GgmlKind::BF16) {
        return default;
    }
    let row_len = dims[0];
    let kind = mixture_kind(ftype, model, Category::of(name), name, row_len, default);
    fallback(kind, row_len)
}

/// `tensor_allows_quantization` with llama-quantize's default options.
fn allows_quantization(name: &str, dims: &[u64]) -> bool {
    // ggml_n_dims: the last dimension above 1, at least 1.
    let n_dims = dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1);
    if n_dims < 2 {
        return false;
    }
    // `name.rfind("weight") == name.size() - 6`, which a 5-byte name also
    // passes (npos == size_t(5 - 6)); kept for fidelity.
    if !(name.ends_with("weight") || name.len() == 5) {
        return false;
    }
    const NEVER_CONTAINS: [&str; 35] = [
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    // Two exact names: LLM_TN(arch)(LLM_TENSOR_POS_EMBD / LLM_TENSOR_TOKEN_TYPES, "weight").
    name != "position_embd.weight" && name != "token_types.weight" && !NEVER_CONTAINS.iter().any(|s| name.contains(s))
}

/// llama.cpp's `tensor_category`: broad roles by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttentionQ,
    AttentionV,
    AttentionK,
    AttentionQkv,
    AttentionKvB,
    AttentionOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

impl Category {
    /// `tensor_get_category`: first match wins, in this order.
    fn of(name: &str) -> Category {
        if name == "output.weight" {
            return Category::Output;
        }
        if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            return Category::TokenEmbd;
        }
        const BY_SUBSTRING: [(&str, Category); 9] = [
            ("attn_qkv.weight", Category::AttentionQkv),
            ("attn_kv_b.weight", Category::AttentionKvB),
            ("attn_v.weight", Category::AttentionV),
            ("attn_k.weight", Category::AttentionK),
            ("attn_q.weight", Category::AttentionQ),
            ("attn_output.weight", Category::AttentionOutput),
            ("ffn_up", Category::FfnUp),
            ("ffn_gate", Category::FfnGate),
            ("ffn_down", Category::FfnDown),
        ];
        BY_SUBSTRING.iter().find(|(s, _)| name.contains(s)).map_or(Category::Other, |&(_, c)| c)
    }

    /// `category_is_attn_v`: tensors that hold V (alone or fused).
    fn is_attn_v(self) -> bool {
        matches!(self, Category::AttentionV | Category::AttentionQkv | Category::AttentionKvB)
    }
}

/// The layer number of a `blk.N.` tensor (sscanf `"blk.%d."`), 0 if none.
fn layer_of(name: &str) -> i64 {
    let Some(rest) = name.strip_prefix("blk.") else { return 0 };
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..digits].parse().unwrap_or(0)
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and
/// every third one between.
fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// The parts of `llama_tensor_get_type_impl` that apply to the supported
/// file types and architectures (dense models, no options).
fn mixture_kind(ftype: FileType, model: &ModelInfo, category: Category, name: &str, row_len: u64, default: GgmlKind) -> GgmlKind {
    let n_layer = i64::from(model.n_layer);
    if category == Category::Output || (model.tied_embeddings && category == Category::TokenEmbd) {
        return if !row_len.is_multiple_of(default.block_size() as u64) {
            GgmlKind::Q8_0
        } else if default != GgmlKind::Q8_0 {
            GgmlKind::Q6_K
        } else {
            default
        };
    }
    if category.is_attn_v() {
        // n_attention_wv: one V tensor per layer.
        let i = layer_of(name);
        let mut kind = default;
        if matches!(ftype, FileType::Q4_K_M | FileType::Q5_K_M) && use_more_bits(i, n_layer) {
            kind = GgmlKind::Q6_K;
        } else if ftype == FileType::Q4_K_S && i < 4 {
            kind = GgmlKind::Q5_K;
        }
        // (Q3_K, the other type this rule lifts, is not a supported default.)
        if model.llama_cpp_70b && kind == GgmlKind::Q4_K {
            kind = GgmlKind::Q5_K;
        }
        return kind;
    }
    if category == Category::FfnDown {
        let i = layer_of(name);
        return match ftype {
            FileType::Q4_K_M | FileType::Q5_K_M if use_more_bits(i, n_layer) => GgmlKind::Q6_K,
            FileType::Q4_K_S if i < n_layer / 8 => GgmlKind::Q5_K,
            _ => default,
        };
    }
    // attn_q/k/output, ffn_gate/up and untied token_embd have rules only for
    // IQ, Q2_K and Q3_K files and mixture-of-experts models.
    default
}

/// `tensor_type_fallback`: a type whose blocks fit rows of `row_len`.
fn fallback(kind: GgmlKind, row_len: u64) -> GgmlKind {
    if row_len.is_multiple_of(kind.block_size() as u64) {
        return kind;
    }
    let smaller = match kind {
        GgmlKind::Q4_K => GgmlKind::Q5_0,
        GgmlKind::Q5_K => GgmlKind::Q5_1,
        GgmlKind::Q6_K => GgmlKind::Q8_0,
        // 32-value types have nothing smaller; the check below makes them F16.
        other => other,
    };
    if row_len.is_multiple_of(smaller.block_size() as u64) {
        smaller
    } else {
        GgmlKind::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::arch::Arch;
    use std::path::Path;

    fn smollm2_135m() -> ModelInfo {
        ModelInfo::new(30).with_tied_embeddings(true)
    }

    /// The model of a reference line, its "70B" class from the model code's architectures.
    fn info(arch: &str, n_layer: u32, n_head: u32, n_head_kv: u32) -> ModelInfo {
        let arch = Arch::from_gguf_name(arch).unwrap_or_else(|| panic!("arch {arch}"));
        let is_70b = arch.is_llama_cpp_70b(n_layer as usize, n_head as usize, n_head_kv as usize);
        ModelInfo::new(n_layer).with_llama_cpp_70b(is_70b)
    }

    #[test]
    fn names_and_ids_match_llama_cpp() {
        let table = [
            ("F32", 0),
            ("F16", 1),
            ("Q4_0", 2),
            ("Q4_1", 3),
            ("Q8_0", 7),
            ("Q5_0", 8),
            ("Q5_1", 9),
            ("Q4_K_S", 14),
            ("Q4_K_M", 15),
            ("Q5_K_S", 16),
            ("Q5_K_M", 17),
            ("Q6_K", 18),
            ("BF16", 32),
        ];
        assert_eq!(table.len(), FileType::ALL.len());
        for (name, id) in table {
            let t: FileType = name.parse().unwrap();
            assert_eq!((t.name(), t.id(), t.to_string()), (name, id, name.to_string()));
            assert_eq!(name.to_lowercase().parse::<FileType>(), Ok(t));
        }
        let err = "Q3_K_M".parse::<FileType>().unwrap_err();
        assert_eq!(err, FileTypeError { name: "Q3_K_M".into() });
        assert!(err.to_string().starts_with("unknown GGUF file type `Q3_K_M`: supported are F32"));
    }

    /// SmolLM2-135M in Q4_K_M, by hand from the rules: 576-wide rows send
    /// Q4_K to Q5_0 and Q6_K to Q8_0; ffn_down rows (1536) are whole
    /// super-blocks; the tied embedding follows the output rule.
    #[test]
    fn smollm2_q4_k_m_by_hand() {
        let m = smollm2_135m();
        let kind = |name: &str, dims: &[u64]| tensor_kind(FileType::Q4_K_M, &m, name, dims);
        assert_eq!(kind("token_embd.weight", &[576, 49152]), GgmlKind::Q8_0);
        assert_eq!(kind("output_norm.weight", &[576]), GgmlKind::F32);
        assert_eq!(kind("blk.0.attn_norm.weight", &[576]), GgmlKind::F32);
        assert_eq!(kind("blk.4.attn_q.weight", &[576, 576]), GgmlKind::Q5_0);
        // use_more_bits(i, 30): i < 3, i >= 26, or (i - 3) % 3 == 2.
        let more = [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29];
        for i in 0..30 {
            let (v, down) = if more.contains(&i) { (GgmlKind::Q8_0, GgmlKind::Q6_K) } else { (GgmlKind::Q5_0, GgmlKind::Q4_K) };
            assert_eq!(kind(&format!("blk.{i}.attn_v.weight"), &[576, 192]), v, "layer {i}");
            assert_eq!(kind(&format!("blk.{i}.ffn_down.weight"), &[1536, 576]), down, "layer {i}");
        }
        // Untied, the embedding is an ordinary matrix and output.weight gets the rule.
        let untied = m.with_tied_embeddings(false);
        assert_eq!(tensor_kind(FileType::Q4_K_M, &untied, "token_embd.weight", &[576, 49152]), GgmlKind::Q5_0);
        assert_eq!(tensor_kind(FileType::Q4_K_M, &untied, "output.weight", &[576, 49152]), GgmlKind::Q8_0);
        assert_eq!(tensor_kind(FileType::Q4_0, &untied, "output.weight", &[2048, 32000]), GgmlKind::Q6_K);
        assert_eq!(tensor_kind(FileType::Q8_0, &untied, "output.weight", &[2048, 32000]), GgmlKind::Q8_0);
    }

    #[test]
    fn only_matrices_named_weight_are_quantized() {
        let m = smollm2_135m();
        let q = |name: &str, dims: &[u64]| tensor_kind(FileType::Q8_0, &m, name, dims);
        assert_eq!(q("blk.0.attn_q.bias", &[576]), GgmlKind::F32);
        assert_eq!(q("blk.0.attn_q.bias", &[576, 2]), GgmlKind::F32); // not "...weight"
        assert_eq!(q("blk.0.ffn_gate.weight", &[576, 1]), GgmlKind::F32); // 1-D once trailing 1s go
        assert_eq!(q("blk.0.ffn_gate.weight", &[576, 1536, 1]), GgmlKind::Q8_0);
        assert_eq!(q("blk.0.attn_q_norm.weight", &[64, 2]), GgmlKind::F32);
        assert_eq!(q("position_embd.weight", &[576, 512]), GgmlKind::F32);
        assert_eq!(q("rope_freqs.weight", &[32]), GgmlKind::F32);
        assert_eq!(tensor_kind(FileType::F16, &m, "blk.0.ffn_gate.weight", &[100, 7]), GgmlKind::F16);
        assert_eq!(tensor_kind(FileType::BF16, &m, "output_norm.weight", &[576]), GgmlKind::F32);
    }

    #[test]
    fn fallback_table() {
        let m = smollm2_135m();
        // 32-value rows: K-quants fall back; 80-value rows fit nothing but F16.
        for (ftype, w32, w80) in [
            (FileType::Q4_K_S, GgmlKind::Q5_0, GgmlKind::F16),
            (FileType::Q5_K_S, GgmlKind::Q5_1, GgmlKind::F16),
            (FileType::Q6_K, GgmlKind::Q8_0, GgmlKind::F16),
            (FileType::Q4_0, GgmlKind::Q4_0, GgmlKind::F16),
            (FileType::Q8_0, GgmlKind::Q8_0, GgmlKind::F16),
        ] {
            assert_eq!(tensor_kind(ftype, &m, "blk.9.ffn_up.weight", &[96, 64]), w32, "{ftype}");
            assert_eq!(tensor_kind(ftype, &m, "blk.9.ffn_up.weight", &[80, 64]), w80, "{ftype}");
        }
    }

    #[test]
    fn the_70b_rule() {
        let q = |m: &ModelInfo, i: u32| tensor_kind(FileType::Q4_K_M, m, &format!("blk.{i}.attn_v.weight"), &[8192, 1024]);
        let gqa = info("llama", 80, 64, 8);
        assert_eq!((q(&gqa, 0), q(&gqa, 11)), (GgmlKind::Q6_K, GgmlKind::Q5_K));
        let mha = info("llama", 80, 64, 64); // LLaMA-1 65B
        assert_eq!(q(&mha, 11), GgmlKind::Q4_K);
        let qwen = info("qwen2", 80, 64, 64);
        assert_eq!(q(&qwen, 11), GgmlKind::Q5_K);
        assert_eq!(q(&info("qwen2", 64, 40, 8), 11), GgmlKind::Q4_K);
    }

    /// Every tensor of eight model shapes in every file type: what
    /// `llama-quantize --dry-run` printed (`tests/data/quantize/ftype_reference.txt`,
    /// written by `scripts/ftype_reference.py`).
    #[test]
    fn matches_llama_quantize_dry_runs() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/quantize/ftype_reference.txt");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut model: Option<(String, ModelInfo)> = None;
        let (mut checked, mut models) = (0, 0);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields[0] == "model" {
                let num = |i: usize| fields[i].split_once('=').unwrap().1.parse::<u32>().unwrap();
                let info = info(fields[2], num(3), num(4), num(5)).with_tied_embeddings(num(6) == 1);
                model = Some((fields[1].to_string(), info));
                models += 1;
                continue;
            }
            let (name, info) = model.as_ref().expect("a model line first");
            let ftype: FileType = fields[0].parse().unwrap();
            let dims: Vec<u64> = fields[2].split(',').map(|d| d.parse().unwrap()).collect();
            let want: Vec<&str> = fields[3..]
                .iter()
                .flat_map(|t| match t.split_once('*') {
                    Some((t, n)) => std::iter::repeat_n(t, n.parse().unwrap()),
                    None => std::iter::repeat_n(*t, 1),
                })
                .collect();
            let tensors: Vec<String> = if fields[1].starts_with("blk.N.") {
                assert_eq!(want.len(), info.n_layer as usize, "{line}");
                (0..info.n_layer).map(|i| fields[1].replace("blk.N.", &format!("blk.{i}."))).collect()
            } else {
                vec![fields[1].to_string()]
            };
            for (tensor, want) in tensors.iter().zip(want) {
                let got = tensor_kind(ftype, info, tensor, &dims);
                assert_eq!(got.name(), want, "{name} {ftype} {tensor} {dims:?}");
                checked += 1;
            }
        }
        assert_eq!(models, 8);
        assert!(checked > 20_000, "{checked}");
    }
}
