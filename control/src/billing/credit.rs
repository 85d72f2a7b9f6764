//! Online credit control, sans-IO, in the manner of Diameter Gy/Ro: a call runs on **slices** of
//! reserved credit, asked for one at a time before the current one runs out, and is cut the
//! instant the last granted slice ends. Owns the per-call quota state and the unreachable-billing
//! policy; it has no clock, no socket and no ledger. The owner (the engine) feeds inputs with
//! the current time, forwards [`CreditEvent::Reserve`] to the embedded ledger (see
//! [`super::embedded`]) or an external billing system, feeds the answers back, and acts on
//! [`CreditEvent::Cut`].
//!
//! # Inputs
//! - [`CreditControl::open`] at answer `(call_id, account, tariff, mode)`.
//! - [`CreditControl::on_grant`] / [`CreditControl::on_grant_amount`] /
//!   [`CreditControl::on_request_failed`]: the answer to a `Reserve`.
//! - [`CreditControl::on_usage`]: the call's total media bytes so far (time comes from `now`
//!   and the answer instant given at open, so the two can never disagree).
//! - [`CreditControl::handle_timeout`] at (or after) [`CreditControl::poll_timeout`].
//! - Billing-system pushes: [`CreditControl::exhausted`] (cut the account's calls now),
//!   [`CreditControl::topup`] (denied or waiting calls ask again), [`CreditControl::block`]
//!   (cut the account's calls now, refuse new ones) / [`CreditControl::unblock`].
//! - [`CreditControl::end`] when the call ended for another reason.
//! - [`CreditControl::set_connected`]: whether the billing backend is reachable.
//!
//! # Outputs ([`CreditControl::poll_event`])
//! - `Reserve { call_id, account, request_id, seconds, bytes, amount, initial }`: ask for the
//!   next slice; `amount` is what the slice would cost at most (the tariff's marginal price of
//!   `seconds` more time and `bytes` more volume, connection fee included in the first).
//! - `Usage { seconds, bytes, amount, released, charge, is_final, .. }`: usage since the last
//!   report (sent with every renewal, and once at the end): `amount` is to be **debited** and
//!   `released` to be released from the reservation (`Ledger::settle(account, call_id,
//!   released, amount)`); `charge` is the call's total so far — on the final report, the CDR's
//!   charge. Interim amounts are differences of one cumulative rating, so they add up exactly
//!   to the final charge.
//! - `Cut { call_id, reason, charge }`: stop the call's media now; the final `Usage` follows.
//!
//! # Slices and deadlines (prepaid)
//! At open the first slice is requested. A grant of `s` seconds and `b` bytes extends the call's
//! granted **horizon** (time from answer, bytes) by `s` and `b`. The next slice is requested at
//! `renew_at_percent` of the last grant (e.g. 24 s into a 30 s slice) or of its bytes. When
//! elapsed time reaches the horizon and no further grant has arrived, `handle_timeout` emits
//! the cut **at that instant**: `poll_timeout` returns exactly `answer + horizon`, and nothing
//! inside rounds time. Bytes are only known when reported, so a byte horizon is checked on
//! `on_usage`: reached with a request outstanding, the cut waits for that answer (or its
//! timeout); otherwise it is immediate. Volume is metered only when the tariff prices it.
//! While the first request is outstanding the call has no horizon yet; it may run for at most
//! `request_timeout` waiting for the answer.
//!
//! A denial (`Denied`) lets the call run to its horizon (the first slice denied: cut at once),
//! unless the reason is a blocked account (cut at once). A top-up makes denied calls ask again.
//!
//! # Charging
//! The charge is [`super::rate`] of the call's time and bytes. For prepaid calls usage is capped
//! at the granted horizon (the operator absorbs the few milliseconds between the deadline and
//! the owner acting on the cut, and packets in flight), so a prepaid call never costs more than
//! was granted; a prepaid call that never got a grant costs nothing. Post-paid calls have no
//! reservation and no deadlines; they are rated at the end.
//!
//! # Billing unreachable
//! A request cannot be answered when the owner said the backend is disconnected
//! ([`CreditControl::set_connected`]), when it timed out (`request_timeout`), when the owner
//! reports it failed, or when the slice ends while it is outstanding. Then
//! [`UnreachablePolicy`] applies, with a `tracing` warning and [`CreditCounters`]:
//! - `FailClosed`: no further slice; the call ends when its current slice ends (a new call at
//!   once), reason [`CutReason::BillingUnavailable`].
//! - `FailOpen { max }`: the component grants itself **provisional** slices (nothing reserved,
//!   amount 0) for at most `max` from the start of the outage; calls still running then end at
//!   `outage start + max`. Provisional usage is charged at the end like any other (so it can take
//!   a prepaid balance below zero: that is the risk fail-open accepts). On reconnection, calls
//!   on provisional credit ask for a real slice at once. A timed-out request is not retried
//!   otherwise; a late answer to it is ignored (and counted): an external system releases what
//!   it reserved when it gets the final usage report.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    fmt,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{Mode, Money, Tariff, ledger::LedgerError, tariff::rate};

