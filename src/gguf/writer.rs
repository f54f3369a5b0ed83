//! The GGUF v3 writer: metadata and tensors to a file, streamed.
//!
//! The layout is the one [`super`] documents for the reader. The writer knows every tensor's
//! name, shape and type before it writes a byte, so it can lay out the tensor-info section (with
//! each tensor's aligned offset) up front and then stream the data one tensor at a time: a caller
//! quantizes tensor `i` only when the writer asks for it, and may hand its bytes over a few
//! rows at a time ([`TensorSink`]), so an export holds one small buffer, not a tensor's bytes.
//!
//! [`write_file`] writes to a temporary name beside the target and renames it into place after
//! an `fsync`, so a killed export never leaves a truncated `.gguf` under the final name. On
//! Linux it asks the kernel to start writing each few MB back to disk as soon as they are
//! written (`sync_file_range`), so the disk works while the next tensors are quantized and
//! the `fsync` waits for the last stretch only (it was ~0.1 s of a 270 MB export); the `fsync`
//! still decides: nothing is renamed before all of the file is on disk.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use super::{GgmlType, GgufValue, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// A failure while writing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The file could not be written.
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A tensor's description is impossible to store.
    #[error("tensor `{name}`: {message}")]
    BadTensor { name: String, message: String },
    /// A metadata value cannot be stored (an empty array has no element type).
    #[error("metadata `{key}`: {message}")]
    BadValue { key: String, message: String },
    /// The producer of a tensor's bytes failed.
    #[error("tensor `{name}`: {message}")]
    Producer { name: String, message: String },
    /// The sink of [`write`] failed ([`write_file`] reports [`WriteError::Io`] with the path).
    #[error("writing: {0}")]
    Sink(std::io::Error),
}

/// One tensor to be written: its name, its shape in row-major order (outermost first, as
/// PyTorch and candle write it; GGUF stores the reverse) and its element type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPlan {
    /// GGUF tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Row-major shape, e.g. `[n_vocab, n_embd]` for the embedding.
    pub shape: Vec<usize>,
    /// Element type of the stored data.
    pub ty: GgmlType,
}

impl TensorPlan {
    /// Bytes the tensor's data takes, or why it cannot be stored (unknown type, or a row
    /// length that is not a whole number of blocks).
    pub fn byte_len(&self) -> Result<u64, WriteError> {
        let bad = |message: String| WriteError::BadTensor { name: self.name.clone(), message };
        let (Some(block), Some(size)) = (self.ty.block_size(), self.ty.type_size()) else {
            return Err(bad(format!("type {} has no known size", self.ty)));
        };
        let row = self.shape.last().copied().unwrap_or(1) as u64;
        if !row.is_multiple_of(block) {
            return Err(bad(format!("rows of {row} values are not a whole number of {}-value {} blocks", block, self.ty)));
        }
        let n: u64 = self.shape.iter().map(|&d| d as u64).product();
        Ok(n / block * size)
    }
}

fn align(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, key: &str, v: &GgufValue) -> Result<(), WriteError> {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(items) => {
            let bad = |message: &str| WriteError::BadValue { key: key.to_string(), message: message.to_string() };
            let first = items.first().ok_or_else(|| bad("an empty array has no element type"))?;
            let ty = first.type_id();
            if items.iter().any(|x| x.type_id() != ty) {
                return Err(bad("array elements have different types"));
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for x in items {
                put_value(out, key, x)?;
            }
        }
    }
    Ok(())
}

/// The header, metadata and tensor infos, padded to the data section, plus each tensor's
/// offset within the data section and the data section's total length.
fn layout(kvs: &[(String, GgufValue)], tensors: &[TensorPlan]) -> Result<(Vec<u8>, Vec<u64>, u64), WriteError> {
    let alignment =
        kvs.iter().find(|(k, _)| k == ALIGNMENT_KEY).and_then(|(_, v)| v.as_u32()).map_or(DEFAULT_ALIGNMENT, u64::from);
    if !alignment.is_power_of_two() {
        return Err(WriteError::BadValue { key: ALIGNMENT_KEY.into(), message: format!("{alignment} is not a power of two") });
    }
    let mut head = Vec::with_capacity(1 << 20);
    head.extend_from_slice(&GGUF_MAGIC);
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut head, k);
        head.extend_from_slice(&v.type_id().to_le_bytes());
        put_value(&mut head, k, v)?;
    }
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut at = 0u64;
    for t in tensors {
        put_str(&mut head, &t.name);
        head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            head.extend_from_slice(&(d as u64).to_le_bytes());
        }
        head.extend_from_slice(&t.ty.id().to_le_bytes());
        head.extend_from_slice(&at.to_le_bytes());
        offsets.push(at);
        at = align(at + t.byte_len()?, alignment);
    }
    head.resize(align(head.len() as u64, alignment) as usize, 0);
    Ok((head, offsets, at))
}

