//! Running a real llama.cpp on an exported file: its tokenizer, its greedy decoding, and its
//! perplexity, through the stock command-line tools.
//!
//! The tools are found in `$PIPE_LLAMA_CPP` (a folder holding `llama-tokenize`, `llama-simple`,
//! `llama-perplexity`) or on `PATH`. `scripts/install-llamacpp.sh` builds them from the sources
//! in the llama-cpp-python sdist.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A failure running a llama.cpp tool.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The tool could not be started.
    #[error("running {tool}: {source}")]
    Spawn { tool: PathBuf, source: std::io::Error },
    /// The tool exited with an error.
    #[error("{tool} failed ({status}): {stderr}")]
    Failed { tool: PathBuf, status: String, stderr: String },
    /// The tool's output was not what this module expects.
    #[error("{tool}: unexpected output: {output}")]
    Output { tool: PathBuf, output: String },
}

/// The llama.cpp tools found on this machine.
#[derive(Debug, Clone)]
pub struct LlamaCpp {
    /// `llama-tokenize`.
    pub tokenize: PathBuf,
    /// `llama-simple` (greedy decoding).
    pub simple: PathBuf,
    /// `llama-perplexity`, when built.
    pub perplexity: Option<PathBuf>,
}

/// A llama.cpp program by name: in `$PIPE_LLAMA_CPP` when set, else on `PATH`.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PIPE_LLAMA_CPP") {
        let p = Path::new(&dir).join(name);
        return p.is_file().then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Where the tools were looked for, for messages.
pub fn search_description() -> String {
    match std::env::var_os("PIPE_LLAMA_CPP") {
        Some(d) => format!("PIPE_LLAMA_CPP={}", Path::new(&d).display()),
        None => {
            "PATH (set PIPE_LLAMA_CPP to the folder of llama.cpp's programs: llama-tokenize, llama-simple, llama-server)".into()
        }
    }
}

impl LlamaCpp {
    /// The tools, or `None` when `llama-tokenize` or `llama-simple` is missing.
    pub fn find() -> Option<LlamaCpp> {
        Some(LlamaCpp {
            tokenize: find_tool("llama-tokenize")?,
            simple: find_tool("llama-simple")?,
            perplexity: find_tool("llama-perplexity"),
        })
    }

    /// Token ids of `text` as llama.cpp's tokenizer gives them (`parse_special` on, no BOS).
    /// The text goes through a file in `scratch`, so its bytes arrive unescaped.
    pub fn tokenize(&self, model: &Path, text: &str, scratch: &Path) -> Result<Vec<u32>, ToolError> {
        let file = scratch.join("llama-tokenize-input.txt");
        std::fs::write(&file, text).map_err(|source| ToolError::Spawn { tool: self.tokenize.clone(), source })?;
        let out = run(
            Command::new(&self.tokenize).arg("-m").arg(model).arg("-f").arg(&file).args([
                "--ids",
                "--log-disable",
                "--no-bos",
                "--no-escape",
            ]),
            &self.tokenize,
        )?;
        parse_ids(&out).ok_or_else(|| ToolError::Output { tool: self.tokenize.clone(), output: out.clone() })
    }

    /// llama.cpp's greedy continuation of `prompt` (at most `n` new tokens), as the bytes
    /// `llama-simple` prints: the prompt's pieces, then each generated token's piece.
    pub fn greedy(&self, model: &Path, prompt: &str, n: usize) -> Result<Vec<u8>, ToolError> {
        let out = Command::new(&self.simple)
            .arg("-m")
            .arg(model)
            .args(["-n", &n.to_string()])
            .arg(prompt)
            .output()
            .map_err(|source| ToolError::Spawn { tool: self.simple.clone(), source })?;
        if !out.status.success() {
            return Err(failed(&self.simple, &out));
        }
        let mut text = out.stdout;
        // llama-simple ends with one newline of its own.
        if text.last() == Some(&b'\n') {
            text.pop();
        }
        Ok(text)
    }

    /// llama.cpp's perplexity of `text_file` with `ctx`-token chunks.
    pub fn perplexity(&self, model: &Path, text_file: &Path, ctx: usize) -> Result<f64, ToolError> {
        let tool = self.perplexity.clone().ok_or_else(|| ToolError::Spawn {
            tool: "llama-perplexity".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("not found in {}", search_description())),
        })?;
        let out = Command::new(&tool)
            .arg("-m")
            .arg(model)
            .arg("-f")
            .arg(text_file)
            // One thread: on a busy machine llama.cpp's spinning worker threads slow it down by
            // an order of magnitude, and a 135M model needs no more. At most 32 chunks.
            .args(["-c", &ctx.to_string(), "-b", &ctx.to_string(), "--chunks", "32", "-t", "1", "--no-warmup"])
            .output()
            .map_err(|source| ToolError::Spawn { tool: tool.clone(), source })?;
        if !out.status.success() {
            return Err(failed(&tool, &out));
        }
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        parse_final_ppl(&all).ok_or_else(|| ToolError::Output { tool, output: tail(&all, 600) })
    }
}

fn tail(s: &str, n: usize) -> String {
    let start = s.len().saturating_sub(n);
    let start = (start..=s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
    s[start..].trim().to_string()
}

fn failed(tool: &Path, out: &std::process::Output) -> ToolError {
    ToolError::Failed {
        tool: tool.to_path_buf(),
        status: out.status.to_string(),
        stderr: tail(&String::from_utf8_lossy(&out.stderr), 800),
    }
}

fn run(cmd: &mut Command, tool: &Path) -> Result<String, ToolError> {
    let out = cmd.output().map_err(|source| ToolError::Spawn { tool: tool.to_path_buf(), source })?;
    if !out.status.success() {
        return Err(failed(tool, &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `[1, 2, 3]` -> ids.
fn parse_ids(out: &str) -> Option<Vec<u32>> {
    let s = out.trim();
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    inner.split(',').map(|x| x.trim().parse().ok()).collect()
}

/// `Final estimate: PPL = 12.3456 +/- 0.12345` -> 12.3456.
fn parse_final_ppl(out: &str) -> Option<f64> {
    let line = out.lines().rev().find(|l| l.contains("Final estimate: PPL ="))?;
    line.split("PPL =").nth(1)?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tool_outputs() {
        assert_eq!(parse_ids("[1, 22, 333]\n"), Some(vec![1, 22, 333]));
        assert_eq!(parse_ids("[]\n"), Some(vec![]));
        assert_eq!(parse_ids("error"), None);
        let log = "[1]12.5,[2]13.1,\nFinal estimate: PPL = 13.0512 +/- 0.41245\n\nllama_perf_context_print: ...";
        assert_eq!(parse_final_ppl(log), Some(13.0512));
        assert_eq!(parse_final_ppl("no estimate"), None);
    }
}
