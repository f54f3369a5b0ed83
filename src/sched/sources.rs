//! Keys without the model: a checkout that pulls from a remote cache learns a `pypi:`/`hf:`
//! source's digest, and tokenize's extra key components, from entries the pushing side left
//! there, so it computes every key without fetching a model it will not run. A node that does
//! run here and reads such a source fetches it first, and it must hash to the digest the key
//! was computed from ([`KeyError::SourceDiffers`] otherwise).
//!
//! The pushing side writes these entries beside each node record it pushes
//! ([`Session::push_key_inputs`]). Extra components are shared only when the kind read nothing
//! but its own inputs to compute them (no side file beside a tokenizer, whose bytes are in no
//! key), so a shared entry is a pure function of what its id hashes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use super::{KeyError, Session};
use crate::cache::store::ExtraMemo;
use crate::cache::NodeRecord;
use crate::hash::Digest;
use crate::source::Source;
use crate::spec::InputRef;

/// What this session learned from the remote instead of computing it.
#[derive(Debug, Default)]
pub(super) struct FromRemote {
    /// Source text -> the digest the remote gave (the source is not fetched yet).
    sources: HashMap<String, Digest>,
    /// Extra-component ids taken from the remote.
    extras: HashSet<String>,
    /// Node key -> the id its extra components are memoised under.
    extra_ids: HashMap<String, String>,
}

impl Session {
    /// Source input `text` of `slot`: its local path (maybe not fetched yet) and digest. A source
    /// already here is hashed (the stat cache makes that cheap); else the remote's entry for it
    /// is used, when there is one; else it is fetched and hashed.
    pub(super) fn source_input(&self, slot: &str, text: &str) -> Result<(PathBuf, Digest), KeyError> {
        let src = Source::parse(text).map_err(|source| KeyError::BadSource { slot: slot.into(), source })?;
        let root = self.store.root();
        if src.present(root).is_none() {
            if let Some(d) = self.remote_source_digest(text) {
                return Ok((src.expected_path(root), d));
            }
        }
        self.fetch_source(slot, text, &src)
    }

    fn fetch_source(&self, slot: &str, text: &str, src: &Source) -> Result<(PathBuf, Digest), KeyError> {
        let path = src.resolve(self.store.root()).map_err(|e| KeyError::Source {
            slot: slot.into(),
            text: text.into(),
            source: Box::new(e),
        })?;
        let d = self.digest(&path).map_err(|source| KeyError::Read { slot: slot.into(), path: path.clone(), source })?;
        Ok((path, d))
    }

    fn remote_source_digest(&self, text: &str) -> Option<Digest> {
        let r = self.remote.as_ref().filter(|r| r.readable())?;
        if let Some(d) = self.from_remote.lock().ok()?.sources.get(text) {
            return Some(d.clone());
        }
        match r.source_digest(text) {
            Ok(Some(d)) => {
                self.from_remote.lock().ok()?.sources.insert(text.into(), d.clone());
                Some(d)
            }
            Ok(None) => None,
            // Not fatal here: the source is fetched instead, and a node record read later
            // reports the remote's state the usual way.
            Err(e) => {
                let _ = self.remote_fault(&format!("remote cache, source `{text}`"), e);
                None
            }
        }
    }

    /// Node `i`'s inputs with every source it reads fetched: a source whose digest came from
    /// the remote is fetched now and must hash to it.
    pub(super) fn ensure_sources(
        &self,
        i: usize,
        mut inputs: BTreeMap<String, PathBuf>,
        only: Option<&[&str]>,
    ) -> Result<BTreeMap<String, PathBuf>, KeyError> {
        for (slot, input) in &self.pipeline.nodes[i].inputs {
            let InputRef::Source(text) = input else { continue };
            if only.is_some_and(|o| !o.contains(&slot.as_str())) {
                continue;
            }
            let known = self.from_remote.lock().ok().and_then(|f| f.sources.get(text).cloned());
            if known.is_none() && inputs.get(slot).is_some_and(|p| p.exists()) {
                continue;
            }
            let src = Source::parse(text).map_err(|source| KeyError::BadSource { slot: slot.clone(), source })?;
            let (path, fetched) = self.fetch_source(slot, text, &src)?;
            if let Some(remote) = known.filter(|d| *d != fetched) {
                return Err(KeyError::SourceDiffers { slot: slot.clone(), text: text.clone(), remote, fetched });
            }
            inputs.insert(slot.clone(), path);
        }
        Ok(inputs)
    }

    /// The extra components memoised under `id` in the remote, stored locally for next time.
    pub(super) fn remote_extras(&self, id: &str) -> Option<ExtraMemo> {
        let r = self.remote.as_ref().filter(|r| r.readable())?;
        match r.extras(id) {
            Ok(Some(values)) => {
                let memo = ExtraMemo { values, files: Vec::new(), portable: true };
                let _ = self.store.put_extra(id, &memo);
                self.from_remote.lock().ok()?.extras.insert(id.into());
                Some(memo)
            }
            Ok(None) => None,
            Err(e) => {
                let _ = self.remote_fault(&format!("remote cache, extra key components {id}"), e);
                None
            }
        }
    }

    /// Notes that node key `key` has its extra components memoised under `id`.
    pub(super) fn note_extra_id(&self, key: String, id: String) {
        if let Ok(mut f) = self.from_remote.lock() {
            f.extra_ids.insert(key, id);
        }
    }

    /// After node `node`'s record was pushed: the digests of the sources it read and its
    /// shareable extra components, unless they came from the remote. Failures are the remote's
    /// usual warnings; a reader without these entries fetches the source instead.
    pub(super) fn push_key_inputs(&self, node: &str, rec: &NodeRecord) {
        let Some(r) = self.remote.as_ref().filter(|r| r.writable()) else { return };
        let Some(spec) = self.pipeline.nodes.iter().find(|n| n.name == node) else { return };
        let (known_sources, extras_from_remote, extra_id) = match self.from_remote.lock() {
            Ok(f) => (f.sources.clone(), f.extras.clone(), f.extra_ids.get(&rec.key).cloned()),
            Err(_) => return,
        };
        for (slot, input) in &spec.inputs {
            let (InputRef::Source(text), Some(d)) = (input, rec.parts.inputs.get(slot)) else { continue };
            if known_sources.contains_key(text) {
                continue;
            }
            if let Err(e) = r.push_source(text, d) {
                let _ = self.remote_fault(&format!("pushing source `{text}` to the remote cache"), e);
                return;
            }
        }
        let Some(id) = extra_id.filter(|id| !extras_from_remote.contains(id)) else { return };
        if let Some(memo) = self.store.extra(&id).filter(|m| m.portable) {
            if let Err(e) = r.push_extras(&id, &memo.values) {
                let _ = self.remote_fault(&format!("pushing `{node}`'s key components to the remote cache"), e);
            }
        }
    }
}
