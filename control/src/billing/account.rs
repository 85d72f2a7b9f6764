//! Accounts and the balance rules. Owns the arithmetic of reserve, settle, top-up and usage
//! tokens as pure functions on an [`Account`], so the SQLite, PostgreSQL and in-memory ledgers
//! apply exactly the same rules (each backend only loads the row, applies a rule, stores the row
//! and journals the [`Change`] in one transaction). No storage and no time here.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use super::{
    Money,
    ledger::{EntryKind, LedgerError},
};

/// How an account pays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Calls run only on reserved credit and are cut when it runs out.
    #[default]
    Prepaid,
    /// No reservation; calls are rated at the end and debited (the balance may go negative).
    Postpaid,
}

impl Mode {
    /// `prepaid` or `postpaid` (API and database spelling).
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Prepaid => "prepaid",
            Mode::Postpaid => "postpaid",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Mode, LedgerError> {
        match s {
            "prepaid" => Ok(Mode::Prepaid),
            "postpaid" => Ok(Mode::Postpaid),
            other => Err(LedgerError::Corrupt(format!(
                "unknown account mode {other:?}"
            ))),
        }
    }
}

/// An account as the ledger keeps it; serializes to the shape of `GET /v1/accounts/{id}`
/// (`{"id", "balance", "reserved", "tariff", "mode", "blocked", "tokens"}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Account {
    /// Account id.
    pub id: String,
    /// Balance, minor units (what the account owns, including what is reserved).
    pub balance: Money,
    /// Held for running calls; never negative.
    pub reserved: Money,
    /// Tariff id calls of this account are rated by.
    pub tariff: String,
    /// Prepaid or post-paid.
    pub mode: Mode,
    /// Blocked by the billing system or an operator: no reservations, no services.
    pub blocked: bool,
    /// Usage tokens for services inserted into running calls (one per insertion).
    pub tokens: u32,
}

/// An account as the HTTP API sends it (`PUT /v1/accounts/{id}`): create, or set balance,
/// tariff and mode (reservations, the blocked flag and tokens are kept).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSpec {
    /// The balance to set, minor units.
    pub balance: i64,
    /// Tariff id (must exist).
    pub tariff: String,
    /// Defaults to prepaid.
    #[serde(default)]
    pub mode: Mode,
}

/// What a rule did to an account, for the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// What happened.
    pub kind: EntryKind,
    /// Change of the balance.
    pub amount: Money,
    /// Change of the reservation.
    pub reserved_delta: Money,
    /// Change of the usage tokens.
    pub tokens_delta: i64,
    /// Free-text detail for auditors (e.g. a clamped release, a tariff change).
    pub note: Option<String>,
}

impl Change {
    fn new(kind: EntryKind) -> Change {
        Change {
            kind,
            amount: Money::ZERO,
            reserved_delta: Money::ZERO,
            tokens_delta: 0,
            note: None,
        }
    }
}

/// Checks an account or tariff id: 1 to 128 characters.
pub(crate) fn check_id(id: &str) -> Result<(), LedgerError> {
    if id.is_empty() || id.len() > 128 {
        return Err(LedgerError::BadId(id.chars().take(140).collect()));
    }
    Ok(())
}

impl Account {
    /// A new account from the API's shape.
    pub fn from_spec(id: &str, spec: &AccountSpec) -> Account {
        Account {
            id: id.to_string(),
            balance: Money(spec.balance),
            reserved: Money::ZERO,
            tariff: spec.tariff.clone(),
            mode: spec.mode,
            blocked: false,
            tokens: 0,
        }
    }

    /// What can still be reserved: `balance - reserved`.
    pub fn available(&self) -> Money {
        self.balance - self.reserved
    }

    /// The change of a new account (journalled as `open`).
    pub(crate) fn opened(&self) -> Change {
        Change {
            amount: self.balance,
            note: Some(format!("tariff={} mode={}", self.tariff, self.mode)),
            ..Change::new(EntryKind::Open)
        }
    }

    /// Sets balance, tariff and mode (`PUT` on an existing account).
    pub(crate) fn apply_update(&mut self, spec: &AccountSpec) -> Change {
        let mut note = Vec::new();
        if self.tariff != spec.tariff {
            note.push(format!("tariff {}→{}", self.tariff, spec.tariff));
        }
        if self.mode != spec.mode {
            note.push(format!("mode {}→{}", self.mode, spec.mode));
        }
        let amount = Money(spec.balance) - self.balance;
        self.balance = Money(spec.balance);
        self.tariff = spec.tariff.clone();
        self.mode = spec.mode;
        Change {
            amount,
            note: (!note.is_empty()).then(|| note.join(", ")),
            ..Change::new(EntryKind::Update)
        }
    }

