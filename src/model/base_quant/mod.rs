//! The frozen base weights stored in 4 or 8 bits while LoRA trains on them (QLoRA):
//! lora-train's `base_quant`.
//!
//! LoRA never changes the base weights, so they need not be kept in 16 bits: stored in 4 bits
//! they take about a quarter of the memory. Each projection's weight (q, k, v, o, gate, up,
//! down) is a [`QuantWeight`]; the forward and the input-gradient pass dequantize it to the
//! compute dtype just before its matmul and drop the copy after (one projection's worth of
//! memory at a time). The embedding, the norms and the output head stay in the compute dtype,
//! as in bitsandbytes' QLoRA and unsloth.
//!
//! | [`BaseQuant`] | storage | bits per weight |
//! |---|---|---|
//! | `none` | the compute dtype, as without this module | 32 or 16 |
//! | `nf4` | bitsandbytes' NF4 with double-quantized scales ([`nf4`]): the same 4-bit values peft's QLoRA trains on | about 4.13 |
//! | `q8_0` | ggml's Q8_0 blocks (as in a Q8_0 GGUF) | 8.5 |
//! | `q4_k` | ggml's Q4_K blocks; a weight whose rows are not a multiple of 256 values gets Q5_0, as llama.cpp does | 4.5 (5.5) |
//! | `gguf` | a GGUF model's projections in the block types the file stores them in, bytes as they are (no 16-bit copy, no requantization); a Hugging Face folder is refused | the file's |
//!
//! The values a weight is quantized from are the model's as loaded (f32 from a GGUF, the
//! safetensors' own dtype otherwise). Dequantizing is exact arithmetic in f32 and one rounding
//! to the compute dtype, on the CPU ([`QuantWeight::dequantize`]) and on CUDA (a kernel for NF4;
//! candle's ggml kernels for the others), so the GPU gives the CPU's values.

pub mod nf4;

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use crate::gguf::quant::{dequantize_into, GgmlKind};
use crate::gguf::quantize::quantize;
pub use nf4::Nf4;

/// How lora-train stores the frozen projections (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseQuant {
    None,
    Nf4,
    Q8_0,
    Q4K,
    Gguf,
}

impl BaseQuant {
    /// Every value, as the param spells it.
    pub const NAMES: &'static [&'static str] = &["none", "nf4", "q8_0", "q4_k", "gguf"];

    /// The value for a param string.
    pub fn parse(s: &str) -> Option<BaseQuant> {
        Some(match s {
            "none" => BaseQuant::None,
            "nf4" => BaseQuant::Nf4,
            "q8_0" => BaseQuant::Q8_0,
            "q4_k" => BaseQuant::Q4K,
            "gguf" => BaseQuant::Gguf,
            _ => return None,
        })
    }

    /// The param spelling.
    pub fn name(self) -> &'static str {
        match self {
            BaseQuant::None => "none",
            BaseQuant::Nf4 => "nf4",
            BaseQuant::Q8_0 => "q8_0",
            BaseQuant::Q4K => "q4_k",
            BaseQuant::Gguf => "gguf",
        }
    }

    /// The storage this setting gives a `[rows, cols]` weight quantized from values
    /// (`None` for `none` and `gguf`, which do not quantize).
    pub fn format_for(self, cols: usize) -> Option<Format> {
        match self {
            BaseQuant::None | BaseQuant::Gguf => None,
            BaseQuant::Nf4 => Some(Format::Nf4),
            BaseQuant::Q8_0 if cols.is_multiple_of(GgmlKind::Q8_0.block_size()) => Some(Format::Ggml(GgmlKind::Q8_0)),
            BaseQuant::Q4K if cols.is_multiple_of(GgmlKind::Q4_K.block_size()) => Some(Format::Ggml(GgmlKind::Q4_K)),
            // llama.cpp's fallback for a K-quant row it cannot block (llama-quant.cpp).
            BaseQuant::Q4K if cols.is_multiple_of(GgmlKind::Q5_0.block_size()) => Some(Format::Ggml(GgmlKind::Q5_0)),
            // A row that no block of the type divides stays dense.
            BaseQuant::Q8_0 | BaseQuant::Q4K => None,
        }
    }
}

/// The layout of one stored weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// bitsandbytes' NF4 with double-quantized scales.
    Nf4,
    /// ggml blocks of this type.
    Ggml(GgmlKind),
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Format::Nf4 => f.write_str("NF4"),
            Format::Ggml(k) => f.write_str(k.name()),
        }
    }
}

