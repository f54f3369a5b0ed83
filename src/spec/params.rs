//! Node parameters: the schema a node kind declares, and the typed values a pipeline gives.
//!
//! Every node kind lists its parameters as [`ParamSpec`]s (name, type, default, one line of doc).
//! The same schema drives four things, so they can never disagree:
//! 1. type-checking the YAML `params:` map and `defaults:` (with located errors),
//! 2. type-checking `--set node.param=value` overrides,
//! 3. filling defaults, so a node's fingerprint covers the effective value of every parameter
//!    (writing a default explicitly does not change a key; changing a default does),
//! 4. the reference printed by `pipe kinds` and copied into the README.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::yaml::{is_null_text, Yaml, YamlValue};

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

/// Converts a YAML value to the parameter's type; the error is the message for a diagnostic.
pub fn convert(spec: &ParamSpec, y: &Yaml) -> Result<Value, String> {
    if y.is_null() && matches!(spec.default, Default::Null) {
        return Ok(Value::Null);
    }
    let expected = || format!("`{}` must be {}, found {}", spec.name, spec.ty.describe(), y.type_name());
    match (&spec.ty, &y.value) {
        (ParamType::StrList, YamlValue::Seq(items)) => items
            .iter()
            .map(|item| match &item.value {
                YamlValue::Scalar { text, .. } if !item.is_null() => Ok(Value::Str(text.clone())),
                _ => Err(format!("`{}` must be a list of strings, found an item that is {}", spec.name, item.type_name())),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::List),
        (ParamType::StrList, YamlValue::Scalar { text, .. }) if !y.is_null() => {
            // `targets: q,k,v` is accepted as shorthand for a list, as it is on the command line.
            Ok(Value::List(text.split(',').map(|s| Value::Str(s.trim().to_string())).collect()))
        }
        (_, YamlValue::Scalar { text, quoted }) => convert_scalar(spec, text, *quoted).ok_or_else(expected)?,
        _ => Err(expected()),
    }
}

/// Converts the text of a scalar (from YAML or from `--set`) to the parameter's type.
/// `None` means the text is the wrong type; `Some(Err)` means the right type out of range.
pub fn convert_scalar(spec: &ParamSpec, text: &str, quoted: bool) -> Option<Result<Value, String>> {
    let name = spec.name;
    Some(match spec.ty {
        ParamType::Bool if !quoted => match text {
            "true" | "True" | "TRUE" => Ok(Value::Bool(true)),
            "false" | "False" | "FALSE" => Ok(Value::Bool(false)),
            _ => return None,
        },
        ParamType::Int { min, max } if !quoted => {
            let v: i64 = text.replace('_', "").parse().ok()?;
            if v < min || v > max {
                Err(format!("`{name}` must be {}, found {v}", spec.ty.describe()))
            } else {
                Ok(Value::Int(v))
            }
        }
        ParamType::Float { min, max } if !quoted => {
            let v: f64 = text.replace('_', "").parse().ok()?;
            if !v.is_finite() || v < min || v > max {
                Err(format!("`{name}` must be {}, found {v}", spec.ty.describe()))
            } else {
                Ok(Value::Float(v))
            }
        }
        ParamType::Str if quoted || !is_null_text(text) => Ok(Value::Str(text.to_string())),
        ParamType::Enum(choices) => {
            if choices.contains(&text) {
                Ok(Value::Str(text.to_string()))
            } else {
                let hint =
                    did_you_mean(text, choices.iter().copied()).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
                Err(format!("`{name}` must be one of {}, found `{text}`{hint}", choices.join(", ")))
            }
        }
        ParamType::StrList if !is_null_text(text) || quoted => {
            Ok(Value::List(text.split(',').map(|s| Value::Str(s.trim().to_string())).collect()))
        }
        _ => return None,
    })
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
    for j in 0..=b.len() {
        d[0][j] = j;
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

    const LR: ParamSpec =
        ParamSpec { name: "lr", ty: ParamType::Float { min: 0.0, max: 1.0 }, default: Default::Float(1e-4), doc: "" };
    const MODE: ParamSpec =
        ParamSpec { name: "on_error", ty: ParamType::Enum(&["skip", "fail"]), default: Default::Str("skip"), doc: "" };

    #[test]
    fn scalars_convert_to_the_declared_type() {
        assert_eq!(convert_scalar(&LR, "3e-4", false), Some(Ok(Value::Float(3e-4))));
        assert_eq!(convert_scalar(&LR, "abc", false), None);
        assert!(matches!(convert_scalar(&LR, "2", false), Some(Err(_))));
    }

    #[test]
    fn enum_errors_suggest_the_closest_choice() {
        let Some(Err(msg)) = convert_scalar(&MODE, "skp", false) else { panic!() };
        assert!(msg.contains("did you mean `skip`"), "{msg}");
    }

    #[test]
    fn did_you_mean_finds_typos_but_not_strangers() {
        assert_eq!(did_you_mean("lora-trian", ["lora-train", "merge"]), Some("lora-train"));
        assert_eq!(did_you_mean("prams", ["params", "inputs"]), Some("params"));
        assert_eq!(did_you_mean("zzzzzz", ["params", "inputs"]), None);
    }
}
