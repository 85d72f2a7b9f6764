//! Bencode: the value type, a hardened decoder and a canonical encoder.
//!
//! rtpengine's ng protocol carries one bencoded dictionary per datagram. Peers do not follow
//! the bencode rule that dictionary keys are sorted (Kamailio emits them in the order it builds
//! them), so the decoder accepts any key order and keeps duplicate keys.
//!
//! # Dictionary representation
//! [`Value::Dict`] is a `Vec` of `(key, value)` pairs in arrival order, duplicates included.
//! Lookups ([`Value::get`]) return the **last** entry with that key: rtpengine applies request
//! keys in arrival order, so for the keys it types the last occurrence is the one in effect,
//! and JSON parsers (json-glib, serde_json) also keep the last duplicate. The encoder emits keys
//! in sorted byte order (a stable sort, so duplicates keep their relative order), which is
//! canonical bencode for every dictionary without duplicates.
//!
//! # Limits against hostile input
//! [`decode`] rejects, with the byte offset of the problem:
//! input over [`MAX_INPUT`] bytes, nesting deeper than [`MAX_DEPTH`], string lengths that claim
//! more bytes than remain, integers that are empty, have leading zeros, are `-0` or overflow
//! `i64`, non-string dictionary keys, and trailing bytes after the top-level value. It never
//! panics, recursion is bounded by [`MAX_DEPTH`], and memory is proportional to the input: a
//! string is allocated only after its claimed length has been checked against the bytes that
//! are actually there.

use std::fmt;

/// Deepest nesting of lists and dictionaries accepted (the top-level dictionary is depth 1).
pub const MAX_DEPTH: usize = 32;

/// Largest input accepted: one UDP datagram's worth.
pub const MAX_INPUT: usize = 64 * 1024;

/// Dictionaries up to this many pairs are sorted for encoding without a heap allocation.
const SMALL_DICT: usize = 32;

/// A bencoded value. See the module documentation for the dictionary representation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// `i42e`
    Int(i64),
    /// `4:spam`; arbitrary bytes (SDP bodies, tags and flags are usually, not always, UTF-8).
    Bytes(Vec<u8>),
    /// `l...e`
    List(Vec<Value>),
    /// `d...e`: pairs in insertion/arrival order; duplicates possible after decoding.
    Dict(Vec<(Vec<u8>, Value)>),
}

/// Why an input is not acceptable bencode. Every variant carries the byte offset (from the
/// start of the bencoded input) where the problem was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Nothing to decode.
    #[error("empty input")]
    Empty,
    /// More than [`MAX_INPUT`] bytes.
    #[error("input of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The input ends inside a value.
    #[error("unexpected end of input at byte {offset}")]
    UnexpectedEnd { offset: usize },
    /// A byte that cannot start or continue a value here.
    #[error("unexpected byte 0x{byte:02x} at byte {offset}")]
    UnexpectedByte { offset: usize, byte: u8 },
    /// Lists/dictionaries nested deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {max} levels at byte {offset}")]
    TooDeep { offset: usize, max: usize },
    /// A malformed integer (`ie`, `i-e`, `i03e`, `i-0e`, out of `i64` range, ...).
    #[error("invalid integer at byte {offset}: {kind}")]
    InvalidInteger { offset: usize, kind: IntErrorKind },
    /// A malformed string length prefix (leading zero, overflow).
    #[error("invalid string length at byte {offset}: {kind}")]
    InvalidLength { offset: usize, kind: IntErrorKind },
    /// A string length that claims more bytes than the input has left.
    #[error("string at byte {offset} claims {claimed} bytes but only {available} remain")]
    StringTooLong {
        offset: usize,
        claimed: u64,
        available: usize,
    },
    /// A dictionary key that is not a byte string.
    #[error("dictionary key at byte {offset} is not a byte string")]
    NonStringKey { offset: usize },
    /// A dictionary that ends after a key, before its value.
    #[error("dictionary key without a value at byte {offset}")]
    MissingValue { offset: usize },
    /// Bytes after the complete top-level value.
    #[error("trailing data at byte {offset}")]
    TrailingData { offset: usize },
}

