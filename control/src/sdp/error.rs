//! Parse errors: every variant that is about a line carries its 1-based line number.

/// Longest piece of input echoed back in an error message: errors end up in logs, and hostile
/// input must not be able to fill them.
const MAX_ECHO: usize = 64;

/// Why an SDP body was rejected.
///
/// Line numbers are 1-based and count every line of the body, blank ones included, so they match
/// what an editor shows. Values copied from the input are cut to 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// The body is larger than [`Limits::max_bytes`](super::Limits::max_bytes).
    #[error("SDP body is {len} bytes, more than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// The body has more lines than [`Limits::max_lines`](super::Limits::max_lines).
    #[error("SDP body has more than {max} lines")]
    TooManyLines { max: usize },
    /// More `m=` sections than [`Limits::max_media`](super::Limits::max_media).
    #[error("line {line}: more than {max} media sections")]
    TooManyMedia { line: usize, max: usize },
    /// The body is empty or has only blank lines.
    #[error("SDP body is empty")]
    Empty,
    /// The first non-blank line is not `v=`.
    #[error("line {line}: expected `v=` as the first line")]
    MissingVersion { line: usize },
    /// `v=` with a version other than 0.
    #[error("line {line}: unsupported SDP version `{value}`")]
    UnsupportedVersion { line: usize, value: String },
    /// The session has no `o=` line.
    #[error("no `o=` line in the session description")]
    MissingOrigin,
    /// A line that is not blank and has no `=` at all.
    #[error("line {line}: not a `<type>=<value>` line (no `=`)")]
    MissingEquals { line: usize },
    /// A line whose text before `=` is not a single letter.
    #[error("line {line}: the line type must be a single letter followed by `=`")]
    InvalidType { line: usize },
    /// A NUL byte, or a CR that is not part of a CRLF line ending.
    #[error("line {line}: NUL or bare CR character")]
    InvalidCharacter { line: usize },
    /// A field that must be text is not valid UTF-8.
    #[error("line {line}: `{field}` is not valid UTF-8")]
    NonUtf8 { line: usize, field: &'static str },
    /// A line type that is not allowed where it appears (a second `v=`, `o=` in a media section...).
    #[error("line {line}: `{kind}=` is not allowed here")]
    UnexpectedLine { line: usize, kind: char },
    /// A line that may appear only once at its level appears again.
    #[error("line {line}: duplicate `{kind}=` line")]
    DuplicateLine { line: usize, kind: char },
    /// `o=` without its six fields.
    #[error(
        "line {line}: `o=` needs 6 fields (username sess-id sess-version nettype addrtype address), found {found}"
    )]
    InvalidOrigin { line: usize, found: usize },
    /// `c=` (or the address part of `a=rtcp`) without `IN <addrtype> <address>`.
    #[error("line {line}: malformed connection data: {reason}")]
    InvalidConnection { line: usize, reason: &'static str },
    /// A network type other than `IN`.
    #[error("line {line}: unknown network type `{value}`")]
    UnknownNetworkType { line: usize, value: String },
    /// An address type other than `IP4` or `IP6`.
    #[error("line {line}: unknown address type `{value}`")]
    UnknownAddressType { line: usize, value: String },
    /// An address that does not parse as the address type says.
    #[error("line {line}: invalid {addr_type} address `{value}`")]
    InvalidAddress {
        line: usize,
        addr_type: &'static str,
        value: String,
    },
    /// `m=` with fewer than media, port and proto fields.
    #[error("line {line}: `m=` needs `<media> <port>[/<count>] <proto> <fmt> ...`")]
    InvalidMedia { line: usize },
    /// A port (or port count) that is not a decimal number in range.
    #[error("line {line}: invalid port `{value}`")]
    InvalidPort { line: usize, value: String },
    /// `m=` without any format.
    #[error("line {line}: `m=` has no formats")]
    NoFormats { line: usize },
    /// An attribute line that is malformed, or a known attribute whose value this module
    /// relies on (`a=rtcp`) and cannot parse, or attributes that contradict each other.
    #[error("line {line}: attribute `{name}`: {reason}")]
    InvalidAttribute {
        line: usize,
        name: String,
        reason: &'static str,
    },
}

impl SdpError {
    /// The 1-based line the error is about, if it is about one line.
    pub fn line(&self) -> Option<usize> {
        match self {
            SdpError::TooLarge { .. }
            | SdpError::TooManyLines { .. }
            | SdpError::Empty
            | SdpError::MissingOrigin => None,
            SdpError::TooManyMedia { line, .. }
            | SdpError::MissingVersion { line }
            | SdpError::UnsupportedVersion { line, .. }
            | SdpError::MissingEquals { line }
            | SdpError::InvalidType { line }
            | SdpError::InvalidCharacter { line }
            | SdpError::NonUtf8 { line, .. }
            | SdpError::UnexpectedLine { line, .. }
            | SdpError::DuplicateLine { line, .. }
            | SdpError::InvalidOrigin { line, .. }
            | SdpError::InvalidConnection { line, .. }
            | SdpError::UnknownNetworkType { line, .. }
            | SdpError::UnknownAddressType { line, .. }
            | SdpError::InvalidAddress { line, .. }
            | SdpError::InvalidMedia { line }
            | SdpError::InvalidPort { line, .. }
            | SdpError::NoFormats { line }
            | SdpError::InvalidAttribute { line, .. } => Some(*line),
        }
    }
}

/// A bounded copy of input text for an error message (cut at a character boundary).
pub(super) fn echo(value: &str) -> String {
    if value.len() <= MAX_ECHO {
        return value.to_owned();
    }
    let mut cut = MAX_ECHO;
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut s = value.get(..cut).unwrap_or_default().to_owned();
    s.push('…');
    s
}
