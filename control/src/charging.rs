//! Charging: credit control, the ledger and the fraud guard between the session engine and the
//! daemon. The engine knows nothing of money; this layer watches its CDR events (a call is
//! answered → a credit session opens; a call ends → the session closes and the CDR gets its
//! charge) and tells the daemon which calls to cut, at the exact instant credit runs out.
//!
//! Sans-IO like the engine (time comes in; the ledger is the only storage), so the whole chain
//! — engine, charging, an in-memory ledger — runs in virtual time in tests.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Instant,
};

use crate::{
    billing::{
        Account, AccountSpec, Ledger, LedgerError, Money, Tariff, TariffSpec,
        auth::{AuthError, NonceCache, TicketClaims, Verifier},
        credit::{CreditConfig, CreditControl, CreditError, CreditEvent, OpenCall},
        embedded,
        fraud::{FraudConfig, FraudGuard, Verdict},
    },
    engine::{Cdr, EndReason, EngineEvent, Timestamp},
    ngserver::Admission,
};

/// Charging settings.
#[derive(Clone, Debug, Default)]
pub struct ChargingConfig {
    /// Account of calls that name none (ng `account`); None: such calls are not charged.
    pub default_account: Option<String>,
    /// Slices, renewal, unreachable policy.
    pub credit: CreditConfig,
    /// Call-rate limits and media-after-BYE detection.
    pub fraud: FraudConfig,
    /// When set, an offer creating a call must carry a valid authorization token.
    pub verifier: Option<Verifier>,
    /// Credit decisions come from an external billing system over the event channel
    /// ([`Charging::take_outbox`]) instead of the embedded ledger.
    pub external: bool,
    /// Verifies the signed tickets of mid-call services (None: services are refused).
    pub ticket_verifier: Option<Verifier>,
}

/// Ticket nonces remembered at most (live tickets; expired ones make room).
const MAX_NONCES: usize = 100_000;

/// What an external billing system must be told (sent over the event channel by the daemon).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BillingOut {
    /// Ask for a slice (RESERVE); answer with [`Charging::on_grant`].
    Reserve(crate::billing::credit::Reserve),
    /// Report usage (USAGE), at each renewal and at the end.
    Usage(crate::billing::credit::Usage),
}

/// Errors of the operator operations (HTTP API).
#[derive(Debug, thiserror::Error)]
pub enum ChargingError {
    /// The ledger refused or failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The tariff is invalid.
    #[error("invalid tariff: {0}")]
    Tariff(String),
    /// The configuration is invalid.
    #[error("invalid billing configuration: {0}")]
    Config(String),
}

/// Credit control, ledger and their bookkeeping for the live calls.
pub struct Charging {
    credit: CreditControl,
    ledger: Box<dyn Ledger>,
    default_account: Option<String>,
    /// Calls with an open credit session, and their accounts.
    open: HashMap<String, String>,
    /// Final charges of calls whose session closed before the engine ended them (a cut).
    charges: HashMap<String, Money>,
    /// Calls to end, with why.
    cuts: Vec<(String, EndReason)>,
    /// Calls charged but refused at answer (no such account, blocked): end them.
    refused: HashSet<String>,
    fraud: FraudGuard,
    verifier: Option<Verifier>,
    /// Fraud-guard flags of live calls, and where they came from (for media after BYE).
    flags: HashMap<String, (Vec<String>, Option<IpAddr>)>,
    /// CDRs of ended calls until their release, to re-write them with late findings.
    ended: HashMap<String, Cdr>,
    external: bool,
    outbox: Vec<BillingOut>,
    ticket_verifier: Option<Verifier>,
    nonces: NonceCache,
    /// Services the authorization token of a call allows (calls set up with a token).
    allowed: HashMap<String, Vec<String>>,
    /// External billing: RESERVE requests in flight, by id, and their calls.
    requests: HashMap<crate::billing::credit::RequestId, String>,
    /// External billing: what the billing system granted each live call, in total.
    granted: HashMap<String, Money>,
    /// External billing: a call's final charge as the billing system confirmed it (CHARGED).
    confirmed: HashMap<String, Money>,
    /// Services applied, for the event channel.
    service_events: Vec<serde_json::Value>,
    /// Service requests by outcome (`applied`, or the refusal's code) and service.
    service_counts: std::collections::BTreeMap<(String, &'static str), u64>,
}

impl Charging {
    /// A charging layer over `ledger`.
    pub fn new(cfg: ChargingConfig, ledger: Box<dyn Ledger>) -> Result<Self, ChargingError> {
        Ok(Self {
            fraud: FraudGuard::new(cfg.fraud).map_err(|e| ChargingError::Config(e.to_string()))?,
            verifier: cfg.verifier,
            flags: HashMap::new(),
            ended: HashMap::new(),
            external: cfg.external,
            outbox: Vec::new(),
            ticket_verifier: cfg.ticket_verifier,
            nonces: NonceCache::new(MAX_NONCES),
            allowed: HashMap::new(),
            requests: HashMap::new(),
            granted: HashMap::new(),
            confirmed: HashMap::new(),
            service_events: Vec::new(),
            service_counts: std::collections::BTreeMap::new(),
            credit: CreditControl::new(cfg.credit)
                .map_err(|e: CreditError| ChargingError::Config(e.to_string()))?,
            ledger,
            default_account: cfg.default_account,
            open: HashMap::new(),
            charges: HashMap::new(),
            cuts: Vec::new(),
            refused: HashSet::new(),
        })
    }

