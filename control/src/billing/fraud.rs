//! The fraud guard, sans-IO: clients (a source address, an account) that create call-ids faster
//! than configured, or keep sending media after BYE, are flagged (the CDR records the flags)
//! and, if configured, blocked. Owns the per-client rate buckets and the blocked set; it does
//! not refuse calls or close anything itself — the owner asks it and acts on the [`Verdict`].
//!
//! Rate limiting is a token bucket per key, in integer arithmetic: `burst` calls at once, then
//! `calls` per `per`. A new call-id is charged to both its source address and its account (when
//! known); the verdict is the worse of the two. The table of keys is bounded (`max_keys`): when
//! it is full even after dropping idle keys, new keys are not tracked (their calls are allowed
//! and counted in `untracked`) — memory stays bounded under a flood of spoofed sources.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::Serialize;

/// Who a limit applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum FraudKey {
    /// A signaling source address.
    Source(IpAddr),
    /// A billing account.
    Account(String),
}

impl fmt::Display for FraudKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FraudKey::Source(a) => write!(f, "source {a}"),
            FraudKey::Account(a) => write!(f, "account {a}"),
        }
    }
}

/// What the CDR records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FraudFlag {
    /// New call-ids faster than the configured rate.
    CallRate,
    /// Media kept arriving after the call ended.
    MediaAfterBye,
}

impl FraudFlag {
    /// `call-rate` or `media-after-bye` (the CDR's spelling).
    pub const fn as_str(self) -> &'static str {
        match self {
            FraudFlag::CallRate => "call-rate",
            FraudFlag::MediaAfterBye => "media-after-bye",
        }
    }
}

impl fmt::Display for FraudFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do when a client trips a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FraudAction {
    /// Record the flag; the call goes on.
    Flag,
    /// Record the flag and block the client.
    Block,
}

/// The guard's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "verdict", content = "flag")]
pub enum Verdict {
    /// Nothing wrong.
    Allow,
    /// Go on, but record the flag in the CDR.
    Flag(FraudFlag),
    /// Refuse (a new call) / the client is now blocked; the flag says why.
    Block(FraudFlag),
}

impl Verdict {
    /// The flag to record, if any.
    pub fn flag(self) -> Option<FraudFlag> {
        match self {
            Verdict::Allow => None,
            Verdict::Flag(f) | Verdict::Block(f) => Some(f),
        }
    }

    /// Whether the call must be refused.
    pub fn is_block(self) -> bool {
        matches!(self, Verdict::Block(_))
    }

    fn worse(self, other: Verdict) -> Verdict {
        let rank = |v: Verdict| match v {
            Verdict::Allow => 0,
            Verdict::Flag(_) => 1,
            Verdict::Block(_) => 2,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// A call-rate limit: `burst` new call-ids at once, refilled at `calls` per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallRateLimit {
    /// Sustained calls per `per` (at least 1).
    pub calls: u32,
    /// The period of `calls` (not zero).
    pub per: Duration,
    /// Calls allowed at once (at least 1).
    pub burst: u32,
}

/// Fraud guard settings.
#[derive(Clone, Debug)]
pub struct FraudConfig {
    /// Per-key rate of new call-ids; None: no rate limit.
    pub call_rate: Option<CallRateLimit>,
    /// What exceeding the rate does.
    pub on_call_rate: FraudAction,
    /// More packets than this after the end (during the delete delay) trip the rule.
    pub media_after_bye_packets: u64,
    /// What media after BYE does.
    pub on_media_after_bye: FraudAction,
    /// How long a block lasts; None: until [`FraudGuard::unblock`].
    pub block_for: Option<Duration>,
    /// Most keys tracked at once.
    pub max_keys: usize,
}

impl Default for FraudConfig {
    fn default() -> Self {
        Self {
            call_rate: Some(CallRateLimit {
                calls: 10,
                per: Duration::from_secs(1),
                burst: 20,
            }),
            on_call_rate: FraudAction::Flag,
            media_after_bye_packets: 50,
            on_media_after_bye: FraudAction::Flag,
            block_for: Some(Duration::from_secs(3600)),
            max_keys: 100_000,
        }
    }
}

/// Why a configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FraudError {
    /// The configuration is unusable.
    #[error("invalid fraud guard configuration: {0}")]
    BadConfig(&'static str),
}

/// A blocked client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockEntry {
    /// Who.
    pub key: FraudKey,
    /// Why.
    pub reason: FraudFlag,
    /// Remaining time, None: until unblocked.
    #[serde(skip)]
    pub until: Option<Instant>,
}

/// Counters for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FraudCounters {
    /// New calls checked.
    pub calls_checked: u64,
    /// Calls flagged for the call rate.
    pub call_rate_flags: u64,
    /// Keys blocked for the call rate.
    pub call_rate_blocks: u64,
    /// Calls refused because a key was already blocked.
    pub refused_blocked: u64,
    /// Calls flagged for media after BYE.
    pub media_after_bye_flags: u64,
    /// Keys blocked for media after BYE.
    pub media_after_bye_blocks: u64,
    /// Keys not tracked because the table was full.
    pub untracked: u64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens × `per` in ns: one call costs `per_ns`; refill adds `calls` per elapsed ns.
    scaled: u128,
    last: Instant,
}

