//! Reading GGUF headers, metadata and tensor descriptions.
//!
//! # What
//!
//! [`GgufFile::open`] parses everything in a GGUF file except the tensor data:
//! the header, every metadata key/value pair (kept in file order), and every
//! tensor description. Tensor bytes are read on demand with
//! [`GgufFile::tensor_bytes`].
//!
//! # How
//!
//! The file is read front to back through a [`BufReader`]; a small cursor
//! (`Parser`) tracks the byte offset so every error can say where it
//! happened. Before any allocation sized by the file (strings, arrays) the
//! length is checked against the bytes left in the file, so a corrupt length
//! field gives [`GgufError::Truncated`] instead of a huge allocation. After
//! parsing, each tensor of a known [`GgmlType`] is checked to lie inside the
//! file, so a file cut short anywhere is rejected at `open`.
//!
//! The checks mirror ggml's `gguf_init_from_file`: magic, version 2 or 3,
//! non-empty and unique keys, known value types, power-of-two
//! `general.alignment`, at most 4 dims per tensor, unique tensor names,
//! aligned tensor offsets, rows that are whole blocks.
//!
//! # Limits
//!
//! * String values must be valid UTF-8 ([`GgufError::InvalidUtf8`]); a few
//!   vocabularies (RWKV) store raw bytes and cannot be opened.
//! * Nested arrays are accepted up to [`MAX_ARRAY_DEPTH`] levels.
//! * Tensor offsets are not required to be packed in order (ggml requires
//!   that); only alignment and bounds are checked.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{value_type_name, GgmlType, GgufValue, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// Deepest nesting of arrays inside arrays that the reader accepts.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// Errors from opening or reading a GGUF file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The OS refused to open, seek or read the file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The first four bytes are not `GGUF`.
    #[error("{}: not a GGUF file (magic bytes {found:02x?}, expected \"GGUF\")", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The version is not 2 or 3 (1 is obsolete; a huge value means big-endian).
    #[error("{}: unsupported GGUF version {version} (this reader supports 2 and 3{hint})", path.display(),
        hint = if *version > 0xffff { "; the file may be big-endian" } else { "" })]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version field as read (little-endian).
        version: u32,
    },
    /// The file ends (or a length field points) before the data it announces.
    #[error("{}: truncated at offset {offset}: {what} needs bytes past the end of the file", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Byte offset where the missing data starts.
        offset: u64,
        /// What was being read.
        what: String,
    },
    /// A key, tensor name or string value is not valid UTF-8.
    #[error("{}: invalid UTF-8 in {what} at offset {offset}", path.display())]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the string's bytes.
        offset: u64,
        /// Which string (`key #3`, `value of key 'general.name'`...).
        what: String,
    },
    /// A value type id outside `0..=12`.
    #[error("{}: unknown value type {type_id} for key '{key}' at offset {offset}", path.display())]
    UnknownValueType {
        /// The file.
        path: PathBuf,
        /// Byte offset of the type id.
        offset: u64,
        /// The key whose value (or array element type) it is.
        key: String,
        /// The type id read.
        type_id: u32,
    },
    /// A key is empty or appears twice.
    #[error("{}: {problem} key '{key}' at offset {offset}", path.display())]
    InvalidKey {
        /// The file.
        path: PathBuf,
        /// Byte offset of the key.
        offset: u64,
        /// The key.
        key: String,
        /// `"empty"` or `"duplicate"`.
        problem: &'static str,
    },
    /// A value is well-formed but not allowed (bool byte 2, alignment 3, arrays nested too deep...).
    #[error("{}: invalid value for key '{key}': {reason}", path.display())]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor description is inconsistent (too many dims, misaligned offset, duplicate name...).
    #[error("{}: tensor '{name}': {reason}", path.display())]
    InvalidTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// [`GgufFile::tensor_bytes`] was asked for a tensor whose type has no known size.
    #[error("{}: tensor '{name}' has ggml type id {type_id}, whose byte size this reader does not know", path.display())]
    UnknownTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The ggml type id.
        type_id: u32,
    },
}