    /// The credit control (counters, sessions).
    pub fn credit(&self) -> &CreditControl {
        &self.credit
    }

    /// When [`Charging::handle_timeout`] must run next (a slice end is a cut deadline).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.credit.poll_timeout()
    }

    /// Timer expiries: renewals and cuts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.credit.handle_timeout(now);
        self.serve(now);
    }

    /// Calls to end now (credit exhausted, account blocked), with their end reasons.
    pub fn take_cuts(&mut self) -> Vec<(String, EndReason)> {
        std::mem::take(&mut self.cuts)
    }

    /// Calls with a credit session (the daemon feeds their byte counts).
    pub fn metered_calls(&self) -> impl Iterator<Item = &str> {
        self.open.keys().map(String::as_str)
    }

    /// Bytes a call has carried so far (both directions), for volume tariffs and renewals.
    pub fn on_usage(&mut self, now: Instant, call_id: &str, total_bytes: u64) {
        self.credit.on_usage(now, call_id, total_bytes);
        self.serve(now);
    }

    /// An engine event on its way to the CDR writer: opens or closes the call's credit session,
    /// and fills the CDR's charge and flags. Returns the CDR row to write, if any (a release can
    /// re-write an ended call's row with a late finding: media after BYE).
    pub fn on_engine_event(&mut self, now: Instant, ev: EngineEvent) -> Option<Cdr> {
        match ev {
            EngineEvent::CdrOpened(mut cdr) => {
                if let Some(account) = cdr.account.clone().or_else(|| self.default_account.clone())
                {
                    self.open_session(now, &cdr.call_id, &account);
                }
                if let Some((f, _)) = self.flags.get(&cdr.call_id) {
                    cdr.flags = f.clone();
                }
                Some(cdr)
            }
            EngineEvent::CdrClosed(mut cdr) => {
                let charge = if self.open.remove(&cdr.call_id).is_some() {
                    let c = self.credit.end(now, &cdr.call_id);
                    self.serve(now);
                    c
                } else {
                    None
                };
                let charge = charge.or_else(|| self.charges.remove(&cdr.call_id));
                // With an external billing system, the charge is what it confirmed (CHARGED),
                // else what it granted; never the local tariff's estimate.
                let charge = if self.external {
                    self.charges.remove(&cdr.call_id);
                    let granted = self.granted.remove(&cdr.call_id);
                    self.confirmed.remove(&cdr.call_id).or(granted)
                } else {
                    charge
                };
                self.refused.remove(&cdr.call_id);
                self.allowed.remove(&cdr.call_id);
                if cdr.account.is_none() && charge.is_some() {
                    cdr.account = self.default_account.clone();
                }
                cdr.charge = charge.map(|m| m.0);
                if let Some((f, _)) = self.flags.get(&cdr.call_id) {
                    cdr.flags = f.clone();
                }
                self.ended.insert(cdr.call_id.clone(), cdr.clone());
                Some(cdr)
            }
            EngineEvent::Released {
                call_id,
                packets_after_end,
            } => {
                let (mut flags, source) = self.flags.remove(&call_id).unwrap_or_default();
                let mut cdr = self.ended.remove(&call_id)?;
                let verdict = self.fraud.media_after_end(
                    now,
                    &call_id,
                    source,
                    cdr.account.as_deref(),
                    packets_after_end,
                );
                let finding = match verdict {
                    Verdict::Allow => return None,
                    Verdict::Flag(f) | Verdict::Block(f) => f.as_str().to_string(),
                };
                tracing::warn!(
                    call = call_id,
                    packets_after_end,
                    "media kept arriving after the call ended"
                );
                if !flags.contains(&finding) {
                    flags.push(finding);
                }
                cdr.flags = flags;
                Some(cdr)
            }
        }
    }

    fn open_session(&mut self, now: Instant, call_id: &str, account: &str) {
        let opened = self.ledger.account(account).and_then(|a| {
            let tariff = self.ledger.tariff(&a.tariff)?;
            Ok((a, tariff))
        });
        let (acct, tariff) = match opened {
            Ok(x) => x,
            Err(e) => {
                // Media may flow only while it is paid for: an unknown account ends the call.
                tracing::warn!(call = call_id, account, error = %e, "call cannot be charged; ending it");
                self.refused.insert(call_id.to_string());
                self.cuts
                    .push((call_id.to_string(), EndReason::CreditExhausted));
                return;
            }
        };
        match self.credit.open(
            now,
            OpenCall {
                call_id: call_id.to_string(),
                account: account.to_string(),
                tariff,
                mode: acct.mode,
            },
        ) {
            Ok(()) => {
                self.open.insert(call_id.to_string(), account.to_string());
            }
            Err(e) => {
                tracing::warn!(call = call_id, account, error = %e, "credit session refused; ending the call");
                let reason = if acct.blocked {
                    EndReason::Operator
                } else {
                    EndReason::CreditExhausted
                };
                self.cuts.push((call_id.to_string(), reason));
            }
        }
        self.serve(now);
    }

    /// Answers credit control's reservations from the ledger and settles its usage reports
    /// (or, with an external billing system, queues them for it); collects cuts and final
    /// charges.
    fn serve(&mut self, now: Instant) {
        let events = if self.external {
            let mut v = Vec::new();
            while let Some(ev) = self.credit.poll_event() {
                match &ev {
                    CreditEvent::Reserve(r) => {
                        self.requests.insert(r.request_id, r.call_id.clone());
                        self.outbox.push(BillingOut::Reserve(r.clone()));
                    }
                    CreditEvent::Usage(u) => self.outbox.push(BillingOut::Usage(u.clone())),
                    CreditEvent::Cut(_) => {}
                }
                v.push(ev);
            }
            v
        } else {
            let served = embedded::serve(&mut self.credit, self.ledger.as_mut(), now);
            for e in served.errors {
                tracing::error!(error = ?e, "ledger operation failed");
            }
            served.events
        };
        for ev in events {
            match ev {
                CreditEvent::Cut(c) => {
                    tracing::info!(call = %c.call_id, account = %c.account, reason = %c.reason, "cutting the call");
                    self.open.remove(&c.call_id);
                    self.cuts.push((c.call_id, c.reason.end_reason()));
                }
                CreditEvent::Usage(u) if u.is_final => {
                    self.open.remove(&u.call_id);
                    self.charges.insert(u.call_id, u.charge);
                }
                _ => {}
            }
        }
    }

    /// Messages for the external billing system, in order.
    pub fn take_outbox(&mut self) -> Vec<BillingOut> {
        std::mem::take(&mut self.outbox)
    }

    /// The external billing system answered a RESERVE.
    pub fn on_grant(
        &mut self,
        now: Instant,
        request: crate::billing::credit::RequestId,
        answer: crate::billing::credit::GrantAnswer,
    ) {
        let call = self.requests.remove(&request);
        let amount = match &answer {
            crate::billing::credit::GrantAnswer::Granted(g) if g.seconds > 0 => g.amount,
            _ => Money::ZERO,
        };
        if self.credit.on_grant(now, request, answer)
            && let Some(call) = call
            && amount > Money::ZERO
        {
            *self.granted.entry(call).or_insert(Money::ZERO) += amount;
        }
        self.serve(now);
    }

    /// The external billing system confirmed a call's final charge (`CHARGED`). Before the
    /// call's CDR is closed it becomes its `charge`; after, the CDR is returned re-written
    /// with it (to store again), as long as the call is not yet released.
    pub fn external_charged(&mut self, call_id: &str, charge: Money) -> Option<Cdr> {
        if let Some(cdr) = self.ended.get_mut(call_id) {
            cdr.charge = Some(charge.0);
            return Some(cdr.clone());
        }
        self.confirmed.insert(call_id.to_string(), charge);
        None
    }

    /// What the external billing system has granted a live call so far.
    pub fn granted(&self, call_id: &str) -> Option<Money> {
        self.granted.get(call_id).copied()
    }

    /// A RESERVE got no answer (the session closed, the request was refused).
    pub fn on_request_failed(&mut self, now: Instant, request: crate::billing::credit::RequestId) {
        self.requests.remove(&request);
        self.credit.on_request_failed(now, request);
        self.serve(now);
    }

    /// Whether the external billing system is reachable (its unreachable policy applies
    /// otherwise).
    pub fn set_billing_connected(&mut self, now: Instant, connected: bool) {
        self.credit.set_connected(now, connected);
        self.serve(now);
    }

    /// The billing system says an account (or one call) has no credit left: cut now.
    pub fn exhausted(
        &mut self,
        now: Instant,
        account: Option<&str>,
        call_id: Option<&str>,
    ) -> usize {
        let n = match (account, call_id) {
            (_, Some(call)) => usize::from(self.credit.exhausted_call(now, call)),
            (Some(acct), None) => self.credit.exhausted(now, acct),
            (None, None) => 0,
        };
        self.serve(now);
        n
    }

    /// The billing system topped an account up: waiting calls ask again.
    pub fn external_topup(&mut self, now: Instant, account: &str) -> usize {
        let n = self.credit.topup(now, account);
        self.serve(now);
        n
    }

    /// The billing system blocked an account: its calls are cut.
    pub fn external_block(&mut self, now: Instant, account: &str) -> usize {
        let n = self.credit.block(now, account);
        self.serve(now);
        n
    }

    /// Creates or replaces a tariff.
    pub fn put_tariff(&mut self, id: &str, spec: &TariffSpec) -> Result<Tariff, ChargingError> {
        let t = Tariff::from_spec(id, spec).map_err(|e| ChargingError::Tariff(e.to_string()))?;
        self.ledger.put_tariff(&t)?;
        Ok(t)
    }

    /// Creates or updates an account.
    pub fn put_account(&mut self, id: &str, spec: &AccountSpec) -> Result<Account, ChargingError> {
        Ok(self.ledger.put_account(id, spec)?)
    }

    /// An account as the ledger has it.
    pub fn account(&mut self, id: &str) -> Result<Account, ChargingError> {
        Ok(self.ledger.account(id)?)
    }

    /// Adds credit; calls of the account waiting for a slice ask again.
    pub fn topup(
        &mut self,
        now: Instant,
        id: &str,
        amount: Money,
    ) -> Result<Account, ChargingError> {
        self.ledger.topup(id, amount)?;
        self.credit.topup(now, id);
        self.serve(now);
        Ok(self.ledger.account(id)?)
    }

    /// Blocks an account: its calls are cut now, and no new call of it gets credit.
    pub fn block(&mut self, now: Instant, id: &str) -> Result<Account, ChargingError> {
        let a = self.ledger.block(id)?;
        self.credit.block(now, id);
        self.serve(now);
        Ok(a)
    }

    /// The fraud guard (blocks, counters).
    pub fn fraud(&self) -> &FraudGuard {
        &self.fraud
    }

    /// The account of calls that name none.
    pub fn default_account(&self) -> Option<&str> {
        self.default_account.as_deref()
    }

    /// Whether service tickets can be verified (keys configured).
    pub fn accepts_tickets(&self) -> bool {
        self.ticket_verifier.is_some()
    }

    /// Verifies a service ticket for `call_id` billed to `account` at `now`: signature,
    /// expiry, call, account, and (calls set up with an authorization token) that the token
    /// allows the service. Does not consume it (see [`Charging::claim_ticket`]).
    pub fn verify_ticket(
        &self,
        now: Timestamp,
        call_id: &str,
        account: &str,
        ticket: &str,
    ) -> Result<TicketClaims, AuthError> {
        let v = self.ticket_verifier.as_ref().ok_or(AuthError::NoKeys)?;
        let now_unix = u64::try_from(now.unix_ms / 1000).unwrap_or(0);
        v.verify_ticket(
            ticket,
            now_unix,
            call_id,
            account,
            self.allowed.get(call_id).map(Vec::as_slice),
        )
    }

    /// Marks a verified ticket used: the same ticket (nonce) is refused until it expires.
    pub fn claim_ticket(&mut self, now: Timestamp, claims: &TicketClaims) -> Result<(), AuthError> {
        let now_unix = u64::try_from(now.unix_ms / 1000).unwrap_or(0);
        self.nonces.check(&claims.nonce, claims.exp, now_unix)
    }

    /// Makes a claimed ticket usable again (its service could not be applied).
    pub fn unclaim_ticket(&mut self, claims: &TicketClaims) {
        self.nonces.forget(&claims.nonce);
    }

    /// Takes one usage token from `account` for a service inserted into `call_id`; returns
    /// how many are left.
    pub fn take_token(&mut self, account: &str, call_id: &str) -> Result<u32, LedgerError> {
        self.ledger.take_token(account, Some(call_id))
    }

    /// Records a service applied (its JSON), for the event channel.
    pub fn push_service_event(&mut self, ev: serde_json::Value) {
        self.service_events.push(ev);
    }

    /// Counts a service request: `service` (or `unknown` before the ticket was read) and its
    /// outcome (`applied`, or the refusal's code).
    pub fn count_service(&mut self, service: &str, outcome: &'static str) {
        *self
            .service_counts
            .entry((service.to_string(), outcome))
            .or_default() += 1;
    }

    /// Service requests so far, by (service, outcome).
    pub fn service_counts(&self) -> impl Iterator<Item = (&(String, &'static str), &u64)> {
        self.service_counts.iter()
    }

    /// Services applied since the last call, oldest first.
    pub fn take_service_events(&mut self) -> Vec<serde_json::Value> {
        std::mem::take(&mut self.service_events)
    }

    /// Gives back a token taken for a service that could not be applied.
    pub fn refund_token(&mut self, account: &str) -> Result<u32, LedgerError> {
        self.ledger.add_tokens(account, 1)
    }

    /// Adds usage tokens to an account (operator API).
    pub fn add_tokens(&mut self, id: &str, n: u32) -> Result<Account, ChargingError> {
        self.ledger.add_tokens(id, n)?;
        Ok(self.ledger.account(id)?)
    }

    /// What a call has reserved right now (for the live-call view).
    pub fn reserved(&self, call_id: &str, now: Instant) -> Option<Money> {
        self.credit.session(call_id, now).map(|s| s.reserved)
    }
}

