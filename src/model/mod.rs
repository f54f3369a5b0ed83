//! Model code: candle tensors only; nothing here knows about pipelines, YAML or the cache.
//!
//! | file | |
//! |---|---|
//! | [`arch`] | the architectures: what each decides (names, biases, GGUF row order), the one tensor list, known shapes |
//! | [`base_quant`] | frozen projection weights stored in 4 or 8 bits for QLoRA: bitsandbytes' NF4, ggml blocks |
//! | [`config`] | hyper-parameters from config.json or GGUF metadata |
//! | [`error`] | [`ModelError`](error::ModelError): the model code's own failures (unknown architecture, missing tensor, shape mismatch ...) |
//! | [`llama`] | the decoder of every architecture: LoRA forward, explicit backward, KV-cached inference, merge |
//! | [`lora`] | the flat LoRA parameter layout and peft-style init |
//! | [`gguf_order`] | the Q/K row order in GGUF, both ways |
//! | [`generate`] | greedy or sampled decoding with the KV cache |
//! | [`ggml_cpu`] | the activation rounding llama.cpp's CPU matmuls do for Q8_0 weights (for the export gate) |
//! | [`load`] | weights from GGUF (dequantized, Q/K un-permuted) or Hugging Face safetensors |
//! | [`safetensors`] | the safetensors files of a Hugging Face folder: headers, and the tensors memory-mapped |
//! | [`to_gguf`] | a model as GGUF metadata and tensors (for the export) |
//! | [`peft`] | reading and writing peft adapter folders |
//! | [`rng`] | counter-based random numbers: seeds, dropout masks, random weights |
//! | [`ops`] | fused forward/backward ops (norm, RoPE, SwiGLU, cross-entropy, dropout): CPU reference, CUDA kernels |

pub mod arch;
pub mod base_quant;
pub mod config;
pub mod error;
pub mod generate;
pub mod ggml_cpu;
pub mod gguf_order;
pub mod llama;
pub mod load;
pub mod lora;
pub mod ops;
pub mod peft;
pub mod rng;
pub mod safetensors;
pub mod to_gguf;
