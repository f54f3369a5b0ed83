//! Training data: records files in, the tokenized dataset file out.
//!
//! | file | |
//! |---|---|
//! | [`mod@self`] | the token dataset file: [`TokenDataset`] (read, write) and the streaming [`DatasetWriter`] |
//! | [`records`] | reading a JSON array of records, borrowed; serde_json error positions |
//! | [`chat`] | conversation records (`messages`, `sharegpt`): schemas, field names, validation |
//! | [`csv_records`] | CSV records files, streamed row by row into JSON objects |
//! | [`parquet_records`] | Parquet records files, read a row group at a time into JSON objects |
//! | [`rows`] | what the CSV and Parquet readers give back: good rows, located bad ones |
//! | [`encode`] | records to training pairs to ids, in parallel, written in order |
//!
//! The token dataset file is written by `tokenize` and read by training.
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

pub mod chat;
pub mod csv_records;
pub mod encode;
pub mod parquet_records;
pub mod records;
pub mod rows;

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

/// Writes a dataset file as records arrive, without holding their ids: the ids go straight
/// to the file, after room left for the offsets of at most `max_records` records; the header,
/// the offsets and the `trained` flags are written by [`DatasetWriter::finish`]. Each record is
/// `(length, n_runs)` and its label mask is `n_runs` run lengths that alternate untrained,
/// trained, untrained, ... (the first may be 0): a prompt/answer pair is the two runs
/// `[prompt, answer]`, a conversation one pair of runs per assistant turn. The runs of a record
/// sum to at most its length; tokens after them are untrained. The bytes equal
/// [`TokenDataset::write`]'s for the same records.
pub struct DatasetWriter {
    file: std::fs::File,
    max_records: usize,
    /// (length, end of the record's runs in `runs`).
    records: Vec<(u32, usize)>,
    runs: Vec<u32>,
    n_tokens: u64,
    buf: Vec<u8>,
}

/// Bytes the writer collects before each `write`.
const BLOCK: usize = 1 << 18;

impl DatasetWriter {
    /// Creates the file, for at most `max_records` records.
    pub fn create(path: &Path, max_records: usize) -> std::io::Result<DatasetWriter> {
        use std::io::{Seek, SeekFrom};
        // Read too: `finish` may move the ids down.
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        file.seek(SeekFrom::Start(Self::ids_at(max_records)))?;
        Ok(DatasetWriter {
            file,
            max_records,
            records: Vec::new(),
            runs: Vec::new(),
            n_tokens: 0,
            buf: Vec::with_capacity(BLOCK),
        })
    }

    fn ids_at(n_records: usize) -> u64 {
        32 + 8 * (n_records as u64 + 1)
    }

    /// Appends records as `(length, n_runs)`, their mask runs back to back (the sum of the
    /// records' `n_runs`) and their ids (the sum of the records' lengths).
    pub fn push(&mut self, records: &[(u32, u32)], runs: &[u32], ids: &[u32]) -> std::io::Result<()> {
        debug_assert_eq!(records.iter().map(|r| r.0 as usize).sum::<usize>(), ids.len());
        debug_assert_eq!(records.iter().map(|r| r.1 as usize).sum::<usize>(), runs.len());
        assert!(self.records.len() + records.len() <= self.max_records, "more records than the writer was made for");
        let mut at = 0;
        for &(len, n_runs) in records {
            at += n_runs as usize;
            self.records.push((len, self.runs.len() + at));
        }
        self.runs.extend_from_slice(runs);
        self.n_tokens += ids.len() as u64;
        for block in ids.chunks(BLOCK / 4) {
            self.buf.clear();
            for id in block {
                self.buf.extend_from_slice(&id.to_le_bytes());
            }
            self.file.write_all(&self.buf)?;
        }
        Ok(())
    }

