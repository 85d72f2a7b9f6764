//! Billing: tariffs and rating, accounts and the money ledger, sans-IO online credit control
//! (Diameter Gy/Ro style quota slices), the fraud guard, and Ed25519 authorization tokens and
//! service tickets.
//!
//! What this module owns, and what it must not touch:
//! - [`money`]: the fixed-point money type. Money is always integer minor units, never float.
//! - [`tariff`]: prices and the one rating function every charge goes through.
//! - [`account`]: accounts and the pure balance rules (reserve, settle, top-up, tokens) that every
//!   ledger backend applies, so the rules exist once.
//! - [`ledger`]: where accounts live: [`ledger::SqliteLedger`] (the same file as the CDRs,
//!   migrations 100+ in the shared `schema_migrations` table), [`ledger::PostgresLedger`] and
//!   [`ledger::MemoryLedger`] (tests). The ledger is the only part of billing that does I/O.
//! - [`credit`]: per-call credit control as a state machine: inputs with the current time in,
//!   events ([`credit::CreditEvent`]) and the next deadline out. No clock, no socket, no ledger:
//!   the owner (the engine) forwards reservation requests to the embedded ledger or to an
//!   external billing system and feeds the answers back.
//! - [`embedded`]: answers credit control's requests from the embedded ledger.
//! - [`fraud`]: call-rate limiting per client and media-after-BYE detection (sans-IO).
//! - [`mapping`]: the account of a call from its SIP From user (configurable).
//! - [`auth`]: signed authorization tokens and service tickets (pure functions of their input
//!   and the time given).
//!
//! Billing never touches calls, legs, pinholes or sockets: cutting a call is an event the engine
//! acts on.

pub mod account;
pub mod auth;
pub mod credit;
pub mod embedded;
pub mod fraud;
pub mod ledger;
pub mod mapping;
pub mod money;
pub mod tariff;

pub use self::account::{Account, AccountSpec, Mode};
pub use self::ledger::{
    Ledger, LedgerEntry, LedgerError, MemoryLedger, PostgresLedger, SqliteLedger,
};
pub use self::money::Money;
pub use self::tariff::{Rating, Tariff, TariffError, TariffSpec, rate, rate_detail};
