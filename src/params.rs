//! Node parameters: the schema a node kind declares, and the typed values a pipeline gives.
//!
//! Every node kind lists its parameters as [`ParamSpec`]s (name, type, default, one line of doc).
//! The same schema drives four things, so they can never disagree:
//! 1. type-checking the YAML `params:` map and `defaults:` (with located errors; the conversion
//!    from YAML is [`crate::spec::values`]),
//! 2. type-checking `--set node.param=value` overrides,
//! 3. filling defaults, so a node's fingerprint covers the effective value of every parameter
//!    (writing a default explicitly does not change a key; changing a default does),
//! 4. the reference printed by `pipe kinds` and copied into the README.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The type of one parameter.
#[derive(Debug, Clone, Copy)]
pub enum ParamType {
    /// `true` or `false`.
    Bool,
    /// An integer in `min..=max`.
    Int { min: i64, max: i64 },
    /// A number in `min..=max` (integers are accepted).
    Float { min: f64, max: f64 },
    /// Any string.
    Str,
    /// One of a fixed set of strings.
    Enum(&'static [&'static str]),
    /// A list of strings.
    StrList,
}

/// A parameter's default.
#[derive(Debug, Clone, Copy)]
pub enum Default {
    /// The pipeline must give a value.
    Required,
    /// Absent unless given (the value is `null`).
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'static str),
    StrList(&'static [&'static str]),
}

/// One parameter of a node kind.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    /// The key in `params:`.
    pub name: &'static str,
    /// Its type.
    pub ty: ParamType,
    /// Its default.
    pub default: Default,
    /// One line for `pipe kinds` and the README.
    pub doc: &'static str,
}

/// A typed parameter value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => write!(f, "null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::List(items) => {
                write!(f, "[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{v}")?;
                }
                write!(f, "]")
            }
        }
    }
}

impl ParamType {
    /// How the type reads in messages and docs.
    pub fn describe(&self) -> String {
        match self {
            ParamType::Bool => "bool".into(),
            ParamType::Int { min, max } if *max == i64::MAX => format!("integer >= {min}"),
            ParamType::Int { min, max } => format!("integer in {min}..={max}"),
            ParamType::Float { min, max } if *max == f64::INFINITY => format!("number >= {min}"),
            ParamType::Float { min, max } => format!("number in {min}..={max}"),
            ParamType::Str => "string".into(),
            ParamType::Enum(choices) => choices.join(" | "),
            ParamType::StrList => "list of strings".into(),
        }
    }
}

impl Default {
    /// The value a node gets when the pipeline gives none; `None` when required.
    pub fn value(&self) -> Option<Value> {
        Some(match *self {
            Default::Required => return None,
            Default::Null => Value::Null,
            Default::Bool(b) => Value::Bool(b),
            Default::Int(i) => Value::Int(i),
            Default::Float(x) => Value::Float(x),
            Default::Str(s) => Value::Str(s.to_string()),
            Default::StrList(items) => Value::List(items.iter().map(|s| Value::Str(s.to_string())).collect()),
        })
    }
}

/// A node's effective parameters: every declared parameter, after defaults and overrides.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Params(pub BTreeMap<String, Value>);

impl Params {
    /// The value of a declared parameter (the schema guarantees presence).
    pub fn get(&self, name: &str) -> &Value {
        self.0.get(name).unwrap_or(&Value::Null)
    }
    /// An integer parameter.
    pub fn int(&self, name: &str) -> i64 {
        match self.get(name) {
            Value::Int(i) => *i,
            Value::Float(x) => *x as i64,
            _ => 0,
        }
    }
    /// A number parameter.
    pub fn float(&self, name: &str) -> f64 {
        match self.get(name) {
            Value::Int(i) => *i as f64,
            Value::Float(x) => *x,
            _ => 0.0,
        }
    }
    /// A boolean parameter.
    pub fn bool(&self, name: &str) -> bool {
        matches!(self.get(name), Value::Bool(true))
    }
    /// A string parameter, `None` when null.
    pub fn str(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// A list-of-strings parameter.
    pub fn str_list(&self, name: &str) -> Vec<String> {
        match self.get(name) {
            Value::List(items) => items
                .iter()
                .filter_map(|v| match v {
                    Value::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The closest candidate by edit distance, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1) + 1;
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over characters, with an adjacent swap counted as one edit.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_typos_but_not_strangers() {
        assert_eq!(did_you_mean("lora-trian", ["lora-train", "merge"]), Some("lora-train"));
        assert_eq!(did_you_mean("prams", ["params", "inputs"]), Some("params"));
        assert_eq!(did_you_mean("zzzzzz", ["params", "inputs"]), None);
    }
}