impl DecodeError {
    /// Byte offset of the problem, where there is one.
    pub fn offset(&self) -> Option<usize> {
        match *self {
            DecodeError::Empty | DecodeError::TooLarge { .. } => None,
            DecodeError::UnexpectedEnd { offset }
            | DecodeError::UnexpectedByte { offset, .. }
            | DecodeError::TooDeep { offset, .. }
            | DecodeError::InvalidInteger { offset, .. }
            | DecodeError::InvalidLength { offset, .. }
            | DecodeError::StringTooLong { offset, .. }
            | DecodeError::NonStringKey { offset }
            | DecodeError::MissingValue { offset }
            | DecodeError::TrailingData { offset } => Some(offset),
        }
    }
}

/// What is wrong with an integer or a length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IntErrorKind {
    /// No digits.
    #[error("no digits")]
    Empty,
    /// `03`, `-03`.
    #[error("leading zero")]
    LeadingZero,
    /// `-0`.
    #[error("negative zero")]
    NegativeZero,
    /// Does not fit (i64 for integers, the address space for lengths).
    #[error("overflow")]
    Overflow,
}

/// Decodes exactly one value spanning the whole input.
pub fn decode(input: &[u8]) -> Result<Value, DecodeError> {
    let (value, used) = decode_prefix(input)?;
    if used != input.len() {
        return Err(DecodeError::TrailingData { offset: used });
    }
    Ok(value)
}

/// Decodes one value from the start of `input` and returns it with the number of bytes it
/// used; what follows is left alone (for stream transports that carry several messages).
pub fn decode_prefix(input: &[u8]) -> Result<(Value, usize), DecodeError> {
    if input.is_empty() {
        return Err(DecodeError::Empty);
    }
    if input.len() > MAX_INPUT {
        return Err(DecodeError::TooLarge {
            len: input.len(),
            max: MAX_INPUT,
        });
    }
    let mut decoder = Decoder { input, pos: 0 };
    let value = decoder.value(0)?;
    Ok((value, decoder.pos))
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
}

/// What [`Decoder::item`] found: a value, or the `e` that closes the enclosing container.
enum Item {
    Value(Value),
    End,
}

