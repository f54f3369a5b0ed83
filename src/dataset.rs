//! The tokenized dataset file written by `tokenize` and read by training.
//!
//! Layout (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `PIPETOK\0` |
//! | 8 | 4 | format version, u32 = 1 |
//! | 12 | 4 | flags, u32 = 0 (reserved) |
//! | 16 | 8 | `n_records`, u64 |
//! | 24 | 8 | `n_tokens`, u64 |
//! | 32 | 8 × (n_records + 1) | `offsets`: token index where each record starts; the last is `n_tokens` |
//! | … | 4 × n_tokens | `ids`: token ids, u32 |
//! | … | n_tokens | `trained`: 1 when the token is a label, 0 when its label is -100 |
//!
//! Record `r` is tokens `offsets[r]..offsets[r+1]`; its labels are `ids[i]` where `trained[i]` is
//! 1 and -100 elsewhere (the shift by one for next-token prediction is the trainer's business,
//! as in Hugging Face). Python reads it with numpy in five lines (see README).

use std::io::Write;
use std::path::Path;

/// The magic bytes.
pub const MAGIC: &[u8; 8] = b"PIPETOK\0";
/// The layout version.
pub const VERSION: u32 = 1;

/// A tokenized dataset in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenDataset {
    /// Token index where each record starts, plus the total at the end.
    pub offsets: Vec<u64>,
    /// All token ids, records back to back.
    pub ids: Vec<u32>,
    /// 1 where the token is trained.
    pub trained: Vec<u8>,
}

/// A malformed dataset file.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// I/O failed.
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    /// The bytes are not a dataset of this version.
    #[error("{path}: not a pipe token dataset: {message}")]
    Format { path: std::path::PathBuf, message: String },
}