    /// Number of records pushed so far.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Writes the flags, the header and the offsets (moving the ids up where fewer records than
    /// `max_records` came) and closes the file.
    pub fn finish(mut self) -> std::io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let n = self.records.len();
        let (room, need) = (Self::ids_at(self.max_records), Self::ids_at(n));
        let ids_end = need + 4 * self.n_tokens;
        if need < room {
            // Move the ids down, front to back (the target is below the source).
            let mut block = vec![0u8; BLOCK];
            let mut done = 0u64;
            while done < 4 * self.n_tokens {
                let k = (4 * self.n_tokens - done).min(BLOCK as u64) as usize;
                self.file.seek(SeekFrom::Start(room + done))?;
                self.file.read_exact(&mut block[..k])?;
                self.file.seek(SeekFrom::Start(need + done))?;
                self.file.write_all(&block[..k])?;
                done += k as u64;
            }
        }
        self.file.seek(SeekFrom::Start(ids_end))?;
        self.buf.clear();
        let mut run_start = 0;
        for &(len, run_end) in &self.records {
            let mut left = len as usize;
            for (k, &run) in self.runs[run_start..run_end].iter().enumerate() {
                let n = (run as usize).min(left);
                self.buf.resize(self.buf.len() + n, u8::from(k % 2 == 1));
                left -= n;
            }
            self.buf.resize(self.buf.len() + left, 0);
            run_start = run_end;
            if self.buf.len() >= BLOCK {
                self.file.write_all(&self.buf)?;
                self.buf.clear();
            }
        }
        self.file.write_all(&self.buf)?;
        self.file.set_len(ids_end + self.n_tokens)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.buf.clear();
        self.buf.extend_from_slice(MAGIC);
        self.buf.extend_from_slice(&VERSION.to_le_bytes());
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        self.buf.extend_from_slice(&(n as u64).to_le_bytes());
        self.buf.extend_from_slice(&self.n_tokens.to_le_bytes());
        let mut at = 0u64;
        self.buf.extend_from_slice(&at.to_le_bytes());
        for &(len, _) in &self.records {
            at += u64::from(len);
            self.buf.extend_from_slice(&at.to_le_bytes());
            if self.buf.len() >= BLOCK {
                self.file.write_all(&self.buf)?;
                self.buf.clear();
            }
        }
        self.file.write_all(&self.buf)?;
        self.file.flush()
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
    fn the_streaming_writer_gives_the_bytes_of_the_dataset() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("w.bin");
        let ids: Vec<u32> = (0..300_000).map(|i| i * 7 % 50_000).collect();
        // Records of one run (all untrained), two runs (prompt, answer) and five runs (turns),
        // some runs longer than what is left of the record.
        let masks: Vec<Vec<u32>> = (0..1000u32)
            .map(|i| match i % 3 {
                0 => vec![300],
                1 => vec![i % 301, 300 - i % 301],
                _ => vec![i % 50, 20, 7, i % 90, 400],
            })
            .collect();
        let recs: Vec<(u32, u32)> = masks.iter().map(|m| (300, m.len() as u32)).collect();
        let runs: Vec<u32> = masks.concat();
        let mut d = TokenDataset::default();
        for (r, m) in masks.iter().enumerate() {
            let mut flags: Vec<u8> =
                m.iter().enumerate().flat_map(|(k, &n)| std::iter::repeat_n(u8::from(k % 2 == 1), n as usize)).collect();
            flags.resize(300, 0);
            flags.truncate(300);
            d.push(&ids[r * 300..(r + 1) * 300], &flags);
        }
        // Room for exactly these records, for more (the ids move down), and for none at all.
        for room in [1000, 1000 + 70_000, 5_000_000] {
            let mut w = DatasetWriter::create(&p, room).unwrap();
            let (a, b) = ids.split_at(123 * 300);
            let split = masks[..123].iter().map(Vec::len).sum::<usize>();
            w.push(&recs[..123], &runs[..split], a).unwrap();
            w.push(&[], &[], &[]).unwrap();
            w.push(&recs[123..], &runs[split..], b).unwrap();
            w.finish().unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), d.to_bytes(), "room for {room}");
        }
        DatasetWriter::create(&p, 10).unwrap().finish().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), TokenDataset::default().to_bytes());
    }
}
