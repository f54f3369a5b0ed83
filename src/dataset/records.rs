//! Records files: a JSON array of objects (fix-json's output), read for the three fields a
//! training pair is built from.
//!
//! [`read_records`] keeps only the named fields, borrowed from the text where they have no
//! escapes, and skips every other value without building it: on a large records file this is
//! most of the difference to reading `serde_json::Value`s. [`json_position`] turns a serde_json
//! error into the 1-based line and column a user looks for.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One record: the three fields a prompt is built from, borrowed from the records file where they have
/// no escapes. A field that is missing or not a string is `None`.
#[derive(Default)]
pub struct Record<'a> {
    /// The instruction field.
    pub instruction: Option<Cow<'a, str>>,
    /// The input field (appended to the instruction).
    pub input: Option<Cow<'a, str>>,
    /// The answer field.
    pub output: Option<Cow<'a, str>>,
}

/// Reads a JSON array of records, keeping only the fields named `names` (instruction, input,
/// output); every other value is skipped without being built. A duplicate key's last value
/// wins and an element that is not an object has no fields, as with `serde_json::Value`.
struct Records<'n> {
    names: [&'n str; 3],
}

impl<'de, 'n> DeserializeSeed<'de> for Records<'n> {
    type Value = Vec<Record<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, 'n> Visitor<'de> for Records<'n> {
    type Value = Vec<Record<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(r) = seq.next_element_seed(OneRecord { names: self.names })? {
            out.push(r);
        }
        Ok(out)
    }
}

struct OneRecord<'n> {
    names: [&'n str; 3],
}

impl<'de, 'n> DeserializeSeed<'de> for OneRecord<'n> {
    type Value = Record<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'n> Visitor<'de> for OneRecord<'n> {
    type Value = Record<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a record")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut r = Record::default();
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            let key = key.unwrap_or_default();
            let hits = self.names.map(|n| n == key);
            if !hits.contains(&true) {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let Text(value) = map.next_value::<Text<'de>>()?;
            for (slot, hit) in [&mut r.instruction, &mut r.input, &mut r.output].into_iter().zip(hits) {
                if hit {
                    slot.clone_from(&value);
                }
            }
        }
        Ok(r)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Record::default())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Record::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Record::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Record::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Record::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Record::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Record::default())
    }
}

/// A JSON value that is a string (borrowed where it has no escapes), or `None` for any other value.
struct Text<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> de::Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(s.to_string()))))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(s))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads a JSON array of records from `text`, keeping the fields named `names` (instruction,
/// input, output). Anything after the array but whitespace is an error.
pub fn read_records<'a>(text: &'a str, names: [&str; 3]) -> Result<Vec<Record<'a>>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let r = Records { names }.deserialize(&mut de)?;
    de.end()?;
    Ok(r)
}

/// serde_json's 1-based (line, column) of an error in `text`. serde_json reports column 0 when
/// the offending character is a newline (it has already moved to the next line); that is the end
/// of the previous line for a reader.
pub fn json_position(text: &str, e: &serde_json::Error) -> (usize, usize) {
    let (line, col) = (e.line().max(1), e.column());
    if col > 0 || line <= 1 {
        return (line, col.max(1));
    }
    let prev = text.split('\n').nth(line - 2).unwrap_or("");
    (line - 1, prev.trim_end_matches('\r').chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as Json;

    fn parse<'a>(text: &'a str, names: [&str; 3]) -> Result<Vec<Record<'a>>, serde_json::Error> {
        read_records(text, names)
    }

    /// What the fields were when records were read as `serde_json::Value`s.
    fn by_value(text: &str, names: [&str; 3]) -> Vec<[Option<String>; 3]> {
        let v: Vec<Json> = serde_json::from_str(text).unwrap();
        v.iter().map(|r| names.map(|n| r.get(n).and_then(Json::as_str).map(String::from))).collect()
    }

    #[test]
    fn records_read_like_json_values() {
        let names = ["instruction", "input", "output"];
        let text = r#"[
            {"instruction": "plain", "input": "", "output": "ok"},
            {"instruction": "esc\"aped\n\u00e9", "output": "tab\there", "extra": {"deep": [1, {"x": null}]}},
            {"instruction": 3, "input": null, "output": ["not", "a", "string"]},
            {"instruction": "first", "instruction": "last wins", "output": "x", "output": 5},
            "not an object", 7, null, [1, 2], {},
            {"other": "x", "instruction": "中文", "input": "输入", "output": "答"}
        ]"#;
        let got: Vec<[Option<String>; 3]> = parse(text, names)
            .unwrap()
            .into_iter()
            .map(|r| [r.instruction, r.input, r.output].map(|f| f.map(|c| c.into_owned())))
            .collect();
        assert_eq!(got, by_value(text, names));
    }

    #[test]
    fn one_field_name_may_feed_two_fields() {
        let text = r#"[{"text": "t", "input": "i"}]"#;
        let r = parse(text, ["text", "input", "text"]).unwrap();
        assert_eq!(
            (r[0].instruction.as_deref(), r[0].input.as_deref(), r[0].output.as_deref()),
            (Some("t"), Some("i"), Some("t"))
        );
    }

    #[test]
    fn fields_without_escapes_are_borrowed() {
        let r = parse(r#"[{"instruction": "a", "output": "b\n"}]"#, ["instruction", "input", "output"]).unwrap();
        assert!(matches!(r[0].instruction, Some(Cow::Borrowed("a"))));
        assert!(matches!(r[0].output, Some(Cow::Owned(_))));
    }

    #[test]
    fn what_is_not_an_array_of_records_is_an_error_with_a_position() {
        let names = ["instruction", "input", "output"];
        for bad in ["{\"instruction\": \"a\"}\n{}", "[{\"a\": 1}", "[1] x", ""] {
            let e = parse(bad, names).err().unwrap_or_else(|| panic!("{bad:?} parsed"));
            assert!(e.line() >= 1, "{bad:?}: {e}");
        }
    }
}
