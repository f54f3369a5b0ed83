//! Fuzz targets: one function per reader of outside data, each taking the raw bytes of one
//! input and sending them through the entry point a user's file goes through.
//!
//! A target returns nothing and ignores `Ok`/`Err`: a reader may reject any input, with a
//! typed error, but must not panic, hang or allocate more than its input justifies. A few
//! targets also check a property of what was read (a `pypi:` source stays inside the cache, a
//! shard of a sharded index inside its folder) and panic when it does not hold.
//!
//! The `fuzz/` crate (cargo-fuzz, libFuzzer, nightly) calls these functions, one target each;
//! the unit test below (stable, part of `cargo test --lib`) runs every committed seed
//! (`fuzz/corpus/TARGET/`) and regression input (`fuzz/regressions/TARGET/`) and
//! deterministic mutations of the seeds through them. [`TARGETS`] lists them by name.
//!
//! Readers that only take a path get the bytes written to a scratch folder of this process
//! first (under the system temp folder, named by the process id), so that the code under test
//! is the same code a run goes through.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value as Json;

use crate::dataset::chat::{self, Schema};
use crate::gguf::quant::{dequantize, GgmlKind};
use crate::gguf::GgufFile;
use crate::tokenizer::template::{ChatTemplate, Message};

/// A fuzz target: takes one input, returns only if the reader did not panic.
pub type Target = fn(&[u8]);

/// Every target: its name (the `fuzz/` binary and corpus folder) and its function.
pub const TARGETS: &[(&str, Target)] = &[
    ("spec", spec),
    ("fix_json", fix_json),
    ("records", records),
    ("csv", csv),
    ("parquet", parquet),
    ("tokenizer_json", tokenizer_json),
    ("tokenizer_config", tokenizer_config),
    ("gguf", gguf),
    ("quant", quant),
    ("safetensors", safetensors),
    ("safetensors_index", safetensors_index),
    ("peft", peft),
    ("token_dataset", token_dataset),
    ("checkpoint", checkpoint),
    ("cache_record", cache_record),
    ("source", source),
];

/// This process's scratch folder for `target`, created once, emptied by the caller as needed.
fn scratch(target: &str) -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(|| std::env::temp_dir().join(format!("pipe-fuzz-{}", std::process::id())));
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).expect("create the fuzz scratch folder");
    dir
}

/// Removes this process's scratch folder (the stable test calls it when done).
pub fn remove_scratch() {
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("pipe-fuzz-{}", std::process::id())));
}

/// Writes `bytes` to `path` (the scratch folder is this process's own: a failure is a bug).
fn put(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// A short conversation the chat-template and record targets render.
fn conversation() -> Vec<Message> {
    let m = |role: &str, content: &str| Message { role: role.into(), content: content.into() };
    vec![m("system", "S"), m("user", "q 中"), m("assistant", "a"), m("user", "q2"), m("assistant", "b\n")]
}

/// A pipeline file (YAML). Lines starting `#set ` (YAML comments) are `--set` overrides.
pub fn spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let overrides: Vec<_> =
        text.lines().filter_map(|l| l.strip_prefix("#set ")).filter_map(|a| crate::spec::Override::parse(a).ok()).collect();
    let root = scratch("spec");
    match crate::spec::load_str(text, &root.join("pipeline.yaml"), root.clone(), &overrides) {
        Ok(p) => {
            let _ = p.graph();
        }
        Err(e) => {
            // What a user sees: the located diagnostic, rendered.
            let mut out = String::new();
            let _ = miette::GraphicalReportHandler::new().render_report(&mut out, &e);
        }
    }
}

/// A damaged records file, as fix-json repairs it: JSON Lines, run-together objects, BOM, CRLF.
pub fn fix_json(data: &[u8]) {
    use crate::nodes::fix_json::{canonical, check_fields, scan, to_json_array};
    let Ok(text) = std::str::from_utf8(data) else { return };
    let s = scan(text);
    let required = ["instruction".to_string(), "output".to_string()];
    for (obj, _) in &s.objects {
        let _ = check_fields(obj, &required);
        for schema in [Schema::Messages, Schema::ShareGpt] {
            let fields = schema.default_fields().expect("a conversation schema has fields");
            let _ = chat::conversation(obj, schema, &fields);
        }
        let _ = canonical(&Json::Object(obj.clone()));
    }
    let objects: Vec<_> = s.objects.iter().map(|(o, _)| o).collect();
    let out = to_json_array(&objects);
    let back: Vec<Json> = serde_json::from_str(&out).expect("fix-json's output is a JSON array");
    assert_eq!(back.len(), objects.len(), "fix-json writes every good record");
}

