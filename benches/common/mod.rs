//! Helpers the benchmarks share (a folder, so Cargo does not take it for a bench target).

use std::io::Write;
use std::path::Path;

/// Writes `bytes` of deterministic pseudo-random data (xorshift64* from `seed`), then fsyncs.
pub fn write_random_file(path: &Path, bytes: u64, seed: u64) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut buf = vec![0u8; 8 << 20];
    let mut left = bytes;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            chunk.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}