/// One tensor's description from the tensor-info section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions as stored: ggml order, fastest-varying first (`[n_embd, n_vocab]`
    /// for a PyTorch `[n_vocab, n_embd]` weight).
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Byte offset of the data, relative to [`GgufFile::data_offset`].
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements (product of dims; 1 for a 0-dim tensor).
    ///
    /// Checked at open not to overflow, so this never wraps for parsed tensors.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Size of the data in bytes, `None` if the type's size is unknown, the
    /// first dim is not a whole number of blocks, or the size overflows.
    pub fn n_bytes(&self) -> Option<u64> {
        let block = self.ggml_type.block_size()?;
        let size = self.ggml_type.type_size()?;
        let row = self.dims.first().copied().unwrap_or(1);
        if row % block != 0 {
            return None;
        }
        (self.n_elements() / block).checked_mul(size)
    }
}

/// A parsed GGUF file: metadata and tensor descriptions, no tensor data.
#[derive(Debug, Clone)]
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key/value pairs, in file order.
    pub metadata: Vec<(String, GgufValue)>,
    /// Tensor descriptions, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute byte offset of the tensor data section.
    pub data_offset: u64,
    /// Alignment of the data section (`general.alignment`, default 32).
    pub alignment: u64,
    path: PathBuf,
}

impl GgufFile {
    /// Parses the header, metadata and tensor infos of the GGUF file at `path`.
    ///
    /// Tensor data is not read, but every tensor of a known type is checked to
    /// lie inside the file.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io_err = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        parse(BufReader::with_capacity(1 << 16, file), path.to_path_buf(), len)
    }

    /// The path this file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of metadata key `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The string value of `key`; `None` if absent or not a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// The value of `key` as a `u32`, accepting any integer type whose value fits.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key)?.as_u32()
    }

    /// The value of `key` as an `f32`, accepting `f32` and (narrowed) `f64`.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    /// The bool value of `key`; `None` if absent or not a bool.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// The elements of a string array; `None` if absent, not an array, or any element is not a string.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?.as_array()?.iter().map(GgufValue::as_str).collect()
    }

    /// The elements of an integer array as `i32`; `None` if absent, not an
    /// array, or any element is not an integer that fits in `i32`.
    pub fn get_i32_array(&self, key: &str) -> Option<Vec<i32>> {
        self.get(key)?.as_array()?.iter().map(GgufValue::as_i32).collect()
    }

    /// The description of the tensor called `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Reads the raw (possibly quantized) bytes of tensor `t` from the file.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<Vec<u8>, GgufError> {
        let n = t.n_bytes().ok_or_else(|| match t.ggml_type {
            GgmlType::Unknown(type_id) => GgufError::UnknownTensorType { path: self.path.clone(), name: t.name.clone(), type_id },
            ty => GgufError::InvalidTensor {
                path: self.path.clone(),
                name: t.name.clone(),
                reason: format!("dims {:?} are not whole blocks of {ty}", t.dims),
            },
        })?;
        let start = self.data_offset.checked_add(t.offset).ok_or_else(|| GgufError::InvalidTensor {
            path: self.path.clone(),
            name: t.name.clone(),
            reason: format!("offset {} overflows", t.offset),
        })?;
        let io_err = |source| GgufError::Io { path: self.path.clone(), source };
        let mut file = File::open(&self.path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let truncated = || GgufError::Truncated {
            path: self.path.clone(),
            offset: start,
            what: format!("data of tensor '{}' ({n} bytes)", t.name),
        };
        if start.checked_add(n).is_none_or(|end| end > len) {
            return Err(truncated());
        }
        let n_usize = usize::try_from(n).map_err(|_| truncated())?;
        file.seek(SeekFrom::Start(start)).map_err(io_err)?;
        let mut buf = vec![0u8; n_usize];
        file.read_exact(&mut buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => truncated(),
            _ => io_err(e),
        })?;
        Ok(buf)
    }
}

