//! Parquet records files, as Hugging Face datasets, pandas, pyarrow and polars write them: one
//! record per row, read with the Apache Arrow project's `parquet` crate one row group at a time
//! (its row API; no Arrow arrays are built).
//!
//! A row becomes a JSON object with one field per column, in column order:
//! - strings stay strings, and binary cells that hold UTF-8 (writers that leave out the string
//!   annotation) are read as strings too;
//! - integers, floats and booleans become JSON numbers and booleans, nulls become `null`;
//! - lists become arrays and structs objects, so a ShareGPT `conversations` column of
//!   `list<struct<from, value>>` reads as the same records as its JSON Lines;
//! - dates, times, timestamps and decimals become their text;
//! - a column named in `json_columns` that holds a string is parsed as JSON (a conversation
//!   stored as JSON text, as in a CSV cell).
//!
//! A cell that cannot be used (binary that is not UTF-8, a float that is not finite, a JSON
//! column that does not parse) makes its row a [`BadRow`] (its `line` is the row number) naming
//! the column, and
//! the other rows are still read. A file that is not Parquet, is truncated, or whose pages do not
//! decode is a [`ParquetError`] for the whole file. Snappy, gzip, LZ4 and zstd pages are read.

use std::path::Path;

use parquet::basic::{ConvertedType, LogicalType, Repetition};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;
use serde_json::{Map, Number, Value as Json};

use super::rows::{BadRow, RowScan};

/// The file cannot be read as Parquet.
#[derive(Debug, thiserror::Error)]
pub enum ParquetError {
    /// Opening the file failed.
    #[error("opening: {0}")]
    Open(#[source] std::io::Error),
    /// Not a Parquet file at all (no `PAR1` magic at its start and end).
    #[error("not a Parquet file (a Parquet file starts and ends with `PAR1`)")]
    NotParquet,
    /// The footer (schema, row groups) does not read: a truncated or damaged file.
    #[error("reading the Parquet footer: {0}")]
    Footer(#[source] parquet::errors::ParquetError),
    /// The footer places a column chunk's data at a negative offset or length, or past the end
    /// of the file (the parquet crate would panic on the first, and size a read by the second).
    #[error(
        "row group {row_group}, column {column}: the footer places its data at byte {start} with length {len}, \
         outside the file ({file_len} bytes)"
    )]
    ChunkOutside {
        /// 0-based row group.
        row_group: usize,
        /// 0-based column of the row group.
        column: usize,
        /// The chunk's first byte (its dictionary page's, else its first data page's).
        start: i64,
        /// The chunk's compressed length.
        len: i64,
        /// The file's length.
        file_len: u64,
    },
    /// The schema has a shape the row reader does not assemble (it asserts on them): a `LIST` or
    /// `MAP` group not of the spec's shape, a field without a repetition, a group with no fields.
    #[error("the schema cannot be read as rows: {0}")]
    Schema(String),
    /// A dictionary page's header counts more values than its bytes can hold: the parquet crate
    /// sizes the dictionary by the count before it decodes a value.
    #[error(
        "row group {row_group}, column {column}: a dictionary page of {bytes} bytes claims {values} values, \
         more than it can hold"
    )]
    Dictionary {
        /// 0-based row group.
        row_group: usize,
        /// 0-based column of the row group.
        column: usize,
        /// The header's value count.
        values: u32,
        /// The page's (decompressed) length.
        bytes: usize,
    },
    /// A column chunk's pages do not read (before any row is).
    #[error("row group {row_group}, column {column}: {source}")]
    Pages {
        /// 0-based row group.
        row_group: usize,
        /// 0-based column of the row group.
        column: usize,
        /// The reader's error.
        source: parquet::errors::ParquetError,
    },
    /// A row group's pages do not decode.
    #[error("reading row {row}: {source}")]
    Row {
        /// 1-based row where reading stopped.
        row: usize,
        /// The decoder's error.
        source: parquet::errors::ParquetError,
    },
    /// The parquet crate panicked reading the file: its row API trusts more of a page than it
    /// checks (a `PLAIN` byte array page with fewer bytes than its header's value count, for one).
    /// The panic is contained here and the file reported as damaged.
    #[error("reading row {row}: the Parquet decoder failed on damaged data: {message}")]
    Decoder {
        /// 1-based row being read.
        row: usize,
        /// The decoder's panic message.
        message: String,
    },
}