impl Decoder<'_> {
    fn peek(&self) -> Result<u8, DecodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::UnexpectedEnd { offset: self.pos })
    }

    /// A value where a value is required (not a container end).
    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let offset = self.pos;
        match self.item(depth)? {
            Item::Value(v) => Ok(v),
            Item::End => Err(DecodeError::UnexpectedByte { offset, byte: b'e' }),
        }
    }

    fn item(&mut self, depth: usize) -> Result<Item, DecodeError> {
        let byte = self.peek()?;
        match byte {
            b'e' => {
                self.pos += 1;
                Ok(Item::End)
            }
            b'i' => self.integer().map(|i| Item::Value(Value::Int(i))),
            b'0'..=b'9' => self.bytes().map(|b| Item::Value(Value::Bytes(b.to_vec()))),
            b'l' | b'd' => {
                if depth >= MAX_DEPTH {
                    return Err(DecodeError::TooDeep {
                        offset: self.pos,
                        max: MAX_DEPTH,
                    });
                }
                self.pos += 1;
                if byte == b'l' {
                    self.list(depth + 1).map(Item::Value)
                } else {
                    self.dict(depth + 1).map(Item::Value)
                }
            }
            _ => Err(DecodeError::UnexpectedByte {
                offset: self.pos,
                byte,
            }),
        }
    }

    fn list(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let mut items = Vec::new();
        loop {
            match self.item(depth)? {
                Item::Value(v) => items.push(v),
                Item::End => return Ok(Value::List(items)),
            }
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let mut pairs = Vec::new();
        loop {
            let key_offset = self.pos;
            let key = match self.peek()? {
                b'e' => {
                    self.pos += 1;
                    return Ok(Value::Dict(pairs));
                }
                b'0'..=b'9' => self.bytes()?.to_vec(),
                _ => return Err(DecodeError::NonStringKey { offset: key_offset }),
            };
            let value_offset = self.pos;
            let value = match self.item(depth)? {
                Item::Value(v) => v,
                Item::End => {
                    return Err(DecodeError::MissingValue {
                        offset: value_offset,
                    });
                }
            };
            pairs.push((key, value));
        }
    }

    /// `i<digits>e`; the cursor is on the `i`.
    fn integer(&mut self) -> Result<i64, DecodeError> {
        let start = self.pos;
        self.pos += 1; // 'i'
        let negative = self.peek()? == b'-';
        if negative {
            self.pos += 1;
        }
        let digits_start = self.pos;
        let mut value: i64 = 0;
        loop {
            let byte = self.peek()?;
            match byte {
                b'0'..=b'9' => {
                    let digit = i64::from(byte - b'0');
                    // Accumulate towards the sign so that i64::MIN is representable.
                    value = value
                        .checked_mul(10)
                        .and_then(|v| {
                            if negative {
                                v.checked_sub(digit)
                            } else {
                                v.checked_add(digit)
                            }
                        })
                        .ok_or(DecodeError::InvalidInteger {
                            offset: start,
                            kind: IntErrorKind::Overflow,
                        })?;
                    self.pos += 1;
                }
                b'e' => break,
                _ => {
                    return Err(DecodeError::UnexpectedByte {
                        offset: self.pos,
                        byte,
                    });
                }
            }
        }
        let digits = self.pos - digits_start;
        let kind = if digits == 0 {
            Some(IntErrorKind::Empty)
        } else if digits > 1 && self.input.get(digits_start) == Some(&b'0') {
            Some(IntErrorKind::LeadingZero)
        } else if negative && value == 0 {
            Some(IntErrorKind::NegativeZero)
        } else {
            None
        };
        if let Some(kind) = kind {
            return Err(DecodeError::InvalidInteger {
                offset: start,
                kind,
            });
        }
        self.pos += 1; // 'e'
        Ok(value)
    }

    /// `<len>:<bytes>`; the cursor is on the first digit. Borrows from the input; the caller
    /// copies, so nothing is allocated before the length has been checked.
    fn bytes(&mut self) -> Result<&[u8], DecodeError> {
        let start = self.pos;
        let mut len: u64 = 0;
        loop {
            let byte = self.peek()?;
            match byte {
                b'0'..=b'9' => {
                    if self.pos > start && self.input.get(start) == Some(&b'0') {
                        return Err(DecodeError::InvalidLength {
                            offset: start,
                            kind: IntErrorKind::LeadingZero,
                        });
                    }
                    len = len
                        .checked_mul(10)
                        .and_then(|l| l.checked_add(u64::from(byte - b'0')))
                        .ok_or(DecodeError::InvalidLength {
                            offset: start,
                            kind: IntErrorKind::Overflow,
                        })?;
                    self.pos += 1;
                }
                b':' => break,
                _ => {
                    return Err(DecodeError::UnexpectedByte {
                        offset: self.pos,
                        byte,
                    });
                }
            }
        }
        self.pos += 1; // ':'
        let available = self.input.len().saturating_sub(self.pos);
        let too_long = DecodeError::StringTooLong {
            offset: start,
            claimed: len,
            available,
        };
        let len = usize::try_from(len).map_err(|_| too_long.clone())?;
        if len > available {
            return Err(too_long);
        }
        let end = self.pos + len;
        let bytes = self.input.get(self.pos..end).ok_or(too_long)?;
        self.pos = end;
        Ok(bytes)
    }
}

