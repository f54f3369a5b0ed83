//! Fingerprints: what makes a node's key, and how files are hashed.
//!
//! A node's key is a blake3 digest over a canonical encoding of [`KeyParts`]:
//!
//! | component | hashed as | why |
//! |---|---|---|
//! | kind name | string | two kinds never share entries |
//! | kind version | u32 | a kind whose code changes its output bumps this |
//! | params | every declared param after defaults, `defaults:` and `--set`, sorted by name, less a kind's `key_neutral_params` that have their default | writing a default explicitly changes nothing; changing a value reruns; a param added later with a default that keeps the old output leaves old keys valid |
//! | inputs | per slot: the content digest of the file or folder, or the upstream output's digest | content, never paths or mtimes |
//! | extra | what the kind declares beyond bytes and params (tokenize: rendered chat template) | e.g. a template that renders differently |
//! | extra `device` | `cuda` when a device-sensitive kind runs on CUDA | GPU kernels round differently from the CPU |
//! | extra `world_size` | the number of GPUs a data-parallel kind (`gpus:`) runs on, when more than one | N ranks sum gradients in another order than one device |
//!
//! Not hashed: node names, file paths, mtimes, the pipeline's name, the cache location, the
//! device a CPU-only node ran on, where a node ran (`executor:`: here or as a Slurm job) and what
//! its job asked for (`resources:`). Renaming a node, moving the project or moving a node to a
//! cluster reuses the cache. (A Slurm node's `device: auto` is CUDA when its job asks for GPUs,
//! and that device type is hashed as above.)
//!
//! The encoding ([`Canon`]) is tagged and length-prefixed, so no two different values encode to
//! the same bytes, and maps are sorted, so YAML key order never changes a key.
//!
//! Files are hashed by content with blake3; [`statcache::StatCache`] skips rehashing files whose
//! (size, mtime, ctime, inode) are unchanged, and big files are hashed with blake3's
//! multithreaded mmap path. Folders hash as the sorted list of (relative path, file digest).

pub mod dirty;
pub mod statcache;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::params::Value;

/// A hex blake3 digest.
pub type Digest = String;

/// Whether `s` has the form of a [`Digest`]: 64 lowercase hex digits (blake3). A digest read from
/// a record names a path in the cache, so one of any other form is refused where it is read.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Everything that determines a node's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyParts {
    /// The kind's YAML name.
    pub kind: String,
    /// The kind's implementation version.
    pub version: u32,
    /// Effective parameters.
    pub params: BTreeMap<String, Value>,
    /// Input digests by slot.
    pub inputs: BTreeMap<String, Digest>,
    /// Kind-specific components.
    pub extra: BTreeMap<String, String>,
}

impl KeyParts {
    /// The node key: blake3 over the canonical encoding.
    pub fn key(&self) -> Digest {
        let mut c = Canon::default();
        c.str("pipe-node-key/1");
        c.str(&self.kind);
        c.u64(u64::from(self.version));
        c.map(self.params.iter().map(|(k, v)| (k.as_str(), v)), |c, v| c.value(v));
        c.map(self.inputs.iter().map(|(k, v)| (k.as_str(), v)), |c, v| c.str(v));
        c.map(self.extra.iter().map(|(k, v)| (k.as_str(), v)), |c, v| c.str(v));
        blake3::hash(&c.0).to_hex().to_string()
    }
}

/// A canonical, injective byte encoding of values (tag byte, then fixed-width or length-prefixed data).
#[derive(Default)]
pub struct Canon(pub Vec<u8>);

