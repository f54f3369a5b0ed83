//! `fix-json`: repair a damaged records file into a valid JSON array, reporting every bad record.
//!
//! Accepted input shapes, in any mix: a JSON array; JSON Lines; objects run together (`}{`,
//! `}\n{`, `} {`); objects separated by commas without brackets; a UTF-8 BOM; CRLF line ends.
//!
//! How: a scanner walks the text at the top level, skipping whitespace, commas and the array's
//! brackets. At each `{` it finds the matching `}` (string- and escape-aware) and parses that
//! slice strictly with serde_json. When a record is broken (bad syntax, an unterminated string, a
//! raw newline inside a string), the scanner resynchronises at the earlier of the slice's end and
//! the next line that starts with `{`, so one broken record never swallows its neighbours. Each
//! parsed object is then checked against the required fields, which must be strings.
//!
//! Conversation records (`schema: messages | sharegpt`) are checked as conversations instead
//! ([`crate::dataset::chat`]): each problem is reported with the record's line and the field path
//! (`messages[2].role`: unknown role). `required` applies to the alpaca schema only.
//!
//! With `input_format: csv` the input is a CSV file with a header row ([`crate::dataset::csv_records`]),
//! read a row at a time; cells are string fields, except a conversation schema's messages
//! column, whose cells hold the messages as JSON. A bad row is reported with its line and column.
//! With `input_format: parquet` it is a Parquet file ([`crate::dataset::parquet_records`]): each
//! row is a record, lists and structs included, so a ShareGPT `conversations` column reads as it
//! does in JSON Lines. A bad row is reported with its row number and column (the report's `line`
//! is then the row).
//!
//! Outputs: `records` (the good records as a JSON array, one per line, input order), `report`
//! (JSON: every bad record with line, column and reason; duplicates; counts), and with
//! `eval_fraction > 0` a seeded `train`/`eval` split of the good records.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::{Map, Value as Json};

use super::chat_params::{chat_schema, CONTENT_FIELD, MESSAGES_FIELD, ROLE_FIELD};
use super::{InputSpec, NodeError, NodeKind, OutputSpec, RunCtx};
use crate::dataset::chat;
use crate::dataset::csv_records::read_csv;
use crate::dataset::parquet_records::{looks_like_parquet, read_parquet};
use crate::dataset::records::json_position;
use crate::params::{Default, ParamSpec, ParamType, Params};

/// The `fix-json` kind.
pub struct FixJson;

const INPUTS: &[InputSpec] = &[InputSpec {
    name: "records",
    required: true,
    accepts: super::Accepts::File,
    doc: "the records file (JSON array, JSON Lines, or objects run together)",
}];

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "required",
        ty: ParamType::StrList,
        default: Default::StrList(&["instruction", "input", "output"]),
        doc: "fields every record must have, as strings (alpaca schema)",
    },
    ParamSpec {
        name: "on_error",
        ty: ParamType::Enum(&["skip", "fail"]),
        default: Default::Str("skip"),
        doc: "skip bad records (and report them) or fail the node",
    },
    ParamSpec {
        name: "dedupe",
        ty: ParamType::Bool,
        default: Default::Bool(true),
        doc: "drop exact duplicate records (reported)",
    },
    ParamSpec {
        name: "eval_fraction",
        ty: ParamType::Float { min: 0.0, max: 0.9 },
        default: Default::Float(0.0),
        doc: "fraction of records held out as `eval` (0: no split, no train/eval outputs)",
    },
    ParamSpec {
        name: "seed",
        ty: ParamType::Int { min: 0, max: i64::MAX },
        default: Default::Int(42),
        doc: "seed of the train/eval split",
    },
    ParamSpec {
        name: "input_format",
        ty: ParamType::Enum(&["json", "csv", "parquet"]),
        default: Default::Str("json"),
        doc: "the records file: JSON (array, Lines, run together), CSV with a header row, or Parquet (one record per row)",
    },
    ParamSpec {
        name: "schema",
        ty: ParamType::Enum(chat::SCHEMAS),
        default: Default::Str("alpaca"),
        doc: "records: alpaca (the `required` fields) or messages / sharegpt conversations, validated turn by turn",
    },
    MESSAGES_FIELD,
    ROLE_FIELD,
    CONTENT_FIELD,
];