    /// Adds `amount` (> 0) to the balance; blocked accounts may be topped up.
    pub(crate) fn apply_topup(&mut self, amount: Money) -> Result<Change, LedgerError> {
        if !amount.is_positive() {
            return Err(LedgerError::InvalidAmount(amount));
        }
        self.balance = self
            .balance
            .checked_add(amount)
            .ok_or(LedgerError::Overflow)?;
        Ok(Change {
            amount,
            ..Change::new(EntryKind::Topup)
        })
    }

    /// Moves up to `amount` of the available credit into the reservation and returns what was
    /// granted.
    ///
    /// **Partial grants:** a prepaid account with less available than asked gets what it has
    /// (so a call can use the last seconds of credit); one with nothing available gets
    /// [`LedgerError::Insufficient`]. A post-paid account is granted in full (it has no limit;
    /// the reservation only tracks what running calls will cost). `amount == 0` grants 0 without
    /// a change.
    pub(crate) fn apply_reserve(&mut self, amount: Money) -> Result<(Money, Change), LedgerError> {
        if amount.is_negative() {
            return Err(LedgerError::InvalidAmount(amount));
        }
        if self.blocked {
            return Err(LedgerError::Blocked(self.id.clone()));
        }
        if amount == Money::ZERO {
            return Ok((Money::ZERO, Change::new(EntryKind::Reserve)));
        }
        let granted = match self.mode {
            Mode::Postpaid => amount,
            Mode::Prepaid => {
                let available = self.available();
                if !available.is_positive() {
                    return Err(LedgerError::Insufficient {
                        account: self.id.clone(),
                        available,
                        requested: amount,
                    });
                }
                amount.min(available)
            }
        };
        self.reserved = self
            .reserved
            .checked_add(granted)
            .ok_or(LedgerError::Overflow)?;
        let note = (granted < amount).then(|| format!("partial: {granted} of {amount}"));
        Ok((
            granted,
            Change {
                reserved_delta: granted,
                note,
                ..Change::new(EntryKind::Reserve)
            },
        ))
    }

    /// Releases `reserved` (clamped to what is held) and debits `charged`. Works on blocked
    /// accounts (a cut call must still be settled) and may take the balance below zero (a
    /// post-paid call, or usage under a fail-open policy that was never reserved).
    pub(crate) fn apply_settle(
        &mut self,
        reserved: Money,
        charged: Money,
    ) -> Result<Change, LedgerError> {
        if reserved.is_negative() {
            return Err(LedgerError::InvalidAmount(reserved));
        }
        if charged.is_negative() {
            return Err(LedgerError::InvalidAmount(charged));
        }
        let release = reserved.min(self.reserved);
        let balance = self
            .balance
            .checked_sub(charged)
            .ok_or(LedgerError::Overflow)?;
        self.reserved -= release;
        self.balance = balance;
        let note = (release < reserved).then(|| format!("released {release} of {reserved} asked"));
        Ok(Change {
            amount: Money::ZERO - charged,
            reserved_delta: Money::ZERO - release,
            note,
            ..Change::new(EntryKind::Settle)
        })
    }

    /// Blocks (idempotent).
    pub(crate) fn apply_block(&mut self) -> Change {
        self.blocked = true;
        Change::new(EntryKind::Block)
    }

    /// Unblocks (idempotent).
    pub(crate) fn apply_unblock(&mut self) -> Change {
        self.blocked = false;
        Change::new(EntryKind::Unblock)
    }

    /// Takes one usage token; returns how many are left.
    pub(crate) fn apply_take_token(&mut self) -> Result<(u32, Change), LedgerError> {
        if self.blocked {
            return Err(LedgerError::Blocked(self.id.clone()));
        }
        let Some(left) = self.tokens.checked_sub(1) else {
            return Err(LedgerError::NoTokens(self.id.clone()));
        };
        self.tokens = left;
        Ok((
            left,
            Change {
                tokens_delta: -1,
                ..Change::new(EntryKind::TokenTaken)
            },
        ))
    }