/// Reads a Parquet file; the string columns named in `json_columns` are parsed as JSON.
pub fn read_parquet(path: &Path, json_columns: &[&str]) -> Result<RowScan, ParquetError> {
    let file = std::fs::File::open(path).map_err(ParquetError::Open)?;
    if !has_magic(&file).map_err(ParquetError::Open)? {
        return Err(ParquetError::NotParquet);
    }
    let file_len = file.metadata().map_err(ParquetError::Open)?.len();
    // Rows read so far, for the error when the decoder panics.
    let mut done = 0;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_rows(file, file_len, json_columns, &mut done))).unwrap_or_else(
        |p| {
            let message = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(ParquetError::Decoder { row: done + 1, message: message.unwrap_or_default() })
        },
    )
}

/// The footer checked, then every row of the file, counted in `done` as they are read.
fn read_rows(file: std::fs::File, file_len: u64, json_columns: &[&str], done: &mut usize) -> Result<RowScan, ParquetError> {
    let reader = SerializedFileReader::new(file).map_err(ParquetError::Footer)?;
    check_chunks(reader.metadata(), file_len)?;
    for field in reader.metadata().file_metadata().schema_descr().root_schema().get_fields() {
        check_shape(field).map_err(ParquetError::Schema)?;
    }
    check_dictionaries(&reader)?;
    let rows = reader.get_row_iter(None).map_err(ParquetError::Footer)?;
    let mut out = RowScan::default();
    for (i, row) in rows.enumerate() {
        let n = i + 1;
        let row = row.map_err(|source| ParquetError::Row { row: n, source })?;
        match record(&row, json_columns) {
            Ok(obj) => out.objects.push((obj, n)),
            Err((column, name, why)) => {
                out.bad.push(BadRow { line: n, column, reason: format!("column {column} (`{name}`): {why}") })
            }
        }
        *done = n;
    }
    Ok(out)
}

/// Every column chunk of the footer lies inside the file: the row reader takes the footer's
/// offsets and lengths as they are (it asserts they are not negative).
fn check_chunks(meta: &ParquetMetaData, file_len: u64) -> Result<(), ParquetError> {
    for (row_group, rg) in meta.row_groups().iter().enumerate() {
        for (column, c) in rg.columns().iter().enumerate() {
            let (start, len) = (c.dictionary_page_offset().unwrap_or(c.data_page_offset()), c.compressed_size());
            let inside = u64::try_from(start)
                .ok()
                .zip(u64::try_from(len).ok())
                .and_then(|(s, l)| s.checked_add(l))
                .is_some_and(|end| end <= file_len);
            if !inside {
                return Err(ParquetError::ChunkOutside { row_group, column, start, len, file_len });
            }
        }
    }
    Ok(())
}

/// Every dictionary page holds no more values than its bytes can (its values are PLAIN: at least
/// a bit each for booleans, the type's width for numbers and fixed-length arrays, a 4-byte length
/// for byte arrays). The parquet crate allocates the dictionary by the header's count: 2^31 in a
/// 1 KB file asked for 64 GiB and aborted the process. Other pages are skipped by their headers;
/// dictionary pages, usually one small page per column chunk, are read twice.
fn check_dictionaries(reader: &SerializedFileReader<std::fs::File>) -> Result<(), ParquetError> {
    use parquet::basic::Type as Physical;
    use parquet::column::page::Page;
    for row_group in 0..reader.num_row_groups() {
        let group = reader.get_row_group(row_group).map_err(ParquetError::Footer)?;
        for column in 0..group.num_columns() {
            let err = |source| ParquetError::Pages { row_group, column, source };
            let meta = group.metadata().column(column);
            let bits: u64 = match meta.column_type() {
                Physical::BOOLEAN => 1,
                Physical::INT32 | Physical::FLOAT | Physical::BYTE_ARRAY => 32,
                Physical::INT64 | Physical::DOUBLE => 64,
                Physical::INT96 => 96,
                Physical::FIXED_LEN_BYTE_ARRAY => 8 * u64::try_from(meta.column_descr().type_length()).unwrap_or(0).max(1),
            };
            let mut pages = group.get_column_page_reader(column).map_err(err)?;
            while let Some(next) = pages.peek_next_page().map_err(err)? {
                if !next.is_dict {
                    pages.skip_next_page().map_err(err)?;
                    continue;
                }
                if let Some(Page::DictionaryPage { buf, num_values, .. }) = pages.get_next_page().map_err(err)? {
                    if u64::from(num_values) * bits > buf.len() as u64 * 8 {
                        return Err(ParquetError::Dictionary { row_group, column, values: num_values, bytes: buf.len() });
                    }
                }
            }
        }
    }
    Ok(())
}