/// A records file (JSON array) as tokenize reads it.
pub fn records(data: &[u8]) {
    use crate::dataset::records::{json_position, read_records};
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = read_records(text, ["instruction", "input", "output"]) {
        let _ = json_position(text, &e);
    }
}

/// A CSV records file (`input_format: csv`), with a JSON `messages` column.
pub fn csv(data: &[u8]) {
    let _ = crate::dataset::csv_records::read_csv_from(data, &["messages"]);
}

/// A Parquet records file (`input_format: parquet`), with a JSON `messages` column.
///
/// `read_parquet` contains a panic of the parquet crate's page decoders (it becomes
/// `ParquetError::Decoder`); libFuzzer's panic hook would abort on it all the same, so this target
/// lets a panic raised in the parquet crate's own source pass. Any other panic still aborts.
pub fn parquet(data: &[u8]) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.location().is_some_and(|l| l.file().contains("/parquet-")) {
                prev(info)
            }
        }));
    });
    let path = scratch("parquet").join("records.parquet");
    put(&path, data);
    let _ = crate::dataset::parquet_records::read_parquet(&path, &["messages"]);
}

/// A `tokenizer.json`: the fast byte-level BPE reader, else the general tokenizer.
pub fn tokenizer_json(data: &[u8]) {
    use crate::tokenizer::fast::{FastBpe, Scratch};
    const TEXT: &str = "Hello, wörld! 中文 \u{1F600} <|im_end|>  x\n";
    if let Some(fast) = FastBpe::from_json(data) {
        let mut scratch = Scratch::new();
        let _ = fast.encode(TEXT, &mut scratch);
        let _ = fast.token_to_id("<|im_end|>");
        let _ = fast.id_to_token(0);
    }
    if let Ok(tok) = crate::tokenizer::load::tokenizer_from_json(data) {
        let _ = tok.encode(TEXT, true);
        let _ = FastBpe::from_tokenizer(&tok);
    }
}

/// A `tokenizer_config.json`: special tokens and the chat template, compiled and rendered.
pub fn tokenizer_config(data: &[u8]) {
    use crate::tokenizer::load::{chat_template_of, token_text};
    let Ok(cfg) = serde_json::from_slice::<Json>(data) else { return };
    let special = |key: &str| cfg.get(key).and_then(token_text).unwrap_or_default();
    let (bos, eos) = (special("bos_token"), special("eos_token"));
    let Some(source) = chat_template_of(&cfg) else { return };
    let Ok(t) = ChatTemplate::new(&source, &bos, &eos) else { return };
    let msgs = conversation();
    let _ = t.render(&msgs, true);
    let _ = t.assistant_spans(&msgs);
    let _ = t.pair(Some("S"), "q", "a");
}

/// A GGUF file: header, metadata and tensor table; then the model config and the tokenizer
/// built from its metadata, and every tensor of a supported type read and dequantized.
pub fn gguf(data: &[u8]) {
    let path = scratch("gguf").join("model.gguf");
    put(&path, data);
    let Ok(f) = GgufFile::open(&path) else { return };
    let _ = crate::model::load::config(&path);
    if let Ok(tok) = crate::tokenizer::load::load(&path) {
        let _ = tok.tokenizer.encode("Hello 中文", true);
    }
    for t in &f.tensors {
        let Some(kind) = GgmlKind::from_id(t.ggml_type.id()) else { continue };
        let Ok(bytes) = f.tensor_bytes(t) else { continue };
        let _ = dequantize(kind, &bytes, t.n_elements() as usize);
    }
}

/// Raw tensor data of every supported quant type: the first byte picks the type, the rest is
/// the data, dequantized as the whole blocks it holds and as one element more.
pub fn quant(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let kind = GgmlKind::ALL[pick as usize % GgmlKind::ALL.len()];
    let n_blocks = rest.len() / kind.type_size();
    let n = n_blocks * kind.block_size();
    let _ = dequantize(kind, rest, n);
    let _ = dequantize(kind, rest, n + 1);
    let _ = crate::gguf::quant::dequantize_id(u32::from(pick), rest, n);
}