/// Identifies one `Reserve` so its answer can be matched (unique per [`CreditControl`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What happens when the billing backend cannot answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnreachablePolicy {
    /// End calls when their current slice ends.
    FailClosed,
    /// Grant provisional slices for at most `max` after the outage began.
    FailOpen {
        /// Longest time calls may run on provisional credit in one outage.
        max: Duration,
    },
}

/// Credit control settings.
#[derive(Clone, Debug)]
pub struct CreditConfig {
    /// Time asked for per slice, seconds (e.g. 30).
    pub slice_seconds: u32,
    /// Bytes asked for per slice when the tariff prices volume (e.g. 1 MB).
    pub slice_bytes: u64,
    /// Ask for the next slice when this much of the current one is used (1..=99, e.g. 80).
    pub renew_at_percent: u8,
    /// An unanswered request counts as failed after this long.
    pub request_timeout: Duration,
    /// What to do when the billing backend is unreachable.
    pub unreachable: UnreachablePolicy,
}

impl Default for CreditConfig {
    fn default() -> Self {
        Self {
            slice_seconds: 30,
            slice_bytes: 1_000_000,
            renew_at_percent: 80,
            request_timeout: Duration::from_secs(2),
            unreachable: UnreachablePolicy::FailClosed,
        }
    }
}

/// A call to control, given at answer.
#[derive(Clone, Debug)]
pub struct OpenCall {
    /// SIP Call-ID.
    pub call_id: String,
    /// Billing account.
    pub account: String,
    /// The account's tariff (a snapshot: later tariff changes do not affect the call).
    pub tariff: Tariff,
    /// Prepaid or post-paid.
    pub mode: Mode,
}

/// Ask the billing backend for the next slice of a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reserve {
    /// The call.
    pub call_id: String,
    /// Whose credit.
    pub account: String,
    /// Answer with this id.
    pub request_id: RequestId,
    /// Seconds asked for.
    pub seconds: u64,
    /// Bytes asked for (0 when the tariff does not price volume: volume is then not metered).
    pub bytes: u64,
    /// The most the slice can cost: the amount to reserve.
    pub amount: Money,
    /// The call's first request (Gy: CCR-Initial) rather than a renewal (CCR-Update).
    pub initial: bool,
}

/// A slice granted by the billing backend. With a tariff that prices volume, a grant must
/// carry bytes as well as seconds; a grant of 0 seconds (or 0 bytes then) counts as a denial
/// for lack of credit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Granted {
    /// Seconds granted.
    pub seconds: u64,
    /// Bytes granted (ignored when volume is not metered).
    pub bytes: u64,
    /// Amount the backend reserved for it (released at the end).
    pub amount: Money,
}

/// Why a slice was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "reason", content = "detail")]
pub enum DenyReason {
    /// No credit left.
    InsufficientCredit,
    /// The account is blocked: the call is cut at once.
    AccountBlocked,
    /// The backend does not know the account.
    UnknownAccount,
    /// Anything else the backend said.
    Rejected(String),
}

impl DenyReason {
    /// The denial that a ledger refusal amounts to.
    pub fn from_ledger(e: &LedgerError) -> DenyReason {
        match e {
            LedgerError::Insufficient { .. } => DenyReason::InsufficientCredit,
            LedgerError::Blocked(_) => DenyReason::AccountBlocked,
            LedgerError::NoSuchAccount(_) => DenyReason::UnknownAccount,
            other => DenyReason::Rejected(other.code().to_string()),
        }
    }
}

/// The answer to a [`Reserve`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum GrantAnswer {
    /// A slice was granted.
    Granted(Granted),
    /// No slice.
    Denied(DenyReason),
}

/// Usage of a call since its last report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// The call.
    pub call_id: String,
    /// Whose credit.
    pub account: String,
    /// Prepaid or post-paid.
    pub mode: Mode,
    /// Seconds used since the last report (started seconds, before increments).
    pub seconds: u64,
    /// Bytes used since the last report.
    pub bytes: u64,
    /// Amount to debit for this report.
    pub amount: Money,
    /// Reservation to release with this report (all that is left on the final one).
    pub released: Money,
    /// The call's total charge so far; on the final report, the CDR's `charge`.
    pub charge: Money,
    /// The call is over (Gy: CCR-Termination).
    pub is_final: bool,
}

/// Why credit control cut a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CutReason {
    /// The granted credit ran out, or the billing system said it is exhausted.
    CreditExhausted,
    /// The account was blocked.
    AccountBlocked,
    /// The billing backend could not be reached (fail closed, or fail-open time used up).
    BillingUnavailable,
}