/// Where a weight's bytes are.
#[derive(Clone)]
enum Data {
    /// On the CPU: the packed NF4 tensor.
    HostNf4(Arc<Nf4>),
    /// On the CPU: ggml blocks.
    HostGgml(GgmlKind, Arc<Vec<u8>>),
    /// On a GPU: the NF4 parts as device tensors (u8, u8, f32) and the offset.
    #[cfg(feature = "cuda")]
    CudaNf4 { packed: Tensor, qabsmax: Tensor, absmax2: Tensor, code8: Tensor, offset: f32 },
    /// On a GPU: ggml blocks in candle's quantized storage.
    #[cfg(feature = "cuda")]
    CudaGgml(Arc<candle_core::quantized::QTensor>),
}

/// One frozen `[rows, cols]` weight stored quantized, on a device.
#[derive(Clone)]
pub struct QuantWeight {
    pub format: Format,
    pub rows: usize,
    pub cols: usize,
    data: Data,
    device: Device,
}

impl std::fmt::Debug for QuantWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantWeight({}, [{}, {}])", self.format, self.rows, self.cols)
    }
}

fn err(message: String) -> candle_core::Error {
    candle_core::Error::Msg(message)
}

impl QuantWeight {
    /// Quantizes a row-major `[rows, cols]` matrix of `values` to `format` and puts it on `device`.
    pub fn quantize(values: &[f32], rows: usize, cols: usize, format: Format, device: &Device) -> Result<QuantWeight> {
        if values.len() != rows * cols {
            return Err(err(format!("quantize: {} values for a [{rows}, {cols}] weight", values.len())));
        }
        match format {
            Format::Nf4 => QuantWeight::from_nf4(Nf4::quantize(values), rows, cols, device),
            Format::Ggml(kind) => {
                let bytes = quantize(kind, values, cols).map_err(|e| err(format!("quantizing to {}: {e}", kind.name())))?;
                QuantWeight::from_ggml(kind, bytes, rows, cols, device)
            }
        }
    }

    /// A weight from NF4 data quantized elsewhere.
    pub fn from_nf4(q: Nf4, rows: usize, cols: usize, device: &Device) -> Result<QuantWeight> {
        if q.n != rows * cols {
            return Err(err(format!("NF4 data of {} values for a [{rows}, {cols}] weight", q.n)));
        }
        let data = match device {
            Device::Cpu => Data::HostNf4(Arc::new(q)),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => Data::CudaNf4 {
                packed: Tensor::from_vec(q.packed, q.n.div_ceil(2), device)?,
                qabsmax: Tensor::from_slice(&q.qabsmax, q.qabsmax.len(), device)?,
                absmax2: Tensor::from_slice(&q.absmax2, q.absmax2.len(), device)?,
                code8: Tensor::from_slice(nf4::dynamic_map(), 256, device)?,
                offset: q.offset,
            },
            #[allow(unreachable_patterns)]
            _ => return Err(err(format!("quantized base weights are not supported on {device:?}"))),
        };
        Ok(QuantWeight { format: Format::Nf4, rows, cols, data, device: device.clone() })
    }

    /// A weight from ggml blocks (a GGUF tensor's bytes, rows in the model's order).
    pub fn from_ggml(kind: GgmlKind, bytes: Vec<u8>, rows: usize, cols: usize, device: &Device) -> Result<QuantWeight> {
        let want = kind.byte_len(rows * cols).map_err(|e| err(e.to_string()))?;
        if bytes.len() != want || !cols.is_multiple_of(kind.block_size()) {
            return Err(err(format!(
                "{} data of {} bytes for a [{rows}, {cols}] weight ({want} bytes, rows of whole {}-value blocks)",
                kind.name(),
                bytes.len(),
                kind.block_size()
            )));
        }
        let data = match device {
            Device::Cpu => Data::HostGgml(kind, Arc::new(bytes)),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => {
                let dt = candle_ggml_dtype(kind)?;
                let q = candle_core::quantized::ggml_file::qtensor_from_ggml(dt, &bytes, vec![rows, cols], device)?;
                Data::CudaGgml(Arc::new(q))
            }
            #[allow(unreachable_patterns)]
            _ => return Err(err(format!("quantized base weights are not supported on {device:?}"))),
        };
        Ok(QuantWeight { format: Format::Ggml(kind), rows, cols, data, device: device.clone() })
    }

    /// Bytes the weight takes where it is stored.
    pub fn byte_len(&self) -> usize {
        match self.format {
            Format::Nf4 => {
                let n = self.rows * self.cols;
                let blocks = n.div_ceil(nf4::BLOCK);
                n.div_ceil(2) + blocks + 4 * blocks.div_ceil(nf4::BLOCK2) + 4
            }
            Format::Ggml(k) => k.byte_len(self.rows * self.cols).unwrap_or(0),
        }
    }

