//! Glue between [`CreditControl`] and the embedded [`Ledger`]: answers `Reserve` from the
//! ledger synchronously and settles every `Usage` report. Owns only that mapping; the owner
//! (the engine's driver) still acts on the events it gets back (cuts, CDR charges, the event
//! channel). With an external billing system the owner forwards the events instead.

use std::time::Instant;

use super::{
    Ledger, LedgerError, Money,
    credit::{CreditControl, CreditEvent, DenyReason, GrantAnswer},
};

/// A ledger operation that failed for a call.
#[derive(Debug)]
pub struct EmbeddedError {
    /// The call.
    pub call_id: String,
    /// The account.
    pub account: String,
    /// What the ledger said.
    pub error: LedgerError,
}

/// What [`serve`] did.
#[derive(Debug, Default)]
pub struct Served {
    /// Every event credit control emitted, in order (the `Reserve`s already answered, the
    /// `Usage`s already settled).
    pub events: Vec<CreditEvent>,
    /// Storage failures: a reservation that could not be made (the call's request was reported
    /// failed, so the unreachable policy applied) or a settlement that could not be written
    /// (the CDR still carries the charge).
    pub errors: Vec<EmbeddedError>,
}

/// Drains `credit`'s events against `ledger`:
/// - `Reserve` → `ledger.reserve(account, amount, call_id)`; the granted amount (possibly
///   partial) goes back through [`CreditControl::on_grant_amount`] (and is released at once if
///   the call ended before its request was served); a refusal (insufficient,
///   blocked, unknown account) through [`CreditControl::on_grant`] as a denial; a storage
///   failure through [`CreditControl::on_request_failed`].
/// - `Usage` → `ledger.settle(account, call_id, released, amount)` (skipped when both are 0).
/// - `Cut` → nothing here.
pub fn serve(credit: &mut CreditControl, ledger: &mut dyn Ledger, now: Instant) -> Served {
    let mut served = Served::default();
    while let Some(event) = credit.poll_event() {
        match &event {
            CreditEvent::Reserve(r) => match ledger.reserve(&r.account, r.amount, &r.call_id) {
                Ok(granted) => {
                    // The call ended before its request was served: give the money back.
                    if !credit.on_grant_amount(now, r.request_id, granted)
                        && granted.is_positive()
                        && let Err(error) =
                            ledger.settle(&r.account, &r.call_id, granted, Money::ZERO)
                    {
                        served.errors.push(EmbeddedError {
                            call_id: r.call_id.clone(),
                            account: r.account.clone(),
                            error,
                        });
                    }
                }
                Err(e) if e.is_client_error() => {
                    credit.on_grant(
                        now,
                        r.request_id,
                        GrantAnswer::Denied(DenyReason::from_ledger(&e)),
                    );
                }
                Err(error) => {
                    tracing::error!(call = %r.call_id, account = %r.account, %error,
                        "ledger reservation failed");
                    credit.on_request_failed(now, r.request_id);
                    served.errors.push(EmbeddedError {
                        call_id: r.call_id.clone(),
                        account: r.account.clone(),
                        error,
                    });
                }
            },
            CreditEvent::Usage(u) if u.amount.is_positive() || u.released.is_positive() => {
                if let Err(error) = ledger.settle(&u.account, &u.call_id, u.released, u.amount) {
                    tracing::error!(call = %u.call_id, account = %u.account, %error,
                        amount = %u.amount, "ledger settlement failed");
                    served.errors.push(EmbeddedError {
                        call_id: u.call_id.clone(),
                        account: u.account.clone(),
                        error,
                    });
                }
            }
            CreditEvent::Usage(_) => {}
            CreditEvent::Cut(_) => {}
        }
        served.events.push(event);
    }
    served
}
