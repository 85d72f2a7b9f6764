//! Reply dictionaries and reply datagrams.
//!
//! rtpengine's reply shapes (daemon/control_ng.c):
//! - success: `result: ok` plus command-specific keys (`sdp` for offer/answer, statistics for
//!   query/delete, `calls` for list), optionally `warning`;
//! - ping: `result: pong`, nothing else;
//! - failure: `result: error` and `error-reason`, nothing else;
//! - overload, when the request's `supports` list contains `load limit`: `result: load limit`
//!   and optionally `message`. Without that support rtpengine answers an error with the reason
//!   [`SESSION_LIMIT_REASON`], which Kamailio recognises and fails over on (as it does for
//!   [`OUT_OF_PORTS_REASON`]).

use super::bencode::{self, Value};
use super::json;

/// The error reason Kamailio's module treats as "try the next rtpengine" (session limit).
pub const SESSION_LIMIT_REASON: &str = "Parallel session limit reached";
/// The other error reason Kamailio's module fails over on.
pub const OUT_OF_PORTS_REASON: &str = "Ran out of ports";
/// rtpengine's warning (or, with the `fatal` flag, error) for a delete of an unknown call.
pub const DELETE_NOT_FOUND_REASON: &str = "Call-ID not found or tags didn't match";
/// rtpengine's error for answer/query/... naming a call it does not know.
pub const UNKNOWN_CALL_REASON: &str = "Unknown call-id";

/// `{result: ok}`; add command-specific keys with [`Value::with`].
pub fn ok() -> Value {
    Value::dict([("result", Value::from("ok"))])
}

/// `{result: ok, warning: ...}` when there is a warning, else `{result: ok}`.
pub fn ok_with_warning(warning: Option<&str>) -> Value {
    let reply = ok();
    match warning {
        Some(w) => reply.with("warning", w),
        None => reply,
    }
}

/// `{result: pong}`.
pub fn pong() -> Value {
    Value::dict([("result", Value::from("pong"))])
}

/// `{result: error, error-reason: reason}`.
pub fn error(reason: &str) -> Value {
    Value::dict([
        ("result", Value::from("error")),
        ("error-reason", Value::from(reason)),
    ])
}

/// `{result: load limit[, message]}`.
pub fn load_limit(message: Option<&str>) -> Value {
    let reply = Value::dict([("result", Value::from("load limit"))]);
    match message {
        Some(m) => reply.with("message", m),
        None => reply,
    }
}

/// The overload reply rtpengine gives: `load limit` if the client said it supports it
/// (`Options::supports_load_limit`), else the session-limit error.
pub fn overload(supports_load_limit: bool, message: Option<&str>) -> Value {
    if supports_load_limit {
        load_limit(message)
    } else {
        error(SESSION_LIMIT_REASON)
    }
}

/// Adds `warning` to a reply dictionary (does nothing for `None`).
pub fn add_warning(reply: &mut Value, warning: Option<&str>) {
    if let Some(w) = warning {
        reply.insert("warning", Value::from(w));
    }
}

/// The reply datagram: `cookie`, one space, the dictionary in bencode (or JSON).
pub fn encode_reply(cookie: &[u8], reply: &Value, json: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(cookie.len() + 64);
    out.extend_from_slice(cookie);
    out.push(b' ');
    if json {
        json::to_json(reply, &mut out);
    } else {
        bencode::encode(reply, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_shapes() {
        assert_eq!(
            encode_reply(b"5323_1", &pong(), false),
            b"5323_1 d6:result4:ponge"
        );
        assert_eq!(encode_reply(b"c", &ok(), false), b"c d6:result2:oke");
        assert_eq!(
            encode_reply(b"c", &ok_with_warning(Some("w")), false),
            b"c d6:result2:ok7:warning1:we"
        );
        assert_eq!(
            encode_reply(b"c", &ok_with_warning(None), false),
            b"c d6:result2:oke"
        );
        assert_eq!(
            encode_reply(b"c", &error("No call-id in message"), false),
            b"c d12:error-reason21:No call-id in message6:result5:errore".to_vec()
        );
        assert_eq!(
            encode_reply(b"c", &load_limit(Some("CPU usage limit exceeded")), false),
            b"c d7:message24:CPU usage limit exceeded6:result10:load limite".to_vec()
        );
        assert_eq!(
            encode_reply(b"c", &load_limit(None), false),
            b"c d6:result10:load limite".to_vec()
        );
        assert_eq!(overload(false, None), error(SESSION_LIMIT_REASON));
        assert_eq!(overload(true, None), load_limit(None));
        let mut r = ok().with("sdp", "v=0\r\n");
        add_warning(&mut r, Some("x"));
        add_warning(&mut r, None);
        assert_eq!(
            encode_reply(b"c", &r, true),
            br#"c {"result":"ok","sdp":"v=0\r\n","warning":"x"}"#.to_vec()
        );
    }
}