impl TokenDataset {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// True when there are no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one record.
    pub fn push(&mut self, ids: &[u32], trained: &[u8]) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.ids.extend_from_slice(ids);
        self.trained.extend_from_slice(trained);
        self.offsets.push(self.ids.len() as u64);
    }

    /// Record `r`: (ids, labels with -100 for untrained tokens).
    pub fn record(&self, r: usize) -> (&[u32], Vec<i64>) {
        let (a, b) = (self.offsets[r] as usize, self.offsets[r + 1] as usize);
        let labels =
            self.ids[a..b].iter().zip(&self.trained[a..b]).map(|(&id, &t)| if t == 1 { i64::from(id) } else { -100 }).collect();
        (&self.ids[a..b], labels)
    }

    /// Serialises to the documented layout.
    pub fn to_bytes(&self) -> Vec<u8> {
        let offsets: &[u64] = if self.offsets.is_empty() { &[0] } else { &self.offsets };
        let mut out = Vec::with_capacity(32 + offsets.len() * 8 + self.ids.len() * 5);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&((offsets.len() - 1) as u64).to_le_bytes());
        out.extend_from_slice(&(self.ids.len() as u64).to_le_bytes());
        for o in offsets {
            out.extend_from_slice(&o.to_le_bytes());
        }
        for id in &self.ids {
            out.extend_from_slice(&id.to_le_bytes());
        }
        out.extend_from_slice(&self.trained);
        out
    }

    /// Writes the file.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        f.write_all(&self.to_bytes())?;
        f.flush()
    }

    /// Writes records given as parts without building a [`TokenDataset`]: each part is
    /// `(records, ids)`, a record being `(length, untrained)`: `length` ids of `ids`, in order,
    /// the first `untrained` of them with label -100 and the rest trained (the shape of every
    /// record `tokenize` makes). The bytes are those [`TokenDataset::write`] writes for the same
    /// records.
    pub fn write_parts(path: &Path, parts: &[(&[(u32, u32)], &[u32])]) -> std::io::Result<()> {
        let n_records: usize = parts.iter().map(|p| p.0.len()).sum();
        let n_tokens: usize = parts.iter().map(|p| p.1.len()).sum();
        debug_assert!(parts.iter().all(|(r, ids)| r.iter().map(|x| x.0 as usize).sum::<usize>() == ids.len()));
        let mut f = std::fs::File::create(path)?;
        // One reused buffer: the file is written in blocks of about this size.
        const BLOCK: usize = 1 << 18;
        let mut buf: Vec<u8> = Vec::with_capacity(BLOCK + 64);
        fn flush(buf: &mut Vec<u8>, f: &mut std::fs::File, force: bool) -> std::io::Result<()> {
            if force || buf.len() >= BLOCK {
                f.write_all(buf)?;
                buf.clear();
            }
            Ok(())
        }
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&(n_records as u64).to_le_bytes());
        buf.extend_from_slice(&(n_tokens as u64).to_le_bytes());
        let mut at = 0u64;
        buf.extend_from_slice(&at.to_le_bytes());
        for (recs, _) in parts {
            for &(len, _) in *recs {
                at += u64::from(len);
                buf.extend_from_slice(&at.to_le_bytes());
                flush(&mut buf, &mut f, false)?;
            }
        }
        for (_, ids) in parts {
            for block in ids.chunks(BLOCK / 4) {
                for id in block {
                    buf.extend_from_slice(&id.to_le_bytes());
                }
                flush(&mut buf, &mut f, false)?;
            }
        }
        for (recs, _) in parts {
            for &(len, untrained) in *recs {
                let untrained = untrained.min(len) as usize;
                buf.resize(buf.len() + untrained, 0);
                buf.resize(buf.len() + (len as usize - untrained), 1);
                flush(&mut buf, &mut f, false)?;
            }
        }
        flush(&mut buf, &mut f, true)
    }

    /// Reads and validates a file.
    pub fn read(path: &Path) -> Result<TokenDataset, DatasetError> {
        let b = std::fs::read(path).map_err(|source| DatasetError::Io { path: path.to_path_buf(), source })?;
        let bad = |m: &str| DatasetError::Format { path: path.to_path_buf(), message: m.to_string() };
        if b.len() < 32 || &b[..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(8) != VERSION {
            return Err(bad(&format!("unsupported version {}", u32_at(8))));
        }
        let (n_rec, n_tok) = (u64_at(16) as usize, u64_at(24) as usize);
        let need = n_rec
            .checked_add(1)
            .and_then(|x| x.checked_mul(8))
            .and_then(|x| x.checked_add(32))
            .and_then(|x| x.checked_add(n_tok.checked_mul(5)?));
        if need != Some(b.len()) {
            return Err(bad("length does not match the header"));
        }
        let offsets: Vec<u64> = (0..=n_rec).map(|r| u64_at(32 + r * 8)).collect();
        if offsets.windows(2).any(|w| w[0] > w[1]) || offsets.last() != Some(&(n_tok as u64)) || offsets[0] != 0 {
            return Err(bad("offsets are not increasing from 0 to n_tokens"));
        }
        let ids_at = 32 + (n_rec + 1) * 8;
        let ids = (0..n_tok).map(|i| u32_at(ids_at + i * 4)).collect();
        let trained = b[ids_at + n_tok * 4..].to_vec();
        Ok(TokenDataset { offsets, ids, trained })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let t = tempfile::tempdir().unwrap();
        let mut d = TokenDataset::default();
        d.push(&[1, 2, 3], &[0, 1, 1]);
        d.push(&[4], &[1]);
        let p = t.path().join("d.bin");
        d.write(&p).unwrap();
        let back = TokenDataset::read(&p).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.record(0).1, vec![-100, 2, 3]);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.pop();
        std::fs::write(&p, &bytes).unwrap();
        assert!(TokenDataset::read(&p).is_err());
    }

    #[test]
    fn writing_parts_gives_the_bytes_of_the_dataset() {
        let t = tempfile::tempdir().unwrap();
        let mut d = TokenDataset::default();
        let ids: Vec<u32> = (0..300_000).map(|i| i * 7 % 50_000).collect();
        let recs: Vec<(u32, u32)> = (0..1000u32).map(|i| (300, i % 301)).collect();
        for (r, &(len, untrained)) in recs.iter().enumerate() {
            let flags: Vec<u8> = (0..len).map(|i| u8::from(i >= untrained)).collect();
            d.push(&ids[r * 300..(r + 1) * 300], &flags);
        }
        let p = t.path().join("parts.bin");
        let (a, b) = ids.split_at(123 * 300);
        TokenDataset::write_parts(&p, &[(&recs[..123], a), (&[], &[]), (&recs[123..], b)]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), d.to_bytes());
        TokenDataset::write_parts(&p, &[]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), TokenDataset::default().to_bytes());
    }
}
