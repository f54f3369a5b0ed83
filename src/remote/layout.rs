//! Where things live in the remote, and the folder manifest format.

use std::path::{Component, Path};

use object_store::path::Path as ObjPath;
use serde::{Deserialize, Serialize};

use crate::hash::{self, Canon, Digest};

/// Version of the remote layout; a new one goes under a new folder, old entries stay readable
/// by the pipe versions that wrote them.
const LAYOUT: &str = "v1";

/// Paths under the remote's prefix.
pub(crate) struct Layout {
    root: String,
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Layout {
        let root = if prefix.is_empty() { LAYOUT.to_string() } else { format!("{prefix}/{LAYOUT}") };
        Layout { root }
    }

    /// A file (or one file of a folder) by its blake3.
    pub(crate) fn object(&self, digest: &str) -> ObjPath {
        ObjPath::from(format!("{}/objects/{digest}", self.root))
    }

    /// A folder output's manifest.
    pub(crate) fn tree(&self, digest: &str) -> ObjPath {
        ObjPath::from(format!("{}/trees/{digest}.json", self.root))
    }

    /// A node record.
    pub(crate) fn record(&self, key: &str) -> ObjPath {
        ObjPath::from(format!("{}/nodes/{key}.json", self.root))
    }

    /// A source's digest (`pypi:`, `hf:`), named by the blake3 of its text.
    pub(crate) fn source(&self, text: &str) -> ObjPath {
        ObjPath::from(format!("{}/sources/{}.json", self.root, blake3::hash(text.as_bytes()).to_hex()))
    }

    /// A kind's extra key components, named by what they are a function of.
    pub(crate) fn extras(&self, id: &str) -> ObjPath {
        ObjPath::from(format!("{}/extras/{id}.json", self.root))
    }
}

/// One file of a folder output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Path relative to the folder, `/`-separated.
    pub path: String,
    /// blake3 of its bytes.
    pub digest: Digest,
    /// Its size.
    pub bytes: u64,
}

/// A folder output's manifest as stored in the remote.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) pipe_tree: u32,
    pub(crate) files: Vec<TreeEntry>,
}

/// The files of a local folder with their digests, sorted by path.
pub(crate) fn tree_entries(dir: &Path) -> std::io::Result<Vec<TreeEntry>> {
    let mut out = Vec::new();
    hash::hash_path_with(dir, &mut |p| {
        let digest = hash::hash_file(p)?;
        let rel = p.strip_prefix(dir).unwrap_or(p).to_string_lossy().replace('\\', "/");
        out.push(TreeEntry { path: rel, digest: digest.clone(), bytes: std::fs::metadata(p)?.len() });
        Ok(digest)
    })?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The folder digest the entries describe: the local cache's folder digest
/// ([`hash::hash_path`]), computed from the manifest alone.
pub(crate) fn tree_digest(entries: &[TreeEntry]) -> Digest {
    let mut sorted: Vec<&TreeEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut c = Canon::default();
    c.str("pipe-tree/1");
    for e in sorted {
        c.str(&e.path);
        c.str(&e.digest);
    }
    blake3::hash(&c.0).to_hex().to_string()
}

/// Checks a manifest from the remote before anything is written from it: plain relative paths
/// (no `..`, no absolute or empty parts), no duplicates, digests of the right shape, and the
/// whole hashing to the folder's `digest`.
pub(crate) fn check_manifest(entries: &[TreeEntry], digest: &str) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for e in entries {
        let p = Path::new(&e.path);
        let plain = !e.path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_))) && !e.path.contains('\\');
        if !plain {
            return Err(format!("unsafe path `{}` in a folder manifest", e.path));
        }
        if !is_digest(&e.digest) {
            return Err(format!("`{}` has no valid digest", e.path));
        }
        if !seen.insert(e.path.as_str()) {
            return Err(format!("`{}` listed twice", e.path));
        }
    }
    let got = tree_digest(entries);
    if got != digest {
        return Err(format!("the manifest describes folder {got}, not {digest}"));
    }
    Ok(())
}

/// 64 lowercase hex digits.
pub(crate) fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_hashes_to_the_local_folder_digest() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::write(t.path().join("a/b/x.bin"), b"xx").unwrap();
        std::fs::write(t.path().join("top.json"), b"{}").unwrap();
        let entries = tree_entries(t.path()).unwrap();
        assert_eq!(entries.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["a/b/x.bin", "top.json"]);
        let want = hash::hash_path(t.path()).unwrap();
        assert_eq!(tree_digest(&entries), want);
        check_manifest(&entries, &want).unwrap();
    }

    #[test]
    fn manifests_with_unsafe_or_wrong_entries_are_refused() {
        let d = "0".repeat(64);
        let entry = |p: &str| TreeEntry { path: p.into(), digest: d.clone(), bytes: 1 };
        for bad in ["../x", "/etc/passwd", "a/../../x", "", "a\\..\\x", "./a"] {
            let entries = vec![entry(bad)];
            let digest = tree_digest(&entries);
            assert!(check_manifest(&entries, &digest).is_err(), "{bad}");
        }
        let twice = vec![entry("a"), entry("a")];
        assert!(check_manifest(&twice, &tree_digest(&twice)).unwrap_err().contains("twice"));
        let ok = vec![entry("a")];
        assert!(check_manifest(&ok, &"1".repeat(64)).unwrap_err().contains("describes"));
    }
}