impl Canon {
    /// A length-prefixed string.
    pub fn str(&mut self, s: &str) {
        self.0.push(b'S');
        self.0.extend_from_slice(&(s.len() as u64).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    /// A u64.
    pub fn u64(&mut self, v: u64) {
        self.0.push(b'U');
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A map, entries sorted by key.
    pub fn map<'a, V: 'a>(&mut self, entries: impl Iterator<Item = (&'a str, V)>, mut f: impl FnMut(&mut Self, V)) {
        let mut entries: Vec<_> = entries.collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        self.0.push(b'M');
        self.0.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (k, v) in entries {
            self.str(k);
            f(self, v);
        }
    }
    /// A parameter value. Floats hash by bit pattern, with -0.0 folded into 0.0.
    pub fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.0.push(b'N'),
            Value::Bool(b) => self.0.extend_from_slice(&[b'B', u8::from(*b)]),
            Value::Int(i) => {
                self.0.push(b'I');
                self.0.extend_from_slice(&i.to_le_bytes());
            }
            Value::Float(x) => {
                self.0.push(b'F');
                let x = if *x == 0.0 { 0.0f64 } else { *x };
                self.0.extend_from_slice(&x.to_bits().to_le_bytes());
            }
            Value::Str(s) => self.str(s),
            Value::List(items) => {
                self.0.push(b'L');
                self.0.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for it in items {
                    self.value(it);
                }
            }
        }
    }
}

/// Files at least this big are hashed with blake3's multithreaded mmap path.
const PARALLEL_THRESHOLD: u64 = 4 << 20;

/// The blake3 digest of a file's bytes.
pub fn hash_file(path: &Path) -> std::io::Result<Digest> {
    let len = std::fs::metadata(path)?.len();
    let mut h = blake3::Hasher::new();
    if len >= PARALLEL_THRESHOLD {
        h.update_mmap_rayon(path)?;
    } else {
        h.update_reader(std::fs::File::open(path)?)?;
    }
    Ok(h.finalize().to_hex().to_string())
}

/// The digest of a file or a folder (sorted relative paths with their file digests); `file`
/// hashes each file (so a stat cache can serve it).
///
/// Symbolic links inside a folder are followed when they point inside it (their target's bytes
/// under the link's name). A link that leads out of the folder is an error
/// ([`std::io::ErrorKind::InvalidInput`], naming the link and its target): hashing, and the node
/// reading the folder, would otherwise read any file the link names, and a pipeline from someone
/// else could pull a private file into its outputs and the shared cache. The one exception is
/// the Hugging Face hub cache's layout, where `models--ORG--NAME/snapshots/REV/*` link to
/// `models--ORG--NAME/blobs/*`: a snapshot folder may link into its own repository's blobs.
pub fn hash_path_with(path: &Path, file: &mut dyn FnMut(&Path) -> std::io::Result<Digest>) -> std::io::Result<Digest> {
    if !std::fs::metadata(path)?.is_dir() {
        return file(path);
    }
    let mut entries = Vec::new();
    let fence = Fence::of(path)?;
    walk(path, path, &fence, &mut vec![fence.root.clone()], &mut entries)?;
    entries.sort();
    let mut c = Canon::default();
    c.str("pipe-tree/1");
    for rel in entries {
        let d = file(&path.join(&rel))?;
        c.str(&rel);
        c.str(&d);
    }
    Ok(blake3::hash(&c.0).to_hex().to_string())
}

/// The digest of a file or folder without a stat cache.
pub fn hash_path(path: &Path) -> std::io::Result<Digest> {
    hash_path_with(path, &mut |p| hash_file(p))
}

/// Where a folder's symbolic links may lead: inside the folder, and for a Hugging Face hub
/// snapshot, its repository's `blobs`.
struct Fence {
    root: PathBuf,
    blobs: Option<PathBuf>,
}

impl Fence {
    fn of(folder: &Path) -> std::io::Result<Fence> {
        let root = std::fs::canonicalize(folder)?;
        let blobs = root
            .parent()
            .filter(|snapshots| snapshots.file_name().is_some_and(|n| n == "snapshots"))
            .and_then(Path::parent)
            .filter(|repo| {
                repo.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("models--") || n.starts_with("datasets--"))
            })
            .map(|repo| repo.join("blobs"));
        Ok(Fence { root, blobs })
    }

    fn allows(&self, target: &Path) -> bool {
        target.starts_with(&self.root) || self.blobs.as_ref().is_some_and(|b| target.starts_with(b))
    }
}

fn walk(root: &Path, dir: &Path, fence: &Fence, open: &mut Vec<PathBuf>, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let p = entry.path();
        let mut ty = entry.file_type()?;
        if ty.is_symlink() {
            let target = std::fs::canonicalize(&p).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: a symbolic link whose target cannot be read: {e}", p.display()))
            })?;
            if !fence.allows(&target) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{} is a symbolic link to {}, outside the input folder {}: pipe does not follow links out of an input folder (copy the file into the folder instead)",
                        p.display(),
                        target.display(),
                        root.display()
                    ),
                ));
            }
            ty = std::fs::metadata(&target)?.file_type();
            if ty.is_dir() && open.contains(&target) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{} is a symbolic link to a folder that contains it ({}): the folder would never end",
                        p.display(),
                        target.display()
                    ),
                ));
            }
        }
        if ty.is_dir() {
            open.push(std::fs::canonicalize(&p)?);
            walk(root, &p, fence, open, out)?;
            open.pop();
        } else {
            let rel = p.strip_prefix(root).unwrap_or(&p);
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn symbolic_links_are_followed_inside_the_folder_and_refused_out_of_it() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let (model, copy) = (t.path().join("model"), t.path().join("copy"));
        for d in [&model, &copy] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::fs::write(d.join("sub/weights.bin"), b"weights").unwrap();
        }
        // Inside: the link reads as its target's bytes under its own name.
        symlink("sub/weights.bin", model.join("linked.bin")).unwrap();
        std::fs::write(copy.join("linked.bin"), b"weights").unwrap();
        assert_eq!(hash_path(&model).unwrap(), hash_path(&copy).unwrap());
        // Out of the folder: refused, naming the link and its target.
        std::fs::write(t.path().join("secret"), b"private").unwrap();
        symlink("../secret", model.join("tokenizer.json")).unwrap();
        let e = hash_path(&model).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(
            e.to_string().contains("tokenizer.json is a symbolic link to") && e.to_string().contains("outside the input folder"),
            "{e}"
        );
        std::fs::remove_file(model.join("tokenizer.json")).unwrap();
        // A link to a folder that contains it would never end.
        symlink("..", model.join("sub/up")).unwrap();
        assert!(hash_path(&model).unwrap_err().to_string().contains("a folder that contains it"));
    }

    #[test]
    fn a_hugging_face_snapshot_may_link_into_its_own_blobs_only() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("hub/models--org--tiny");
        let snap = repo.join("snapshots/0123abc");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs/9f86d08"), b"{}").unwrap();
        symlink("../../blobs/9f86d08", snap.join("config.json")).unwrap();
        hash_path(&snap).unwrap();
        // Another repository's blobs are outside.
        let other = t.path().join("hub/models--org--other/blobs");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("x"), b"x").unwrap();
        symlink(other.join("x"), snap.join("stolen.json")).unwrap();
        assert!(hash_path(&snap).unwrap_err().to_string().contains("outside the input folder"));
    }

    fn parts(params: Vec<(String, i64)>) -> KeyParts {
        KeyParts {
            kind: "k".into(),
            version: 1,
            params: params.into_iter().map(|(k, v)| (k, Value::Int(v))).collect(),
            inputs: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(Value::Float),
            ".{0,8}".prop_map(Value::Str),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| prop::collection::vec(inner, 0..4).prop_map(Value::List))
    }

    proptest! {
        #[test]
        fn insertion_order_never_changes_a_key(map in prop::collection::btree_map("[a-z]{1,6}", any::<i64>(), 0..8)) {
            let mut entries: Vec<(String, i64)> = map.into_iter().collect();
            let a = parts(entries.clone()).key();
            entries.reverse();
            prop_assert_eq!(a, parts(entries).key());
        }

        #[test]
        fn any_change_to_a_param_value_changes_the_key(a in value(), b in value()) {
            prop_assume!(a != b);
            let mut p = parts(vec![]);
            p.params.insert("x".into(), a);
            let k1 = p.key();
            p.params.insert("x".into(), b);
            prop_assert_ne!(k1, p.key());
        }

        #[test]
        fn encoding_is_injective_across_string_boundaries(a in ".{0,6}", b in ".{0,6}", c in ".{0,6}", d in ".{0,6}") {
            prop_assume!((a.clone(), b.clone()) != (c.clone(), d.clone()));
            let mut x = Canon::default(); x.str(&a); x.str(&b);
            let mut y = Canon::default(); y.str(&c); y.str(&d);
            prop_assert_ne!(x.0, y.0);
        }

        #[test]
        fn any_input_digest_change_changes_the_key(d1 in "[0-9a-f]{64}", d2 in "[0-9a-f]{64}") {
            prop_assume!(d1 != d2);
            let mut p = parts(vec![]);
            p.inputs.insert("records".into(), d1);
            let k1 = p.key();
            p.inputs.insert("records".into(), d2);
            prop_assert_ne!(k1, p.key());
        }
    }

    #[test]
    fn version_and_kind_are_part_of_the_key() {
        let a = parts(vec![]);
        let mut b = a.clone();
        b.version = 2;
        let mut c = a.clone();
        c.kind = "other".into();
        assert_ne!(a.key(), b.key());
        assert_ne!(a.key(), c.key());
    }

    #[test]
    fn folders_hash_by_relative_paths_and_contents() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("m");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("a"), b"1").unwrap();
        std::fs::write(d.join("sub/b"), b"2").unwrap();
        let h1 = hash_path(&d).unwrap();
        std::fs::write(d.join("sub/b"), b"3").unwrap();
        assert_ne!(h1, hash_path(&d).unwrap());
        let big = t.path().join("big");
        std::fs::write(&big, vec![7u8; (PARALLEL_THRESHOLD + 5) as usize]).unwrap();
        assert_eq!(hash_file(&big).unwrap(), blake3::hash(&vec![7u8; (PARALLEL_THRESHOLD + 5) as usize]).to_hex().to_string());
    }
}
