//! The JSON form of ng messages (a body starting with `{`), mapped onto [`Value`].
//!
//! rtpengine accepts a JSON object wherever it accepts a bencoded dictionary and then answers
//! in JSON. Mapping: strings ↔ [`Value::Bytes`], integers ↔ [`Value::Int`], booleans →
//! `Int(0|1)` (rtpengine reads them as integers), arrays ↔ [`Value::List`], objects ↔
//! [`Value::Dict`]. `null`, fractional numbers and integers beyond `i64` have no bencode
//! counterpart and are rejected. Duplicate object keys: the last one wins (serde_json keeps
//! the last, as json-glib does in rtpengine), matching [`Value::get`] for bencode.
//!
//! On output, byte strings that are not UTF-8 are rendered lossily (U+FFFD); dictionary keys are
//! sorted like the bencode encoder's.

use super::bencode::{MAX_DEPTH, MAX_INPUT, Value};

/// Why a JSON body was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// More than [`MAX_INPUT`] bytes.
    #[error("input of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// Not well-formed JSON.
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// Arrays/objects nested deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {max} levels")]
    TooDeep { max: usize },
    /// A JSON value with no bencode counterpart (`null`, `1.5`, `1e99`, `2^64`).
    #[error("unsupported JSON value ({what}) at {path}")]
    Unsupported { what: &'static str, path: String },
}

/// Parses a JSON document into a [`Value`].
pub fn from_json(input: &[u8]) -> Result<Value, JsonError> {
    if input.len() > MAX_INPUT {
        return Err(JsonError::TooLarge {
            len: input.len(),
            max: MAX_INPUT,
        });
    }
    // serde_json bounds its own recursion (128 levels), so parsing cannot blow the stack;
    // our tighter depth limit is applied during conversion.
    let json: serde_json::Value = serde_json::from_slice(input).map_err(|e| JsonError::Syntax {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    convert(&json, 1, &mut String::from("$"))
}

fn convert(json: &serde_json::Value, depth: usize, path: &mut String) -> Result<Value, JsonError> {
    use serde_json::Value as J;
    let unsupported = |what, path: &String| JsonError::Unsupported {
        what,
        path: path.clone(),
    };
    match json {
        J::Null => Err(unsupported("null", path)),
        J::Bool(b) => Ok(Value::Int(i64::from(*b))),
        J::Number(n) => match n.as_i64() {
            Some(i) => Ok(Value::Int(i)),
            None if n.is_u64() => Err(unsupported("integer out of range", path)),
            None => Err(unsupported("non-integer number", path)),
        },
        J::String(s) => Ok(Value::Bytes(s.as_bytes().to_vec())),
        J::Array(_) | J::Object(_) if depth > MAX_DEPTH => {
            Err(JsonError::TooDeep { max: MAX_DEPTH })
        }
        J::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let mark = path.len();
                push_path(path, &format!("[{i}]"));
                out.push(convert(item, depth + 1, path)?);
                path.truncate(mark);
            }
            Ok(Value::List(out))
        }
        J::Object(map) => {
            let mut out = Vec::with_capacity(map.len());
            for (key, item) in map {
                let mark = path.len();
                push_path(path, &format!(".{key}"));
                out.push((key.as_bytes().to_vec(), convert(item, depth + 1, path)?));
                path.truncate(mark);
            }
            Ok(Value::Dict(out))
        }
    }
}

/// Paths only feed error messages: keep them short whatever the input.
fn push_path(path: &mut String, segment: &str) {
    const MAX_PATH: usize = 128;
    if path.len() >= MAX_PATH {
        return;
    }
    for c in segment.chars() {
        if path.len() + c.len_utf8() > MAX_PATH {
            path.push('…');
            return;
        }
        path.push(c);
    }
}

/// Appends the JSON rendering of `value` to `out` (keys sorted, strings lossily UTF-8).
pub fn to_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::Bytes(b) => push_string(b, out),
        Value::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                to_json(item, out);
            }
            out.push(b']');
        }
        Value::Dict(pairs) => {
            let mut sorted: Vec<&(Vec<u8>, Value)> = pairs.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(b'{');
            for (i, (key, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_string(key, out);
                out.push(b':');
                to_json(item, out);
            }
            out.push(b'}');
        }
    }
}

fn push_string(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if u32::from(c) < 0x20 => {
                let n = u32::from(c);
                out.extend_from_slice(b"\\u00");
                for shift in [4u32, 0] {
                    let nibble = usize::try_from((n >> shift) & 0xf).unwrap_or(0);
                    out.push(HEX.get(nibble).copied().unwrap_or(b'0'));
                }
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_json_onto_values() {
        let v = from_json(
            br#"{"command":"offer","TOS":184,"flags":["trust address"],"b":true,"d":{"x":-1}}"#,
        )
        .unwrap();
        assert_eq!(v.get_str("command"), Some("offer"));
        assert_eq!(v.get_int("TOS"), Some(184));
        assert_eq!(v.get_int("b"), Some(1));
        assert_eq!(v.get("d").and_then(|d| d.get_int("x")), Some(-1));
        assert_eq!(
            v.get("flags").and_then(Value::as_list),
            Some(&[Value::from("trust address")][..])
        );
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let v = from_json(br#"{"a":1,"a":2}"#).unwrap();
        assert_eq!(v.get_int("a"), Some(2));
    }

    #[test]
    fn rejects_what_bencode_cannot_carry() {
        assert!(matches!(
            from_json(br#"{"a":null}"#),
            Err(JsonError::Unsupported { what: "null", ref path }) if path == "$.a"
        ));
        assert!(matches!(
            from_json(br#"{"a":[1.5]}"#),
            Err(JsonError::Unsupported { what: "non-integer number", ref path }) if path == "$.a[0]"
        ));
        assert!(matches!(
            from_json(br#"{"a":18446744073709551615}"#),
            Err(JsonError::Unsupported {
                what: "integer out of range",
                ..
            })
        ));
        assert!(matches!(
            from_json(br#"{"a":"#),
            Err(JsonError::Syntax { line: 1, .. })
        ));
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(
            from_json(deep.as_bytes()),
            Err(JsonError::TooDeep { max: MAX_DEPTH })
        );
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(from_json(ok.as_bytes()).is_ok());
        // serde_json's own recursion limit protects against very deep input.
        let very_deep = "[".repeat(100_000);
        assert!(from_json(very_deep.as_bytes()).is_err());
        assert!(matches!(
            from_json(&vec![b' '; MAX_INPUT + 1]),
            Err(JsonError::TooLarge { .. })
        ));
    }

    #[test]
    fn renders_sorted_and_escaped() {
        let v = Value::dict([
            ("sdp", Value::from("v=0\r\n\"q\"\\\u{1}")),
            ("result", Value::from("ok")),
            (
                "n",
                Value::list([Value::Int(-3), Value::from(&b"\xff"[..])]),
            ),
        ]);
        let mut out = Vec::new();
        to_json(&v, &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"{"n":[-3,"�"],"result":"ok","sdp":"v=0\r\n\"q\"\\\u0001"}"#
        );
        // And it parses back.
        let back = from_json(&out).unwrap();
        assert_eq!(back.get_str("sdp"), Some("v=0\r\n\"q\"\\\u{1}"));
    }
}