/// Appends the canonical encoding of `value` to `out`: dictionary keys sorted by bytes.
pub fn encode(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Int(i) => {
            out.push(b'i');
            push_decimal(out, *i);
            out.push(b'e');
        }
        Value::Bytes(b) => encode_bytes(b, out),
        Value::List(items) => {
            out.push(b'l');
            for item in items {
                encode(item, out);
            }
            out.push(b'e');
        }
        Value::Dict(pairs) => {
            out.push(b'd');
            if pairs.is_sorted_by(|a, b| a.0 <= b.0) {
                for (key, value) in pairs {
                    encode_bytes(key, out);
                    encode(value, out);
                }
            } else if pairs.len() <= SMALL_DICT {
                // A reply's dictionaries are small: sort indices on the stack (insertion sort,
                // stable), not a vector of references on the heap.
                let mut order = [0u8; SMALL_DICT];
                for i in 0..pairs.len() {
                    let mut j = i;
                    while j > 0 && pairs[usize::from(order[j - 1])].0 > pairs[i].0 {
                        order[j] = order[j - 1];
                        j -= 1;
                    }
                    // `i` < SMALL_DICT ≤ 255.
                    order[j] = i as u8;
                }
                for &i in &order[..pairs.len()] {
                    let (key, value) = &pairs[usize::from(i)];
                    encode_bytes(key, out);
                    encode(value, out);
                }
            } else {
                let mut sorted: Vec<&(Vec<u8>, Value)> = pairs.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                for (key, value) in sorted {
                    encode_bytes(key, out);
                    encode(value, out);
                }
            }
            out.push(b'e');
        }
    }
}

fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    push_decimal(out, i64::try_from(bytes.len()).unwrap_or(i64::MAX));
    out.push(b':');
    out.extend_from_slice(bytes);
}

/// Decimal digits of `i` without going through `fmt` (no allocation, no fallible writer).
fn push_decimal(out: &mut Vec<u8>, i: i64) {
    let mut buf = [0u8; 20];
    let mut n = i.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        // `n % 10` < 10, so the cast is exact.
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[at..]);
}

impl Value {
    /// An empty dictionary.
    pub fn new_dict() -> Value {
        Value::Dict(Vec::new())
    }

    /// A dictionary from `(key, value)` pairs, e.g. for replies:
    /// `Value::dict([("result", "ok".into()), ("sdp", sdp.into())])`.
    /// A repeated key replaces the earlier value (see [`Value::insert`]).
    pub fn dict<K, I>(pairs: I) -> Value
    where
        K: AsRef<[u8]>,
        I: IntoIterator<Item = (K, Value)>,
    {
        let mut dict = Value::new_dict();
        for (k, v) in pairs {
            dict.insert(k, v);
        }
        dict
    }

    /// A list from anything that converts into values.
    pub fn list<T: Into<Value>, I: IntoIterator<Item = T>>(items: I) -> Value {
        Value::List(items.into_iter().map(Into::into).collect())
    }

    /// Sets `key` in a dictionary: replaces the value of an existing entry (the last one, the
    /// one [`Value::get`] sees) or appends. Returns `false` (and does nothing) if `self` is
    /// not a dictionary.
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: Value) -> bool {
        let Value::Dict(pairs) = self else {
            return false;
        };
        let key = key.as_ref();
        match pairs.iter_mut().rev().find(|(k, _)| k.as_slice() == key) {
            Some(entry) => entry.1 = value,
            None => pairs.push((key.to_vec(), value)),
        }
        true
    }

    /// Builder form of [`Value::insert`].
    pub fn with(mut self, key: impl AsRef<[u8]>, value: impl Into<Value>) -> Value {
        self.insert(key, value.into());
        self
    }

    /// The value of `key` in a dictionary (the last entry if the key is repeated).
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<&Value> {
        let key = key.as_ref();
        self.as_dict()?
            .iter()
            .rev()
            .find(|(k, _)| k.as_slice() == key)
            .map(|(_, v)| v)
    }

    /// Shorthand for `get(key)?.as_str()`.
    pub fn get_str(&self, key: impl AsRef<[u8]>) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// Shorthand for `get(key)?.as_int()`.
    pub fn get_int(&self, key: impl AsRef<[u8]>) -> Option<i64> {
        self.get(key)?.as_int()
    }

    /// Shorthand for `get(key)?.as_bytes()`.
    pub fn get_bytes(&self, key: impl AsRef<[u8]>) -> Option<&[u8]> {
        self.get(key)?.as_bytes()
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The bytes, if this is a byte string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The string, if this is a byte string holding valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()?).ok()
    }

    /// The items, if this is a list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    /// The pairs (arrival order), if this is a dictionary.
    pub fn as_dict(&self) -> Option<&[(Vec<u8>, Value)]> {
        match self {
            Value::Dict(pairs) => Some(pairs),
            _ => None,
        }
    }

    /// `"integer"`, `"string"`, `"list"` or `"dictionary"`, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "integer",
            Value::Bytes(_) => "string",
            Value::List(_) => "list",
            Value::Dict(_) => "dictionary",
        }
    }

    /// The canonical encoding as a new buffer.
    pub fn to_bencode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode(self, &mut out);
        out
    }

    /// A copy with every dictionary's pairs sorted by key (stable): what [`decode`] returns for
    /// the [`encode`]d form of `self`.
    pub fn canonical(&self) -> Value {
        match self {
            Value::Int(_) | Value::Bytes(_) => self.clone(),
            Value::List(items) => Value::List(items.iter().map(Value::canonical).collect()),
            Value::Dict(pairs) => {
                let mut pairs: Vec<(Vec<u8>, Value)> = pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.canonical()))
                    .collect();
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Dict(pairs)
            }
        }
    }
}

