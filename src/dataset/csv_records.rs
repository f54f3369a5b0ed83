//! CSV records files: a header row naming the fields, then one record per row, read with the
//! `csv` crate one row at a time (the file is never in memory as a whole).
//!
//! Every cell is a string field of the record, except the cells of the columns named as JSON
//! (a conversation schema's messages column holds the list of messages as JSON text), which are
//! parsed. A row that cannot be used (a field count other than the header's, bytes that are
//! not UTF-8, a JSON cell that does not parse) is a [`BadRow`] with its line and column, and its
//! neighbours are still read; only an unreadable file or header is an error for the whole file.

use std::path::Path;

use serde_json::{Map, Value as Json};

use super::rows::{BadRow, RowScan};

/// The file or its header cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// The header row is unreadable (I/O, not UTF-8, no header at all).
    #[error("reading the CSV header: {0}")]
    Header(#[source] csv::Error),
    /// Reading failed part way.
    #[error("reading line {line}: {source}")]
    Io {
        /// Where reading stopped.
        line: usize,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Two columns share a name.
    #[error("the CSV header names column `{name}` twice (columns {first} and {second})")]
    DuplicateColumn {
        /// The name.
        name: String,
        /// 1-based columns.
        first: usize,
        /// 1-based columns.
        second: usize,
    },
}

/// Reads a CSV file; the columns named in `json_columns` are parsed as JSON.
pub fn read_csv(path: &Path, json_columns: &[&str]) -> Result<RowScan, CsvError> {
    let file = std::fs::File::open(path).map_err(|source| CsvError::Io { line: 1, source })?;
    read_csv_from(std::io::BufReader::new(file), json_columns)
}

/// [`read_csv`] from any reader.
pub fn read_csv_from(reader: impl std::io::Read, json_columns: &[&str]) -> Result<RowScan, CsvError> {
    let mut rdr = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(reader);
    let header: Vec<String> = rdr.headers().map_err(CsvError::Header)?.iter().map(String::from).collect();
    for (j, name) in header.iter().enumerate() {
        if let Some(i) = header[..j].iter().position(|n| n == name) {
            return Err(CsvError::DuplicateColumn { name: name.clone(), first: i + 1, second: j + 1 });
        }
    }
    let is_json: Vec<bool> = header.iter().map(|h| json_columns.contains(&h.as_str())).collect();
    let mut out = RowScan::default();
    let mut row = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut row) {
            Ok(false) => break,
            Ok(true) => {
                let line = row.position().map_or(0, |p| p.line() as usize);
                match to_object(&header, &is_json, &row) {
                    Ok(obj) => out.objects.push((obj, line)),
                    Err((column, reason)) => out.bad.push(BadRow { line, column, reason }),
                }
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                match e.into_kind() {
                    csv::ErrorKind::Io(source) => return Err(CsvError::Io { line, source }),
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => out.bad.push(BadRow {
                        line,
                        column: 1,
                        reason: format!(
                            "the row has {len} field{} but the header has {expected_len}",
                            if len == 1 { "" } else { "s" }
                        ),
                    }),
                    csv::ErrorKind::Utf8 { err, .. } => out.bad.push(BadRow {
                        line,
                        column: err.field() + 1,
                        reason: format!(
                            "column {} (`{}`) is not UTF-8 (invalid byte at offset {})",
                            err.field() + 1,
                            header.get(err.field()).map_or("", String::as_str),
                            err.valid_up_to()
                        ),
                    }),
                    other => out.bad.push(BadRow { line, column: 1, reason: format!("{other:?}") }),
                }
            }
        }
    }
    Ok(out)
}

fn to_object(header: &[String], is_json: &[bool], row: &csv::StringRecord) -> Result<Map<String, Json>, (usize, String)> {
    let mut obj = Map::new();
    for (j, (name, cell)) in header.iter().zip(row.iter()).enumerate() {
        let value = if is_json[j] {
            serde_json::from_str(cell).map_err(|e| (j + 1, format!("column {} (`{name}`) is not JSON: {e}", j + 1)))?
        } else {
            Json::String(cell.to_string())
        };
        obj.insert(name.clone(), value);
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str, json: &[&str]) -> RowScan {
        read_csv_from(text.as_bytes(), json).unwrap()
    }

    #[test]
    fn rows_become_string_records_with_their_lines() {
        let s = scan("\u{feff}instruction,input,output\nhi,,\"hello, \"\"friend\"\"\"\n\"two\nlines\",x,y\n", &[]);
        assert!(s.bad.is_empty(), "{:?}", s.bad);
        let got: Vec<(String, usize)> = s.objects.iter().map(|(o, l)| (serde_json::to_string(o).unwrap(), *l)).collect();
        assert_eq!(
            got,
            [
                (r#"{"instruction":"hi","input":"","output":"hello, \"friend\""}"#.to_string(), 2),
                (r#"{"instruction":"two\nlines","input":"x","output":"y"}"#.to_string(), 3),
            ]
        );
    }

    #[test]
    fn a_bad_row_is_located_and_its_neighbours_survive() {
        let s = scan("a,messages\n1,[]\n2\n3,[{\"role\": \n4,\"[{\"\"role\"\": \"\"user\"\"}]\"\n", &["messages"]);
        assert_eq!(s.objects.iter().map(|(_, l)| *l).collect::<Vec<_>>(), [2, 5]);
        assert_eq!(s.objects[1].0["messages"][0]["role"], "user");
        assert_eq!((s.bad[0].line, s.bad[0].column), (3, 1));
        assert!(s.bad[0].reason.contains("the row has 1 field but the header has 2"), "{:?}", s.bad);
        assert_eq!((s.bad[1].line, s.bad[1].column), (4, 2));
        assert!(s.bad[1].reason.starts_with("column 2 (`messages`) is not JSON"), "{:?}", s.bad);
    }

    #[test]
    fn a_header_with_a_repeated_name_is_an_error() {
        let e = read_csv_from("a,b,a\n1,2,3\n".as_bytes(), &[]).unwrap_err();
        assert_eq!(e.to_string(), "the CSV header names column `a` twice (columns 1 and 3)");
    }
}