/// A `model.safetensors` file of a Hugging Face folder, memory-mapped and every tensor read.
pub fn safetensors(data: &[u8]) {
    let dir = scratch("safetensors");
    put(&dir.join("model.safetensors"), data);
    if let Ok(Some(tensors)) = crate::model::safetensors::map_folder(&dir) {
        for t in tensors.values() {
            let _ = t.as_f32();
            let _ = t.to_f32();
        }
    }
}

/// A `model.safetensors.index.json` (sharded weights): every shard it names must be a file of
/// the folder.
pub fn safetensors_index(data: &[u8]) {
    let dir = scratch("safetensors_index");
    put(&dir.join("model.safetensors.index.json"), data);
    if let Ok(files) = crate::model::safetensors::weight_files(&dir) {
        for f in files {
            let inside =
                f.strip_prefix(&dir).is_ok_and(|rel| rel.components().all(|c| matches!(c, std::path::Component::Normal(_))));
            assert!(inside, "shard {} is outside the model folder {}", f.display(), dir.display());
        }
    }
}

/// A peft adapter folder: `adapter_config.json`, a NUL byte, then `adapter_model.safetensors`.
pub fn peft(data: &[u8]) {
    use crate::model::{arch::Arch, config::Config};
    let (config, weights) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let dir = scratch("peft");
    put(&dir.join("adapter_config.json"), config);
    put(&dir.join("adapter_model.safetensors"), weights);
    let _ = crate::model::peft::read_adapter(&dir, &Config::tiny(Arch::Llama, 32, 8));
}

/// A tokenized dataset file (tokenize's output, lora-train's input), every record read.
pub fn token_dataset(data: &[u8]) {
    use crate::dataset::TokenDataset;
    let path = scratch("token_dataset").join("data.bin");
    put(&path, data);
    if let Ok(d) = TokenDataset::read(&path) {
        for r in 0..d.len() {
            let _ = d.record(r);
        }
    }
}

/// A training checkpoint's `state.json`, beside arrays for [`CHECKPOINT_PARAMS`] parameters.
pub fn checkpoint(data: &[u8]) {
    use crate::train::checkpoint::{latest, newest_step};
    let dir = scratch("checkpoint");
    let ck = dir.join("checkpoint-7");
    std::fs::create_dir_all(&ck).expect("create the checkpoint folder");
    put(&ck.join("state.json"), data);
    for f in ["params.f32", "adam_m.f32", "adam_v.f32"] {
        put(&ck.join(f), &[0u8; CHECKPOINT_PARAMS * 4]);
    }
    let _ = newest_step(&dir);
    let _ = latest(&dir, CHECKPOINT_PARAMS);
}

/// The parameter count of the checkpoint target's arrays.
pub const CHECKPOINT_PARAMS: usize = 3;

/// A cache node record (as a run, `pipe show` or a remote cache pull reads it), also read as
/// a run record and a memo. A record whose key is not its parts' hash is damaged at once, so
/// the key is set to the parts' hash before the lookup, to reach the checks after it.
pub fn cache_record(data: &[u8]) {
    use crate::cache::store::{ExtraMemo, NodeRecord, RunRecord, Store};
    static STORE: OnceLock<Store> = OnceLock::new();
    let store = STORE.get_or_init(|| Store::open(&scratch("cache_record")).expect("open the scratch cache"));
    let _ = serde_json::from_slice::<RunRecord>(data);
    let _ = serde_json::from_slice::<ExtraMemo>(data);
    let key = match serde_json::from_slice::<NodeRecord>(data) {
        Ok(mut rec) => {
            rec.key = rec.parts.key();
            put(&store.record_path(&rec.key), &serde_json::to_vec(&rec).expect("a record serialises"));
            rec.key
        }
        Err(_) => {
            let key = "0".repeat(64);
            put(&store.record_path(&key), data);
            key
        }
    };
    let _ = store.lookup(&key);
    let _ = store.record_any(&key);
}

