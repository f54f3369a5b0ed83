//! `pipe fsck`: the full check of a cache that the cheap check on every use ([`Store::lookup`]:
//! sizes and each record's own key) cannot make: every object rehashed against its name, every
//! record checked against its key and its objects. Damaged entries are listed and, on request,
//! moved aside into `tmp/` so that the next run computes them again.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::store::{read_dir, tree_size, NodeRecord, ObjectState, Store};
use super::CacheError;

/// One damaged thing.
#[derive(Debug)]
pub struct Damage {
    /// `object <digest>` or `record <key> (node <name>)`.
    pub what: String,
    /// What is wrong.
    pub why: String,
    /// Its path in the cache.
    pub path: PathBuf,
    /// Where it was moved (with `repair`).
    pub moved_to: Option<PathBuf>,
}

/// What `fsck` found.
#[derive(Debug, Default)]
pub struct FsckReport {
    /// Objects rehashed, and their bytes.
    pub objects: usize,
    pub bytes: u64,
    /// Records checked.
    pub records: usize,
    /// Everything damaged, objects first.
    pub damaged: Vec<Damage>,
}

impl Store {
    /// Rehashes every object and checks every record; with `repair`, moves what is damaged
    /// (objects, and the records that name a damaged object or are damaged themselves) aside.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, CacheError> {
        let mut report = FsckReport::default();
        let mut bad_objects: BTreeMap<String, String> = BTreeMap::new();
        for shard in read_dir(&self.root().join("objects"))? {
            for obj in read_dir(&shard)? {
                let name = obj.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
                report.objects += 1;
                report.bytes += tree_size(&obj);
                let why = match crate::hash::hash_path(&obj) {
                    Ok(d) if d == name => continue,
                    Ok(d) => format!("its bytes hash to {d}"),
                    Err(e) => format!("it does not read: {e}"),
                };
                bad_objects.insert(name.clone(), why.clone());
                report.damaged.push(Damage { what: format!("object {name}"), why, path: obj, moved_to: None });
            }
        }
        for path in read_dir(&self.root().join("nodes"))? {
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            report.records += 1;
            let key = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            let rec = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<NodeRecord>(&b).ok());
            let why = match &rec {
                None => Some("it does not read as a node record".to_string()),
                Some(r) if r.key != key || r.parts.key() != key => Some(format!("it was edited: it hashes to {}", r.parts.key())),
                Some(r) => r.outputs.iter().find_map(|(name, o)| {
                    if let Some(why) = bad_objects.get(&o.digest) {
                        return Some(format!("its output `{name}` is damaged ({why})"));
                    }
                    match self.object_state(o) {
                        ObjectState::Damaged(d) => Some(format!("its output `{name}` {d}")),
                        ObjectState::Intact | ObjectState::Gone => None,
                    }
                }),
            };
            if let Some(why) = why {
                let node = rec.as_ref().map(|r| r.node.clone()).unwrap_or_else(|| "?".into());
                report.damaged.push(Damage { what: format!("record {key} (node {node})"), why, path, moved_to: None });
            }
        }
        if repair {
            for d in &mut report.damaged {
                d.moved_to = Some(self.quarantine(&d.path)?);
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::RunFacts;
    use crate::hash::KeyParts;

    fn entry(store: &Store, seed: u32, bytes: &[u8]) -> NodeRecord {
        let parts = KeyParts {
            kind: "k".into(),
            version: seed,
            params: Default::default(),
            inputs: Default::default(),
            extra: Default::default(),
        };
        let key = parts.key();
        let st = store.staging(&key).unwrap();
        std::fs::write(st.join("out"), bytes).unwrap();
        store.publish(&key, "n", &parts, &st, &[("out", false)], RunFacts::default()).unwrap()
    }

    /// Objects are published read-only.
    fn writable(path: &std::path::Path) {
        let mut perm = std::fs::metadata(path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(path, perm).unwrap();
    }

    /// An entry of `hello` whose object was then cut to `hel`: the entry and the object's path.
    fn truncated_entry(store: &Store) -> (NodeRecord, std::path::PathBuf) {
        let a = entry(store, 1, b"hello");
        let obj = store.object_path(&a.outputs["out"].digest);
        writable(&obj);
        std::fs::write(&obj, b"hel").unwrap();
        (a, obj)
    }

    #[test]
    fn a_flipped_byte_is_found_by_fsck_and_moved_aside_with_its_record() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let good = entry(&store, 1, b"hello");
        let bad = entry(&store, 2, b"world");
        let clean = store.fsck(false).unwrap();
        assert_eq!((clean.objects, clean.records, clean.damaged.len()), (2, 2, 0));
        // Same size, one byte different: the cheap check on use cannot tell, fsck can.
        let obj = store.object_path(&bad.outputs["out"].digest);
        writable(&obj);
        std::fs::write(&obj, b"wOrld").unwrap();
        assert!(store.record(&bad.key).is_some());
        let found = store.fsck(false).unwrap();
        assert_eq!(found.damaged.len(), 2, "{found:?}");
        assert!(found.damaged[0].what.starts_with("object ") && found.damaged[0].why.contains("hash to"));
        assert!(found.damaged[1].what.starts_with(&format!("record {}", bad.key)));
        let repaired = store.fsck(true).unwrap();
        assert!(repaired.damaged.iter().all(|d| d.moved_to.as_ref().is_some_and(|p| p.exists()) && !d.path.exists()));
        assert!(store.record(&bad.key).is_none() && store.record(&good.key).is_some());
        assert_eq!(store.fsck(false).unwrap().damaged.len(), 0);
    }

    #[test]
    fn a_truncated_object_or_an_edited_record_is_damage_on_use() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let (a, _) = truncated_entry(&store);
        assert!(
            matches!(store.lookup(&a.key), super::super::store::Lookup::Damaged { ref why, .. } if why.contains("is 3 bytes, its record says 5"))
        );
        let b = entry(&store, 2, b"other");
        let text = std::fs::read_to_string(store.record_path(&b.key)).unwrap().replace("\"version\": 2", "\"version\": 3");
        std::fs::write(store.record_path(&b.key), text).unwrap();
        assert!(
            matches!(store.lookup(&b.key), super::super::store::Lookup::Damaged { ref why, .. } if why.contains("was edited"))
        );
        std::fs::remove_file(store.object_path(&a.outputs["out"].digest)).unwrap();
        assert!(matches!(store.lookup(&a.key), super::super::store::Lookup::Absent));
    }

    #[test]
    fn publishing_the_same_bytes_again_replaces_a_damaged_object() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let (a, obj) = truncated_entry(&store);
        // Another key whose output has the same content: its publish must not keep the damaged bytes.
        let b = entry(&store, 2, b"hello");
        assert_eq!(b.outputs["out"].digest, a.outputs["out"].digest);
        assert_eq!(std::fs::read(&obj).unwrap(), b"hello");
        assert!(store.record(&a.key).is_some() && store.record(&b.key).is_some());
        assert!(std::fs::read_dir(t.path().join("tmp"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("damaged-")));
    }
}