/// The params added with conversations and CSV: at their defaults they change nothing, so they
/// stay out of the key and the keys of existing pipelines hold.
const ADDED_LATER: &[&str] = &["input_format", "schema", "messages_field", "role_field", "content_field"];

/// One record that could not be used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadRecord {
    /// 1-based line where the record starts (or where parsing failed).
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong.
    pub reason: String,
    /// The start of the record's text.
    pub excerpt: String,
}

/// A duplicate that was dropped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Duplicate {
    /// Line of the dropped copy.
    pub line: usize,
    /// Line of the kept first copy.
    pub first_line: usize,
}

/// The result of scanning a records text.
#[derive(Debug, Default)]
pub struct Scan {
    /// Parsed objects with their 1-based start line, in input order.
    pub objects: Vec<(Map<String, Json>, usize)>,
    /// Unparseable fragments.
    pub bad: Vec<BadRecord>,
    /// A UTF-8 byte order mark was present.
    pub bom: bool,
    /// CRLF line ends were present.
    pub crlf: bool,
    /// The records were wrapped in `[ ]`.
    pub bracketed: bool,
}

struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    fn new(text: &str) -> Lines {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { starts }
    }
    /// 1-based (line, column in characters) of a byte offset.
    fn at(&self, text: &str, offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        (line, text[start..offset].chars().count() + 1)
    }
}

/// Finds the end (exclusive) of the object starting at `start` (which is `{`), or `None` when
/// the text ends first.
fn balanced_end(b: &[u8], start: usize) -> Option<usize> {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for (i, &c) in b.iter().enumerate().skip(start) {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// The next offset after `from` where a line starts with optional blanks and `{`.
fn next_line_object(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        if b[i] == b'\n' {
            let mut j = i + 1;
            while j < b.len() && (b[j] == b' ' || b[j] == b'\t' || b[j] == b'\r') {
                j += 1;
            }
            if j < b.len() && b[j] == b'{' {
                return Some(j);
            }
        }
        i += 1;
    }
    None
}

fn excerpt(s: &str) -> String {
    let one_line: String = s.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).collect();
    let mut out: String = one_line.chars().take(80).collect();
    if one_line.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// Scans a records text into objects and bad fragments.
pub fn scan(text: &str) -> Scan {
    let mut out = Scan::default();
    let text = match text.strip_prefix('\u{feff}') {
        Some(t) => {
            out.bom = true;
            t
        }
        None => text,
    };
    let bom_shift = if out.bom { 3 } else { 0 };
    out.crlf = text.contains("\r\n");
    let lines = Lines::new(text);
    let b = text.as_bytes();
    let mut pos = 0;
    let mut seen_object = false;
    while pos < b.len() {
        let c = b[pos];
        if c.is_ascii_whitespace() || c == b',' {
            pos += 1;
            continue;
        }
        if c == b'[' && !seen_object {
            out.bracketed = true;
            pos += 1;
            continue;
        }
        if c == b']' && out.bracketed {
            pos += 1;
            continue;
        }
        let start = pos;
        let (line, col) = lines.at(text, start);
        let _ = bom_shift;
        if c != b'{' {
            let end = next_line_object(b, start).unwrap_or(b.len());
            let frag = &text[start..end];
            out.bad.push(BadRecord {
                line,
                col,
                reason: format!("expected `{{` to start a record, found {:?}", frag.chars().next().unwrap_or(' ')),
                excerpt: excerpt(frag.trim_end()),
            });
            pos = end;
            continue;
        }
        seen_object = true;
        let balanced = balanced_end(b, start);
        match balanced.map(|end| (end, serde_json::from_str::<Json>(&text[start..end]))) {
            Some((end, Ok(Json::Object(map)))) => {
                out.objects.push((map, line));
                pos = end;
            }
            other => {
                let resync = next_line_object(b, start);
                let end = match (balanced, resync) {
                    (Some(e), Some(r)) => e.min(r),
                    (Some(e), None) => e,
                    (None, Some(r)) => r,
                    (None, None) => b.len(),
                };
                let frag = &text[start..end];
                let (eline, ecol, reason) = match other {
                    Some((_, Err(e))) => {
                        let (l, c) = json_position(frag, &e);
                        let (l, c) = (line + l - 1, if l <= 1 { col + c - 1 } else { c });
                        (l, c, strip_position(&e.to_string()))
                    }
                    _ => match serde_json::from_str::<Json>(frag) {
                        Err(e) => {
                            let (l, c) = json_position(frag, &e);
                            let (l, c) = (line + l - 1, if l <= 1 { col + c - 1 } else { c });
                            (l, c, strip_position(&e.to_string()))
                        }
                        Ok(_) => (line, col, "the record is not closed before the next record starts".into()),
                    },
                };
                out.bad.push(BadRecord { line: eline, col: ecol, reason, excerpt: excerpt(frag.trim_end()) });
                pos = end;
            }
        }
    }
    out
}

/// serde_json appends " at line L column C"; the report has its own (absolute) position.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// What is wrong with a record's fields; its text is the reason in the report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    /// Required fields that are absent.
    #[error("missing field{} `{}`", if .0.len() == 1 { "" } else { "s" }, .0.join("`, `"))]
    Missing(Vec<String>),
    /// A required field that is not a string.
    #[error("field `{field}` must be a string, found {found}")]
    NotAString {
        /// The field.
        field: String,
        /// Its JSON type.
        found: &'static str,
    },
}