/// Where a producer puts the bytes of one tensor (see [`write`]): any number of writes that
/// add up to exactly the tensor's [`TensorPlan::byte_len`], so a producer can quantize a large
/// tensor a few rows at a time into one small buffer instead of holding all of its bytes.
pub struct TensorSink<'a> {
    out: &'a mut dyn Write,
    written: u64,
    want: u64,
    error: Option<std::io::Error>,
}

impl TensorSink<'_> {
    /// Appends `bytes` to the tensor's data. An error ends the tensor; [`write`] reports it
    /// (a failed write as the sink's I/O error, too many bytes as the producer's).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.written + bytes.len() as u64 > self.want {
            return Err(format!("produced more than the {} bytes its type and shape need", self.want));
        }
        self.out.write_all(bytes).map_err(|e| {
            let message = e.to_string();
            self.error = Some(e);
            message
        })?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// Writes a GGUF v3 file to `out`: `kvs` in order, then `tensors`, asking `data(i, sink)` to
/// write the bytes of tensor `i` (exactly [`TensorPlan::byte_len`] of them, see
/// [`TensorSink`]) in order.
pub fn write<W: Write + Seek>(
    out: &mut W,
    kvs: &[(String, GgufValue)],
    tensors: &[TensorPlan],
    mut data: impl FnMut(usize, &mut TensorSink<'_>) -> Result<(), String>,
) -> Result<(), WriteError> {
    let (head, offsets, total) = layout(kvs, tensors)?;
    out.write_all(&head).map_err(WriteError::Sink)?;
    let base = head.len() as u64;
    let mut written = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let want = t.byte_len()?;
        let pad = offsets[i] - written;
        out.write_all(&vec![0u8; pad as usize]).map_err(WriteError::Sink)?;
        let mut sink = TensorSink { out: &mut *out, written: 0, want, error: None };
        let result = data(i, &mut sink);
        if let Some(e) = sink.error {
            return Err(WriteError::Sink(e));
        }
        result.map_err(|message| WriteError::Producer { name: t.name.clone(), message })?;
        if sink.written != want {
            return Err(WriteError::Producer {
                name: t.name.clone(),
                message: format!("produced {} bytes, its type and shape need {want}", sink.written),
            });
        }
        written = offsets[i] + want;
    }
    out.write_all(&vec![0u8; (total - written) as usize]).map_err(WriteError::Sink)?;
    debug_assert_eq!(out.stream_position().ok(), Some(base + total));
    Ok(())
}

/// Bytes written between two early-writeback requests.
const WRITEBACK_BYTES: u64 = 8 << 20;

/// A file being written that starts writeback of every [`WRITEBACK_BYTES`] written (see the
/// module docs). Only a hint to the kernel: errors are left to the `fsync`.
struct EarlyWriteback {
    file: File,
    at: u64,
    requested: u64,
}

impl EarlyWriteback {
    fn new(file: File) -> Self {
        EarlyWriteback { file, at: 0, requested: 0 }
    }

    fn into_inner(self) -> File {
        self.file
    }

    #[cfg(target_os = "linux")]
    fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on a file descriptor this struct owns; no memory is passed.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                self.requested as libc::off64_t,
                (self.at - self.requested) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.requested = self.at;
    }

    #[cfg(not(target_os = "linux"))]
    fn start_writeback(&mut self) {}
}