impl CutReason {
    /// Spelling in logs and events.
    pub const fn as_str(self) -> &'static str {
        match self {
            CutReason::CreditExhausted => "credit-exhausted",
            CutReason::AccountBlocked => "account-blocked",
            CutReason::BillingUnavailable => "billing-unavailable",
        }
    }

    /// The CDR end reason: the credit could not be (or was no longer) confirmed, so
    /// `credit-exhausted`, except for a blocked account (`operator`: someone decided it).
    pub const fn end_reason(self) -> crate::engine::EndReason {
        match self {
            CutReason::CreditExhausted | CutReason::BillingUnavailable => {
                crate::engine::EndReason::CreditExhausted
            }
            CutReason::AccountBlocked => crate::engine::EndReason::Operator,
        }
    }
}

impl fmt::Display for CutReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stop a call's media now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cut {
    /// The call.
    pub call_id: String,
    /// Whose credit.
    pub account: String,
    /// Why.
    pub reason: CutReason,
    /// The call's charge (also in the final [`Usage`] that follows).
    pub charge: Money,
}

/// What credit control asks of its owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum CreditEvent {
    /// Ask the billing backend for a slice.
    Reserve(Reserve),
    /// Report usage (and settle it against the ledger).
    Usage(Usage),
    /// Cut the call now.
    Cut(Cut),
}

/// Counters for metrics and for operators asking what the unreachable policy did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CreditCounters {
    /// Calls opened.
    pub sessions_opened: u64,
    /// Calls closed (ended or cut).
    pub sessions_closed: u64,
    /// `Reserve` requests emitted.
    pub reserves_sent: u64,
    /// Slices granted by the backend.
    pub grants: u64,
    /// Grants smaller than asked.
    pub partial_grants: u64,
    /// Denials.
    pub denials: u64,
    /// Requests unanswered after `request_timeout`.
    pub request_timeouts: u64,
    /// Requests still unanswered when the slice ended.
    pub unanswered_at_slice_end: u64,
    /// Requests the owner reported as failed.
    pub requests_failed: u64,
    /// Answers to no outstanding request (late, duplicate, unknown).
    pub stale_answers: u64,
    /// Times the owner reported the backend disconnected.
    pub outages: u64,
    /// Provisional slices granted under fail-open.
    pub provisional_grants: u64,
    /// Provisional time granted, ms.
    pub provisional_ms: u64,
    /// Calls left without a further slice by the unreachable policy (fail closed, or fail-open
    /// time used up).
    pub unreachable_holds: u64,
    /// Cuts for exhausted credit.
    pub cuts_credit_exhausted: u64,
    /// Cuts for blocked accounts.
    pub cuts_account_blocked: u64,
    /// Cuts because billing was unreachable.
    pub cuts_billing_unavailable: u64,
}

/// Where a call's credit stands, for `GET /v1/calls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionView {
    /// The call.
    pub call_id: String,
    /// Whose credit.
    pub account: String,
    /// Prepaid or post-paid.
    pub mode: Mode,
    /// `granted`, `requesting`, `denied`, `billing-unreachable` or `postpaid`.
    pub state: &'static str,
    /// Time granted from answer, ms (prepaid).
    pub granted_ms: u64,
    /// Bytes granted (prepaid, when volume is metered).
    pub granted_bytes: u64,
    /// Reservation still held for the call.
    pub reserved: Money,
    /// The horizon's tail is provisional (fail-open).
    pub provisional: bool,
    /// Charge if the call ended now.
    pub charge: Money,
}

/// Why an input was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    /// The call is already under credit control.
    #[error("call {0} is already under credit control")]
    AlreadyOpen(String),
    /// The account is blocked.
    #[error("account {0} is blocked")]
    AccountBlocked(String),
    /// The configuration is unusable.
    #[error("invalid credit control configuration: {0}")]
    BadConfig(&'static str),
}

#[derive(Clone, Debug)]
struct Pending {
    id: RequestId,
    seconds: u64,
    bytes: u64,
    amount: Money,
    deadline: Instant,
}

#[derive(Clone, Debug)]
enum Phase {
    /// Running on a grant; the next request is due at the renewal point.
    Idle,
    /// A request is outstanding.
    Pending(Pending),
    /// The last answer was a denial: no request until a top-up.
    Denied,
    /// Billing unreachable and no provisional slice: no request until reconnection or top-up.
    Waiting,
}

/// What [`CreditControl::service`] does next for a call.
enum Step {
    /// Nothing due.
    Settled,
    /// The outstanding request is unanswered (timed out, or at the slice end).
    Unanswered(RequestId, bool),
    /// Time to ask for the next slice.
    Renew,
    /// Cut now.
    Cut(CutReason),
}

#[derive(Clone, Debug)]
struct Session {
    call_id: String,
    account: String,
    tariff: Tariff,
    mode: Mode,
    answered: Instant,
    /// Time granted from answer (real and provisional slices).
    horizon: Duration,
    /// Bytes granted (when metered).
    horizon_bytes: u64,
    /// Size of the last grant, for the renewal point.
    last_slice: Duration,
    last_slice_bytes: u64,
    granted_any: bool,
    provisional: bool,
    reserved_total: Money,
    released: Money,
    /// Highest byte total reported.
    bytes: u64,
    reported_secs: u64,
    reported_bytes: u64,
    reported: Money,
    phase: Phase,
    timer: Option<Instant>,
}