    /// The weight as a dense `[rows, cols]` tensor of `dtype` on its device: dequantized in f32,
    /// then rounded once to `dtype`.
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        let shape = (self.rows, self.cols);
        match &self.data {
            Data::HostNf4(q) => Tensor::from_vec(q.dequantize(), shape, &self.device)?.to_dtype(dtype),
            Data::HostGgml(kind, bytes) => {
                let mut out = vec![0f32; self.rows * self.cols];
                dequantize_into(*kind, bytes, &mut out).map_err(|e| err(e.to_string()))?;
                Tensor::from_vec(out, shape, &self.device)?.to_dtype(dtype)
            }
            #[cfg(feature = "cuda")]
            Data::CudaNf4 { packed, qabsmax, absmax2, code8, offset } => {
                crate::model::ops::nf4_dequantize(packed, qabsmax, absmax2, code8, *offset, self.rows * self.cols, dtype)?
                    .reshape(shape)
            }
            #[cfg(feature = "cuda")]
            Data::CudaGgml(q) => q.dequantize(&self.device)?.to_dtype(dtype),
        }
    }
}

#[cfg(feature = "cuda")]
fn candle_ggml_dtype(kind: GgmlKind) -> Result<candle_core::quantized::GgmlDType> {
    use candle_core::quantized::GgmlDType as G;
    Ok(match kind {
        GgmlKind::Q4_0 => G::Q4_0,
        GgmlKind::Q4_1 => G::Q4_1,
        GgmlKind::Q5_0 => G::Q5_0,
        GgmlKind::Q5_1 => G::Q5_1,
        GgmlKind::Q8_0 => G::Q8_0,
        GgmlKind::Q4_K => G::Q4K,
        GgmlKind::Q5_K => G::Q5K,
        GgmlKind::Q6_K => G::Q6K,
        GgmlKind::F32 | GgmlKind::F16 | GgmlKind::BF16 => {
            return Err(err(format!("{} weights are stored dense, not as blocks", kind.name())))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n).map(|i| crate::model::rng::normal(seed, i as u64, 0.05)).collect()
    }

    #[test]
    fn every_format_dequantizes_to_what_its_own_dequantizer_gives() {
        let (rows, cols) = (8, 512);
        let v = values(rows * cols, 11);
        for format in [Format::Nf4, Format::Ggml(GgmlKind::Q8_0), Format::Ggml(GgmlKind::Q4_K), Format::Ggml(GgmlKind::Q5_0)] {
            let q = QuantWeight::quantize(&v, rows, cols, format, &Device::Cpu).unwrap();
            let d: Vec<f32> = q.dequantize(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let want = match format {
                Format::Nf4 => Nf4::quantize(&v).dequantize(),
                Format::Ggml(k) => crate::gguf::quant::dequantize(k, &quantize(k, &v, cols).unwrap(), v.len()).unwrap(),
            };
            assert_eq!(d, want, "{format}");
            // Close to the values: 4-bit formats within a few percent of the range.
            let worst = v.iter().zip(&d).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 0.05, "{format}: worst error {worst}");
            let bf: Vec<half::bf16> = q.dequantize(DType::BF16).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert!(bf.iter().zip(&d).all(|(b, f)| *b == half::bf16::from_f32(*f)), "{format}: one rounding to bf16");
        }
    }

    #[test]
    fn q4_k_falls_back_to_q5_0_where_rows_are_not_whole_super_blocks() {
        assert_eq!(BaseQuant::Q4K.format_for(4096), Some(Format::Ggml(GgmlKind::Q4_K)));
        assert_eq!(BaseQuant::Q4K.format_for(576), Some(Format::Ggml(GgmlKind::Q5_0)));
        assert_eq!(BaseQuant::Q8_0.format_for(48), None);
        assert_eq!(BaseQuant::Nf4.format_for(7), Some(Format::Nf4));
        for name in BaseQuant::NAMES {
            assert_eq!(BaseQuant::parse(name).unwrap().name(), *name);
        }
    }

    #[test]
    fn wrong_sizes_are_errors_not_panics() {
        assert!(QuantWeight::quantize(&[0.0; 10], 2, 4, Format::Nf4, &Device::Cpu).is_err());
        assert!(QuantWeight::from_ggml(GgmlKind::Q8_0, vec![0; 33], 1, 64, &Device::Cpu).is_err());
        assert!(QuantWeight::from_ggml(GgmlKind::Q8_0, vec![0; 34], 2, 16, &Device::Cpu).is_err());
    }
}