/// A `pypi:` or `hf:` source string: what it resolves to must stay inside the cache's
/// sources folder or the hub cache.
pub fn source(data: &[u8]) {
    use crate::source::Source;
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(s) = Source::parse(text) else { return };
    let root = Path::new("/cache");
    let (base, path) = match &s {
        Source::Pypi { .. } => (root.join("sources").join("pypi"), s.expected_path(root)),
        Source::Hf { .. } => (crate::source::hub_cache(), s.expected_path(root)),
    };
    let rel =
        path.strip_prefix(&base).unwrap_or_else(|_| panic!("{text:?} resolves to {} outside {}", path.display(), base.display()));
    assert!(
        rel.components().all(|c| matches!(c, std::path::Component::Normal(_))),
        "{text:?} resolves to {}, which leaves {}",
        path.display(),
        base.display()
    );
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use super::*;

    /// Mutations of each target's seeds the test runs: enough to reach past the seeds, few
    /// enough to keep the test a few seconds in the dev profile.
    const MUTATIONS_PER_TARGET: usize = 400;

    /// The files of `fuzz/<kind>/<target>/`, sorted by name.
    fn inputs(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join(target);
        let Ok(rd) = std::fs::read_dir(&dir) else { return Vec::new() };
        let mut out: Vec<_> = rd
            .map(|e| e.expect("a corpus entry").path())
            .filter(|p| p.is_file())
            .map(|p| {
                (p.file_name().expect("a file name").to_string_lossy().into_owned(), std::fs::read(&p).expect("read an input"))
            })
            .collect();
        out.sort();
        out
    }

    /// xorshift64*: a fixed-seed generator, so that every run tries the same inputs.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// One to four edits of `seed`: bit flips, truncation, inserted or overwritten bytes (often
    /// the bytes of a boundary value, as size fields are), a copied stretch.
    fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
        let mut b = seed.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(b.len() + 1);
            match rng.below(6) {
                0 if !b.is_empty() => {
                    let i = rng.below(b.len());
                    b[i] ^= 1 << rng.below(8);
                }
                1 => b.truncate(at),
                2 => b.insert(at, rng.next() as u8),
                3 => {
                    const BOUNDARY: [u64; 6] = [0, 1, 0x7f, 0xffff_ffff, 1 << 40, u64::MAX];
                    let v = BOUNDARY[rng.below(BOUNDARY.len())].to_le_bytes();
                    let n = [1, 2, 4, 8][rng.below(4)];
                    let end = (at + n).min(b.len());
                    b.splice(at..end, v[..n].iter().copied());
                }
                4 if !b.is_empty() => {
                    let from = rng.below(b.len());
                    let len = rng.below(16).min(b.len() - from);
                    let chunk = b[from..from + len].to_vec();
                    b.splice(at..at, chunk);
                }
                _ => {
                    let text = [&b"\""[..], b"{", b"}", b"[", b"]", b",", b":", b"\n", b"{{", b"{%", b"..", b"/", b"\\u0000"];
                    let t = text[rng.below(text.len())];
                    b.splice(at..at, t.iter().copied());
                }
            }
        }
        b
    }

    /// Every committed seed and regression input, and deterministic mutations of the seeds,
    /// through every target: none may panic. Fails naming each target and input that did.
    #[test]
    fn every_fuzz_target_takes_its_seeds_regressions_and_mutations_without_panicking() {
        let mut failures = Vec::new();
        // The panics are collected and reported below; their messages would be noise.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        for &(name, target) in TARGETS {
            let seeds = inputs("corpus", name);
            assert!(!seeds.is_empty(), "fuzz target `{name}` has no seeds in fuzz/corpus/{name}");
            let mut run = |what: String, data: &[u8]| {
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| target(data))) {
                    let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                    failures.push(format!("{name}: {what}: {}", msg.unwrap_or_default()));
                }
            };
            for (file, data) in seeds.iter().chain(&inputs("regressions", name)) {
                run(file.clone(), data);
            }
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
            for i in 0..MUTATIONS_PER_TARGET {
                let (file, seed) = &seeds[i % seeds.len()];
                let data = mutate(seed, &mut rng);
                run(format!("mutation {i} of {file} ({} bytes)", data.len()), &data);
            }
        }
        std::panic::set_hook(hook);
        remove_scratch();
        assert!(failures.is_empty(), "fuzz targets panicked:\n{}", failures.join("\n"));
    }
}