impl Admission for Charging {
    fn insert_service(
        &mut self,
        now: Timestamp,
        engine: &mut dyn crate::engine::service::ServiceTarget,
        call_id: &str,
        req: &crate::services::ServiceRequest,
    ) -> Result<crate::services::ServiceOutcome, crate::services::ServiceError> {
        crate::services::handle_service(now, engine, self, call_id, req)
    }

    fn admit(
        &mut self,
        now: Timestamp,
        call_id: &str,
        source: Option<IpAddr>,
        account: Option<&str>,
        token: Option<&str>,
    ) -> Result<Option<String>, String> {
        let mut account = account.map(str::to_string);
        if let Some(v) = &self.verifier {
            let token = token.ok_or("an authorization token (auth-token) is required")?;
            let now_unix = u64::try_from(now.unix_ms / 1000).unwrap_or(0);
            let claims = v
                .verify_token(token, now_unix, account.as_deref(), None)
                .map_err(|e| format!("authorization: {e}"))?;
            account = Some(claims.account);
            self.allowed.insert(call_id.to_string(), claims.services);
        }
        let mut flags = Vec::new();
        match self
            .fraud
            .check_new_call(now.mono, source, account.as_deref())
        {
            Verdict::Allow => {}
            Verdict::Flag(f) => flags.push(f.as_str().to_string()),
            Verdict::Block(f) => return Err(format!("fraud guard: {}", f.as_str())),
        }
        self.flags.insert(call_id.to_string(), (flags, source));
        Ok(account)
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use rtpedge_dataplane::{Counter, FakeDataplane, Verdict};

    use super::*;
    use crate::{
        billing::{MemoryLedger, Mode},
        engine::{Engine, EngineConfig, FakeMedia, MediaDesc, Timestamp},
        test_support,
    };

    /// An audio stream that names no codec.
    fn audio(rtp: &str) -> MediaDesc {
        MediaDesc {
            codec: None,
            ..test_support::audio(rtp)
        }
    }

    struct World {
        engine: Engine<FakeMedia, FakeDataplane>,
        charging: Charging,
        now: Timestamp,
        cdrs: Vec<crate::engine::Cdr>,
    }

    impl World {
        /// 60/min (1 per second), 1 s increments, no fee, prepaid, 30 s slices.
        fn new(balance: i64) -> Self {
            let ledger = test_support::ledger_t1(60, &[("acme", balance, Mode::Prepaid)]);
            let charging = Charging::new(
                ChargingConfig {
                    fraud: test_support::no_call_rate_limit(),
                    ..ChargingConfig::default()
                },
                Box::new(ledger),
            )
            .unwrap();
            World {
                engine: test_support::fake_engine(EngineConfig::default()),
                charging,
                now: Timestamp::now(),
                cdrs: Vec::new(),
            }
        }

        /// Offers and answers a call billed to `acme`; returns the caller-facing leg.
        fn call(&mut self, id: &str) -> SocketAddr {
            let (caller_leg, _) = test_support::offer_answer(
                &mut self.engine,
                self.now,
                id,
                Some("acme"),
                audio("192.0.2.10:4000"),
                audio("198.51.100.20:5000"),
            );
            self.pump();
            caller_leg
        }

        /// What the daemon's loop does: engine events through charging, cuts into the engine.
        fn pump(&mut self) {
            loop {
                while let Some(ev) = self.engine.poll_event() {
                    if let Some(c) = self.charging.on_engine_event(self.now.mono, ev)
                        && c.end_at.is_some()
                    {
                        self.cdrs.retain(|x| x.call_id != c.call_id);
                        self.cdrs.push(c);
                    }
                }
                let cuts = self.charging.take_cuts();
                if cuts.is_empty() {
                    break;
                }
                for (call, reason) in cuts {
                    let _ = self.engine.end_call(self.now, &call, reason);
                }
            }
        }

        fn advance_to(&mut self, at: Instant) {
            let d = at.saturating_duration_since(self.now.mono);
            self.now = self.now.plus(d);
            self.engine.dataplane_mut().advance(d);
            if self
                .charging
                .poll_timeout()
                .is_some_and(|t| t <= self.now.mono)
            {
                self.charging.handle_timeout(self.now.mono);
            }
            self.pump();
        }

        fn media_passes(&mut self, leg: SocketAddr) -> bool {
            matches!(
                self.engine
                    .dataplane_mut()
                    .deliver("192.0.2.10:4000".parse().unwrap(), leg, 214),
                Verdict::Pass(_)
            )
        }
    }

    #[test]
    fn media_stops_at_the_instant_credit_runs_out_and_the_cdr_carries_the_charge() {
        // 45 units = 45 seconds of talk.
        let mut w = World::new(45);
        let answered = w.now.mono;
        let leg = w.call("c1");
        assert!(w.media_passes(leg));
        // Follow the deadlines the charging layer announces, as the daemon does.
        while let Some(t) = w.charging.poll_timeout() {
            if w.engine.active_calls() == 0 || t > answered + Duration::from_secs(120) {
                break;
            }
            w.advance_to(t);
            if w.engine.active_calls() == 0 {
                break;
            }
            assert!(w.media_passes(leg), "media flows while paid for");
        }
        assert_eq!(w.engine.active_calls(), 0, "the call was cut");
        assert_eq!(
            w.now.mono - answered,
            Duration::from_secs(45),
            "cut exactly when 45 s were used"
        );
        assert_eq!(
            w.engine
                .dataplane_mut()
                .deliver("192.0.2.10:4000".parse().unwrap(), leg, 214),
            Verdict::Drop(Counter::Closed),
            "no media after the cut"
        );
        let cdr = &w.cdrs[0];
        assert_eq!(cdr.end_reason, Some(EndReason::CreditExhausted));
        assert_eq!(cdr.charge, Some(45));
        assert_eq!(cdr.duration_ms, 45_000);
        assert_eq!(w.charging.account("acme").unwrap().balance, Money(0));
    }

    #[test]
    fn a_top_up_before_exhaustion_lets_the_call_continue() {
        let mut w = World::new(40);
        let answered = w.now.mono;
        w.call("c1");
        w.advance_to(answered + Duration::from_secs(25));
        w.charging.topup(w.now.mono, "acme", Money(600)).unwrap();
        w.pump();
        // Step through every deadline up to two minutes, as the daemon's loop does.
        while let Some(t) = w.charging.poll_timeout() {
            if t > answered + Duration::from_secs(120) {
                break;
            }
            w.advance_to(t);
        }
        w.advance_to(answered + Duration::from_secs(120));
        assert_eq!(w.engine.active_calls(), 1, "still up at 2 minutes");
        w.engine.delete(w.now, "c1").unwrap();
        w.pump();
        assert_eq!(w.cdrs[0].end_reason, Some(EndReason::Delete));
        assert_eq!(w.cdrs[0].charge, Some(120));
        assert_eq!(
            w.charging.account("acme").unwrap().balance,
            Money(640 - 120)
        );
    }

    #[test]
    fn a_top_up_after_a_partial_grant_extends_the_call() {
        // 3 units buy 3 s of a 30 s slice; the top-up comes before the renewal point.
        let mut w = World::new(3);
        let answered = w.now.mono;
        w.call("c1");
        w.advance_to(answered + Duration::from_millis(1500));
        w.charging.topup(w.now.mono, "acme", Money(100)).unwrap();
        w.pump();
        while let Some(t) = w.charging.poll_timeout() {
            if t > answered + Duration::from_secs(10) {
                break;
            }
            w.advance_to(t);
        }
        w.advance_to(answered + Duration::from_secs(10));
        assert_eq!(w.engine.active_calls(), 1, "still up at 10 s: {:?}", w.cdrs);
    }

    #[test]
    fn admission_checks_tokens_and_the_call_rate() {
        use crate::billing::{
            auth::Signer,
            fraud::{CallRateLimit, FraudAction},
        };
        let signer = Signer::from_seed([7u8; 32]);
        let mut c = Charging::new(
            ChargingConfig {
                fraud: FraudConfig {
                    call_rate: Some(CallRateLimit {
                        calls: 1,
                        per: Duration::from_secs(1),
                        burst: 2,
                    }),
                    on_call_rate: FraudAction::Block,
                    ..FraudConfig::default()
                },
                verifier: Some(Verifier::from_key_texts([signer.public_key_hex()]).unwrap()),
                ..ChargingConfig::default()
            },
            Box::new(MemoryLedger::new()),
        )
        .unwrap();
        let now = Timestamp::now();
        let unix = u64::try_from(now.unix_ms / 1000).unwrap();
        let src: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        assert!(
            c.admit(now, "c0", src, None, None)
                .unwrap_err()
                .contains("token")
        );
        assert!(
            c.admit(now, "c0", src, None, Some("garbage"))
                .unwrap_err()
                .contains("authorization")
        );
        let token = signer
            .sign_token(&crate::billing::auth::TokenClaims {
                account: "acme".into(),
                services: vec![],
                exp: unix + 60,
                iat: unix,
                nonce: "n1".into(),
            })
            .unwrap();
        assert_eq!(
            c.admit(now, "c1", src, None, Some(&token)),
            Ok(Some("acme".into()))
        );
        assert!(
            c.admit(now, "c2", src, Some("other"), Some(&token))
                .is_err(),
            "token names another account"
        );
        // Burst of 2 per source and account: the third new call in the same instant is refused.
        assert!(c.admit(now, "c3", src, None, Some(&token)).is_ok());
        assert!(
            c.admit(now, "c4", src, None, Some(&token))
                .unwrap_err()
                .contains("fraud guard")
        );
    }

    #[test]
    fn media_after_bye_rewrites_the_cdr_with_a_flag() {
        let mut w = World::new(1000);
        let leg = w.call("c1");
        w.engine.delete(w.now, "c1").unwrap();
        w.pump();
        assert!(w.cdrs[0].flags.is_empty());
        for _ in 0..60 {
            w.engine
                .dataplane_mut()
                .deliver("192.0.2.10:4000".parse().unwrap(), leg, 214);
        }
        let later = w.now.mono + Duration::from_secs(31);
        w.advance_to(later);
        w.engine.handle_timeout(w.now);
        w.pump();
        assert_eq!(w.cdrs.len(), 1, "the same row, re-written");
        assert_eq!(w.cdrs[0].flags, vec!["media-after-bye".to_string()]);
        assert_eq!(w.cdrs[0].end_reason, Some(EndReason::Delete));
    }

    #[test]
    fn with_external_billing_the_cdr_charge_is_what_the_billing_system_granted_or_charged() {
        use crate::billing::credit::{GrantAnswer, Granted};
        let mut w = World::new(1000);
        w.charging = Charging::new(
            ChargingConfig {
                external: true,
                fraud: test_support::no_call_rate_limit(),
                ..ChargingConfig::default()
            },
            // The account and tariff still come from the ledger; credit does not.
            Box::new(test_support::ledger_t1(60, &[("acme", 0, Mode::Prepaid)])),
        )
        .unwrap();
        w.charging.set_billing_connected(w.now.mono, true);
        let grant = |w: &mut World, amount: i64| {
            let reserve = w
                .charging
                .take_outbox()
                .into_iter()
                .find_map(|o| match o {
                    BillingOut::Reserve(r) => Some(r),
                    BillingOut::Usage(_) => None,
                })
                .expect("a RESERVE");
            w.charging.on_grant(
                w.now.mono,
                reserve.request_id,
                GrantAnswer::Granted(Granted {
                    seconds: 30,
                    bytes: 0,
                    amount: Money(amount),
                }),
            );
        };
        // c1: granted 7 + 5 (a renewal), used 3 s at the local tariff's 1/s: the CDR says 12.
        w.call("c1");
        grant(&mut w, 7);
        let t = w.charging.poll_timeout().expect("renewal deadline");
        w.advance_to(t);
        grant(&mut w, 5);
        assert_eq!(w.charging.granted("c1"), Some(Money(12)));
        w.engine.delete(w.now, "c1").unwrap();
        w.pump();
        assert_eq!(w.cdrs[0].charge, Some(12), "granted, not the local 1/s");
        // The billing system's confirmed charge re-writes the closed CDR.
        let rewritten = w
            .charging
            .external_charged("c1", Money(9))
            .expect("re-written");
        assert_eq!(rewritten.charge, Some(9));
        // c2: confirmed before it ends: the CDR carries it from the start.
        w.call("c2");
        grant(&mut w, 30);
        assert_eq!(w.charging.external_charged("c2", Money(4)), None);
        w.engine.delete(w.now, "c2").unwrap();
        w.pump();
        let c2 = w.cdrs.iter().find(|c| c.call_id == "c2").unwrap();
        assert_eq!(c2.charge, Some(4));
    }

    #[test]
    fn blocking_an_account_cuts_its_calls_at_once() {
        let mut w = World::new(1000);
        let leg = w.call("c1");
        w.charging.block(w.now.mono, "acme").unwrap();
        w.pump();
        assert_eq!(w.engine.active_calls(), 0);
        assert!(!w.media_passes(leg));
        assert_eq!(w.cdrs[0].end_reason, Some(EndReason::Operator));
    }

    #[test]
    fn an_unknown_account_is_not_given_media() {
        let mut w = World::new(1000);
        test_support::offer_answer(
            &mut w.engine,
            w.now,
            "c9",
            Some("nobody"),
            audio("192.0.2.10:4000"),
            audio("198.51.100.20:5000"),
        );
        w.pump();
        assert_eq!(w.engine.active_calls(), 0);
        assert_eq!(w.cdrs[0].end_reason, Some(EndReason::CreditExhausted));
    }
}