impl Session {
    fn metered(&self) -> bool {
        self.tariff.meters_volume()
    }

    fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.answered)
    }

    /// Time and bytes that count for the charge at `elapsed`: prepaid usage is capped at the
    /// horizon.
    fn billable(&self, elapsed: Duration) -> (Duration, u64) {
        match self.mode {
            Mode::Postpaid => (elapsed, self.bytes),
            Mode::Prepaid => (
                elapsed.min(self.horizon),
                if self.metered() {
                    self.bytes.min(self.horizon_bytes)
                } else {
                    self.bytes
                },
            ),
        }
    }

    fn charge_at(&self, elapsed: Duration) -> Money {
        if self.mode == Mode::Prepaid && !self.granted_any {
            return Money::ZERO;
        }
        let (t, b) = self.billable(elapsed);
        rate(&self.tariff, t, b)
    }

    /// What the granted horizon is worth (the base of the next slice's marginal price).
    fn horizon_value(&self) -> Money {
        if self.granted_any {
            rate(&self.tariff, self.horizon, self.horizon_bytes)
        } else {
            Money::ZERO
        }
    }

    /// The most `seconds` and `bytes` beyond the horizon can cost.
    fn marginal(&self, seconds: u64, bytes: u64) -> Money {
        let t = self.horizon.saturating_add(Duration::from_secs(seconds));
        let b = self.horizon_bytes.saturating_add(bytes);
        (rate(&self.tariff, t, b) - self.horizon_value()).max(Money::ZERO)
    }

    fn outstanding(&self) -> Money {
        (self.reserved_total - self.released).max(Money::ZERO)
    }

    fn renew_point(&self, pct: u8) -> Duration {
        self.horizon
            .saturating_sub(portion(self.last_slice, 100 - u64::from(pct)))
    }

    fn renew_bytes(&self, pct: u8) -> u64 {
        let keep = u64::try_from(u128::from(self.last_slice_bytes) * u128::from(100 - pct) / 100)
            .unwrap_or(u64::MAX);
        self.horizon_bytes.saturating_sub(keep)
    }

    fn state_name(&self) -> &'static str {
        match (self.mode, &self.phase) {
            (Mode::Postpaid, _) => "postpaid",
            (_, Phase::Idle) => "granted",
            (_, Phase::Pending(_)) => "requesting",
            (_, Phase::Denied) => "denied",
            (_, Phase::Waiting) => "billing-unreachable",
        }
    }
}

