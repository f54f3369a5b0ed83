//! What the readers of tabular records files (CSV, Parquet) give back: the good rows as JSON
//! objects, and the rows that could not be read, located, so that fix-json reports them beside
//! the bad records of a JSON file.

use serde_json::{Map, Value as Json};

/// A row that could not be read into a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// 1-based position: the line where a CSV row starts, a Parquet row's number.
    pub line: usize,
    /// 1-based column (field number) of the problem; 1 when the whole row is wrong.
    pub column: usize,
    /// What is wrong, naming the column.
    pub reason: String,
}

/// The rows of a file.
#[derive(Debug, Default)]
pub struct RowScan {
    /// Records with their 1-based position (as [`BadRow::line`]), in file order.
    pub objects: Vec<(Map<String, Json>, usize)>,
    /// Rows that could not be read.
    pub bad: Vec<BadRow>,
}
