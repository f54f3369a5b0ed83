//! A YAML document tree that remembers where every value came from.
//!
//! serde-based YAML crates turn a document into typed values and forget positions, but every
//! pipeline error has to point at a file, line and column (and at the offending key, not just
//! "somewhere in this map"). So the spec loader reads YAML in two steps: [`parse`] builds this
//! small tree from yaml-rust2's marked events, then `spec::load` walks it with full position
//! information. Anchors and aliases are resolved by copying the anchored subtree.
//!
//! Limits: tags are ignored; keys must be scalars (a pipeline never needs complex keys).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A byte range in the source, with the 1-based line and column of its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Byte offset of the first character.
    pub offset: usize,
    /// Length in bytes (at least 1 so diagnostics have something to underline).
    pub len: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub col: usize,
}

/// One YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Yaml {
    /// What the value is.
    pub value: YamlValue,
    /// Where it starts in the source.
    pub span: Span,
}

/// The shape of a YAML value. Scalars stay strings until a schema says what type they should be.
#[derive(Debug, Clone, PartialEq)]
pub enum YamlValue {
    /// A scalar as written; `quoted` is true for '..', ".." and block scalars, which are always strings.
    Scalar { text: String, quoted: bool },
    /// A sequence.
    Seq(Vec<Yaml>),
    /// A mapping in document order, keys with their own spans.
    Map(Vec<(Yaml, Yaml)>),
}

impl Yaml {
    /// A short name of the value's shape for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            YamlValue::Scalar { quoted: true, .. } => "a string",
            YamlValue::Scalar { text, .. } => scalar_type_name(text),
            YamlValue::Seq(_) => "a list",
            YamlValue::Map(_) => "a mapping",
        }
    }

    /// The scalar text, if this is a scalar.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.value {
            YamlValue::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// True for `~`, `null` and an empty plain scalar.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, YamlValue::Scalar { text, quoted: false } if is_null_text(text))
    }
}

/// True for the plain scalars YAML 1.2 reads as null.
pub fn is_null_text(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// Names the type a plain scalar would be read as.
pub fn scalar_type_name(text: &str) -> &'static str {
    if is_null_text(text) {
        "null"
    } else if matches!(text, "true" | "false" | "True" | "False" | "TRUE" | "FALSE") {
        "a boolean"
    } else if text.parse::<i64>().is_ok() {
        "an integer"
    } else if text.parse::<f64>().is_ok() {
        "a number"
    } else {
        "a string"
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    /// The scanner's message.
    pub message: String,
    /// Where the scanner stopped.
    pub span: Span,
}

/// Parses one YAML document. An empty document yields an empty mapping.
pub fn parse(src: &str) -> Result<Yaml, SyntaxError> {
    let offsets = CharOffsets::new(src);
    let mut builder = Builder { src, stack: Vec::new(), anchors: HashMap::new(), root: None, offsets: &offsets };
    let mut parser = Parser::new_from_str(src);
    parser
        .load(&mut builder, false)
        .map_err(|e| SyntaxError { message: e.info().to_string(), span: offsets.span(e.marker(), 1) })?;
    Ok(builder.root.unwrap_or(Yaml { value: YamlValue::Map(Vec::new()), span: Span { offset: 0, len: 1, line: 1, col: 1 } }))
}

/// Maps yaml-rust2's character indices to byte offsets (the scanner counts characters).
struct CharOffsets {
    bytes: Vec<usize>,
    total: usize,
}

impl CharOffsets {
    fn new(src: &str) -> Self {
        CharOffsets { bytes: src.char_indices().map(|(b, _)| b).collect(), total: src.len() }
    }

    fn span(&self, m: &Marker, chars: usize) -> Span {
        let start = self.bytes.get(m.index()).copied().unwrap_or(self.total);
        let end = self.bytes.get(m.index() + chars.max(1)).copied().unwrap_or(self.total);
        Span { offset: start, len: end.saturating_sub(start).max(1), line: m.line(), col: m.col() + 1 }
    }
}

enum Frame {
    Seq(Vec<Yaml>, Span, usize),
    Map(Vec<(Yaml, Yaml)>, Option<Yaml>, Span, usize),
}

struct Builder<'a> {
    src: &'a str,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Yaml>,
    root: Option<Yaml>,
    offsets: &'a CharOffsets,
}

