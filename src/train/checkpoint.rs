//! Training checkpoints: LoRA weights, Adam moments, step and log, written atomically.
//!
//! A checkpoint is a folder `checkpoint-<step>` holding `params.f32`, `adam_m.f32`, `adam_v.f32`
//! (raw little-endian f32) and `state.json`. It is written as `.tmp-checkpoint-<step>`, each
//! file fsynced, then renamed, so a kill leaves either a whole checkpoint or none. Nothing else
//! (RNG state, data position) needs saving: the data order and every dropout mask are pure
//! functions of (seed, step), so the step alone says where to continue. f16 training adds the
//! loss scaler's state, and the count of optimizer updates actually applied (steps skipped for
//! overflow do not count, and the learning-rate schedule follows that count).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use super::scaler::ScalerState;
use super::trainer::LogEntry;

/// The log as `state.json` has always held it: a list of JSON lines.
mod log_lines {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::LogEntry;

    pub fn serialize<S: Serializer>(log: &[LogEntry], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(log.iter().map(LogEntry::to_json_line))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<LogEntry>, D::Error> {
        let lines = Vec::<String>::deserialize(d)?;
        lines.iter().map(|l| serde_json::from_str(l).map_err(serde::de::Error::custom)).collect()
    }
}

/// What a checkpoint holds besides the arrays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// Optimizer steps done.
    pub step: u64,
    /// Number of parameters (a sanity check on load).
    pub n_params: usize,
    /// The training log so far; each entry a string of JSON in `state.json`.
    #[serde(with = "log_lines")]
    pub log: Vec<LogEntry>,
    /// Optimizer updates applied (AdamW's step count); absent in older checkpoints, where it
    /// equals `step`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_steps: Option<u64>,
    /// The f16 loss scaler's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<ScalerState>,
}

fn write_f32(path: &Path, v: &[f32]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    f.write_all(&bytes)?;
    f.sync_all()
}

fn read_f32(path: &Path, n: usize) -> std::io::Result<Vec<f32>> {
    let b = std::fs::read(path)?;
    if b.len() != n * 4 {
        return Err(std::io::Error::other(format!("{} has {} bytes, expected {}", path.display(), b.len(), n * 4)));
    }
    Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Saves a checkpoint and keeps only the newest `keep` (at least one).
pub fn save(dir: &Path, state: &State, params: &[f32], opt: &AdamW, keep: usize) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = format!("checkpoint-{}", state.step);
    let tmp = dir.join(format!(".tmp-{name}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    write_f32(&tmp.join("params.f32"), params)?;
    write_f32(&tmp.join("adam_m.f32"), &opt.m)?;
    write_f32(&tmp.join("adam_v.f32"), &opt.v)?;
    let mut f = std::fs::File::create(tmp.join("state.json"))?;
    f.write_all(&serde_json::to_vec(state).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    let dest = dir.join(&name);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    let mut all = list(dir);
    all.sort();
    let keep = keep.max(1);
    if all.len() > keep {
        for (_, p) in &all[..all.len() - keep] {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    Ok(dest)
}

fn list(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect()
}

/// The step of the newest checkpoint in `dir` whose state reads (for messages; [`latest`] is
/// what training resumes from, and also checks the parameter count and the files).
pub fn newest_step(dir: &Path) -> Option<u64> {
    let mut all = list(dir);
    all.sort();
    all.into_iter().rev().find_map(|(_, p)| {
        let state: State = serde_json::from_slice(&std::fs::read(p.join("state.json")).ok()?).ok()?;
        (state.version == 1).then_some(state.step)
    })
}

/// The newest readable checkpoint for `n_params` parameters: (state, params, optimizer).
pub fn latest(dir: &Path, n_params: usize) -> Option<(State, Vec<f32>, AdamW)> {
    let mut all = list(dir);
    all.sort();
    for (_, p) in all.into_iter().rev() {
        let Ok(bytes) = std::fs::read(p.join("state.json")) else { continue };
        let Ok(state) = serde_json::from_slice::<State>(&bytes) else { continue };
        if state.n_params != n_params || state.version != 1 {
            continue;
        }
        let (Ok(params), Ok(m), Ok(v)) = (
            read_f32(&p.join("params.f32"), n_params),
            read_f32(&p.join("adam_m.f32"), n_params),
            read_f32(&p.join("adam_v.f32"), n_params),
        ) else {
            continue;
        };
        let t = state.optimizer_steps.unwrap_or(state.step);
        return Some((state, params, AdamW { m, v, t }));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(step: u64) -> LogEntry {
        LogEntry { step, epoch: 0.5, loss: 2.25, lr: 1e-4, grad_norm: Some(0.1), tokens: 64, scaling: None }
    }

    #[test]
    fn the_log_is_kept_as_json_lines_and_reads_back_equal() {
        let skipped = LogEntry {
            grad_norm: None,
            scaling: Some(super::super::trainer::LossScaling { loss_scale: 65536.0, skipped: true }),
            ..entry(2)
        };
        let st = State {
            version: 1,
            step: 2,
            n_params: 1,
            log: vec![entry(1), skipped.clone()],
            optimizer_steps: Some(1),
            loss_scaler: None,
        };
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(
            json["log"],
            serde_json::json!([
                r#"{"step":1,"epoch":0.5,"loss":2.25,"lr":0.0001,"grad_norm":0.1,"tokens":64}"#,
                r#"{"step":2,"epoch":0.5,"loss":2.25,"lr":0.0001,"grad_norm":null,"tokens":64,"loss_scale":65536.0,"skipped":true}"#,
            ])
        );
        let back: State = serde_json::from_value(json).unwrap();
        assert_eq!(back.log, vec![entry(1), skipped]);
    }

    #[test]
    fn the_newest_whole_checkpoint_wins_and_old_ones_are_pruned() {
        let t = tempfile::tempdir().unwrap();
        let opt = AdamW { m: vec![1.0, 2.0], v: vec![3.0, 4.0], t: 0 };
        for step in 1..=3u64 {
            let st = State { version: 1, step, n_params: 2, log: vec![entry(step)], optimizer_steps: None, loss_scaler: None };
            save(t.path(), &st, &[step as f32, 0.5], &opt, 2).unwrap();
        }
        assert_eq!(list(t.path()).len(), 2, "save_total_limit 2 keeps two");
        // A half-written newer checkpoint (no state.json) is ignored.
        std::fs::create_dir_all(t.path().join("checkpoint-9")).unwrap();
        let (st, params, o) = latest(t.path(), 2).unwrap();
        assert_eq!((st.step, params, o.m, o.t), (3, vec![3.0, 0.5], vec![1.0, 2.0], 3));
        assert_eq!(st.log, vec![entry(3)]);
        assert!(latest(t.path(), 5).is_none(), "a different parameter count never resumes");
    }

    #[test]
    fn the_applied_step_count_and_the_loss_scaler_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let opt = AdamW { m: vec![0.0], v: vec![0.0], t: 3 };
        let scaler = ScalerState { scale: 8192.0, growth_tracker: 12 };
        let st = State { version: 1, step: 5, n_params: 1, log: vec![], optimizer_steps: Some(3), loss_scaler: Some(scaler) };
        save(t.path(), &st, &[1.0], &opt, 1).unwrap();
        let (back, _, o) = latest(t.path(), 1).unwrap();
        assert_eq!((back.loss_scaler, o.t), (Some(scaler), 3), "two skipped steps: AdamW has taken 3 of 5");
    }
}