impl Write for EarlyWriteback {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.at += n as u64;
        if self.at >= self.requested + WRITEBACK_BYTES {
            self.start_writeback();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for EarlyWriteback {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.at = self.file.seek(pos)?;
        self.requested = self.requested.min(self.at);
        Ok(self.at)
    }
}

/// Writes a GGUF file at `path` atomically (temporary file, fsync, rename). See [`write`].
pub fn write_file(
    path: &Path,
    kvs: &[(String, GgufValue)],
    tensors: &[TensorPlan],
    data: impl FnMut(usize, &mut TensorSink<'_>) -> Result<(), String>,
) -> Result<(), WriteError> {
    let io = |source| WriteError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let file = File::create(&tmp).map_err(io)?;
        // Small writes (headers, padding, norms) are gathered; a producer's large runs are at
        // least this big and go to the file as they are, with no copy through the buffer.
        let mut w = BufWriter::with_capacity(1 << 16, EarlyWriteback::new(file));
        write(&mut w, kvs, tensors, data).map_err(|e| match e {
            WriteError::Sink(source) => io(source),
            e => e,
        })?;
        let file = w.into_inner().map_err(|e| io(e.into_error()))?.into_inner();
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn a_written_file_reads_back_with_metadata_shapes_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let kvs = vec![
            ("general.architecture".to_string(), GgufValue::String("llama".into())),
            ("llama.block_count".to_string(), GgufValue::U32(2)),
            ("llama.rope.freq_base".to_string(), GgufValue::F32(10000.0)),
            ("tokenizer.ggml.add_bos_token".to_string(), GgufValue::Bool(true)),
            (
                "tokenizer.ggml.tokens".to_string(),
                GgufValue::Array(vec![GgufValue::String("a".into()), GgufValue::String("好".into())]),
            ),
            ("tokenizer.ggml.token_type".to_string(), GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(3)])),
        ];
        let a: Vec<f32> = (0..6).map(|x| x as f32).collect();
        let b: Vec<f32> = vec![0.5; 3];
        let tensors = vec![
            TensorPlan { name: "a".into(), shape: vec![2, 3], ty: GgmlType::F32 },
            TensorPlan { name: "b".into(), shape: vec![3], ty: GgmlType::F32 },
        ];
        let data = [f32_bytes(&a), f32_bytes(&b)];
        write_file(&path, &kvs, &tensors, |i, sink| sink.write(&data[i])).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.metadata, kvs);
        assert_eq!(f.tensors[0].dims, vec![3, 2], "GGUF dims are innermost first");
        assert_eq!(f.tensors[1].offset % DEFAULT_ALIGNMENT, 0);
        assert_eq!(f.tensor_bytes(&f.tensors[0]).unwrap(), data[0]);
        assert_eq!(f.tensor_bytes(&f.tensors[1]).unwrap(), data[1]);
        assert!(std::fs::read_dir(dir.path()).unwrap().count() == 1, "no temporary file is left behind");
    }

    #[test]
    fn a_short_producer_is_an_error_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let tensors = vec![TensorPlan { name: "w".into(), shape: vec![4], ty: GgmlType::F32 }];
        let e = write_file(&path, &[], &tensors, |_, sink| sink.write(&[0u8; 3])).unwrap_err();
        assert!(e.to_string().contains("tensor `w`: produced 3 bytes"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_producer_may_write_in_pieces_but_not_past_its_tensor() {
        let tensors = vec![TensorPlan { name: "w".into(), shape: vec![2, 2], ty: GgmlType::F32 }];
        let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
        let mut a = std::io::Cursor::new(Vec::new());
        write(&mut a, &[], &tensors, |_, sink| sink.write(&data)).unwrap();
        let mut b = std::io::Cursor::new(Vec::new());
        write(&mut b, &[], &tensors, |_, sink| data.chunks(3).try_for_each(|c| sink.write(c))).unwrap();
        assert_eq!(a.into_inner(), b.into_inner());
        let e = write(&mut std::io::Cursor::new(Vec::new()), &[], &tensors, |_, sink| {
            sink.write(&data)?;
            sink.write(&[0])
        })
        .unwrap_err();
        assert!(e.to_string().contains("tensor `w`: produced more than the 16 bytes"), "{e}");
    }

    #[test]
    fn rows_that_are_not_whole_blocks_are_rejected_up_front() {
        let t = TensorPlan { name: "w".into(), shape: vec![2, 48], ty: GgmlType::Q8_0 };
        assert!(t.byte_len().unwrap_err().to_string().contains("48 values are not a whole number of 32-value q8_0 blocks"));
        let t = TensorPlan { name: "w".into(), shape: vec![2, 64], ty: GgmlType::Q8_0 };
        assert_eq!(t.byte_len().unwrap(), 2 * 2 * 34);
    }

    #[test]
    fn empty_and_mixed_arrays_are_rejected() {
        let mut out = Vec::new();
        assert!(put_value(&mut out, "k", &GgufValue::Array(vec![])).is_err());
        assert!(put_value(&mut out, "k", &GgufValue::Array(vec![GgufValue::U8(1), GgufValue::I8(1)])).is_err());
    }
}
