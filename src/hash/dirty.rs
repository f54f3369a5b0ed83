//! Why a node will run: one enum, one human sentence per variant (after cargo's `DirtyReason`).
//!
//! [`explain`] compares the [`KeyParts`] recorded by the last run of a node with the parts the
//! node would have now and lists every difference: which input digest, which parameter with old
//! and new value, a kind version bump, or a changed extra component.

use serde::Serialize;

use super::KeyParts;
use crate::params::Value;

/// One reason a node is not fresh.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum DirtyReason {
    /// No run of this node was ever recorded in this cache.
    NeverRun,
    /// `--force` named it.
    Forced,
    /// An upstream node will run first, so this node's inputs are not known yet.
    UpstreamWillRun { node: String },
    /// The kind's implementation changed.
    KindChanged { old: String, new: String },
    /// The node's kind version changed.
    VersionChanged { old: u32, new: u32 },
    /// A parameter's effective value changed.
    ParamChanged { name: String, old: Option<Value>, new: Option<Value> },
    /// An input's content changed.
    InputChanged { slot: String, source: String, old: Option<String>, new: Option<String> },
    /// A kind-specific component changed (e.g. the rendered chat template).
    ExtraChanged { name: String, old: Option<String>, new: Option<String> },
    /// The key matches the last run, but that cache entry is gone (`pipe gc`, or another pipeline's run).
    EntryMissing,
    /// The key differs from the last run for no reason listed above (e.g. a cache written by another version of pipe).
    KeyChanged,
    /// The cache entry of this key failed its check on use (`why`); it was moved aside.
    EntryDamaged { why: String },
    /// An earlier run of this very key stopped (killed, cancelled) after saving `point`; this
    /// run resumes from there.
    Resumes { point: String },
}

fn short(d: &Option<String>) -> String {
    match d {
        Some(d) if d.len() == 64 && d.chars().all(|c| c.is_ascii_hexdigit()) => d[..12].to_string(),
        Some(d) => d.clone(),
        None => "(none)".to_string(),
    }
}

impl std::fmt::Display for DirtyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: &Option<Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "(unset)".into());
        match self {
            DirtyReason::NeverRun => write!(f, "never run with this cache"),
            DirtyReason::Forced => write!(f, "forced with --force"),
            DirtyReason::UpstreamWillRun { node } => write!(f, "upstream `{node}` will run first"),
            DirtyReason::KindChanged { old, new } => write!(f, "kind changed from {old} to {new}"),
            DirtyReason::VersionChanged { old, new } => {
                write!(f, "kind version changed from {old} to {new}")
            }
            DirtyReason::ParamChanged { name, old, new } => {
                write!(f, "param `{name}` changed: {} -> {}", opt(old), opt(new))
            }
            DirtyReason::InputChanged { slot, source, old, new } => {
                write!(f, "input `{slot}` ({source}) changed: {} -> {}", short(old), short(new))
            }
            DirtyReason::ExtraChanged { name, old, new } => {
                write!(f, "{name} changed: {} -> {}", short(old), short(new))
            }
            DirtyReason::EntryMissing => {
                write!(f, "same key as the last run, but its cache entry is gone")
            }
            DirtyReason::KeyChanged => write!(f, "key changed"),
            DirtyReason::EntryDamaged { why } => write!(f, "its cache entry was damaged ({why})"),
            DirtyReason::Resumes { point } => write!(f, "resumes from {point} (an earlier run of this key stopped there)"),
        }
    }
}

/// Every difference between the last recorded parts and the current ones.
/// `sources` names each input slot's source for messages.
pub fn explain(old: &KeyParts, new: &KeyParts, source: impl Fn(&str) -> String) -> Vec<DirtyReason> {
    let mut out = Vec::new();
    if old.kind != new.kind {
        out.push(DirtyReason::KindChanged { old: old.kind.clone(), new: new.kind.clone() });
    }
    if old.version != new.version {
        out.push(DirtyReason::VersionChanged { old: old.version, new: new.version });
    }
    diff(&old.params, &new.params, |name, o, n| {
        out.push(DirtyReason::ParamChanged { name: name.into(), old: o.cloned(), new: n.cloned() })
    });
    diff(&old.inputs, &new.inputs, |slot, o, n| {
        out.push(DirtyReason::InputChanged { slot: slot.into(), source: source(slot), old: o.cloned(), new: n.cloned() })
    });
    diff(&old.extra, &new.extra, |name, o, n| {
        out.push(DirtyReason::ExtraChanged { name: name.into(), old: o.cloned(), new: n.cloned() })
    });
    if out.is_empty() && old.key() != new.key() {
        out.push(DirtyReason::KeyChanged);
    }
    out
}

fn diff<V: PartialEq>(
    old: &std::collections::BTreeMap<String, V>,
    new: &std::collections::BTreeMap<String, V>,
    mut f: impl FnMut(&str, Option<&V>, Option<&V>),
) {
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for k in keys {
        let (o, n) = (old.get(k), new.get(k));
        if o != n {
            f(k, o, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_changed_param_is_named_with_old_and_new_values() {
        let old = KeyParts {
            kind: "tokenize".into(),
            version: 1,
            params: BTreeMap::from([("max_length".into(), Value::Int(384))]),
            inputs: BTreeMap::from([("records".into(), "a".repeat(64))]),
            extra: BTreeMap::new(),
        };
        let mut new = old.clone();
        new.params.insert("max_length".into(), Value::Int(256));
        let why = explain(&old, &new, |s| s.to_string());
        assert_eq!(why.len(), 1);
        assert_eq!(why[0].to_string(), "param `max_length` changed: 384 -> 256");
        new = old.clone();
        new.inputs.insert("records".into(), "b".repeat(64));
        let why = explain(&old, &new, |_| "fix.records".to_string());
        assert_eq!(why[0].to_string(), "input `records` (fix.records) changed: aaaaaaaaaaaa -> bbbbbbbbbbbb");
    }
}