/// JSON-like rendering for logs and test failures; bytes are shown lossily as UTF-8.
impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Bytes(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Value::List(items) => f.debug_list().entries(items).finish(),
            Value::Dict(pairs) => f
                .debug_map()
                .entries(pairs.iter().map(|(k, v)| (String::from_utf8_lossy(k), v)))
                .finish(),
        }
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Value {
        Value::Int(i64::from(i))
    }
}
impl From<u32> for Value {
    fn from(i: u32) -> Value {
        Value::Int(i64::from(i))
    }
}
impl From<u16> for Value {
    fn from(i: u16) -> Value {
        Value::Int(i64::from(i))
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Int(i64::from(b))
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Bytes(s.into_bytes())
    }
}
impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }
}
impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Value {
        Value::Bytes(b.to_vec())
    }
}
impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Value {
        Value::Bytes(b)
    }
}
impl From<Vec<Value>> for Value {
    fn from(items: Vec<Value>) -> Value {
        Value::List(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &[u8]) -> DecodeError {
        match decode(input) {
            Ok(v) => panic!("{:?} decoded to {v:?}", String::from_utf8_lossy(input)),
            Err(e) => e,
        }
    }

    #[test]
    fn decodes_scalars_and_containers() {
        assert_eq!(decode(b"i42e"), Ok(Value::Int(42)));
        assert_eq!(decode(b"i-42e"), Ok(Value::Int(-42)));
        assert_eq!(decode(b"i0e"), Ok(Value::Int(0)));
        assert_eq!(decode(b"4:spam"), Ok(Value::from("spam")));
        assert_eq!(decode(b"0:"), Ok(Value::Bytes(Vec::new())));
        assert_eq!(
            decode(b"l4:spami1ee"),
            Ok(Value::List(vec!["spam".into(), Value::Int(1)]))
        );
        assert_eq!(decode(b"le"), Ok(Value::List(Vec::new())));
        assert_eq!(decode(b"de"), Ok(Value::new_dict()));
        assert_eq!(decode(b"i9223372036854775807e"), Ok(Value::Int(i64::MAX)));
        assert_eq!(decode(b"i-9223372036854775808e"), Ok(Value::Int(i64::MIN)));
        // Binary content is fine.
        assert_eq!(
            decode(b"3:\x00\xff:"),
            Ok(Value::Bytes(vec![0, 0xff, b':']))
        );
    }

    #[test]
    fn accepts_unsorted_and_duplicate_keys_last_wins() {
        let v = decode(b"d7:command4:ping4:zzzzi1e4:aaaai2e4:zzzzi3ee").unwrap();
        let pairs = v.as_dict().unwrap();
        assert_eq!(pairs.len(), 4, "duplicates are kept");
        assert_eq!(pairs[0].0, b"command");
        assert_eq!(v.get("zzzz"), Some(&Value::Int(3)), "last duplicate wins");
        assert_eq!(v.get_str("command"), Some("ping"));
        assert_eq!(v.get("missing"), None);
        // Encoding sorts (stable for the duplicates).
        assert_eq!(
            v.to_bencode(),
            b"d4:aaaai2e7:command4:ping4:zzzzi1e4:zzzzi3ee".to_vec()
        );
    }

    #[test]
    fn round_trips() {
        let v = Value::dict([
            ("result", Value::from("ok")),
            ("sdp", Value::from(&b"v=0\r\n\x00\xff"[..])),
            ("n", Value::Int(-7)),
            ("min", Value::Int(i64::MIN)),
            (
                "list",
                Value::list([Value::from("a"), Value::Int(0), Value::List(vec![])]),
            ),
            (
                "nested",
                Value::dict([("b", Value::Int(1)), ("a", Value::Int(2))]),
            ),
        ]);
        let encoded = v.to_bencode();
        let decoded = decode(&encoded).unwrap();
        assert_eq!(decoded, v.canonical());
        assert_eq!(decoded.to_bencode(), encoded);
        assert!(encoded.starts_with(b"d4:listl1:ai0elee3:mini-9223372036854775808e1:ni-7e"));
    }

    /// Dictionaries of every size around the stack-sorting bound, with repeated keys, encode
    /// as a stable sort of their pairs does.
    #[test]
    fn dictionaries_encode_in_stable_key_order() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..=(2 * SMALL_DICT + 1) {
            for _ in 0..20 {
                let pairs: Vec<(Vec<u8>, Value)> = (0..len)
                    .map(|i| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        // Few distinct keys: duplicates are common.
                        let key = format!("k{}", seed % 7).into_bytes();
                        (key, Value::Int(i as i64))
                    })
                    .collect();
                let mut reference = pairs.clone();
                reference.sort_by(|a, b| a.0.cmp(&b.0));
                let mut expected = b"d".to_vec();
                for (k, v) in &reference {
                    encode_bytes(k, &mut expected);
                    encode(v, &mut expected);
                }
                expected.push(b'e');
                assert_eq!(Value::Dict(pairs).to_bencode(), expected, "{len} pairs");
            }
        }
    }

    #[test]
    fn every_decode_error() {
        assert_eq!(err(b""), DecodeError::Empty);
        let big = vec![b'0'; MAX_INPUT + 1];
        assert_eq!(
            err(&big),
            DecodeError::TooLarge {
                len: MAX_INPUT + 1,
                max: MAX_INPUT
            }
        );
        assert_eq!(err(b"l"), DecodeError::UnexpectedEnd { offset: 1 });
        assert_eq!(err(b"i12"), DecodeError::UnexpectedEnd { offset: 3 });
        assert_eq!(err(b"4"), DecodeError::UnexpectedEnd { offset: 1 });
        assert_eq!(
            err(b"x"),
            DecodeError::UnexpectedByte {
                offset: 0,
                byte: b'x'
            }
        );
        assert_eq!(
            err(b"e"),
            DecodeError::UnexpectedByte {
                offset: 0,
                byte: b'e'
            }
        );
        assert_eq!(
            err(b"i1x2e"),
            DecodeError::UnexpectedByte {
                offset: 2,
                byte: b'x'
            }
        );
        assert_eq!(
            err(b"4x"),
            DecodeError::UnexpectedByte {
                offset: 1,
                byte: b'x'
            }
        );
        let int = |offset, kind| DecodeError::InvalidInteger { offset, kind };
        assert_eq!(err(b"ie"), int(0, IntErrorKind::Empty));
        assert_eq!(err(b"i-e"), int(0, IntErrorKind::Empty));
        assert_eq!(err(b"i03e"), int(0, IntErrorKind::LeadingZero));
        assert_eq!(err(b"i-03e"), int(0, IntErrorKind::LeadingZero));
        assert_eq!(err(b"i00e"), int(0, IntErrorKind::LeadingZero));
        assert_eq!(err(b"i-0e"), int(0, IntErrorKind::NegativeZero));
        assert_eq!(
            err(b"li9223372036854775808ee"),
            int(1, IntErrorKind::Overflow)
        );
        assert_eq!(
            err(b"i-9223372036854775809e"),
            int(0, IntErrorKind::Overflow)
        );
        assert_eq!(
            err(b"l03:abce"),
            DecodeError::InvalidLength {
                offset: 1,
                kind: IntErrorKind::LeadingZero
            }
        );
        assert_eq!(
            err(b"99999999999999999999999:"),
            DecodeError::InvalidLength {
                offset: 0,
                kind: IntErrorKind::Overflow
            }
        );
        assert_eq!(
            err(b"l5:abce"),
            DecodeError::StringTooLong {
                offset: 1,
                claimed: 5,
                available: 4
            }
        );
        assert_eq!(
            err(b"18446744073709551615:x"),
            DecodeError::StringTooLong {
                offset: 0,
                claimed: u64::MAX,
                available: 1
            }
        );
        assert_eq!(err(b"di1ei2ee"), DecodeError::NonStringKey { offset: 1 });
        assert_eq!(err(b"dlee"), DecodeError::NonStringKey { offset: 1 });
        assert_eq!(err(b"d1:ae"), DecodeError::MissingValue { offset: 4 });
        assert_eq!(err(b"i1ei2e"), DecodeError::TrailingData { offset: 3 });
        assert_eq!(err(b"de "), DecodeError::TrailingData { offset: 2 });
        let deep = [vec![b'l'; MAX_DEPTH + 1], vec![b'e'; MAX_DEPTH + 1]].concat();
        assert_eq!(
            err(&deep),
            DecodeError::TooDeep {
                offset: MAX_DEPTH,
                max: MAX_DEPTH
            }
        );
        let ok_deep = [vec![b'l'; MAX_DEPTH], vec![b'e'; MAX_DEPTH]].concat();
        assert!(decode(&ok_deep).is_ok());
        // Offsets are reported.
        assert_eq!(err(b"d1:ae").offset(), Some(4));
        assert_eq!(err(b"").offset(), None);
    }

    #[test]
    fn decode_prefix_reports_the_length_used() {
        assert_eq!(
            decode_prefix(b"d1:ai1ee rest"),
            Ok((Value::dict([("a", Value::Int(1))]), 8))
        );
    }

    #[test]
    fn error_messages_carry_offsets() {
        assert_eq!(
            err(b"d1:ae").to_string(),
            "dictionary key without a value at byte 4"
        );
        assert_eq!(
            err(b"i-0e").to_string(),
            "invalid integer at byte 0: negative zero"
        );
    }

    #[test]
    fn builder_and_accessors() {
        let mut v = Value::dict([("result", "ok".into()), ("result", "error".into())]);
        assert_eq!(v.as_dict().map(<[_]>::len), Some(1), "dict() replaces");
        assert_eq!(v.get_str("result"), Some("error"));
        assert!(v.insert("n", Value::Int(5)));
        assert_eq!(v.get_int("n"), Some(5));
        assert!(!Value::Int(1).insert("x", Value::Int(1)));
        let v = v.with("b", &b"\xff"[..]).with("l", vec![Value::from("x")]);
        assert_eq!(v.get_bytes("b"), Some(&b"\xff"[..]));
        assert_eq!(v.get_str("b"), None, "not UTF-8");
        assert_eq!(v.get("l").and_then(Value::as_list).map(<[_]>::len), Some(1));
        assert_eq!(Value::Int(1).get("x"), None);
        assert_eq!(Value::from(true), Value::Int(1));
        assert_eq!(Value::from("x").type_name(), "string");
        assert_eq!(
            format!("{:?}", Value::dict([("a", Value::list(["b"]))])),
            r#"{"a": ["b"]}"#
        );
    }

    #[test]
    fn encodes_integers_exactly() {
        for i in [0, 1, -1, 9, 10, -10, 1234567890, i64::MAX, i64::MIN] {
            let enc = Value::Int(i).to_bencode();
            assert_eq!(enc, format!("i{i}e").into_bytes());
            assert_eq!(decode(&enc), Ok(Value::Int(i)));
        }
    }
}
