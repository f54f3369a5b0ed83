//! `pipe serve`: exported GGUF models behind one HTTP port that speaks the Ollama and OpenAI APIs.
//!
//! The engine is llama.cpp's own `llama-server` (the one Ollama embeds), one child per model
//! ([`llama_server`]), started with `--jinja` on the chat template stored in the GGUF file, so a
//! chat is rendered exactly as the model was trained. pipe's front end ([`http`]) sits in front:
//! - OpenAI (`/v1/models`, `/v1/chat/completions`, `/v1/completions`): checked, then passed to
//!   the model's child as they are, its answer (SSE when streaming) streamed back unchanged;
//! - Ollama (`/api/version`, `/api/tags`, `/api/ps`, `/api/show`, `/api/chat`, `/api/generate`):
//!   translated to the child's OpenAI API and back, NDJSON when streaming ([`ollama`]).
//!
//! What runs which model, and what the catalogue endpoints say about it, is a [`ModelInfo`]:
//! read from the export node's output folder (the GGUF header and the Modelfile) by
//! [`ModelInfo::read`].

pub mod http;
pub mod llama_server;
mod ollama;
mod openai;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::gguf::ftype::FileType;
use crate::gguf::reader::GgufFile;

/// What the catalogue endpoints (`/api/tags`, `/api/show`, `/v1/models`) say about a model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The name clients ask for: the export node's `name` param, else the node's name.
    pub name: String,
    /// The export-gguf node.
    pub node: String,
    /// The GGUF file.
    pub gguf: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// The cache's digest of the export's model folder (stands in for Ollama's blob digest).
    pub digest: String,
    /// When the file was written.
    pub modified: SystemTime,
    /// `general.architecture` (`llama`, `qwen3`, ...).
    pub arch: String,
    /// Parameters (elements of every tensor).
    pub parameters: u64,
    /// The file type's name (`F16`, `Q8_0`, ...).
    pub file_type: String,
    /// `<arch>.context_length`.
    pub context_length: Option<u32>,
    /// The Modelfile written beside the GGUF file, if any.
    pub modelfile: Option<String>,
    /// The system prompt the export set (the Modelfile's SYSTEM): used when a chat has none.
    pub system: Option<String>,
}

/// A model folder that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The folder has no readable GGUF file.
    #[error("{path}: {source}")]
    Gguf { path: PathBuf, source: crate::gguf::reader::GgufError },
    /// Reading the folder failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl ModelInfo {
    /// Reads an export's `model` output folder (`model.gguf` and `Modelfile`).
    pub fn read(name: &str, node: &str, folder: &Path, digest: &str, system: Option<String>) -> Result<ModelInfo, ModelError> {
        let gguf = folder.join("model.gguf");
        let meta = std::fs::metadata(&gguf).map_err(|source| ModelError::Io { path: gguf.clone(), source })?;
        let file = GgufFile::open(&gguf).map_err(|source| ModelError::Gguf { path: gguf.clone(), source })?;
        let arch = file.get_str("general.architecture").unwrap_or("unknown").to_string();
        let file_type = file
            .get_u32("general.file_type")
            .and_then(|id| FileType::ALL.iter().find(|t| t.id() == id))
            .map(|t| t.name().to_string())
            .unwrap_or_else(|| "unknown".into());
        let modelfile = std::fs::read_to_string(folder.join("Modelfile")).ok();
        Ok(ModelInfo {
            name: name.to_string(),
            node: node.to_string(),
            size: meta.len(),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            digest: digest.to_string(),
            context_length: file.get_u32(&format!("{arch}.context_length")),
            parameters: file.tensors.iter().map(|t| t.n_elements()).sum(),
            arch,
            file_type,
            modelfile,
            system,
            gguf,
        })
    }

    /// The parameter count as Ollama writes it: `134.52M`, `6.91B`.
    pub fn parameter_size(&self) -> String {
        let n = self.parameters as f64;
        if n >= 1e9 {
            format!("{:.2}B", n / 1e9)
        } else {
            format!("{:.2}M", n / 1e6)
        }
    }

    /// The Modelfile's TEMPLATE (the chat template in Ollama's Go-template form).
    pub fn template(&self) -> Option<String> {
        let mf = self.modelfile.as_deref()?;
        let start = mf.find("TEMPLATE \"\"\"")? + "TEMPLATE \"\"\"".len();
        let end = mf[start..].find("\"\"\"")?;
        Some(mf[start..start + end].to_string())
    }

    /// The Modelfile's PARAMETER lines, as Ollama's `/api/show` lists them (`stop "<|im_end|>"`).
    pub fn parameters_text(&self) -> String {
        let Some(mf) = self.modelfile.as_deref() else { return String::new() };
        mf.lines()
            .filter_map(|l| l.strip_prefix("PARAMETER "))
            .map(|l| {
                let (k, v) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
                format!("{k:<30} {}", v.trim())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `t` as RFC 3339 in UTC with nanoseconds (`2026-12-07T15:04:05.123456789Z`), as Ollama writes
/// times.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_writes_utc_with_nanoseconds() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_796_656_245, 7);
        assert_eq!(rfc3339(t), "2026-12-07T15:10:45.000000007Z");
        // A leap day.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000000000Z");
    }

    fn info(modelfile: &str, parameters: u64) -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            node: "export".into(),
            gguf: "m.gguf".into(),
            size: 1,
            digest: "d".into(),
            modified: SystemTime::UNIX_EPOCH,
            arch: "llama".into(),
            parameters,
            file_type: "F16".into(),
            context_length: None,
            modelfile: Some(modelfile.into()),
            system: None,
        }
    }

    #[test]
    fn the_modelfile_gives_the_template_and_parameters() {
        let m = info("FROM ./model.gguf\nTEMPLATE \"\"\"User: {{ .Prompt }}\n\nAssistant:\"\"\"\nPARAMETER stop \"<|im_end|>\"\nPARAMETER temperature 0.7\n", 134_515_008);
        assert_eq!(m.template().as_deref(), Some("User: {{ .Prompt }}\n\nAssistant:"));
        assert_eq!(m.parameters_text(), format!("{:<30} \"<|im_end|>\"\n{:<30} 0.7", "stop", "temperature"));
        assert_eq!(m.parameter_size(), "134.52M");
        assert_eq!(info("", 6_910_365_696).parameter_size(), "6.91B");
    }
}