/// The fraud guard.
#[derive(Debug)]
pub struct FraudGuard {
    cfg: FraudConfig,
    buckets: HashMap<FraudKey, Bucket>,
    blocked: HashMap<FraudKey, (FraudFlag, Option<Instant>)>,
    counters: FraudCounters,
}

impl FraudGuard {
    /// A guard with no history.
    pub fn new(cfg: FraudConfig) -> Result<Self, FraudError> {
        if let Some(r) = cfg.call_rate {
            if r.calls == 0 || r.burst == 0 {
                return Err(FraudError::BadConfig(
                    "call rate and burst must be at least 1",
                ));
            }
            if r.per.is_zero() {
                return Err(FraudError::BadConfig("call rate period must not be 0"));
            }
        }
        Ok(Self {
            cfg,
            buckets: HashMap::new(),
            blocked: HashMap::new(),
            counters: FraudCounters::default(),
        })
    }

    /// Counters since start.
    pub fn counters(&self) -> &FraudCounters {
        &self.counters
    }

    /// Checks a new call-id from `source` for `account` (either may be unknown) and charges it
    /// to both keys' buckets. `Block` means: refuse the call.
    pub fn check_new_call(
        &mut self,
        now: Instant,
        source: Option<IpAddr>,
        account: Option<&str>,
    ) -> Verdict {
        self.counters.calls_checked += 1;
        let keys = keys(source, account);
        // A blocked client is refused before anything is charged.
        for key in &keys {
            if let Some(reason) = self.blocked_reason(now, key) {
                self.counters.refused_blocked += 1;
                return Verdict::Block(reason);
            }
        }
        let Some(limit) = self.cfg.call_rate else {
            return Verdict::Allow;
        };
        let mut verdict = Verdict::Allow;
        for key in keys {
            if self.take(now, &key, limit) {
                continue;
            }
            match self.cfg.on_call_rate {
                FraudAction::Flag => {
                    verdict = verdict.worse(Verdict::Flag(FraudFlag::CallRate));
                }
                FraudAction::Block => {
                    self.counters.call_rate_blocks += 1;
                    self.block(now, key, FraudFlag::CallRate);
                    verdict = verdict.worse(Verdict::Block(FraudFlag::CallRate));
                }
            }
        }
        if verdict != Verdict::Allow {
            self.counters.call_rate_flags += 1;
            tracing::warn!(
                ?source,
                ?account,
                ?verdict,
                "fraud guard: call rate exceeded"
            );
        }
        verdict
    }

    /// `packets` arrived for `call_id` after it ended (the closed pinholes' drop counters during
    /// the delete delay). Above the threshold the call is flagged, and with
    /// [`FraudAction::Block`] its source and account are blocked.
    pub fn media_after_end(
        &mut self,
        now: Instant,
        call_id: &str,
        source: Option<IpAddr>,
        account: Option<&str>,
        packets: u64,
    ) -> Verdict {
        if packets <= self.cfg.media_after_bye_packets {
            return Verdict::Allow;
        }
        self.counters.media_after_bye_flags += 1;
        tracing::warn!(
            call = call_id,
            packets,
            ?source,
            ?account,
            "fraud guard: media after BYE"
        );
        match self.cfg.on_media_after_bye {
            FraudAction::Flag => Verdict::Flag(FraudFlag::MediaAfterBye),
            FraudAction::Block => {
                for key in keys(source, account) {
                    self.counters.media_after_bye_blocks += 1;
                    self.block(now, key, FraudFlag::MediaAfterBye);
                }
                Verdict::Block(FraudFlag::MediaAfterBye)
            }
        }
    }

    /// Blocks `key` (for `block_for`, or until unblocked) — also for operators.
    pub fn block(&mut self, now: Instant, key: FraudKey, reason: FraudFlag) {
        let until = self.cfg.block_for.and_then(|d| now.checked_add(d));
        self.blocked.insert(key, (reason, until));
    }

    /// Lifts a block; returns whether there was one.
    pub fn unblock(&mut self, key: &FraudKey) -> bool {
        self.blocked.remove(key).is_some()
    }

    /// Whether `key` is blocked at `now`.
    pub fn is_blocked(&self, now: Instant, key: &FraudKey) -> bool {
        self.blocked_reason(now, key).is_some()
    }

