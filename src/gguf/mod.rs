//! GGUF: the single-file model format of llama.cpp / ggml.
//!
//! # What
//!
//! This module holds the types shared by everything that touches GGUF files
//! ([`GgufValue`], [`GgmlType`], the value-type ids and constants) and the
//! reader ([`GgufFile`], in [`reader`]). A future writer belongs next to the
//! reader as `writer.rs` and reuses these types.
//!
//! Tensor data: [`quant`] decodes the element types to `f32`, [`quantize`]
//! encodes `f32` to them byte for byte as llama.cpp does, and [`ftype`] picks
//! the type of each tensor for a file type (`Q4_K_M`...) as `llama-quantize`
//! does.
//!
//! # Layout of a GGUF file (v2 and v3, little-endian)
//!
//! ```text
//! magic        4 bytes  "GGUF"
//! version      u32      2 or 3
//! n_tensors    u64
//! n_kv         u64
//! n_kv times:  key: string, value_type: u32, value
//! n_tensors times:
//!              name: string, n_dims: u32, dims: [u64; n_dims],
//!              ggml_type: u32, offset: u64 (relative to the data section)
//! padding      to `general.alignment` (default 32)
//! tensor data  each tensor at data_offset + offset
//! ```
//!
//! A `string` is a `u64` byte length followed by UTF-8 bytes (no terminator).
//! An array value is `elem_type: u32, len: u64, elems...`.
//!
//! # Limits
//!
//! * Only little-endian files are read; a big-endian file is reported as an
//!   unsupported (byte-swapped) version, as llama.cpp does.
//! * GGUF v1 (32-bit counts) is rejected: llama.cpp dropped it too.
//! * Arrays are stored as `Vec<GgufValue>`, not typed vectors: simple, and
//!   fast enough for 150k-entry token lists, but about 32 bytes per element.

pub mod ftype;
pub mod quant;
pub mod quantize;
pub mod reader;
pub mod writer;

pub use reader::{GgufError, GgufFile, TensorInfo};

/// The four magic bytes at the start of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Alignment of the tensor data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Metadata key that overrides [`DEFAULT_ALIGNMENT`] (a `u32`, power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// One metadata value, as stored in a GGUF key/value pair.
///
/// Arrays hold their elements as `GgufValue`s of one type (the file stores a
/// single element type per array; the reader enforces it by construction).
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Type id 0.
    U8(u8),
    /// Type id 1.
    I8(i8),
    /// Type id 2.
    U16(u16),
    /// Type id 3.
    I16(i16),
    /// Type id 4.
    U32(u32),
    /// Type id 5.
    I32(i32),
    /// Type id 10.
    U64(u64),
    /// Type id 11.
    I64(i64),
    /// Type id 6.
    F32(f32),
    /// Type id 12.
    F64(f64),
    /// Type id 7 (one byte, 0 or 1; other bytes are rejected).
    Bool(bool),
    /// Type id 8.
    String(String),
    /// Type id 9.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The GGUF type id of this value (`0..=12`), as written in the file.
    pub fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    /// A short human name of the type (`"u32"`, `"string"`, `"array"`...), for messages.
    pub fn type_name(&self) -> &'static str {
        value_type_name(self.type_id())
    }

    /// The value as an `i128` if it is any integer type (bools are not integers).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v.into(),
            GgufValue::I8(v) => v.into(),
            GgufValue::U16(v) => v.into(),
            GgufValue::I16(v) => v.into(),
            GgufValue::U32(v) => v.into(),
            GgufValue::I32(v) => v.into(),
            GgufValue::U64(v) => v.into(),
            GgufValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as a `u32` if it is an integer that fits.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_int().and_then(|v| u32::try_from(v).ok())
    }

    /// The value as an `i32` if it is an integer that fits.
    pub fn as_i32(&self) -> Option<i32> {
        self.as_int().and_then(|v| i32::try_from(v).ok())
    }

    /// The value as an `f32` if it is a float (`F64` is narrowed).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(v) => Some(v),
            GgufValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// The value as a `bool` if it is a `Bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a `&str` if it is a `String`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements if the value is an `Array`.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// Human name of a GGUF value type id, `"unknown"` for ids outside `0..=12`.