/// Checks a record's required fields.
pub fn check_fields(obj: &Map<String, Json>, required: &[String]) -> Result<(), FieldProblem> {
    let missing: Vec<String> = required.iter().filter(|f| !obj.contains_key(*f)).cloned().collect();
    if !missing.is_empty() {
        return Err(FieldProblem::Missing(missing));
    }
    for f in required {
        if let Some(v) = obj.get(f).filter(|v| !v.is_string()) {
            return Err(FieldProblem::NotAString { field: f.clone(), found: chat::type_name(v) });
        }
    }
    Ok(())
}

/// A key-order-independent identity of a record, for dedupe.
pub(crate) fn canonical(v: &Json) -> String {
    match v {
        Json::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let inner: Vec<String> =
                keys.iter().map(|k| format!("{}:{}", Json::String((*k).clone()), canonical(&m[*k]))).collect();
            format!("{{{}}}", inner.join(","))
        }
        Json::Array(a) => format!("[{}]", a.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// Writes records as a JSON array, one record per line.
pub fn to_json_array(records: &[&Map<String, Json>]) -> String {
    let mut s = String::from("[\n");
    for (i, r) in records.iter().enumerate() {
        s.push_str(&serde_json::to_string(r).expect("JSON values serialise"));
        s.push_str(if i + 1 < records.len() { ",\n" } else { "\n" });
    }
    s.push_str("]\n");
    s
}

#[derive(Serialize)]
struct Report<'a> {
    input: String,
    objects_found: usize,
    records_written: usize,
    bad_records: &'a [BadRecord],
    duplicates: &'a [Duplicate],
    bom: bool,
    crlf: bool,
    bracketed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    split: Option<std::collections::BTreeMap<&'static str, usize>>,
    /// `csv` or `parquet` (absent for JSON, whose reports stay as they were).
    #[serde(skip_serializing_if = "Option::is_none")]
    input_format: Option<&'a str>,
    /// The conversation schema (absent for alpaca).
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<String>,
}

impl NodeKind for FixJson {
    fn name(&self) -> &'static str {
        "fix-json"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "Repair a damaged records file (JSON Lines, run-together objects, BOM, CRLF) into a valid JSON array, reporting bad records; optional seeded train/eval split."
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn key_neutral_params(&self) -> &'static [&'static str] {
        ADDED_LATER
    }
    fn outputs(&self, params: &Params) -> Vec<OutputSpec> {
        let mut v = vec![
            OutputSpec { name: "records", dir: false, doc: "all good records, a JSON array" },
            OutputSpec {
                name: "report",
                dir: false,
                doc: "JSON report: bad records with line, column and reason; duplicates; counts",
            },
        ];
        if params.float("eval_fraction") > 0.0 {
            v.push(OutputSpec { name: "train", dir: false, doc: "the training split (JSON array)" });
            v.push(OutputSpec { name: "eval", dir: false, doc: "the held-out split (JSON array)" });
        }
        v
    }

    fn run(&self, ctx: &mut RunCtx) -> Result<(), NodeError> {
        let path = ctx.input("records")?.to_path_buf();
        let conversations = chat_schema(ctx.params);
        let format = ctx.params.str("input_format").unwrap_or("json");
        let json_columns: Vec<&str> = conversations.iter().map(|(_, f)| f.messages.as_str()).collect();
        let bad_input = |message: String| NodeError::BadInput { path: path.clone(), location: None, message };
        let scan = match format {
            "csv" | "parquet" => {
                let rows = if format == "csv" {
                    read_csv(&path, &json_columns).map_err(|e| bad_input(e.to_string()))?
                } else {
                    read_parquet(&path, &json_columns).map_err(|e| bad_input(e.to_string()))?
                };
                let bad = rows
                    .bad
                    .into_iter()
                    .map(|r| BadRecord { line: r.line, col: r.column, reason: r.reason, excerpt: String::new() })
                    .collect();
                Scan { objects: rows.objects, bad, ..Scan::default() }
            }
            _ => {
                let bytes = std::fs::read(&path).map_err(NodeError::io("reading", &path))?;
                if looks_like_parquet(&bytes) {
                    return Err(bad_input("this is a Parquet file; set `input_format: parquet`".into()));
                }
                let is_csv = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
                let csv_hint = if is_csv { " (a `.csv` file: set `input_format: csv`)" } else { "" };
                let text = String::from_utf8(bytes).map_err(|e| {
                    bad_input(format!("not UTF-8 (invalid byte at offset {}){csv_hint}", e.utf8_error().valid_up_to()))
                })?;
                let scan = scan(&text);
                if scan.objects.is_empty() && !scan.bad.is_empty() && is_csv {
                    return Err(bad_input("no JSON record found in a `.csv` file; set `input_format: csv`".into()));
                }
                scan
            }
        };
        // Parquet has rows, not lines.
        let rows = format == "parquet";
        let at = |b: &BadRecord| if rows { format!("row {}", b.line) } else { format!("{}:{}", b.line, b.col) };
        let required = ctx.params.str_list("required");
        let mut bad = scan.bad.clone();
        let mut good: Vec<(&Map<String, Json>, usize)> = Vec::new();
        for (obj, line) in &scan.objects {
            let checked = match &conversations {
                Some((schema, fields)) => chat::conversation(obj, *schema, fields).map(drop).map_err(|p| p.to_string()),
                None => check_fields(obj, &required).map_err(|p| p.to_string()),
            };
            match checked {
                Ok(()) => good.push((obj, *line)),
                Err(problem) => bad.push(BadRecord {
                    line: *line,
                    col: 1,
                    reason: problem,
                    excerpt: excerpt(&serde_json::to_string(obj).unwrap_or_default()),
                }),
            }
        }
        bad.sort_by_key(|b| (b.line, b.col));
        let mut duplicates = Vec::new();
        if ctx.params.bool("dedupe") {
            let mut first: HashMap<String, usize> = HashMap::new();
            good.retain(|(obj, line)| {
                let id = canonical(&Json::Object((*obj).clone()));
                match first.get(&id) {
                    Some(&f) => {
                        duplicates.push(Duplicate { line: *line, first_line: f });
                        false
                    }
                    None => {
                        first.insert(id, *line);
                        true
                    }
                }
            });
        }
        for b in &bad {
            let sep = if rows { ": " } else { ":" };
            ctx.log(format!("{}{sep}{}: {} | {}", path.display(), at(b), b.reason, b.excerpt));
        }
        if ctx.params.str("on_error") == Some("fail") && !bad.is_empty() {
            let first = &bad[0];
            return Err(NodeError::BadInput {
                path,
                location: (!rows).then_some((first.line, first.col)),
                message: format!(
                    "{}{} ({} bad record{} in all; set `on_error: skip` to drop them and get a report)",
                    if rows { format!("{}: ", at(first)) } else { String::new() },
                    first.reason,
                    bad.len(),
                    if bad.len() == 1 { "" } else { "s" }
                ),
            });
        }
        let records: Vec<&Map<String, Json>> = good.iter().map(|(o, _)| *o).collect();
        write(ctx, "records", &to_json_array(&records))?;
        let frac = ctx.params.float("eval_fraction");
        let mut split = None;
        if frac > 0.0 {
            let mut idx: Vec<usize> = (0..records.len()).collect();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(ctx.params.int("seed") as u64);
            idx.shuffle(&mut rng);
            let n_eval = ((records.len() as f64) * frac).round() as usize;
            let mut eval_idx = idx[..n_eval].to_vec();
            let mut train_idx = idx[n_eval..].to_vec();
            eval_idx.sort_unstable();
            train_idx.sort_unstable();
            let pick = |ix: &[usize]| ix.iter().map(|&i| records[i]).collect::<Vec<_>>();
            write(ctx, "train", &to_json_array(&pick(&train_idx)))?;
            write(ctx, "eval", &to_json_array(&pick(&eval_idx)))?;
            split = Some(std::collections::BTreeMap::from([("train", train_idx.len()), ("eval", eval_idx.len())]));
        }
        let report = Report {
            input: path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default(),
            objects_found: scan.objects.len(),
            records_written: records.len(),
            bad_records: &bad,
            duplicates: &duplicates,
            bom: scan.bom,
            crlf: scan.crlf,
            bracketed: scan.bracketed,
            split,
            input_format: (format != "json").then_some(format),
            schema: conversations.as_ref().and(ctx.params.str("schema")).map(String::from),
        };
        write(ctx, "report", &serde_json::to_string_pretty(&report).expect("report serialises"))?;
        ctx.set_summary(format!("{} records, {} bad, {} duplicates dropped", records.len(), bad.len(), duplicates.len()));
        Ok(())
    }
}

