//! Tokeniser for the `rtpp-flags` string.
//!
//! Kamailio (with daemon-side flag parsing) sends the script's flag string unparsed, e.g.
//! `replace-origin ICE=remove RTP/AVP label=callee rtcp-mux=[offer demux]`. Tokens are separated
//! by whitespace; a token is a bare word or `key=value`; a value is a plain string or a
//! bracketed container spanning several words: `[a b c]` is a list, `[k=v k2=[x y]]` a
//! dictionary (decided by the first element, as rtpengine does). Missing closing brackets at the
//! end are tolerated. The meaning of the tokens is applied by the options layer.

use super::bencode::Value;

/// Deepest bracket nesting accepted in `rtpp-flags`.
pub const MAX_RTPP_DEPTH: usize = 8;

/// One top-level token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A bare word (a flag, a transport word, `internal`/`external`).
    Word(Vec<u8>),
    /// `key=value`; the value may be an empty string (`key=`).
    KeyValue(Vec<u8>, Value),
}

/// A malformed `rtpp-flags` string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtppFlagsError {
    #[error("brackets nested deeper than {max} levels at byte {offset}")]
    TooDeep { offset: usize, max: usize },
}

/// Splits an `rtpp-flags` string into tokens.
pub fn tokenise(input: &[u8]) -> Result<Vec<Token>, RtppFlagsError> {
    let mut t = Tokeniser { input, pos: 0 };
    let mut tokens = Vec::new();
    loop {
        t.skip_space();
        if t.at_end() {
            return Ok(tokens);
        }
        let key = t.word(false);
        if t.peek() == Some(b'=') {
            t.pos += 1;
            let value = t.value(0, false)?;
            tokens.push(Token::KeyValue(key.to_vec(), value));
        } else if key.is_empty() {
            // Only reachable on a stray byte the word reader refuses; skip it.
            t.pos += 1;
        } else {
            tokens.push(Token::Word(key.to_vec()));
        }
    }
}

struct Tokeniser<'a> {
    input: &'a [u8],
    pos: usize,
}

enum Element<'a> {
    Item(Value, &'a [u8]),
    Pair(&'a [u8], Value, &'a [u8]),
}