pub fn value_type_name(type_id: u32) -> &'static str {
    match type_id {
        0 => "u8",
        1 => "i8",
        2 => "u16",
        3 => "i16",
        4 => "u32",
        5 => "i32",
        6 => "f32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "u64",
        11 => "i64",
        12 => "f64",
        _ => "unknown",
    }
}

macro_rules! ggml_types {
    ($($(#[$doc:meta])* $name:ident = $id:literal, $blck:literal, $size:literal;)*) => {
        /// The element type of a tensor (`enum ggml_type` in ggml.h).
        ///
        /// Quantized types store elements in blocks: [`GgmlType::block_size`]
        /// elements take [`GgmlType::type_size`] bytes. Ids this crate does not
        /// know are kept as [`GgmlType::Unknown`] so a file still opens.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum GgmlType {
            $($(#[$doc])* $name,)*
            /// A type id this crate does not know (sizes unknown).
            Unknown(u32),
        }

        impl GgmlType {
            /// The type for a ggml type id; unknown ids become [`GgmlType::Unknown`].
            pub fn from_id(id: u32) -> GgmlType {
                match id {
                    $($id => GgmlType::$name,)*
                    other => GgmlType::Unknown(other),
                }
            }

            /// The ggml type id as stored in the file.
            pub fn id(self) -> u32 {
                match self {
                    $(GgmlType::$name => $id,)*
                    GgmlType::Unknown(id) => id,
                }
            }

            /// Elements per block (1 for plain types), `None` for unknown types.
            pub fn block_size(self) -> Option<u64> {
                match self {
                    $(GgmlType::$name => Some($blck),)*
                    GgmlType::Unknown(_) => None,
                }
            }

            /// Bytes per block, `None` for unknown types.
            pub fn type_size(self) -> Option<u64> {
                match self {
                    $(GgmlType::$name => Some($size),)*
                    GgmlType::Unknown(_) => None,
                }
            }

            /// The ggml name (`"q4_K"`, `"f16"`...), `"unknown"` for unknown ids.
            pub fn name(self) -> &'static str {
                match self {
                    $(GgmlType::$name => ggml_name(stringify!($name)),)*
                    GgmlType::Unknown(_) => "unknown",
                }
            }
        }
    };
}

// Block sizes and bytes per block, from gguf-py's GGML_QUANT_SIZES / ggml.c type_traits.
ggml_types! {
    /// 32-bit float.
    F32 = 0, 1, 4;
    /// IEEE half float.
    F16 = 1, 1, 2;
    /// 4-bit, f16 scale, 32 per block.
    Q4_0 = 2, 32, 18;
    /// 4-bit, f16 scale and min, 32 per block.
    Q4_1 = 3, 32, 20;
    /// 5-bit, f16 scale, 32 per block.
    Q5_0 = 6, 32, 22;
    /// 5-bit, f16 scale and min, 32 per block.
    Q5_1 = 7, 32, 24;
    /// 8-bit, f16 scale, 32 per block.
    Q8_0 = 8, 32, 34;
    /// 8-bit, f16 scale and sum, 32 per block.
    Q8_1 = 9, 32, 36;
    /// K-quant, 2-bit, 256 per super-block.
    Q2_K = 10, 256, 84;
    /// K-quant, 3-bit.
    Q3_K = 11, 256, 110;
    /// K-quant, 4-bit.
    Q4_K = 12, 256, 144;
    /// K-quant, 5-bit.
    Q5_K = 13, 256, 176;
    /// K-quant, 6-bit.
    Q6_K = 14, 256, 210;
    /// K-quant, 8-bit (intermediate type).
    Q8_K = 15, 256, 292;
    /// i-quant.
    IQ2_XXS = 16, 256, 66;
    /// i-quant.
    IQ2_XS = 17, 256, 74;
    /// i-quant.
    IQ3_XXS = 18, 256, 98;
    /// i-quant.
    IQ1_S = 19, 256, 50;
    /// i-quant, non-linear 4-bit, 32 per block.
    IQ4_NL = 20, 32, 18;
    /// i-quant.
    IQ3_S = 21, 256, 110;
    /// i-quant.
    IQ2_S = 22, 256, 82;
    /// i-quant.
    IQ4_XS = 23, 256, 136;
    /// 8-bit integer.
    I8 = 24, 1, 1;
    /// 16-bit integer.
    I16 = 25, 1, 2;
    /// 32-bit integer.
    I32 = 26, 1, 4;
    /// 64-bit integer.
    I64 = 27, 1, 8;
    /// 64-bit float.
    F64 = 28, 1, 8;
    /// i-quant.
    IQ1_M = 29, 256, 56;
    /// bfloat16.
    BF16 = 30, 1, 2;
    /// Ternary.
    TQ1_0 = 34, 256, 54;
    /// Ternary.
    TQ2_0 = 35, 256, 66;
    /// Microscaling FP4.
    MXFP4 = 39, 32, 17;
}

/// ggml spells K-quants as `q4_K`: lowercase everything but the `K`.
fn ggml_name(variant: &'static str) -> &'static str {
    match variant {
        "F32" => "f32",
        "F16" => "f16",
        "BF16" => "bf16",
        "F64" => "f64",
        "Q4_0" => "q4_0",
        "Q4_1" => "q4_1",
        "Q5_0" => "q5_0",
        "Q5_1" => "q5_1",
        "Q8_0" => "q8_0",
        "Q8_1" => "q8_1",
        "Q2_K" => "q2_K",
        "Q3_K" => "q3_K",
        "Q4_K" => "q4_K",
        "Q5_K" => "q5_K",
        "Q6_K" => "q6_K",
        "Q8_K" => "q8_K",
        "IQ2_XXS" => "iq2_xxs",
        "IQ2_XS" => "iq2_xs",
        "IQ3_XXS" => "iq3_xxs",
        "IQ1_S" => "iq1_s",
        "IQ4_NL" => "iq4_nl",
        "IQ3_S" => "iq3_s",
        "IQ2_S" => "iq2_s",
        "IQ4_XS" => "iq4_xs",
        "I8" => "i8",
        "I16" => "i16",
        "I32" => "i32",
        "I64" => "i64",
        "IQ1_M" => "iq1_m",
        "TQ1_0" => "tq1_0",
        "TQ2_0" => "tq2_0",
        "MXFP4" => "mxfp4",
        _ => "unknown",
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GgmlType::Unknown(id) => write!(f, "unknown({id})"),
            t => f.write_str(t.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_type_ids_round_trip_and_sizes_match_ggml() {
        for id in 0..45 {
            assert_eq!(GgmlType::from_id(id).id(), id);
        }
        assert_eq!(GgmlType::from_id(3), GgmlType::Q4_1);
        assert_eq!(GgmlType::Q4_1.block_size(), Some(32));
        assert_eq!(GgmlType::Q4_1.type_size(), Some(20));
        assert_eq!(GgmlType::Q6_K.type_size(), Some(210));
        assert_eq!(GgmlType::from_id(31), GgmlType::Unknown(31));
        assert_eq!(GgmlType::Unknown(31).block_size(), None);
        assert_eq!(GgmlType::Q4_K.to_string(), "q4_K");
    }

    #[test]
    fn integer_accessors_accept_any_type_that_fits() {
        assert_eq!(GgufValue::U8(7).as_u32(), Some(7));
        assert_eq!(GgufValue::I64(7).as_u32(), Some(7));
        assert_eq!(GgufValue::I32(-1).as_u32(), None);
        assert_eq!(GgufValue::U64(u64::MAX).as_u32(), None);
        assert_eq!(GgufValue::Bool(true).as_u32(), None);
        assert_eq!(GgufValue::F64(0.5).as_f32(), Some(0.5));
    }
}