/// The field has the shape the parquet crate's row reader asserts when it builds its reader tree
/// (`record::reader::TreeBuilder::reader_tree`), checked the same way, else why not.
fn check_shape(field: &Type) -> Result<(), String> {
    let name = field.name();
    let info = field.get_basic_info();
    if !info.has_repetition() {
        return Err(format!("field `{name}` has no repetition (required, optional or repeated)"));
    }
    if field.is_primitive() {
        return Ok(());
    }
    let fields = field.get_fields();
    if fields.is_empty() {
        return Err(format!("group `{name}` has no fields"));
    }
    let repeated = |t: &Type| t.get_basic_info().has_repetition() && t.get_basic_info().repetition() == Repetition::REPEATED;
    match info.converted_type() {
        ConvertedType::LIST => {
            let [item] = fields else { return Err(format!("list `{name}` has {} fields, not 1", fields.len())) };
            if !repeated(item) {
                return Err(format!("list `{name}`: its field `{}` is not repeated", item.name()));
            }
            if is_element_type(item) {
                check_shape(item)
            } else {
                match item.get_fields().first() {
                    Some(element) => check_shape(element),
                    None => Err(format!("list `{name}`: its group `{}` has no fields", item.name())),
                }
            }
        }
        ConvertedType::MAP | ConvertedType::MAP_KEY_VALUE => {
            let [kv] = fields else { return Err(format!("map `{name}` has {} fields, not 1", fields.len())) };
            if kv.is_primitive() || !repeated(kv) {
                return Err(format!("map `{name}`: its field `{}` is not a repeated group", kv.name()));
            }
            match kv.get_fields() {
                [key] => check_shape(key),
                [key, value] => check_shape(key).and_then(|()| check_shape(value)),
                other => Err(format!("map `{name}`: its group `{}` has {} fields, not 1 or 2", kv.name(), other.len())),
            }
        }
        _ => fields.iter().try_for_each(|f| check_shape(f)),
    }
}

/// Whether the repeated field of a `LIST` group is the element itself (the spec's backward
/// compatibility rules), as the row reader decides it (`Reader::is_element_type`).
fn is_element_type(t: &Type) -> bool {
    let is_list = t.is_group()
        && match t.get_basic_info().logical_type_ref() {
            Some(l) => *l == LogicalType::List,
            None => t.get_basic_info().converted_type() == ConvertedType::LIST,
        };
    let single_repeated_child = t.is_group()
        && matches!(t.get_fields(), [c] if c.get_basic_info().has_repetition() && c.get_basic_info().repetition() == Repetition::REPEATED);
    if is_list || single_repeated_child {
        return false;
    }
    t.is_primitive() || t.get_fields().len() > 1 || t.name() == "array" || t.name().ends_with("_tuple")
}

/// Whether the file starts and ends with Parquet's magic bytes.
fn has_magic(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    if len < 12 {
        return Ok(false);
    }
    let (mut head, mut tail) = ([0u8; 4], [0u8; 4]);
    file.read_exact_at(&mut head, 0)?;
    file.read_exact_at(&mut tail, len - 4)?;
    Ok(&head == b"PAR1" && &tail == b"PAR1")
}

/// Whether `bytes` look like a Parquet file (for the hint when one is read as JSON).
pub fn looks_like_parquet(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1")
}

/// One row as a JSON object, or the column at fault (1-based position, name) and why.
fn record(row: &Row, json_columns: &[&str]) -> Result<Map<String, Json>, (usize, String, String)> {
    let mut obj = Map::new();
    for (j, (name, field)) in row.get_column_iter().enumerate() {
        let mut value = to_json(field).map_err(|why| (j + 1, name.clone(), why))?;
        if json_columns.contains(&name.as_str()) {
            if let Json::String(text) = &value {
                value =
                    serde_json::from_str(text).map_err(|e| (j + 1, name.clone(), format!("a string that is not JSON: {e}")))?;
            }
        }
        obj.insert(name.clone(), value);
    }
    Ok(obj)
}

