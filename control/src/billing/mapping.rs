//! Which account a call is billed to when its offer names none: the user part of the SIP From
//! URI (ng `from-uri`, which Kamailio passes as `rtpengine_offer("from-uri=$fu")`, or
//! `from-user`, e.g. `"from-user=$fU"`), optionally reduced by a pattern (its first capture
//! group, or the whole match) and translated by a table. Precedence, applied by the ng front
//! end and charging: the ng key `account` (or the account an authorization token names) >
//! this mapping > `default_account`.

use std::collections::HashMap;

/// Why a mapping configuration is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MappingError {
    /// Only `from-user` is a source so far.
    #[error("account_from {0:?}: expected \"from-user\"")]
    Source(String),
    /// The pattern does not compile.
    #[error("account_pattern: {0}")]
    Pattern(String),
}

/// The mapping from a From user to an account.
#[derive(Clone, Debug)]
pub struct AccountMapping {
    pattern: Option<regex::Regex>,
    map: HashMap<String, String>,
}

impl AccountMapping {
    /// From the configuration: `account_from` (must be `from-user`), an optional pattern and
    /// an optional table. With a table, only users in it are mapped (others fall through to
    /// the default account); without one, the (reduced) user is the account.
    pub fn new(
        source: &str,
        pattern: Option<&str>,
        map: HashMap<String, String>,
    ) -> Result<Self, MappingError> {
        if source != "from-user" {
            return Err(MappingError::Source(source.to_string()));
        }
        let pattern = pattern
            .map(regex::Regex::new)
            .transpose()
            .map_err(|e| MappingError::Pattern(e.to_string()))?;
        Ok(Self { pattern, map })
    }

    /// The account of a call whose From user is `user`, if the mapping gives one.
    pub fn account_for_user(&self, user: &str) -> Option<String> {
        if user.is_empty() {
            return None;
        }
        let key = match &self.pattern {
            None => user,
            Some(re) => {
                let caps = re.captures(user)?;
                caps.get(1).or_else(|| caps.get(0))?.as_str()
            }
        };
        if key.is_empty() {
            return None;
        }
        if self.map.is_empty() {
            Some(key.to_string())
        } else {
            self.map.get(key).cloned()
        }
    }

    /// The account of a call from its ng keys: `from-user` if given, else the user part of
    /// `from-uri`.
    pub fn account_for(&self, from_uri: Option<&str>, from_user: Option<&str>) -> Option<String> {
        let user = match from_user {
            Some(u) => u.to_string(),
            None => uri_user(from_uri?)?,
        };
        self.account_for_user(&user)
    }
}

/// The user part of a SIP/SIPS/TEL URI, also inside a name-addr (`"Alice" <sip:alice@host>;
/// tag=x`): `sip:alice@host` → `alice`, `sip:+4930123;npdi@host;user=phone` → `+4930123`,
/// `tel:+4930123;phone-context=x` → `+4930123`. None without a user part.
pub fn uri_user(uri: &str) -> Option<String> {
    let uri = uri.trim();
    let inner = match (uri.find('<'), uri.rfind('>')) {
        (Some(a), Some(b)) if a < b => &uri[a + 1..b],
        _ => uri,
    };
    let lower = inner.to_ascii_lowercase();
    let rest = if lower.starts_with("sips:") {
        &inner[5..]
    } else if lower.starts_with("sip:") {
        &inner[4..]
    } else if lower.starts_with("tel:") {
        let num = inner[4..].split(';').next().unwrap_or("");
        return (!num.is_empty()).then(|| num.to_string());
    } else {
        return None;
    };
    let (user, _) = rest.split_once('@')?;
    // user-params (`;npdi`) and a password (`:secret`) are not part of the user.
    let user = user.split(';').next().unwrap_or("");
    let user = user.split(':').next().unwrap_or("");
    (!user.is_empty()).then(|| user.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_of_uris() {
        for (uri, user) in [
            ("sip:alice@example.com", Some("alice")),
            ("sips:bob@example.com:5061;transport=tls", Some("bob")),
            ("\"Alice\" <sip:alice@example.com>;tag=1234", Some("alice")),
            (
                "<sip:+4930123;npdi@gw.example;user=phone>",
                Some("+4930123"),
            ),
            ("sip:carol:secret@host", Some("carol")),
            ("tel:+4930123;phone-context=example.com", Some("+4930123")),
            ("SIP:Dave@host", Some("Dave")),
            ("sip:example.com", None),
            ("sip:@example.com", None),
            ("mailto:alice@example.com", None),
            ("", None),
        ] {
            assert_eq!(uri_user(uri).as_deref(), user, "{uri}");
        }
    }

    #[test]
    fn the_user_is_the_account_unless_reduced_or_translated() {
        let plain = AccountMapping::new("from-user", None, HashMap::new()).unwrap();
        assert_eq!(
            plain.account_for(Some("sip:alice@example.com"), None),
            Some("alice".into())
        );
        // `from-user` wins over the URI; no From at all: no mapping.
        assert_eq!(
            plain.account_for(Some("sip:alice@example.com"), Some("bob")),
            Some("bob".into())
        );
        assert_eq!(plain.account_for(None, None), None);
        assert_eq!(plain.account_for(Some("sip:example.com"), None), None);
        // A pattern keeps its first group: the customer prefix of an E.164 number.
        let prefix =
            AccountMapping::new("from-user", Some(r"^\+?(49\d{3})\d*$"), HashMap::new()).unwrap();
        assert_eq!(
            prefix.account_for(Some("sip:+4930123456@gw"), None),
            Some("49301".into())
        );
        assert_eq!(
            prefix.account_for(Some("sip:+3312345@gw"), None),
            None,
            "no match: the default account applies"
        );
        // A table: only listed users are mapped.
        let table = AccountMapping::new(
            "from-user",
            None,
            HashMap::from([
                ("alice".to_string(), "acme".to_string()),
                ("bob".to_string(), "acme".to_string()),
            ]),
        )
        .unwrap();
        assert_eq!(
            table.account_for(Some("<sip:bob@x>"), None),
            Some("acme".into())
        );
        assert_eq!(table.account_for(Some("sip:eve@x"), None), None);
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert_eq!(
            AccountMapping::new("to-user", None, HashMap::new()).unwrap_err(),
            MappingError::Source("to-user".into())
        );
        assert!(matches!(
            AccountMapping::new("from-user", Some("(unclosed"), HashMap::new()),
            Err(MappingError::Pattern(_))
        ));
    }
}
