//! Located diagnostics for pipeline files.
//!
//! Every problem in a pipeline file becomes a [`Located`] diagnostic: the message, the file with
//! a label on the offending span (file, line and column are printed by miette's renderer and are
//! also kept as fields for `--json`), and a help line where a suggestion exists. The loader
//! collects all of them before giving up, so one run of `pipe` shows every mistake at once.

use std::path::{Path, PathBuf};

use miette::{Diagnostic, NamedSource, SourceSpan};

use super::yaml::Span;

/// One problem at one place in a pipeline file.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
pub struct Located {
    /// What is wrong, naming the offending key.
    pub message: String,
    /// The file, for rendering.
    #[source_code]
    pub src: NamedSource<String>,
    /// What to underline.
    #[label("{label}")]
    pub span: SourceSpan,
    /// The text under the span.
    pub label: String,
    /// A suggestion ("did you mean ...").
    #[help]
    pub help: Option<String>,
    /// The file's path as given.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

/// Errors from loading a pipeline.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read pipeline {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file has one or more problems; nothing runs.
    #[error("{} has {} error{}", file.display(), diagnostics.len(), if diagnostics.len() == 1 { "" } else { "s" })]
    Invalid {
        file: PathBuf,
        #[related]
        diagnostics: Vec<Located>,
    },
    /// A `--set` override is malformed or does not type-check.
    #[error("--set {arg}: {message}")]
    Override {
        arg: String,
        message: String,
        #[help]
        help: Option<String>,
    },
    /// `--target`, `--force` or a command argument names a node the pipeline does not have.
    #[error("no node named `{name}` in {}", file.display())]
    UnknownNode {
        name: String,
        file: PathBuf,
        #[help]
        help: Option<String>,
    },
}

/// Collects diagnostics for one file.
pub struct Diagnostics {
    file: PathBuf,
    src: String,
    /// Collected so far.
    pub items: Vec<Located>,
}

impl Diagnostics {
    /// Starts an empty collection for `file` with contents `src`.
    pub fn new(file: &Path, src: &str) -> Self {
        Diagnostics { file: file.to_path_buf(), src: src.to_string(), items: Vec::new() }
    }

    /// Records a problem at `span`.
    pub fn error(&mut self, span: Span, message: impl Into<String>, label: impl Into<String>, help: Option<String>) {
        let len = span.len.min(self.src.len().saturating_sub(span.offset)).max(usize::from(!self.src.is_empty()));
        self.items.push(Located {
            message: message.into(),
            src: NamedSource::new(self.file.display().to_string(), self.src.clone()),
            span: SourceSpan::new(span.offset.min(self.src.len()).into(), len),
            label: label.into(),
            help,
            file: self.file.clone(),
            line: span.line,
            col: span.col,
        });
    }

    /// Ok when nothing was recorded, else the whole collection as one error.
    pub fn finish(self) -> Result<(), SpecError> {
        if self.items.is_empty() {
            Ok(())
        } else {
            let mut items = self.items;
            items.sort_by_key(|d| (d.line, d.col));
            Err(SpecError::Invalid { file: self.file, diagnostics: items })
        }
    }
}

/// Formats an optional suggestion as a help line.
pub fn suggest(candidate: Option<&str>) -> Option<String> {
    candidate.map(|c| format!("did you mean `{c}`?"))
}