/// Parses a whole GGUF header from `r`; `len` is the total byte length of the
/// source (used to bound lengths before allocating). `path` labels errors and
/// is where [`GgufFile::tensor_bytes`] will read from.
pub(crate) fn parse<R: Read>(r: R, path: PathBuf, len: u64) -> Result<GgufFile, GgufError> {
    let mut p = Parser { r, pos: 0, len, path };

    let magic: [u8; 4] = p.array(|| "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { path: p.path, found: magic });
    }
    let version = p.u32(|| "version".into())?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { path: p.path, version });
    }
    let n_tensors = p.u64(|| "tensor count".into())?;
    let n_kv = p.u64(|| "metadata count".into())?;

    // Capacity is capped: the counts are untrusted until the entries are read.
    let mut metadata = Vec::with_capacity(n_kv.min(1024) as usize);
    let mut seen = HashSet::new();
    for i in 0..n_kv {
        let key_offset = p.pos;
        let key = p.string(|| format!("key #{i}"))?;
        if key.is_empty() || !seen.insert(key.clone()) {
            let problem = if key.is_empty() { "empty" } else { "duplicate" };
            return Err(GgufError::InvalidKey { path: p.path, offset: key_offset, key, problem });
        }
        let type_offset = p.pos;
        let type_id = p.u32(|| format!("value type of key '{key}'"))?;
        let value = p.value(type_id, type_offset, &key, 0)?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some((_, GgufValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
        Some((_, v)) => {
            return Err(GgufError::InvalidValue {
                path: p.path,
                key: ALIGNMENT_KEY.into(),
                reason: format!("must be a u32 power of two, found {v:?}"),
            })
        }
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors.min(4096) as usize);
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let name = p.string(|| format!("name of tensor #{i}"))?;
        let invalid =
            |p: &Parser<R>, reason: String| GgufError::InvalidTensor { path: p.path.clone(), name: name.clone(), reason };
        let n_dims = p.u32(|| format!("dimension count of tensor '{name}'"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(invalid(&p, format!("{n_dims} dimensions, at most {MAX_DIMS} allowed")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(p.u64(|| format!("dimension {d} of tensor '{name}'"))?);
        }
        // ggml keeps element counts in i64.
        let n_elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64));
        if n_elements.is_none() {
            return Err(invalid(&p, format!("shape {dims:?} has too many elements")));
        }
        let ggml_type = GgmlType::from_id(p.u32(|| format!("type of tensor '{name}'"))?);
        let offset = p.u64(|| format!("data offset of tensor '{name}'"))?;
        if offset % alignment != 0 {
            return Err(invalid(&p, format!("data offset {offset} is not a multiple of the alignment {alignment}")));
        }
        if !names.insert(name.clone()) {
            return Err(invalid(&p, "duplicate tensor name".into()));
        }
        tensors.push(TensorInfo { name, dims, ggml_type, offset });
    }

    let data_offset = p.pos.div_ceil(alignment) * alignment;

    for t in &tensors {
        if t.ggml_type.block_size().is_none() {
            continue; // unknown type: size unknown, checked when read
        }
        let Some(n) = t.n_bytes() else {
            return Err(GgufError::InvalidTensor {
                path: p.path,
                name: t.name.clone(),
                reason: format!("dims {:?} are not whole blocks of {}", t.dims, t.ggml_type),
            });
        };
        let start = data_offset.checked_add(t.offset);
        if start.and_then(|s| s.checked_add(n)).is_none_or(|end| end > len) {
            return Err(GgufError::Truncated {
                path: p.path,
                offset: len.min(start.unwrap_or(u64::MAX)),
                what: format!("data of tensor '{}' ({n} bytes at data offset {})", t.name, t.offset),
            });
        }
    }

    Ok(GgufFile { version, metadata, tensors, data_offset, alignment, path: p.path })
}

/// A read cursor over the header that knows its offset and the source length.
struct Parser<R> {
    r: R,
    pos: u64,
    len: u64,
    path: PathBuf,
}

impl<R: Read> Parser<R> {
    fn truncated(&self, what: String) -> GgufError {
        GgufError::Truncated { path: self.path.clone(), offset: self.pos, what }
    }

    /// Fails unless `n` more bytes exist in the source.
    fn ensure(&self, n: u64, what: impl Fn() -> String) -> Result<(), GgufError> {
        if self.len.saturating_sub(self.pos) < n {
            return Err(self.truncated(what()));
        }
        Ok(())
    }

    fn fill(&mut self, buf: &mut [u8], what: impl Fn() -> String) -> Result<(), GgufError> {
        self.ensure(buf.len() as u64, &what)?;
        match self.r.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            // The file shrank under us, or `len` was wrong.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.truncated(what())),
            Err(source) => Err(GgufError::Io { path: self.path.clone(), source }),
        }
    }

    fn array<const N: usize>(&mut self, what: impl Fn() -> String) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    fn u32(&mut self, what: impl Fn() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl Fn() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String, GgufError> {
        let n = self.u64(|| format!("length of {}", what()))?;
        self.ensure(n, || format!("{} ({n} bytes)", what()))?;
        let offset = self.pos;
        // `ensure` bounds n by the source length, so this allocation is safe.
        let mut bytes = vec![0u8; n as usize];
        self.fill(&mut bytes, &what)?;
        String::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { path: self.path.clone(), offset, what: what() })
    }

    /// Reads one value of type `type_id` (read at `type_offset`) for `key`.
    fn value(&mut self, type_id: u32, type_offset: u64, key: &str, depth: usize) -> Result<GgufValue, GgufError> {
        let what = || format!("value of key '{key}'");
        Ok(match type_id {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => {
                    return Err(GgufError::InvalidValue {
                        path: self.path.clone(),
                        key: key.into(),
                        reason: format!("bool byte {b} at offset {} is neither 0 nor 1", self.pos - 1),
                    })
                }
            },
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::InvalidValue {
                        path: self.path.clone(),
                        key: key.into(),
                        reason: format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"),
                    });
                }
                let elem_offset = self.pos;
                let elem_type = self.u32(|| format!("array element type of key '{key}'"))?;
                let min_size = min_value_size(elem_type).ok_or_else(|| GgufError::UnknownValueType {
                    path: self.path.clone(),
                    offset: elem_offset,
                    key: key.into(),
                    type_id: elem_type,
                })?;
                let n = self.u64(|| format!("array length of key '{key}'"))?;
                // Every element needs at least `min_size` bytes: reject impossible lengths before allocating.
                self.ensure(n.saturating_mul(min_size), || {
                    format!("array of {n} {} for key '{key}'", value_type_name(elem_type))
                })?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_type, elem_offset, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(GgufError::UnknownValueType {
                    path: self.path.clone(),
                    offset: type_offset,
                    key: key.into(),
                    type_id: other,
                })
            }
        })
    }
}