fn write(ctx: &RunCtx, name: &str, text: &str) -> Result<(), NodeError> {
    let p = ctx.output(name);
    std::fs::write(&p, text).map_err(NodeError::io("writing", &p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines_of(s: &Scan) -> Vec<usize> {
        s.objects.iter().map(|(_, l)| *l).collect()
    }

    #[test]
    fn all_the_shapes_parse() {
        let shapes = [
            "[{\"a\":1},{\"a\":2}]",
            "{\"a\":1}\n{\"a\":2}\n",
            "{\"a\":1}{\"a\":2}",
            "{\"a\":1} {\"a\":2}",
            "{\"a\":1},\n{\"a\":2}",
            "\u{feff}{\"a\":1}\r\n{\"a\":2}\r\n",
            "[\n  {\"a\": 1},\n  {\"a\": 2}\n]\n",
        ];
        for s in shapes {
            let r = scan(s);
            assert_eq!(r.objects.len(), 2, "{s:?}: {:?}", r.bad);
            assert!(r.bad.is_empty(), "{s:?}");
        }
    }

    #[test]
    fn a_broken_record_is_reported_at_its_line_and_its_neighbours_survive() {
        let text = "{\"a\": \"ok\"}\n{\"a\": \"no end}\n{\"a\": \"fine\"}\n";
        let r = scan(text);
        assert_eq!(lines_of(&r), vec![1, 3]);
        assert_eq!(r.bad.len(), 1);
        assert_eq!(r.bad[0].line, 2);
    }

    #[test]
    fn a_raw_newline_in_a_string_is_bad() {
        let text = "{\"a\": \"x\"}\n{\"a\": \"two\nlines\"}\n{\"a\": \"y\"}\n";
        let r = scan(text);
        assert_eq!(lines_of(&r), vec![1, 4]);
        assert_eq!(r.bad.len(), 1);
        assert_eq!((r.bad[0].line, r.bad[0].reason.contains("control character")), (2, true), "{:?}", r.bad);
    }

    #[test]
    fn an_unterminated_string_is_reported_where_the_line_ends() {
        let r = scan("{\"a\": \"x\"}\n{\"a\": \"no end}\n{\"a\": \"y\"}\n");
        assert_eq!((r.bad[0].line, r.bad[0].col), (2, 15), "{:?}", r.bad);
    }

    #[test]
    fn junk_between_records_is_reported() {
        let r = scan("{\"a\":1}\nhello world\n{\"a\":2}");
        assert_eq!(r.objects.len(), 2);
        assert_eq!(r.bad[0].line, 2);
    }

    #[test]
    fn truncated_last_record_is_reported() {
        let r = scan("{\"a\":1}\n{\"a\":");
        assert_eq!(r.objects.len(), 1);
        assert_eq!(r.bad.len(), 1);
    }

    #[test]
    fn field_checks_name_the_field() {
        let obj: Map<String, Json> = serde_json::from_str("{\"instruction\":\"x\",\"input\":\"\",\"output\":7}").unwrap();
        let req: Vec<String> = ["instruction", "input", "output"].map(String::from).to_vec();
        assert_eq!(check_fields(&obj, &req).unwrap_err().to_string(), "field `output` must be a string, found a number");
        let obj: Map<String, Json> = serde_json::from_str("{\"instruction\":\"x\"}").unwrap();
        assert_eq!(check_fields(&obj, &req).unwrap_err().to_string(), "missing fields `input`, `output`");
    }

    fn record() -> impl Strategy<Value = Map<String, Json>> {
        prop::collection::btree_map(
            "[a-z]{1,5}",
            prop_oneof![any::<String>().prop_map(Json::from), any::<i32>().prop_map(Json::from)],
            1..4,
        )
        .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        /// Any list of records written in any of the supported shapes comes back exactly.
        #[test]
        fn every_shape_round_trips(records in prop::collection::vec(record(), 0..6), shape in 0..6usize, bom in any::<bool>()) {
            let enc: Vec<String> = records.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
            let nl = if shape == 5 { "\r\n" } else { "\n" };
            let mut text = match shape {
                0 => format!("[{}]", enc.join(",")),
                1 | 5 => enc.join(nl),
                2 => enc.join(""),
                3 => enc.join(",\n"),
                _ => format!("[\n{}\n]", enc.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join(",\n")),
            };
            if bom { text.insert(0, '\u{feff}'); }
            let r = scan(&text);
            prop_assert!(r.bad.is_empty(), "{:?}", r.bad);
            let got: Vec<Map<String, Json>> = r.objects.into_iter().map(|(o, _)| o).collect();
            prop_assert_eq!(got, records);
        }

        /// Arbitrary input never panics, and every byte is accounted as a record or a bad fragment.
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = scan(&text);
        }

        /// A record damaged in the middle of a JSON Lines file costs only that record.
        #[test]
        fn damage_is_contained(records in prop::collection::vec(record(), 2..6), victim in 0..6usize, cut in 1..10usize) {
            let victim = victim % records.len();
            let mut lines: Vec<String> = records.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
            let l = &mut lines[victim];
            let keep = l.len().saturating_sub(cut).max(1);
            let mut k = keep;
            while !l.is_char_boundary(k) { k -= 1; }
            l.truncate(k.max(1));
            let r = scan(&lines.join("\n"));
            let got: Vec<Map<String, Json>> = r.objects.into_iter().map(|(o, _)| o).collect();
            let mut want = records.clone();
            want.remove(victim);
            prop_assert_eq!(got, want);
            prop_assert_eq!(r.bad.len(), 1);
        }
    }
}
