//! The safetensors files of a Hugging Face folder: which files, their headers, and the tensors
//! of a folder memory-mapped, for readers that do not need a [`Model`](super::llama::Model).
//!
//! A safetensors file is an 8-byte little-endian header length, a JSON header naming each
//! tensor's dtype, shape and byte range, then the data. [`read_index`] parses and checks the
//! header; [`crate::model::load`] reads the tensors into candle tensors from it, and
//! [`map_folder`] maps the files and hands out each tensor's bytes in place ([`MappedTensor`]),
//! which is how `export-gguf` streams a folder to GGUF without an f32 copy of the model.
//!
//! Limits: only F32, F16 and BF16 tensors are described (other dtypes make [`read_index`] and
//! [`map_folder`] answer `None`, and the callers fall back to candle's loader or a loaded
//! model). A mapped file must not change while it is mapped; pipe's inputs are cache objects
//! (read-only, content-addressed) or a user's folder, as with candle's own mmap loader.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::DType;

use super::load::{file_err, LoadError};

/// The safetensors files of a Hugging Face folder: `model.safetensors`, or every shard its
/// `model.safetensors.index.json` names, sorted.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.exists() {
        return Ok(vec![single]);
    }
    if !index.exists() {
        return Err(file_err(dir, "no model.safetensors or model.safetensors.index.json"));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index).map_err(|e| file_err(&index, e))?).map_err(|e| file_err(&index, e))?;
    let mut names: Vec<String> = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| file_err(&index, "no `weight_map`"))?
        .values()
        .filter_map(|x| x.as_str().map(String::from))
        .collect();
    names.sort();
    names.dedup();
    // A shard is a file of the folder (or of a folder in it): no absolute path, no `..`.
    let inside = |n: &str| !n.is_empty() && Path::new(n).components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if let Some(bad) = names.iter().find(|n| !inside(n)) {
        return Err(file_err(
            &index,
            format!("`weight_map` names the shard `{bad}`, which is not a file inside the model folder"),
        ));
    }
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The tensor's name.
    pub name: String,
    /// F32, F16 or BF16.
    pub dtype: DType,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Absolute offset of the data in the file.
    pub offset: u64,
}

impl Entry {
    /// Bytes of data.
    pub fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()
    }
}

/// What a header says about one tensor.
#[derive(serde::Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// The tensors of the safetensors file `file` (at `path`, for errors) in file order, each
/// checked to fit its shape and the file; `None` when one has a dtype other than F32, F16 or
/// BF16. Reads only the header.
pub fn read_index(file: &mut File, path: &Path) -> Result<Option<Vec<Entry>>, LoadError> {
    let ferr = |e: std::io::Error| file_err(path, e);
    let file_len = file.metadata().map_err(ferr)?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(ferr)?;
    let header_len = u64::from_le_bytes(n);
    if header_len > file_len.saturating_sub(8) || header_len > 100_000_000 {
        return Err(file_err(path, format!("not a safetensors file (header length {header_len})")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(ferr)?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| file_err(path, format!("safetensors header: {e}")))?;
    let base = 8 + header_len;
    let mut entries = Vec::with_capacity(map.len());
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let e: HeaderEntry =
            serde_json::from_value(v).map_err(|e| file_err(path, format!("safetensors header, tensor `{name}`: {e}")))?;
        let dtype = match e.dtype.as_str() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            _ => return Ok(None),
        };
        let [begin, end] = e.data_offsets;
        // Computed without overflow: a shape's product is as untrusted as the offsets.
        let want = e
            .shape
            .iter()
            .try_fold(dtype.size_in_bytes() as u64, |n, &d| n.checked_mul(d as u64))
            .filter(|&n| usize::try_from(n).is_ok());
        if end < begin || Some(end - begin) != want || base.checked_add(end).is_none_or(|e| e > file_len) {
            return Err(file_err(
                path,
                format!(
                    "safetensors header: tensor `{name}` has data offsets {begin}..{end}, which do not fit its shape or the file"
                ),
            ));
        }
        entries.push(Entry { name, dtype, shape: e.shape, offset: base + begin });
    }
    entries.sort_by_key(|e| e.offset);
    Ok(Some(entries))
}