    /// Adds `n` (> 0) usage tokens; returns the new count.
    pub(crate) fn apply_add_tokens(&mut self, n: u32) -> Result<(u32, Change), LedgerError> {
        if n == 0 {
            return Err(LedgerError::InvalidAmount(Money::ZERO));
        }
        self.tokens = self.tokens.checked_add(n).ok_or(LedgerError::Overflow)?;
        Ok((
            self.tokens,
            Change {
                tokens_delta: i64::from(n),
                ..Change::new(EntryKind::TokensAdded)
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(balance: i64, mode: Mode) -> Account {
        Account::from_spec(
            "a",
            &AccountSpec {
                balance,
                tariff: "t".into(),
                mode,
            },
        )
    }

    #[test]
    fn reserve_is_partial_and_refuses_when_nothing_is_available() {
        let mut a = acct(100, Mode::Prepaid);
        assert_eq!(a.apply_reserve(Money(60)).unwrap().0, Money(60));
        let (got, change) = a.apply_reserve(Money(60)).unwrap();
        assert_eq!(got, Money(40), "the last 40 are granted");
        assert_eq!(change.note.as_deref(), Some("partial: 40 of 60"));
        assert_eq!(
            (a.balance, a.reserved, a.available()),
            (Money(100), Money(100), Money(0))
        );
        assert!(matches!(
            a.apply_reserve(Money(1)),
            Err(LedgerError::Insufficient {
                available: Money(0),
                requested: Money(1),
                ..
            })
        ));
        assert_eq!(a.apply_reserve(Money(0)).unwrap().0, Money(0));
        assert!(matches!(
            a.apply_reserve(Money(-1)),
            Err(LedgerError::InvalidAmount(_))
        ));
    }

    #[test]
    fn settle_releases_and_debits_postpaid_goes_negative() {
        let mut a = acct(100, Mode::Prepaid);
        a.apply_reserve(Money(80)).unwrap();
        let c = a.apply_settle(Money(80), Money(55)).unwrap();
        assert_eq!((c.amount, c.reserved_delta), (Money(-55), Money(-80)));
        assert_eq!((a.balance, a.reserved), (Money(45), Money(0)));
        // Releasing more than held is clamped and noted.
        let c = a.apply_settle(Money(5), Money(0)).unwrap();
        assert_eq!(c.note.as_deref(), Some("released 0 of 5 asked"));
        let mut p = acct(0, Mode::Postpaid);
        assert_eq!(p.apply_reserve(Money(500)).unwrap().0, Money(500));
        p.apply_settle(Money(500), Money(700)).unwrap();
        assert_eq!((p.balance, p.reserved), (Money(-700), Money(0)));
    }

    #[test]
    fn blocked_accounts_cannot_reserve_or_take_tokens_but_settle_and_topup() {
        let mut a = acct(100, Mode::Prepaid);
        a.apply_reserve(Money(10)).unwrap();
        a.apply_add_tokens(2).unwrap();
        a.apply_block();
        assert!(matches!(
            a.apply_reserve(Money(1)),
            Err(LedgerError::Blocked(_))
        ));
        assert!(matches!(a.apply_take_token(), Err(LedgerError::Blocked(_))));
        a.apply_settle(Money(10), Money(10)).unwrap();
        a.apply_topup(Money(5)).unwrap();
        assert_eq!(a.balance, Money(95));
        a.apply_unblock();
        assert_eq!(a.apply_take_token().unwrap().0, 1);
        assert_eq!(a.apply_take_token().unwrap().0, 0);
        assert!(matches!(
            a.apply_take_token(),
            Err(LedgerError::NoTokens(_))
        ));
        assert!(matches!(
            a.apply_topup(Money(0)),
            Err(LedgerError::InvalidAmount(_))
        ));
        assert!(matches!(
            a.apply_add_tokens(0),
            Err(LedgerError::InvalidAmount(_))
        ));
        a.balance = Money(i64::MAX);
        assert!(matches!(
            a.apply_topup(Money(1)),
            Err(LedgerError::Overflow)
        ));
    }

    #[test]
    fn api_shapes() {
        let spec: AccountSpec =
            serde_json::from_str(r#"{"balance": 1000, "tariff": "basic"}"#).unwrap();
        assert_eq!(spec.mode, Mode::Prepaid);
        let spec: AccountSpec =
            serde_json::from_str(r#"{"balance": 0, "tariff": "b", "mode": "postpaid"}"#).unwrap();
        assert_eq!(spec.mode, Mode::Postpaid);
        let a = Account::from_spec("alice", &spec);
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "alice", "balance": 0, "reserved": 0, "tariff": "b",
                "mode": "postpaid", "blocked": false, "tokens": 0})
        );
        assert!("weird".parse::<Mode>().is_err());
    }
}
