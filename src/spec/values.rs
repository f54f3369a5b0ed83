//! YAML and `--set` text to typed parameter values, checked against the kind's
//! [`ParamSpec`]; a value that does not fit is a [`BadValue`], the message of a located
//! diagnostic.

use super::yaml::{is_null_text, Yaml, YamlValue};
use crate::params::{did_you_mean, Default, ParamSpec, ParamType, Value};

/// Why a value does not fit its parameter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadValue {
    /// A value of another type, or out of the parameter's range.
    #[error("`{param}` must be {expected}, found {found}")]
    Mismatch {
        /// The parameter.
        param: &'static str,
        /// The type and range it takes ([`ParamType::describe`]).
        expected: String,
        /// The value's type, or the value.
        found: String,
    },
    /// A list item that is not a string.
    #[error("`{param}` must be a list of strings, found an item that is {found}")]
    ListItem {
        /// The parameter.
        param: &'static str,
        /// The item's YAML type.
        found: &'static str,
    },
    /// A string that is none of an enum's choices.
    #[error(
        "`{param}` must be one of {}, found `{found}`{}",
        choices.join(", "),
        suggestion.map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default()
    )]
    NotOneOf {
        /// The parameter.
        param: &'static str,
        /// Its choices.
        choices: &'static [&'static str],
        /// The value given.
        found: String,
        /// The closest choice, when it is close enough to be a likely typo.
        suggestion: Option<&'static str>,
    },
}

/// Converts a YAML value to the parameter's type; the error is the message for a diagnostic.
pub fn convert(spec: &ParamSpec, y: &Yaml) -> Result<Value, BadValue> {
    if y.is_null() && matches!(spec.default, Default::Null) {
        return Ok(Value::Null);
    }
    let expected = || BadValue::Mismatch { param: spec.name, expected: spec.ty.describe(), found: y.type_name().into() };
    match (&spec.ty, &y.value) {
        (ParamType::StrList, YamlValue::Seq(items)) => items
            .iter()
            .map(|item| match &item.value {
                YamlValue::Scalar { text, .. } if !item.is_null() => Ok(Value::Str(text.clone())),
                _ => Err(BadValue::ListItem { param: spec.name, found: item.type_name() }),
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
pub fn convert_scalar(spec: &ParamSpec, text: &str, quoted: bool) -> Option<Result<Value, BadValue>> {
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
                Err(BadValue::Mismatch { param: name, expected: spec.ty.describe(), found: v.to_string() })
            } else {
                Ok(Value::Int(v))
            }
        }
        ParamType::Float { min, max } if !quoted => {
            let v: f64 = text.replace('_', "").parse().ok()?;
            if !v.is_finite() || v < min || v > max {
                Err(BadValue::Mismatch { param: name, expected: spec.ty.describe(), found: v.to_string() })
            } else {
                Ok(Value::Float(v))
            }
        }
        ParamType::Str if quoted || !is_null_text(text) => Ok(Value::Str(text.to_string())),
        ParamType::Enum(choices) => {
            if choices.contains(&text) {
                Ok(Value::Str(text.to_string()))
            } else {
                Err(BadValue::NotOneOf {
                    param: name,
                    choices,
                    found: text.to_string(),
                    suggestion: did_you_mean(text, choices.iter().copied()),
                })
            }
        }
        ParamType::StrList if !is_null_text(text) || quoted => {
            Ok(Value::List(text.split(',').map(|s| Value::Str(s.trim().to_string())).collect()))
        }
        _ => return None,
    })
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
        let Some(Err(e)) = convert_scalar(&MODE, "skp", false) else { panic!() };
        let msg = e.to_string();
        assert!(msg.contains("did you mean `skip`"), "{msg}");
    }
}
