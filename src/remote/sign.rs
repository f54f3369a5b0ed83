//! Node records in the remote: an envelope around the record's JSON, with a MAC when a key is
//! set (`PIPE_REMOTE_KEY`).
//!
//! ```json
//! {"pipe_record": 1, "record": "<the record's JSON, as a string>", "mac": "<hex>"}
//! ```
//!
//! The MAC is BLAKE3 in keyed mode (a MAC by design, the role HMAC-SHA256 plays elsewhere) over
//! the record string, with a 32-byte key derived from `PIPE_REMOTE_KEY`. The record travels as a
//! string so that the signed bytes are exactly the bytes read back. A reader with a key accepts
//! only records whose MAC matches: someone who can write to the bucket but lacks the key cannot
//! make pipe use an output nobody with the key pushed. A reader without a key accepts any record
//! (its outputs are still checked against their digests).

use serde::{Deserialize, Serialize};

use crate::cache::NodeRecord;

/// The derived MAC key.
pub(crate) struct MacKey([u8; 32]);

impl MacKey {
    pub(crate) fn new(secret: &str) -> MacKey {
        MacKey(blake3::derive_key("pipe remote cache 2026-12 node record MAC", secret.as_bytes()))
    }

    /// The MAC of `record` in `domain` (empty for node records, whose MAC predates domains; a
    /// source record's MAC can then never pass for a node record's, or the other way round).
    fn mac(&self, domain: &str, record: &str) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        if !domain.is_empty() {
            h.update(domain.as_bytes()).update(b"\0");
        }
        h.update(record.as_bytes()).finalize().to_hex().to_string()
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    pipe_record: u32,
    record: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

/// The bytes to store for `rec`.
pub(crate) fn seal(rec: &NodeRecord, key: Option<&MacKey>) -> Vec<u8> {
    seal_in("", rec, key)
}

/// The record in `bytes`, checked against `key` when there is one.
pub(crate) fn open(bytes: &[u8], key: Option<&MacKey>) -> Result<NodeRecord, String> {
    open_in("", bytes, key)
}

/// [`seal`] for another kind of remote entry (a source's digest, a kind's extra key
/// components), its MAC separated from the others' by `domain`.
pub(crate) fn seal_in<T: Serialize>(domain: &str, value: &T, key: Option<&MacKey>) -> Vec<u8> {
    let record = serde_json::to_string(value).expect("a record always encodes");
    let mac = key.map(|k| k.mac(domain, &record));
    serde_json::to_vec(&Envelope { pipe_record: 1, record, mac }).expect("an envelope always encodes")
}

/// [`open`] for an entry sealed with [`seal_in`] in `domain`.
pub(crate) fn open_in<T: serde::de::DeserializeOwned>(domain: &str, bytes: &[u8], key: Option<&MacKey>) -> Result<T, String> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| format!("not a pipe record envelope: {e}"))?;
    if env.pipe_record != 1 {
        return Err(format!("record envelope version {} (this pipe reads 1)", env.pipe_record));
    }
    if let Some(k) = key {
        match &env.mac {
            None => return Err("unsigned record ignored (PIPE_REMOTE_KEY is set)".into()),
            Some(m) => {
                // Compare as blake3 hashes do: in constant time.
                let want = blake3::Hash::from_hex(k.mac(domain, &env.record)).expect("hex");
                let got = blake3::Hash::from_hex(m).map_err(|_| "badly signed record ignored".to_string())?;
                if want != got {
                    return Err("badly signed record ignored (signed with another PIPE_REMOTE_KEY, or altered)".into());
                }
            }
        }
    }
    serde_json::from_str(&env.record).map_err(|e| format!("record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::KeyParts;

    fn record() -> NodeRecord {
        let parts = KeyParts {
            kind: "k".into(),
            version: 1,
            params: Default::default(),
            inputs: Default::default(),
            extra: Default::default(),
        };
        NodeRecord {
            key: parts.key(),
            node: "n".into(),
            parts,
            outputs: Default::default(),
            started_at: 1,
            duration_ms: 2,
            pipe_version: "0".into(),
            summary: None,
        }
    }

    #[test]
    fn records_open_with_the_key_they_were_sealed_with_only() {
        let (a, b) = (MacKey::new("team secret"), MacKey::new("another"));
        let signed = seal(&record(), Some(&a));
        assert_eq!(open(&signed, Some(&a)).unwrap().key, record().key);
        assert!(open(&signed, Some(&b)).unwrap_err().contains("badly signed"));
        assert!(open(&signed, None).is_ok(), "a reader without a key reads signed records");
        let unsigned = seal(&record(), None);
        assert!(open(&unsigned, Some(&a)).unwrap_err().contains("unsigned"));
        // An altered record with the old MAC is refused.
        let tampered = String::from_utf8(signed).unwrap().replace("\\\"duration_ms\\\":2", "\\\"duration_ms\\\":3");
        assert!(open(tampered.as_bytes(), Some(&a)).unwrap_err().contains("badly signed"));
    }

    #[test]
    fn an_entry_signed_in_one_domain_does_not_open_in_another() {
        let k = MacKey::new("team secret");
        let v = std::collections::BTreeMap::from([("source", "pypi:x==1:y"), ("digest", "00")]);
        let sealed = seal_in("source", &v, Some(&k));
        let back: std::collections::BTreeMap<String, String> = open_in("source", &sealed, Some(&k)).unwrap();
        assert_eq!(back["digest"], "00");
        let as_extras = open_in::<std::collections::BTreeMap<String, String>>("extras", &sealed, Some(&k));
        assert!(as_extras.unwrap_err().contains("badly signed"));
        // Node records keep their MAC of before domains (no domain): records already pushed still open.
        assert_eq!(k.mac("", "r"), blake3::keyed_hash(&k.0, b"r").to_hex().to_string());
    }
}