/// One tensor of a memory-mapped safetensors file (see [`map_folder`]).
#[derive(Debug, Clone)]
pub struct MappedTensor {
    map: Arc<memmap2::Mmap>,
    entry: Entry,
}

impl MappedTensor {
    /// Row-major shape.
    pub fn shape(&self) -> &[usize] {
        &self.entry.shape
    }

    /// The stored bytes, little-endian values of the tensor's dtype.
    fn bytes(&self) -> &[u8] {
        let start = self.entry.offset as usize;
        &self.map[start..start + self.entry.byte_len()]
    }

    /// The values in place, when they are f32 and 4-byte aligned in memory (a little-endian
    /// target reads them as they are stored).
    pub fn as_f32(&self) -> Option<&[f32]> {
        if self.entry.dtype != DType::F32 || cfg!(target_endian = "big") {
            return None;
        }
        // SAFETY: every bit pattern is an f32; `align_to` only yields whole, aligned values.
        let (head, values, tail) = unsafe { self.bytes().align_to::<f32>() };
        (head.is_empty() && tail.is_empty()).then_some(values)
    }

    /// The values as f32 (F16 and BF16 widen exactly).
    pub fn to_f32(&self) -> Vec<f32> {
        let b = self.bytes();
        let two = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
        match self.entry.dtype {
            DType::F16 => b.chunks_exact(2).map(|c| half::f16::from_bits(two(c)).to_f32()).collect(),
            DType::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_bits(two(c)).to_f32()).collect(),
            _ => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        }
    }
}

/// Every tensor of the Hugging Face folder `dir` by name, its files memory-mapped (nothing is
/// read until a tensor's values are asked for); `None` when a file holds a dtype other than
/// F32, F16 or BF16.
pub fn map_folder(dir: &Path) -> Result<Option<HashMap<String, MappedTensor>>, LoadError> {
    let mut out = HashMap::new();
    for path in weight_files(dir)? {
        let mut file = File::open(&path).map_err(|e| file_err(&path, e))?;
        let Some(entries) = read_index(&mut file, &path)? else { return Ok(None) };
        // SAFETY: the file is not written while mapped (see the module docs); its length was
        // checked against every entry by `read_index`.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| file_err(&path, e))?);
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        for entry in entries {
            out.insert(entry.name.clone(), MappedTensor { map: map.clone(), entry });
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn mapped_tensors_hold_the_files_values_in_every_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..3 * 70).map(|i| ((i as f32) * 0.37).sin() * 1e3).collect();
        let t = Tensor::from_vec(vals.clone(), (3, 70), &dev).unwrap();
        let map = HashMap::from([
            ("a".to_string(), t.clone()),
            ("b".to_string(), t.to_dtype(DType::BF16).unwrap()),
            ("c".to_string(), t.to_dtype(DType::F16).unwrap()),
        ]);
        candle_core::safetensors::save(&map, dir.path().join("model.safetensors")).unwrap();
        let got = map_folder(dir.path()).unwrap().unwrap();
        assert_eq!(got.len(), 3);
        for (name, want) in &map {
            let g = &got[name];
            assert_eq!(g.shape(), want.dims(), "{name}");
            let want: Vec<f32> = want.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(g.to_f32(), want, "{name}");
        }
        assert_eq!(got["a"].as_f32().expect("f32 in place"), &vals[..]);
        assert!(got["b"].as_f32().is_none());
    }

    #[test]
    fn a_folder_with_another_dtype_is_not_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::new(&[1u8, 2, 3], &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("u".to_string(), t)]), dir.path().join("model.safetensors")).unwrap();
        assert!(map_folder(dir.path()).unwrap().is_none());
    }
}