/// One cell as JSON, or why it cannot be.
fn to_json(field: &Field) -> Result<Json, String> {
    let float = |x: f64| Number::from_f64(x).map(Json::Number).ok_or_else(|| format!("the number {x} is not finite"));
    Ok(match field {
        Field::Null => Json::Null,
        Field::Bool(b) => Json::Bool(*b),
        Field::Byte(x) => Json::from(*x),
        Field::Short(x) => Json::from(*x),
        Field::Int(x) => Json::from(*x),
        Field::Long(x) => Json::from(*x),
        Field::UByte(x) => Json::from(*x),
        Field::UShort(x) => Json::from(*x),
        Field::UInt(x) => Json::from(*x),
        Field::ULong(x) => Json::from(*x),
        Field::Float16(x) => float(f64::from(*x))?,
        Field::Float(x) => float(f64::from(*x))?,
        Field::Double(x) => float(*x)?,
        Field::Str(s) => Json::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Json::String(s.to_string()),
            Err(e) => return Err(format!("binary data that is not UTF-8 text (invalid byte at offset {})", e.valid_up_to())),
        },
        Field::Group(row) => {
            let mut obj = Map::new();
            for (name, f) in row.get_column_iter() {
                obj.insert(name.clone(), to_json(f).map_err(|why| format!("`{name}`: {why}"))?);
            }
            Json::Object(obj)
        }
        Field::ListInternal(list) => Json::Array(
            list.elements()
                .iter()
                .enumerate()
                .map(|(i, f)| to_json(f).map_err(|why| format!("[{i}]: {why}")))
                .collect::<Result<_, _>>()?,
        ),
        Field::MapInternal(map) => {
            let mut obj = Map::new();
            for (k, v) in map.entries() {
                let key = match k {
                    Field::Str(s) => s.clone(),
                    other => other.to_string(),
                };
                let value = to_json(v).map_err(|why| format!("[{key}]: {why}"))?;
                obj.insert(key, value);
            }
            Json::Object(obj)
        }
        // Dates, times, timestamps and decimals: their text, as the parquet crate prints them.
        other => Json::String(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parquet::basic::{Compression, ConvertedType, Repetition, Type as Physical};
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::types::Type;

    use super::*;

    /// A file with an `id` int64 column and a `text` column, written by the parquet crate.
    fn write(path: &Path, text: &[&[u8]], utf8: bool, compression: Compression) {
        write_with(path, text, utf8, WriterProperties::builder().set_compression(compression).build());
    }

    /// [`write`] with these writer properties.
    fn write_with(path: &Path, text: &[&[u8]], utf8: bool, props: WriterProperties) {
        let mut t = Type::primitive_type_builder("text", Physical::BYTE_ARRAY).with_repetition(Repetition::REQUIRED);
        if utf8 {
            t = t.with_converted_type(ConvertedType::UTF8);
        }
        let schema = Type::group_type_builder("schema")
            .with_fields(vec![
                Arc::new(
                    Type::primitive_type_builder("id", Physical::INT64).with_repetition(Repetition::REQUIRED).build().unwrap(),
                ),
                Arc::new(t.build().unwrap()),
            ])
            .build()
            .unwrap();
        let props = Arc::new(props);
        let mut w = SerializedFileWriter::new(std::fs::File::create(path).unwrap(), Arc::new(schema), props).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let ids: Vec<i64> = (1..=text.len() as i64).collect();
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<Int64Type>().write_batch(&ids, None, None).unwrap();
        col.close().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = text.iter().map(|t| ByteArray::from(t.to_vec())).collect();
        col.typed::<ByteArrayType>().write_batch(&values, None, None).unwrap();
        col.close().unwrap();
        rg.close().unwrap();
        w.close().unwrap();
    }

    #[test]
    fn rows_read_as_records_in_column_order_with_every_codec() {
        let dir = tempfile::tempdir().unwrap();
        for c in [Compression::UNCOMPRESSED, Compression::SNAPPY, Compression::GZIP(Default::default()), Compression::LZ4_RAW] {
            let p = dir.path().join("a.parquet");
            write(&p, &[b"hello", "算命".as_bytes()], true, c);
            let scan = read_parquet(&p, &[]).unwrap();
            let rows: Vec<String> = scan.objects.iter().map(|(o, n)| format!("{n} {}", Json::Object(o.clone()))).collect();
            assert_eq!(rows, ["1 {\"id\":1,\"text\":\"hello\"}", "2 {\"id\":2,\"text\":\"算命\"}"], "{c:?}");
        }
    }

    #[test]
    fn binary_text_reads_as_a_string_and_binary_junk_is_a_bad_row_naming_its_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.parquet");
        write(&p, &[b"plain", b"\xff\xfe", b"[1, 2]"], false, Compression::SNAPPY);
        let scan = read_parquet(&p, &["text"]).unwrap();
        assert_eq!(scan.objects.len(), 1);
        assert_eq!((&scan.objects[0].0["text"], scan.objects[0].1), (&serde_json::json!([1, 2]), 3), "a JSON column is parsed");
        assert_eq!(scan.bad.len(), 2, "{:?}", scan.bad);
        assert_eq!((scan.bad[0].line, scan.bad[0].column), (1, 2));
        assert!(scan.bad[0].reason.starts_with("column 2 (`text`): a string that is not JSON"), "{:?}", scan.bad[0]);
        // Without the JSON column, "plain" reads as a string.
        assert_eq!(read_parquet(&p, &[]).unwrap().objects[0].0["text"], "plain");
        assert_eq!((scan.bad[1].line, scan.bad[1].column), (2, 2));
        assert!(scan.bad[1].reason.contains("not UTF-8"), "{:?}", scan.bad[1]);
    }

    #[test]
    fn truncated_and_foreign_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.parquet");
        write(&p, &[b"x".as_slice(); 50], true, Compression::SNAPPY);
        let bytes = std::fs::read(&p).unwrap();
        assert!(looks_like_parquet(&bytes));
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(read_parquet(&p, &[]), Err(ParquetError::NotParquet)));
        // The magic at both ends, the middle gone: the footer does not read.
        let mut cut = bytes[..8].to_vec();
        cut.extend_from_slice(&bytes[bytes.len() - 8..]);
        std::fs::write(&p, &cut).unwrap();
        assert!(matches!(read_parquet(&p, &[]), Err(ParquetError::Footer(_))), "{:?}", read_parquet(&p, &[]));
        std::fs::write(&p, "{\"a\": 1}\n").unwrap();
        assert!(matches!(read_parquet(&p, &[]), Err(ParquetError::NotParquet)));
    }

    #[test]
    fn schemas_the_row_reader_would_assert_on_are_errors() {
        use parquet::schema::parser::parse_message_type;
        let shape = |schema: &str| {
            let t = parse_message_type(schema).unwrap();
            t.get_fields().iter().try_for_each(|f| check_shape(f))
        };
        // The spec's shapes (3-level and legacy 2-level lists, a map) read.
        shape("message m { optional group l (LIST) { repeated group list { optional binary element (UTF8); } } }").unwrap();
        shape("message m { optional group l (LIST) { repeated int32 element; } }").unwrap();
        shape("message m { optional group m (MAP) { repeated group key_value { required binary key (UTF8); optional int32 value; } } }")
            .unwrap();
        for bad in [
            "message m { optional group l (LIST) { repeated int32 a; repeated int32 b; } }",
            "message m { optional group l (LIST) { optional int32 a; } }",
            "message m { optional group m (MAP) { required int32 a; } }",
            "message m { optional group m (MAP) { repeated group kv { required int32 a; required int32 b; required int32 c; } } }",
        ] {
            assert!(shape(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn regression_inputs_are_typed_errors() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/parquet");
        let r = read_parquet(&dir.join("negative-chunk-offset"), &["messages"]);
        assert!(matches!(r, Err(ParquetError::ChunkOutside { .. })), "{r:?}");
        // The page reader's checks now reject this one before its rows are read.
        let r = read_parquet(&dir.join("plain-byte-array-short-length"), &["messages"]);
        assert!(matches!(r, Err(ParquetError::Pages { .. })), "{r:?}");
        // A dictionary page header counting 2^31-1 values (made by hand), and one the fuzzer found
        // (a 20 GiB allocation).
        let r = read_parquet(&dir.join("dictionary-count-2-pow-31"), &["messages"]);
        assert!(matches!(r, Err(ParquetError::Dictionary { values: 2147483647, .. })), "{r:?}");
        let r = read_parquet(&dir.join("dictionary-count-oom"), &["messages"]);
        assert!(matches!(r, Err(ParquetError::Dictionary { .. })), "{r:?}");
    }

    #[test]
    fn a_panic_of_the_page_decoder_is_a_typed_error() {
        // A PLAIN (no dictionary) text column of two values whose data page header says 63: the
        // crate's PlainDecoder reads a length past the page's end and panics.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.parquet");
        let props = WriterProperties::builder().set_dictionary_enabled(false).set_compression(Compression::UNCOMPRESSED).build();
        write_with(&p, &[b"a", b"b"], true, props);
        let mut bytes = std::fs::read(&p).unwrap();
        let reader = SerializedFileReader::new(std::fs::File::open(&p).unwrap()).unwrap();
        let start = reader.metadata().row_group(0).column(1).data_page_offset() as usize;
        // The data page header's struct (field 5, after field 3 or an optional field 4) starts
        // with num_values, 2: the zigzag varint 4.
        let at = (start..start + 32)
            .find(|&i| matches!(bytes[i..i + 3], [0x2c | 0x1c, 0x15, 0x04]))
            .expect("the data page header's num_values");
        bytes[at + 2] = 0x7e; // 63, one byte: no offset moves
        std::fs::write(&p, &bytes).unwrap();
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = read_parquet(&p, &[]);
        std::panic::set_hook(hook);
        assert!(matches!(r, Err(ParquetError::Decoder { row: 1, .. })), "{r:?}");
    }
}
