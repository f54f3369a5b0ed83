//! Compiles the fused-op CUDA kernels (`src/model/ops/kernels/*.cu`) to PTX when the `cuda`
//! feature is on; `src/model/ops/cuda.rs` embeds the PTX with `include_str!`. The default (CPU)
//! build does nothing here and needs no CUDA toolkit.
//!
//! The target architecture comes from `CUDA_COMPUTE_CAP` (`90`, or `9.0`), else from
//! `nvidia-smi`, else sm_80 (the oldest with bf16 arithmetic; its PTX is JIT-compiled on newer
//! cards). `NVCC` overrides the compiler (default: `nvcc` on `PATH`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const KERNEL_DIR: &str = "src/model/ops/kernels";
const KERNELS: &[&str] = &["rms_norm", "rope", "swiglu", "cross_entropy", "dropout", "attention", "attention_tc", "lora", "nf4"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={KERNEL_DIR}");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = compute_cap();
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    for name in KERNELS {
        let src = Path::new(KERNEL_DIR).join(format!("{name}.cu"));
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=sm_{cap}"), "-I", KERNEL_DIR])
            .arg(&src)
            .arg("-o")
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| panic!("running {nvcc} (needed by the `cuda` feature): {e}"));
        assert!(status.success(), "{nvcc} failed on {}", src.display());
    }
}

fn compute_cap() -> String {
    if let Ok(cap) = env::var("CUDA_COMPUTE_CAP") {
        return cap.trim().replace('.', "");
    }
    let smi = Command::new("nvidia-smi").args(["--query-gpu=compute_cap", "--format=csv,noheader"]).output();
    if let Ok(o) = smi {
        if let Some(first) = String::from_utf8_lossy(&o.stdout).lines().next() {
            if !first.trim().is_empty() {
                return first.trim().replace('.', "");
            }
        }
    }
    println!("cargo:warning=CUDA_COMPUTE_CAP unset and no nvidia-smi: building the fused-op kernels for sm_80");
    "80".to_string()
}