/// `pct` percent of `d`, in nanoseconds (no floats).
fn portion(d: Duration, pct: u64) -> Duration {
    let ns = d.as_nanos().saturating_mul(u128::from(pct)) / 100;
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// Started whole seconds of `d`.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// The credit control state machine for all calls of a daemon.
#[derive(Debug)]
pub struct CreditControl {
    cfg: CreditConfig,
    sessions: HashMap<String, Session>,
    /// Outstanding request → call.
    requests: HashMap<RequestId, String>,
    /// Deadlines, earliest first.
    timers: BTreeSet<(Instant, String)>,
    events: VecDeque<CreditEvent>,
    blocked: HashSet<String>,
    connected: bool,
    outage_since: Option<Instant>,
    next_request: u64,
    counters: CreditCounters,
}

impl CreditControl {
    /// A credit control with no calls, billing backend connected.
    pub fn new(cfg: CreditConfig) -> Result<Self, CreditError> {
        if cfg.slice_seconds == 0 {
            return Err(CreditError::BadConfig("slice_seconds must be at least 1"));
        }
        if cfg.slice_bytes == 0 {
            return Err(CreditError::BadConfig("slice_bytes must be at least 1"));
        }
        if !(1..=99).contains(&cfg.renew_at_percent) {
            return Err(CreditError::BadConfig("renew_at_percent must be 1 to 99"));
        }
        if cfg.request_timeout.is_zero() {
            return Err(CreditError::BadConfig("request_timeout must not be 0"));
        }
        Ok(Self {
            cfg,
            sessions: HashMap::new(),
            requests: HashMap::new(),
            timers: BTreeSet::new(),
            events: VecDeque::new(),
            blocked: HashSet::new(),
            connected: true,
            outage_since: None,
            next_request: 1,
            counters: CreditCounters::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CreditConfig {
        &self.cfg
    }

    /// Counters since start.
    pub fn counters(&self) -> &CreditCounters {
        &self.counters
    }

    /// Whether the owner last said the billing backend is connected.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Since when billing has been unreachable (disconnected or requests timing out), if it is.
    pub fn outage_since(&self) -> Option<Instant> {
        self.outage_since
    }

    /// Calls under credit control.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no call is under credit control.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Whether the account was blocked through [`CreditControl::block`].
    pub fn is_blocked(&self, account: &str) -> bool {
        self.blocked.contains(account)
    }

    /// A call's credit state.
    pub fn session(&self, call_id: &str, now: Instant) -> Option<SessionView> {
        let s = self.sessions.get(call_id)?;
        Some(SessionView {
            call_id: s.call_id.clone(),
            account: s.account.clone(),
            mode: s.mode,
            state: s.state_name(),
            granted_ms: u64::try_from(s.horizon.as_millis()).unwrap_or(u64::MAX),
            granted_bytes: s.horizon_bytes,
            reserved: s.outstanding(),
            provisional: s.provisional,
            charge: s.charge_at(s.elapsed(now)),
        })
    }

    /// The next event for the owner.
    pub fn poll_event(&mut self) -> Option<CreditEvent> {
        self.events.pop_front()
    }

    /// The next instant [`CreditControl::handle_timeout`] must be called at: a renewal point,
    /// a request timeout, or the exact end of a call's granted time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Processes every deadline at or before `now` (cuts are emitted for the instant they were
    /// due: a late call does not make a prepaid call cost more).
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<String> = self
            .timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| id.clone())
            .collect();
        for id in due {
            self.service(now, &id);
        }
    }

    /// Puts a call under credit control at answer. Prepaid: the first slice is requested (or,
    /// billing unreachable, the policy applies at once). Post-paid: nothing until the end.
    pub fn open(&mut self, now: Instant, call: OpenCall) -> Result<(), CreditError> {
        if self.sessions.contains_key(&call.call_id) {
            return Err(CreditError::AlreadyOpen(call.call_id));
        }
        if self.blocked.contains(&call.account) {
            return Err(CreditError::AccountBlocked(call.account));
        }
        let id = call.call_id.clone();
        self.sessions.insert(
            id.clone(),
            Session {
                call_id: call.call_id,
                account: call.account,
                tariff: call.tariff,
                mode: call.mode,
                answered: now,
                horizon: Duration::ZERO,
                horizon_bytes: 0,
                last_slice: Duration::ZERO,
                last_slice_bytes: 0,
                granted_any: false,
                provisional: false,
                reserved_total: Money::ZERO,
                released: Money::ZERO,
                bytes: 0,
                reported_secs: 0,
                reported_bytes: 0,
                reported: Money::ZERO,
                phase: Phase::Idle,
                timer: None,
            },
        );
        self.counters.sessions_opened += 1;
        if call.mode == Mode::Prepaid {
            self.request_next(now, &id);
            self.service(now, &id);
        }
        Ok(())
    }

    /// The backend's answer to `request_id`. Returns false when it matched no outstanding
    /// request (late, duplicate, or the call is over): it is ignored (counted as stale), and
    /// whatever the backend reserved for it is not the call's — release it.
    pub fn on_grant(&mut self, now: Instant, request_id: RequestId, answer: GrantAnswer) -> bool {
        let Some((id, pending)) = self.take_request(request_id) else {
            return false;
        };
        // The backend answered: it is reachable.
        if self.connected {
            self.outage_since = None;
        }
        let Some(s) = self.sessions.get_mut(&id) else {
            return false;
        };
        let denial = match answer {
            // A tariff that prices volume needs bytes too: a grant without any cannot carry
            // the call (and would only make it ask again at once).
            GrantAnswer::Granted(g) if g.seconds > 0 && (g.bytes > 0 || !s.metered()) => {
                s.reserved_total += g.amount.max(Money::ZERO);
                s.horizon = s.horizon.saturating_add(Duration::from_secs(g.seconds));
                s.last_slice = Duration::from_secs(g.seconds);
                if s.metered() {
                    s.horizon_bytes = s.horizon_bytes.saturating_add(g.bytes);
                    s.last_slice_bytes = g.bytes;
                }
                s.granted_any = true;
                s.provisional = false;
                s.phase = Phase::Idle;
                self.counters.grants += 1;
                if g.seconds < pending.seconds || (s.metered() && g.bytes < pending.bytes) {
                    self.counters.partial_grants += 1;
                }
                None
            }
            GrantAnswer::Granted(g) => {
                // Nothing usable; whatever was reserved is released at the end.
                s.reserved_total += g.amount.max(Money::ZERO);
                Some(DenyReason::InsufficientCredit)
            }
            GrantAnswer::Denied(reason) => Some(reason),
        };
        if let Some(reason) = denial {
            self.counters.denials += 1;
            tracing::info!(call = %id, ?reason, "credit slice denied");
            if reason == DenyReason::AccountBlocked {
                self.cut(now, &id, CutReason::AccountBlocked);
                return true;
            }
            s.phase = Phase::Denied;
        }
        self.service(now, &id);
        true
    }

    /// The embedded ledger's answer to `request_id`: it reserved `amount` (possibly less than
    /// asked — partial grants). The slice is shortened to what `amount` pays for: the most
    /// whole seconds (with bytes in proportion) whose marginal price fits; 0 seconds is a
    /// denial (and the amount is released at the end). Returns false, like
    /// [`CreditControl::on_grant`], when no request was outstanding: release `amount` then.
    pub fn on_grant_amount(&mut self, now: Instant, request_id: RequestId, amount: Money) -> bool {
        let Some(call_id) = self.requests.get(&request_id) else {
            self.counters.stale_answers += 1;
            return false;
        };
        let Some(s) = self.sessions.get(call_id) else {
            self.counters.stale_answers += 1;
            return false;
        };
        let Phase::Pending(p) = &s.phase else {
            self.counters.stale_answers += 1;
            return false;
        };
        let grant = if amount >= p.amount {
            Granted {
                seconds: p.seconds,
                bytes: p.bytes,
                amount,
            }
        } else {
            let bytes_for = |secs: u64| -> u64 {
                if p.seconds == 0 {
                    return 0;
                }
                // Rounded up so that a slice of at least a second always carries bytes.
                let b = (u128::from(p.bytes) * u128::from(secs)).div_ceil(u128::from(p.seconds));
                u64::try_from(b).unwrap_or(u64::MAX)
            };
            // Largest affordable whole second count: the price is monotone, so bisect.
            let (mut lo, mut hi) = (0u64, p.seconds);
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                if s.marginal(mid, bytes_for(mid)) <= amount {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            Granted {
                seconds: lo,
                bytes: bytes_for(lo),
                amount: amount.max(Money::ZERO),
            }
        };
        self.on_grant(now, request_id, GrantAnswer::Granted(grant))
    }

    /// The owner could not get `request_id` answered (the channel is down, the ledger failed):
    /// the unreachable policy applies now rather than at the timeout.
    pub fn on_request_failed(&mut self, now: Instant, request_id: RequestId) {
        let Some((id, _)) = self.take_request(request_id) else {
            return;
        };
        self.counters.requests_failed += 1;
        self.unreachable(now, &id);
        self.service(now, &id);
    }

    /// The call's media byte total so far (both directions; lower values than before are
    /// ignored). Checks the byte quota and the renewal point.
    pub fn on_usage(&mut self, now: Instant, call_id: &str, total_bytes: u64) {
        let Some(s) = self.sessions.get_mut(call_id) else {
            return;
        };
        s.bytes = s.bytes.max(total_bytes);
        self.service(now, call_id);
    }

    /// The billing system says the account has no credit left: its calls are cut now. Returns
    /// how many.
    pub fn exhausted(&mut self, now: Instant, account: &str) -> usize {
        let ids = self.calls_of(account);
        for id in &ids {
            self.cut(now, id, CutReason::CreditExhausted);
        }
        ids.len()
    }

    /// The billing system says one call has no credit left: it is cut now.
    pub fn exhausted_call(&mut self, now: Instant, call_id: &str) -> bool {
        if !self.sessions.contains_key(call_id) {
            return false;
        }
        self.cut(now, call_id, CutReason::CreditExhausted);
        true
    }

    /// The account was topped up: its denied (or billing-waiting) prepaid calls ask for a new
    /// slice now. Returns how many asked.
    pub fn topup(&mut self, now: Instant, account: &str) -> usize {
        let mut n = 0;
        for id in self.calls_of(account) {
            let retry = self.sessions.get(&id).is_some_and(|s| {
                s.mode == Mode::Prepaid && matches!(s.phase, Phase::Denied | Phase::Waiting)
            });
            if retry {
                n += 1;
                self.request_next(now, &id);
                self.service(now, &id);
            }
        }
        n
    }

    /// The account is blocked: its calls are cut now and new ones refused until
    /// [`CreditControl::unblock`]. Returns how many calls were cut.
    pub fn block(&mut self, now: Instant, account: &str) -> usize {
        self.blocked.insert(account.to_string());
        let ids = self.calls_of(account);
        for id in &ids {
            self.cut(now, id, CutReason::AccountBlocked);
        }
        ids.len()
    }

    /// New calls of the account are accepted again.
    pub fn unblock(&mut self, account: &str) {
        self.blocked.remove(account);
    }

    /// The call ended for another reason: emits the final [`Usage`], releases the reservation
    /// and returns the charge (None if the call is unknown, e.g. already cut). Feed the final
    /// byte counters with [`CreditControl::on_usage`] first.
    pub fn end(&mut self, now: Instant, call_id: &str) -> Option<Money> {
        let s = self.close(call_id)?;
        Some(self.final_report(s, now))
    }

    /// Tells whether the billing backend is reachable. Going down starts an outage (for the
    /// fail-open budget); coming back ends it and calls on provisional credit, or waiting for
    /// billing, ask for a real slice at once.
    pub fn set_connected(&mut self, now: Instant, connected: bool) {
        if connected == self.connected {
            return;
        }
        self.connected = connected;
        if !connected {
            self.outage_since.get_or_insert(now);
            self.counters.outages += 1;
            tracing::warn!(policy = ?self.cfg.unreachable, "billing backend disconnected");
            return;
        }
        self.outage_since = None;
        tracing::info!("billing backend reconnected");
        let ids: Vec<String> = self
            .sessions
            .values()
            .filter(|s| {
                s.mode == Mode::Prepaid
                    && (matches!(s.phase, Phase::Waiting)
                        || (matches!(s.phase, Phase::Idle) && s.provisional))
            })
            .map(|s| s.call_id.clone())
            .collect();
        for id in ids {
            self.request_next(now, &id);
            self.service(now, &id);
        }
    }

    fn calls_of(&self, account: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.account == account)
            .map(|s| s.call_id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Removes an outstanding request, returning its call; counts unknown ones as stale.
    fn take_request(&mut self, request_id: RequestId) -> Option<(String, Pending)> {
        let Some(id) = self.requests.remove(&request_id) else {
            self.counters.stale_answers += 1;
            return None;
        };
        let s = self.sessions.get_mut(&id)?;
        match std::mem::replace(&mut s.phase, Phase::Idle) {
            Phase::Pending(p) if p.id == request_id => Some((id, p)),
            other => {
                s.phase = other;
                self.counters.stale_answers += 1;
                None
            }
        }
    }

    /// Asks for the next slice (with a usage report if anything was granted before), or
    /// applies the unreachable policy when the backend is disconnected.
    fn request_next(&mut self, now: Instant, id: &str) {
        if !self.connected {
            self.unreachable(now, id);
            return;
        }
        let slice = u64::from(self.cfg.slice_seconds);
        let timeout = self.cfg.request_timeout;
        let request_id = RequestId(self.next_request);
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        self.next_request += 1;
        let initial = !s.granted_any;
        if !initial {
            let usage = interim_report(s, now);
            self.events.push_back(CreditEvent::Usage(usage));
        }
        let bytes = if s.metered() { self.cfg.slice_bytes } else { 0 };
        let amount = s.marginal(slice, bytes);
        // A deadline beyond what Instant can represent: the request never times out.
        let deadline = now.checked_add(timeout).unwrap_or(now);
        s.phase = Phase::Pending(Pending {
            id: request_id,
            seconds: slice,
            bytes,
            amount,
            deadline,
        });
        self.requests.insert(request_id, id.to_string());
        self.counters.reserves_sent += 1;
        self.events.push_back(CreditEvent::Reserve(Reserve {
            call_id: s.call_id.clone(),
            account: s.account.clone(),
            request_id,
            seconds: slice,
            bytes,
            amount,
            initial,
        }));
    }

    /// No answer can be had: a provisional slice under fail-open (within its budget), or wait.
    fn unreachable(&mut self, now: Instant, id: &str) {
        let since = *self.outage_since.get_or_insert(now);
        let slice = Duration::from_secs(u64::from(self.cfg.slice_seconds));
        let slice_bytes = self.cfg.slice_bytes;
        let policy = self.cfg.unreachable;
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        if let UnreachablePolicy::FailOpen { max } = policy {
            // Calls may run on provisional credit until `since + max`, never beyond.
            let cap = since
                .checked_add(max)
                .map_or(Duration::MAX, |c| c.saturating_duration_since(s.answered));
            let new_horizon = s.horizon.saturating_add(slice).min(cap);
            if new_horizon > s.horizon.max(s.elapsed(now)) {
                let added = new_horizon - s.horizon;
                s.last_slice = added;
                s.horizon = new_horizon;
                if s.metered() {
                    s.horizon_bytes = s.horizon_bytes.saturating_add(slice_bytes);
                    s.last_slice_bytes = slice_bytes;
                }
                s.granted_any = true;
                s.provisional = true;
                s.phase = Phase::Idle;
                self.counters.provisional_grants += 1;
                self.counters.provisional_ms = self
                    .counters
                    .provisional_ms
                    .saturating_add(u64::try_from(added.as_millis()).unwrap_or(u64::MAX));
                tracing::warn!(
                    call = %s.call_id, account = %s.account, granted_ms = added.as_millis(),
                    "billing unreachable: provisional slice (fail open)"
                );
                return;
            }
        }
        s.phase = Phase::Waiting;
        self.counters.unreachable_holds += 1;
        tracing::warn!(
            call = %s.call_id, account = %s.account, policy = ?policy,
            remaining_ms = s.horizon.saturating_sub(s.elapsed(now)).as_millis(),
            "billing unreachable: no further slice, the call ends when its credit does"
        );
    }

    /// Brings one call up to date at `now`: request timeouts, renewals, cuts; then re-arms its
    /// timer.
    fn service(&mut self, now: Instant, id: &str) {
        let pct = self.cfg.renew_at_percent;
        // Each step moves the call forward (a request goes out, a policy applies, the call is
        // cut), so a few rounds always settle; the bound is a guard, not a limit in practice.
        for _ in 0..8 {
            let Some(s) = self.sessions.get(id) else {
                return;
            };
            if s.mode == Mode::Postpaid {
                break;
            }
            let elapsed = s.elapsed(now);
            let time_up = s.granted_any && elapsed >= s.horizon;
            let bytes_up = s.granted_any && s.metered() && s.bytes >= s.horizon_bytes;
            let step = match &s.phase {
                Phase::Pending(p) => {
                    let timed_out = now >= p.deadline;
                    if timed_out || time_up {
                        Step::Unanswered(p.id, timed_out)
                    } else {
                        Step::Settled
                    }
                }
                Phase::Idle if time_up => Step::Cut(if s.provisional {
                    CutReason::BillingUnavailable
                } else {
                    CutReason::CreditExhausted
                }),
                Phase::Idle
                    if elapsed >= s.renew_point(pct)
                        || (s.metered() && s.bytes >= s.renew_bytes(pct)) =>
                {
                    Step::Renew
                }
                Phase::Idle => Step::Settled,
                Phase::Denied | Phase::Waiting if time_up || bytes_up || !s.granted_any => {
                    Step::Cut(if matches!(s.phase, Phase::Denied) {
                        CutReason::CreditExhausted
                    } else {
                        CutReason::BillingUnavailable
                    })
                }
                Phase::Denied | Phase::Waiting => Step::Settled,
            };
            match step {
                Step::Settled => break,
                Step::Unanswered(request_id, timed_out) => {
                    if self.take_request(request_id).is_none() {
                        break;
                    }
                    if timed_out {
                        self.counters.request_timeouts += 1;
                    } else {
                        self.counters.unanswered_at_slice_end += 1;
                    }
                    self.unreachable(now, id);
                }
                Step::Renew => self.request_next(now, id),
                Step::Cut(reason) => {
                    self.cut(now, id, reason);
                    return;
                }
            }
        }
        self.rearm(id);
    }

    /// Recomputes a call's next deadline in the timer index.
    fn rearm(&mut self, id: &str) {
        let pct = self.cfg.renew_at_percent;
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        let at = |d: Duration| s.answered.checked_add(d);
        let next = match (&s.mode, &s.phase) {
            (Mode::Postpaid, _) => None,
            (_, Phase::Pending(p)) if !s.granted_any => Some(p.deadline),
            (_, Phase::Pending(p)) => Some(at(s.horizon).map_or(p.deadline, |h| h.min(p.deadline))),
            (_, Phase::Idle) => at(s.renew_point(pct)),
            (_, Phase::Denied | Phase::Waiting) => at(s.horizon),
        };
        if s.timer == next {
            return;
        }
        if let Some(old) = s.timer.take() {
            self.timers.remove(&(old, id.to_string()));
        }
        if let Some(t) = next {
            self.timers.insert((t, id.to_string()));
        }
        s.timer = next;
    }

    /// Removes a call (its timer and outstanding request included).
    fn close(&mut self, id: &str) -> Option<Session> {
        let s = self.sessions.remove(id)?;
        if let Some(t) = s.timer {
            self.timers.remove(&(t, id.to_string()));
        }
        if let Phase::Pending(p) = &s.phase {
            self.requests.remove(&p.id);
        }
        self.counters.sessions_closed += 1;
        Some(s)
    }

    fn cut(&mut self, now: Instant, id: &str, reason: CutReason) {
        let Some(s) = self.close(id) else {
            return;
        };
        match reason {
            CutReason::CreditExhausted => self.counters.cuts_credit_exhausted += 1,
            CutReason::AccountBlocked => self.counters.cuts_account_blocked += 1,
            CutReason::BillingUnavailable => self.counters.cuts_billing_unavailable += 1,
        }
        tracing::info!(call = %s.call_id, account = %s.account, %reason, "credit control cuts the call");
        let charge = s.charge_at(s.elapsed(now));
        self.events.push_back(CreditEvent::Cut(Cut {
            call_id: s.call_id.clone(),
            account: s.account.clone(),
            reason,
            charge,
        }));
        self.final_report(s, now);
    }

    fn final_report(&mut self, mut s: Session, now: Instant) -> Money {
        let usage = report(&mut s, now, true);
        let charge = usage.charge;
        self.events.push_back(CreditEvent::Usage(usage));
        charge
    }
}

fn interim_report(s: &mut Session, now: Instant) -> Usage {
    report(s, now, false)
}

/// Usage since the last report, and the bookkeeping of what was reported and released.
fn report(s: &mut Session, now: Instant, is_final: bool) -> Usage {
    let (t, b) = s.billable(s.elapsed(now));
    let charge = s.charge_at(s.elapsed(now)).max(s.reported);
    let secs = ceil_secs(t);
    let amount = charge - s.reported;
    let released = if is_final {
        s.outstanding()
    } else {
        amount.min(s.outstanding())
    };
    let usage = Usage {
        call_id: s.call_id.clone(),
        account: s.account.clone(),
        mode: s.mode,
        seconds: secs.saturating_sub(s.reported_secs),
        bytes: b.saturating_sub(s.reported_bytes),
        amount,
        released,
        charge,
        is_final,
    };
    s.reported = charge;
    s.reported_secs = s.reported_secs.max(secs);
    s.reported_bytes = s.reported_bytes.max(b);
    s.released += released;
    usage
}

#[cfg(test)]
#[path = "credit_tests.rs"]
mod tests;