impl Builder<'_> {
    fn src_byte(&self, offset: usize) -> Option<u8> {
        self.src.as_bytes().get(offset).copied()
    }

    fn push_value(&mut self, v: Yaml, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, v.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(v),
            Some(Frame::Seq(items, _, _)) => items.push(v),
            Some(Frame::Map(entries, pending, _, _)) => match pending.take() {
                None => *pending = Some(v),
                Some(k) => entries.push((k, v)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, style, anchor, _) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                let extra = if matches!(style, TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted) { 2 } else { 0 };
                let span = self.offsets.span(&mark, text.chars().count() + extra);
                self.push_value(Yaml { value: YamlValue::Scalar { text, quoted }, span }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(Vec::new(), self.offsets.span(&mark, 1), anchor)),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map(Vec::new(), None, self.offsets.span(&mark, 1), anchor)),
            Event::SequenceEnd => {
                if let Some(Frame::Seq(items, span, anchor)) = self.stack.pop() {
                    // A block sequence's start mark is not where a reader looks; use its first item.
                    let span =
                        if self.src_byte(span.offset) == Some(b'[') { span } else { items.first().map_or(span, |i| i.span) };
                    self.push_value(Yaml { value: YamlValue::Seq(items), span }, anchor);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(entries, _, span, anchor)) = self.stack.pop() {
                    // A block mapping's start mark is its first `:`; point at its first key instead.
                    let span =
                        if self.src_byte(span.offset) == Some(b'{') { span } else { entries.first().map_or(span, |e| e.0.span) };
                    self.push_value(Yaml { value: YamlValue::Map(entries), span }, anchor);
                }
            }
            Event::Alias(id) => {
                let v = self.anchors.get(&id).cloned().unwrap_or(Yaml {
                    value: YamlValue::Scalar { text: String::new(), quoted: false },
                    span: self.offsets.span(&mark, 1),
                });
                self.push_value(v, 0);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_at_keys_in_bytes_and_lines() {
        let src = "name: 算命\nnodes:\n  fix:\n    kind: fix-json\n";
        let doc = parse(src).unwrap();
        let YamlValue::Map(entries) = &doc.value else { panic!("not a map") };
        let (k, _) = &entries[1];
        assert_eq!(k.as_scalar(), Some("nodes"));
        assert_eq!((k.span.line, k.span.col), (2, 1));
        assert_eq!(&src[k.span.offset..k.span.offset + k.span.len], "nodes");
        let YamlValue::Map(nodes) = &entries[1].1.value else { panic!() };
        let YamlValue::Map(fix) = &nodes[0].1.value else { panic!() };
        assert_eq!(&src[fix[0].1.span.offset..fix[0].1.span.offset + fix[0].1.span.len], "fix-json");
        assert_eq!((fix[0].1.span.line, fix[0].1.span.col), (4, 11));
    }

    #[test]
    fn block_mappings_start_at_their_first_key() {
        let doc = parse("name: x\nnodes:\n  fix:\n    kind: k\n").unwrap();
        assert_eq!((doc.span.line, doc.span.col), (1, 1));
        let YamlValue::Map(e) = &doc.value else { panic!() };
        assert_eq!((e[1].1.span.line, e[1].1.span.col), (3, 3));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.span.line >= 1, "{err:?}");
    }

    #[test]
    fn aliases_copy_the_anchored_value() {
        let doc = parse("a: &x {k: 1}\nb: *x\n").unwrap();
        let YamlValue::Map(e) = doc.value else { panic!() };
        assert_eq!(e[0].1.value, e[1].1.value);
    }

    #[test]
    fn quoted_scalars_are_strings() {
        let doc = parse("a: '42'\nb: 42\n").unwrap();
        let YamlValue::Map(e) = doc.value else { panic!() };
        assert_eq!(e[0].1.type_name(), "a string");
        assert_eq!(e[1].1.type_name(), "an integer");
    }
}