impl<'a> Tokeniser<'a> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// Bytes up to whitespace or `=` (and `]` inside a container).
    fn word(&mut self, in_container: bool) -> &'a [u8] {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_whitespace() || c == b'=' || (in_container && c == b']') {
                break;
            }
            self.pos += 1;
        }
        self.input.get(start..self.pos).unwrap_or_default()
    }

    /// A value after `=`: a container, or a string up to whitespace (and `]` inside a
    /// container; `=` is allowed in values).
    fn value(&mut self, depth: usize, in_container: bool) -> Result<Value, RtppFlagsError> {
        if self.peek() == Some(b'[') {
            self.pos += 1;
            return self.container(depth + 1);
        }
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_whitespace() || (in_container && c == b']') {
                break;
            }
            self.pos += 1;
        }
        Ok(Value::Bytes(
            self.input.get(start..self.pos).unwrap_or_default().to_vec(),
        ))
    }

    /// After `[`: elements up to the matching `]` (or the end of the input).
    fn container(&mut self, depth: usize) -> Result<Value, RtppFlagsError> {
        if depth > MAX_RTPP_DEPTH {
            return Err(RtppFlagsError::TooDeep {
                offset: self.pos.saturating_sub(1),
                max: MAX_RTPP_DEPTH,
            });
        }
        let mut elements = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                None => break,
                Some(b']') => {
                    self.pos += 1;
                    break;
                }
                Some(b'[') => {
                    let start = self.pos;
                    self.pos += 1;
                    let nested = self.container(depth + 1)?;
                    let raw = self.input.get(start..self.pos).unwrap_or_default();
                    elements.push(Element::Item(nested, raw));
                }
                Some(_) => {
                    let start = self.pos;
                    let word = self.word(true);
                    if self.peek() == Some(b'=') {
                        self.pos += 1;
                        let value = self.value(depth, true)?;
                        let raw = self.input.get(start..self.pos).unwrap_or_default();
                        elements.push(Element::Pair(word, value, raw));
                    } else if word.is_empty() {
                        self.pos += 1;
                    } else {
                        elements.push(Element::Item(Value::Bytes(word.to_vec()), word));
                    }
                }
            }
        }
        let is_dict = matches!(elements.first(), Some(Element::Pair(..)));
        Ok(if is_dict {
            Value::Dict(
                elements
                    .into_iter()
                    .map(|e| match e {
                        Element::Pair(k, v, _) => (k.to_vec(), v),
                        Element::Item(_, raw) => (raw.to_vec(), Value::Bytes(Vec::new())),
                    })
                    .collect(),
            )
        } else {
            Value::List(
                elements
                    .into_iter()
                    .map(|e| match e {
                        Element::Item(v, _) => v,
                        // In a list, `a=b` is just a string (as in rtpengine).
                        Element::Pair(_, _, raw) => Value::Bytes(raw.to_vec()),
                    })
                    .collect(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(s: &str) -> Token {
        Token::Word(s.as_bytes().to_vec())
    }
    fn kv(k: &str, v: Value) -> Token {
        Token::KeyValue(k.as_bytes().to_vec(), v)
    }

    #[test]
    fn words_and_key_values() {
        assert_eq!(
            tokenise(b"  replace-origin  ICE=remove RTP/AVP label=a=b empty= ").unwrap(),
            vec![
                word("replace-origin"),
                kv("ICE", "remove".into()),
                word("RTP/AVP"),
                kv("label", "a=b".into()),
                kv("empty", Value::Bytes(Vec::new())),
            ]
        );
        assert_eq!(tokenise(b"").unwrap(), vec![]);
        assert_eq!(tokenise(b"   ").unwrap(), vec![]);
    }

    #[test]
    fn lists_and_dicts() {
        assert_eq!(
            tokenise(b"rtcp-mux=[offer  demux] codec=[transcode=[PCMA PCMU] strip=[EVS]] x")
                .unwrap(),
            vec![
                kv("rtcp-mux", Value::list(["offer", "demux"])),
                kv(
                    "codec",
                    Value::Dict(vec![
                        (b"transcode".to_vec(), Value::list(["PCMA", "PCMU"])),
                        (b"strip".to_vec(), Value::list(["EVS"])),
                    ])
                ),
                word("x"),
            ]
        );
        assert_eq!(
            tokenise(b"l=[a k=v [b]]").unwrap(),
            vec![kv(
                "l",
                Value::List(vec!["a".into(), "k=v".into(), Value::list(["b"])])
            )]
        );
        assert_eq!(
            tokenise(b"d=[k=v a]").unwrap(),
            vec![kv(
                "d",
                Value::Dict(vec![
                    (b"k".to_vec(), "v".into()),
                    (b"a".to_vec(), Value::Bytes(Vec::new()))
                ])
            )]
        );
        // Unclosed at the end: tolerated.
        assert_eq!(
            tokenise(b"replace=[origin").unwrap(),
            vec![kv("replace", Value::list(["origin"]))]
        );
        assert_eq!(
            tokenise(b"x=[]").unwrap(),
            vec![kv("x", Value::List(vec![]))]
        );
    }

    #[test]
    fn depth_is_bounded() {
        let ok = format!("x={}", "[".repeat(MAX_RTPP_DEPTH));
        assert!(tokenise(ok.as_bytes()).is_ok());
        let deep = format!("x={}", "[".repeat(MAX_RTPP_DEPTH + 1));
        assert_eq!(
            tokenise(deep.as_bytes()),
            Err(RtppFlagsError::TooDeep {
                offset: 2 + MAX_RTPP_DEPTH,
                max: MAX_RTPP_DEPTH
            })
        );
    }

    #[test]
    fn never_stalls_on_odd_bytes() {
        for input in [&b"="[..], b"==", b"[", b"]", b"x=[=]", b"x=[ ] ]", b"=[a"] {
            assert!(tokenise(input).is_ok(), "{input:?}");
        }
    }
}