    /// Blocked clients at `now`, sorted by key.
    pub fn blocked(&self, now: Instant) -> Vec<BlockEntry> {
        let mut v: Vec<BlockEntry> = self
            .blocked
            .iter()
            .filter(|(_, (_, until))| until.is_none_or(|u| now < u))
            .map(|(key, (reason, until))| BlockEntry {
                key: key.clone(),
                reason: *reason,
                until: *until,
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Forgets keys whose bucket is full again and blocks that expired (call now and then).
    pub fn gc(&mut self, now: Instant) {
        self.blocked
            .retain(|_, (_, until)| until.is_none_or(|u| now < u));
        if let Some(limit) = self.cfg.call_rate {
            let full = capacity(limit);
            self.buckets.retain(|_, b| refilled(b, now, limit) < full);
        }
    }

    /// Keys tracked for the call rate.
    pub fn tracked_keys(&self) -> usize {
        self.buckets.len()
    }

    fn blocked_reason(&self, now: Instant, key: &FraudKey) -> Option<FraudFlag> {
        self.blocked
            .get(key)
            .filter(|(_, until)| until.is_none_or(|u| now < u))
            .map(|(reason, _)| *reason)
    }

    /// Takes one call's token from `key`'s bucket; false when there is none.
    fn take(&mut self, now: Instant, key: &FraudKey, limit: CallRateLimit) -> bool {
        let cost = limit.per.as_nanos();
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.cfg.max_keys {
            self.gc(now);
            if self.buckets.len() >= self.cfg.max_keys {
                self.counters.untracked += 1;
                return true;
            }
        }
        let bucket = self.buckets.entry(key.clone()).or_insert(Bucket {
            scaled: capacity(limit),
            last: now,
        });
        bucket.scaled = refilled(bucket, now, limit);
        bucket.last = bucket.last.max(now);
        if bucket.scaled >= cost {
            bucket.scaled -= cost;
            true
        } else {
            false
        }
    }
}

fn keys(source: Option<IpAddr>, account: Option<&str>) -> Vec<FraudKey> {
    source
        .map(FraudKey::Source)
        .into_iter()
        .chain(account.map(|a| FraudKey::Account(a.to_string())))
        .collect()
}

fn capacity(limit: CallRateLimit) -> u128 {
    u128::from(limit.burst).saturating_mul(limit.per.as_nanos())
}

fn refilled(b: &Bucket, now: Instant, limit: CallRateLimit) -> u128 {
    let elapsed = now.saturating_duration_since(b.last).as_nanos();
    b.scaled
        .saturating_add(elapsed.saturating_mul(u128::from(limit.calls)))
        .min(capacity(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(action: FraudAction) -> FraudConfig {
        FraudConfig {
            call_rate: Some(CallRateLimit {
                calls: 2,
                per: Duration::from_secs(1),
                burst: 3,
            }),
            on_call_rate: action,
            media_after_bye_packets: 10,
            on_media_after_bye: action,
            block_for: Some(Duration::from_secs(60)),
            max_keys: 100,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_sustained_rate_then_flag() {
        let t0 = Instant::now();
        let mut g = FraudGuard::new(cfg(FraudAction::Flag)).unwrap();
        let src = Some(ip("192.0.2.1"));
        for _ in 0..3 {
            assert_eq!(g.check_new_call(t0, src, Some("acme")), Verdict::Allow);
        }
        assert_eq!(
            g.check_new_call(t0, src, Some("acme")),
            Verdict::Flag(FraudFlag::CallRate)
        );
        // 2 calls/s refill: one token after 500 ms, not before.
        let t = t0 + Duration::from_millis(499);
        assert_eq!(
            g.check_new_call(t, src, None),
            Verdict::Flag(FraudFlag::CallRate)
        );
        let t = t0 + Duration::from_millis(500);
        assert_eq!(g.check_new_call(t, src, None), Verdict::Allow);
        // The account's bucket refilled one token too; a new source cannot get around the
        // account's rate once that is spent.
        assert_eq!(
            g.check_new_call(t, Some(ip("192.0.2.2")), Some("acme")),
            Verdict::Allow
        );
        assert_eq!(
            g.check_new_call(t, Some(ip("192.0.2.3")), Some("acme")),
            Verdict::Flag(FraudFlag::CallRate)
        );
        assert_eq!(
            g.check_new_call(t, Some(ip("192.0.2.3")), Some("other")),
            Verdict::Allow
        );
        assert!(
            !g.is_blocked(t, &FraudKey::Source(ip("192.0.2.1"))),
            "flag only"
        );
        assert_eq!(g.counters().call_rate_flags, 3);
        assert_eq!(
            serde_json::to_value(vec![FraudFlag::CallRate, FraudFlag::MediaAfterBye]).unwrap(),
            serde_json::json!(["call-rate", "media-after-bye"])
        );
    }

    #[test]
    fn block_action_blocks_until_expiry_or_unblock() {
        let t0 = Instant::now();
        let mut g = FraudGuard::new(cfg(FraudAction::Block)).unwrap();
        let src = Some(ip("2001:db8::1"));
        for _ in 0..3 {
            assert_eq!(g.check_new_call(t0, src, None), Verdict::Allow);
        }
        assert_eq!(
            g.check_new_call(t0, src, None),
            Verdict::Block(FraudFlag::CallRate)
        );
        let key = FraudKey::Source(ip("2001:db8::1"));
        assert!(g.is_blocked(t0, &key));
        // Blocked: refused even after the bucket refilled.
        let t = t0 + Duration::from_secs(30);
        assert_eq!(
            g.check_new_call(t, src, None),
            Verdict::Block(FraudFlag::CallRate)
        );
        assert_eq!(g.counters().refused_blocked, 1);
        assert_eq!(
            g.blocked(t),
            vec![BlockEntry {
                key: key.clone(),
                reason: FraudFlag::CallRate,
                until: Some(t0 + Duration::from_secs(60)),
            }]
        );
        // The block expires after block_for.
        let t = t0 + Duration::from_secs(60);
        assert!(!g.is_blocked(t, &key));
        assert_eq!(g.check_new_call(t, src, None), Verdict::Allow);
        // An operator block lasts until unblocked when block_for is None.
        let mut g = FraudGuard::new(FraudConfig {
            block_for: None,
            ..cfg(FraudAction::Block)
        })
        .unwrap();
        let acct = FraudKey::Account("mallory".into());
        g.block(t0, acct.clone(), FraudFlag::CallRate);
        assert_eq!(
            g.check_new_call(t0 + Duration::from_secs(86_400), None, Some("mallory")),
            Verdict::Block(FraudFlag::CallRate)
        );
        assert!(g.unblock(&acct));
        assert!(!g.unblock(&acct));
        assert_eq!(g.check_new_call(t0, None, Some("mallory")), Verdict::Allow);
    }

    #[test]
    fn media_after_bye_flags_above_threshold_and_can_block() {
        let t0 = Instant::now();
        let mut g = FraudGuard::new(cfg(FraudAction::Flag)).unwrap();
        let src = Some(ip("198.51.100.7"));
        assert_eq!(
            g.media_after_end(t0, "c1", src, Some("acme"), 10),
            Verdict::Allow
        );
        assert_eq!(
            g.media_after_end(t0, "c1", src, Some("acme"), 11),
            Verdict::Flag(FraudFlag::MediaAfterBye)
        );
        assert!(!g.is_blocked(t0, &FraudKey::Account("acme".into())));

        let mut g = FraudGuard::new(cfg(FraudAction::Block)).unwrap();
        assert_eq!(
            g.media_after_end(t0, "c2", src, Some("acme"), 500),
            Verdict::Block(FraudFlag::MediaAfterBye)
        );
        assert!(g.is_blocked(t0, &FraudKey::Account("acme".into())));
        assert!(g.is_blocked(t0, &FraudKey::Source(ip("198.51.100.7"))));
        assert_eq!(
            g.check_new_call(t0, None, Some("acme")),
            Verdict::Block(FraudFlag::MediaAfterBye)
        );
    }

    #[test]
    fn the_key_table_is_bounded_and_idle_keys_are_collected() {
        let t0 = Instant::now();
        let mut g = FraudGuard::new(FraudConfig {
            max_keys: 2,
            ..cfg(FraudAction::Flag)
        })
        .unwrap();
        g.check_new_call(t0, Some(ip("10.0.0.1")), None);
        g.check_new_call(t0, Some(ip("10.0.0.2")), None);
        assert_eq!(
            g.check_new_call(t0, Some(ip("10.0.0.3")), None),
            Verdict::Allow
        );
        assert_eq!(g.counters().untracked, 1);
        assert_eq!(g.tracked_keys(), 2);
        // Once their buckets are full again the keys are forgotten.
        g.gc(t0 + Duration::from_secs(1));
        assert_eq!(g.tracked_keys(), 0);
        // No rate configured: everything allowed, nothing tracked.
        let mut g = FraudGuard::new(FraudConfig {
            call_rate: None,
            ..cfg(FraudAction::Block)
        })
        .unwrap();
        for _ in 0..100 {
            assert_eq!(
                g.check_new_call(t0, Some(ip("10.0.0.1")), None),
                Verdict::Allow
            );
        }
        assert!(
            FraudGuard::new(FraudConfig {
                call_rate: Some(CallRateLimit {
                    calls: 0,
                    per: Duration::from_secs(1),
                    burst: 1
                }),
                ..cfg(FraudAction::Flag)
            })
            .is_err()
        );
    }
}