/// Fewest bytes a value of this type occupies (`None` for unknown types).
fn min_value_size(type_id: u32) -> Option<u64> {
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,     // length prefix
        9 => 4 + 8, // element type + length
        10..=12 => 8,
        _ => return None,
    })
}

/// A minimal GGUF writer for tests (here and in other modules' tests).
#[cfg(test)]
pub(crate) mod test_writer {
    use super::super::GgufValue;

    /// Builds GGUF bytes: v3, given metadata, tensors `(name, dims, type id, data)`.
    /// Data is packed with `alignment` padding between tensors and none after the last.
    pub(crate) fn gguf_bytes(
        metadata: &[(&str, GgufValue)],
        tensors: &[(&str, Vec<u64>, u32, Vec<u8>)],
        alignment: u64,
    ) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut b, k);
            b.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut b, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in tensors {
            put_str(&mut b, name);
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).div_ceil(alignment) * alignment;
        }
        if !tensors.is_empty() {
            let data_start = (b.len() as u64).div_ceil(alignment) * alignment;
            b.resize(data_start as usize, 0);
            for ((_, _, _, data), off) in tensors.iter().zip(offsets) {
                b.resize((data_start + off) as usize, 0);
                b.extend_from_slice(data);
            }
        }
        b
    }

    fn put_str(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    }

    fn put_value(b: &mut Vec<u8>, v: &GgufValue) {
        match v {
            GgufValue::U8(x) => b.push(*x),
            GgufValue::I8(x) => b.extend_from_slice(&x.to_le_bytes()),
            GgufValue::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
            GgufValue::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
            GgufValue::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
            GgufValue::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
            GgufValue::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
            GgufValue::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
            GgufValue::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
            GgufValue::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
            GgufValue::Bool(x) => b.push(u8::from(*x)),
            GgufValue::String(s) => put_str(b, s),
            GgufValue::Array(items) => {
                // Empty arrays are written as u8 arrays.
                let ty = items.first().map_or(0, GgufValue::type_id);
                b.extend_from_slice(&ty.to_le_bytes());
                b.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for it in items {
                    put_value(b, it);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_writer::gguf_bytes;
    use super::*;
    use std::io::Cursor;

    fn parse_bytes(b: &[u8]) -> Result<GgufFile, GgufError> {
        parse(Cursor::new(b), PathBuf::from("mem.gguf"), b.len() as u64)
    }

    fn sample() -> Vec<u8> {
        let s = |x: &str| GgufValue::String(x.into());
        gguf_bytes(
            &[
                ("general.architecture", s("llama")),
                ("general.alignment", GgufValue::U32(32)),
                ("llama.block_count", GgufValue::U64(30)),
                ("llama.rope.freq_base", GgufValue::F32(10000.0)),
                ("tokenizer.ggml.add_bos_token", GgufValue::Bool(false)),
                ("tokenizer.ggml.tokens", GgufValue::Array(vec![s("a"), s("b"), s("中")])),
                ("tokenizer.ggml.token_type", GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(3), GgufValue::I32(1)])),
                ("x.i8", GgufValue::I8(-3)),
                ("x.u16", GgufValue::U16(65535)),
                ("x.i16", GgufValue::I16(-300)),
                ("x.i64", GgufValue::I64(-5)),
                ("x.f64", GgufValue::F64(0.25)),
                ("x.u8", GgufValue::U8(200)),
                ("x.nested", GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::U8(1)])])),
                ("x.empty", GgufValue::Array(vec![])),
            ],
            &[("tok_embd.weight", vec![4, 3], 0, (0u8..48).collect()), ("blk.0.q.weight", vec![32, 2], 3, vec![7u8; 40])],
            32,
        )
    }

    #[test]
    fn hand_written_file_reads_back() {
        let f = parse_bytes(&sample()).expect("parse");
        assert_eq!(f.version, 3);
        assert_eq!(f.alignment, 32);
        assert_eq!(f.metadata.len(), 15);
        assert_eq!(f.metadata[0].0, "general.architecture");
        assert_eq!(f.get_str("general.architecture"), Some("llama"));
        assert_eq!(f.get_u32("llama.block_count"), Some(30));
        assert_eq!(f.get_u32("x.u8"), Some(200));
        assert_eq!(f.get_u32("x.i8"), None);
        assert_eq!(f.get_f32("llama.rope.freq_base"), Some(10000.0));
        assert_eq!(f.get_f32("x.f64"), Some(0.25));
        assert_eq!(f.get_bool("tokenizer.ggml.add_bos_token"), Some(false));
        assert_eq!(f.get_str_array("tokenizer.ggml.tokens"), Some(vec!["a", "b", "中"]));
        assert_eq!(f.get_i32_array("tokenizer.ggml.token_type"), Some(vec![1, 3, 1]));
        assert_eq!(f.get("x.i16"), Some(&GgufValue::I16(-300)));
        assert_eq!(f.get("x.i64"), Some(&GgufValue::I64(-5)));
        assert_eq!(f.get("x.u16"), Some(&GgufValue::U16(65535)));
        assert_eq!(f.get("x.empty"), Some(&GgufValue::Array(vec![])));
        assert_eq!(f.get("x.nested"), Some(&GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::U8(1)])])));
        assert!(f.get("missing").is_none());

        assert_eq!(f.tensors.len(), 2);
        assert_eq!(f.data_offset % 32, 0);
        let t0 = &f.tensors[0];
        assert_eq!(
            (t0.name.as_str(), t0.dims.as_slice(), t0.ggml_type, t0.offset),
            ("tok_embd.weight", &[4u64, 3][..], GgmlType::F32, 0)
        );
        assert_eq!(t0.n_bytes(), Some(48));
        let t1 = f.tensor("blk.0.q.weight").expect("tensor");
        assert_eq!((t1.ggml_type, t1.offset, t1.n_elements(), t1.n_bytes()), (GgmlType::Q4_1, 64, 64, Some(40)));
    }

    #[test]
    fn tensor_bytes_reads_data_from_disk() {
        let dir = std::env::temp_dir().join(format!("gguf-reader-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("tiny.gguf");
        std::fs::write(&path, sample()).expect("write");
        let f = GgufFile::open(&path).expect("open");
        assert_eq!(f.path(), path.as_path());
        assert_eq!(f.tensor_bytes(&f.tensors[0]).expect("bytes"), (0u8..48).collect::<Vec<_>>());
        assert_eq!(f.tensor_bytes(&f.tensors[1]).expect("bytes"), vec![7u8; 40]);
        let err = GgufFile::open(&dir.join("nope.gguf")).unwrap_err();
        assert!(matches!(err, GgufError::Io { .. }), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = sample();
        for cut in 0..full.len() {
            let r = std::panic::catch_unwind(|| parse_bytes(&full[..cut]));
            match r {
                Ok(Err(_)) => {}
                Ok(Ok(_)) => panic!("truncated at {cut} of {} parsed OK", full.len()),
                Err(_) => panic!("panicked when truncated at {cut}"),
            }
        }
        // Also when the declared length is right but the reader runs dry.
        let err = parse(Cursor::new(&full[..100]), "x".into(), full.len() as u64).unwrap_err();
        assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
    }

    #[test]
    fn corrupting_any_byte_never_panics() {
        let full = sample();
        for i in 0..full.len() {
            for v in [0x00, 0xff, 0x7f, 0x09] {
                let mut b = full.clone();
                b[i] = v;
                let r = std::panic::catch_unwind(|| parse_bytes(&b));
                assert!(r.is_ok(), "panicked with byte {i} = {v:#x}");
            }
        }
    }

    #[test]
    fn malformed_headers_give_specific_errors() {
        let full = sample();
        let mut b = full.clone();
        b[0] = b'X';
        assert!(matches!(parse_bytes(&b), Err(GgufError::BadMagic { found, .. }) if &found == b"XGUF"));

        let mut b = full.clone();
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(parse_bytes(&b), Err(GgufError::UnsupportedVersion { version: 1, .. })));
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        let e = parse_bytes(&b).unwrap_err();
        assert!(e.to_string().contains("big-endian"), "{e}");

        // First key starts at 24: u64 length then bytes. Invalid UTF-8 in it.
        let mut b = full.clone();
        b[32] = 0xff;
        assert!(matches!(parse_bytes(&b), Err(GgufError::InvalidUtf8 { offset: 32, .. })));

        // Value type of the first key (after 8 + 20 bytes of key).
        let mut b = full.clone();
        b[52..56].copy_from_slice(&99u32.to_le_bytes());
        assert!(matches!(parse_bytes(&b), Err(GgufError::UnknownValueType { type_id: 99, offset: 52, .. })));

        // A huge string length is reported as truncation, without allocating.
        let mut b = full.clone();
        b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse_bytes(&b), Err(GgufError::Truncated { offset: 32, .. })));

        let dup = gguf_bytes(&[("a", GgufValue::U8(1)), ("a", GgufValue::U8(2))], &[], 32);
        assert!(matches!(parse_bytes(&dup), Err(GgufError::InvalidKey { problem: "duplicate", .. })));
        let bad_align = gguf_bytes(&[("general.alignment", GgufValue::U32(3))], &[], 32);
        assert!(matches!(parse_bytes(&bad_align), Err(GgufError::InvalidValue { .. })));
        let five_dims = gguf_bytes(&[], &[("t", vec![1, 1, 1, 1, 1], 0, vec![0; 4])], 32);
        assert!(matches!(parse_bytes(&five_dims), Err(GgufError::InvalidTensor { .. })));
        let partial_block = gguf_bytes(&[], &[("t", vec![16], 2, vec![0; 18])], 32);
        assert!(matches!(parse_bytes(&partial_block), Err(GgufError::InvalidTensor { .. })));
        let unknown_type = gguf_bytes(&[], &[("t", vec![16], 31, vec![0; 18])], 32);
        let f = parse_bytes(&unknown_type).expect("unknown tensor types still open");
        assert_eq!(f.tensors[0].ggml_type, GgmlType::Unknown(31));
        assert!(matches!(f.tensor_bytes(&f.tensors[0]), Err(GgufError::UnknownTensorType { type_id: 31, .. })));
    }

    #[test]
    fn large_string_arrays_load_quickly() {
        let tokens: Vec<GgufValue> = (0..150_000).map(|i| GgufValue::String(format!("tok{i}"))).collect();
        let b = gguf_bytes(&[("tokenizer.ggml.tokens", GgufValue::Array(tokens))], &[], 32);
        let t = std::time::Instant::now();
        let f = parse_bytes(&b).expect("parse");
        assert_eq!(f.get_str_array("tokenizer.ggml.tokens").map(|v| v.len()), Some(150_000));
        assert!(t.elapsed().as_secs_f64() < 1.0, "took {:?}", t.elapsed());
    }
}
