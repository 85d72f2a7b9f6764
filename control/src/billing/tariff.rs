//! Tariffs and rating: what a call costs. Owns the price model and the rounding rules; knows
//! nothing of accounts, reservations or time sources (durations and byte counts come in).
//!
//! # Rating rules
//! A call's charge is `connection_fee + time + volume`, all in minor units:
//! - **Billed time.** The duration is first rounded up to whole seconds (any started second
//!   counts). A call of 0 s bills no time. Otherwise the first `initial_increment_s` seconds are
//!   billed as one block, and the rest in blocks of `increment_s`, each started block in full:
//!   with "60/1", 45 s bills 60 s, 61 s bills 61 s; with "60/60", 61 s bills 120 s.
//! - **Time price.** `per_minute × billed_seconds / 60`, computed exactly (in sixtieths of a
//!   minor unit) and rounded **up** to a whole minor unit once, at the end: 61 s at 50/min is
//!   50.83… → 51. Rounding once (never per second or per slice) means the sum of the interim
//!   amounts credit control reports equals the final charge.
//! - **Volume.** A kilobyte is **1000 bytes** (SI, as carriers bill data); every started kilobyte
//!   counts: 1 byte bills 1 KB, 1000 bytes 1 KB, 1001 bytes 2 KB. `volume = KB × per_kilobyte`.
//! - **Connection fee.** Charged once for every answered call, even one of 0 s.
//!
//! Intermediate results are `i128`; a total beyond `i64` saturates (no panic on input).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Money;

/// Bytes per billed kilobyte (SI).
pub const BYTES_PER_KILOBYTE: u64 = 1000;

/// Longest billing increment accepted (one day): larger values are typos, not tariffs.
pub const MAX_INCREMENT_S: u32 = 86_400;

/// A price list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tariff {
    /// Tariff id (what accounts refer to).
    pub id: String,
    /// Price of a minute of call time, minor units (0.50/min = 50).
    pub per_minute: Money,
    /// Price of a started kilobyte (1000 bytes) of media, minor units (0.03/KB = 3).
    pub per_kilobyte: Money,
    /// Billing increment after the initial block, seconds (the "1" in "60/1"). At least 1.
    pub increment_s: u32,
    /// First block, billed in full once a call has lasted any time (the "60" in "60/1").
    pub initial_increment_s: u32,
    /// Charged once per answered call.
    pub connection_fee: Money,
}

/// A tariff as the HTTP API sends it (`PUT /v1/tariffs/{id}`); the id comes from the path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TariffSpec {
    /// Minor units per minute.
    pub per_minute: i64,
    /// Minor units per started kilobyte (1000 bytes).
    pub per_kilobyte: i64,
    /// Billing increment, seconds.
    pub increment_s: u32,
    /// First block, seconds; defaults to `increment_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_increment_s: Option<u32>,
    /// Minor units per answered call.
    pub connection_fee: i64,
}

/// Why a tariff was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TariffError {
    /// The id is empty or too long.
    #[error("tariff id must be 1 to 128 characters")]
    BadId,
    /// A price is negative.
    #[error("{field} must not be negative (got {value})")]
    NegativePrice {
        /// Which field.
        field: &'static str,
        /// The value given.
        value: i64,
    },
    /// An increment is 0 or longer than a day.
    #[error("{field} must be 1 to {MAX_INCREMENT_S} seconds (got {value})")]
    BadIncrement {
        /// Which field.
        field: &'static str,
        /// The value given.
        value: u32,
    },
}

impl Tariff {
    /// A validated tariff from the API's shape.
    pub fn from_spec(id: &str, spec: &TariffSpec) -> Result<Tariff, TariffError> {
        let t = Tariff {
            id: id.to_string(),
            per_minute: Money(spec.per_minute),
            per_kilobyte: Money(spec.per_kilobyte),
            increment_s: spec.increment_s,
            initial_increment_s: spec.initial_increment_s.unwrap_or(spec.increment_s),
            connection_fee: Money(spec.connection_fee),
        };
        t.validate()?;
        Ok(t)
    }

    /// The API's shape of this tariff.
    pub fn spec(&self) -> TariffSpec {
        TariffSpec {
            per_minute: self.per_minute.0,
            per_kilobyte: self.per_kilobyte.0,
            increment_s: self.increment_s,
            initial_increment_s: Some(self.initial_increment_s),
            connection_fee: self.connection_fee.0,
        }
    }

    /// Checks the invariants: non-empty id, prices ≥ 0, increments 1 ..= one day.
    pub fn validate(&self) -> Result<(), TariffError> {
        if self.id.is_empty() || self.id.len() > 128 {
            return Err(TariffError::BadId);
        }
        for (field, value) in [
            ("per_minute", self.per_minute),
            ("per_kilobyte", self.per_kilobyte),
            ("connection_fee", self.connection_fee),
        ] {
            if value.is_negative() {
                return Err(TariffError::NegativePrice {
                    field,
                    value: value.0,
                });
            }
        }
        for (field, value) in [
            ("increment_s", self.increment_s),
            ("initial_increment_s", self.initial_increment_s),
        ] {
            if value == 0 || value > MAX_INCREMENT_S {
                return Err(TariffError::BadIncrement { field, value });
            }
        }
        Ok(())
    }

    /// Whether media volume costs anything (credit control meters bytes only then).
    pub fn meters_volume(&self) -> bool {
        self.per_kilobyte.is_positive()
    }

    /// Seconds billed for `duration` (see the module docs).
    pub fn billed_seconds(&self, duration: Duration) -> u64 {
        let secs = duration
            .as_secs()
            .saturating_add(u64::from(duration.subsec_nanos() > 0));
        if secs == 0 {
            return 0;
        }
        // Increments of 0 cannot pass validation; treat them as 1 rather than divide by zero.
        let initial = u64::from(self.initial_increment_s.max(1));
        let inc = u64::from(self.increment_s.max(1));
        if secs <= initial {
            initial
        } else {
            let rest = secs - initial;
            initial.saturating_add(rest.div_ceil(inc).saturating_mul(inc))
        }
    }
}

/// Billed kilobytes for `bytes`: every started 1000 bytes.
pub fn billed_kilobytes(bytes: u64) -> u64 {
    bytes.div_ceil(BYTES_PER_KILOBYTE)
}

/// A charge and how it was made up (for CDRs, usage reports and operators' questions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rating {
    /// Seconds billed after increments.
    pub billed_seconds: u64,
    /// Kilobytes billed (1000 bytes, every started one).
    pub billed_kilobytes: u64,
    /// The connection fee.
    pub connection_fee: Money,
    /// The time part, rounded up to a whole minor unit.
    pub time: Money,
    /// The volume part.
    pub volume: Money,
    /// `connection_fee + time + volume`.
    pub total: Money,
}

/// What a call of `duration` that carried `bytes` costs under `tariff`, with the breakdown.
pub fn rate_detail(tariff: &Tariff, duration: Duration, bytes: u64) -> Rating {
    let billed_seconds = tariff.billed_seconds(duration);
    let billed_kilobytes = billed_kilobytes(bytes);
    // Sixtieths of a minor unit make the per-second price exact; one ceiling at the end.
    let time_60 = i128::from(tariff.per_minute.0) * i128::from(billed_seconds);
    let time = Money::from_i128_saturating(time_60.div_euclid(60) + i128::from(time_60 % 60 != 0));
    let volume = Money::from_i128_saturating(
        i128::from(tariff.per_kilobyte.0) * i128::from(billed_kilobytes),
    );
    let total = Money::from_i128_saturating(
        i128::from(tariff.connection_fee.0) + i128::from(time.0) + i128::from(volume.0),
    );
    Rating {
        billed_seconds,
        billed_kilobytes,
        connection_fee: tariff.connection_fee,
        time,
        volume,
        total,
    }
}

/// What a call of `duration` that carried `bytes` costs under `tariff` (see the module docs).
pub fn rate(tariff: &Tariff, duration: Duration, bytes: u64) -> Money {
    rate_detail(tariff, duration, bytes).total
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The issue's combination tariff: 0.50/min + 0.03/KB, 60/1 increments, 0.10 connection fee.
    pub(crate) fn combo() -> Tariff {
        Tariff {
            id: "combo".into(),
            per_minute: Money(50),
            per_kilobyte: Money(3),
            increment_s: 1,
            initial_increment_s: 60,
            connection_fee: Money(10),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn worked_examples_with_the_combination_tariff() {
        let t = combo();
        // 45 s of silence: the first 60 s are one block → fee 10 + 50 = 60.
        assert_eq!(rate(&t, secs(45), 0), Money(60));
        // 61 s: 61 billed seconds → 50 × 61 / 60 = 50.83 → 51; + fee = 61.
        assert_eq!(rate(&t, secs(61), 0), Money(61));
        // A 90 s G.711 call, both directions, 172-byte packets at 50 pps:
        // 2 × 50 × 172 × 90 = 1 548 000 bytes = 1548 KB × 3 = 4644;
        // time 50 × 90 / 60 = 75; fee 10 → 4729.
        let r = rate_detail(&t, secs(90), 1_548_000);
        assert_eq!(
            r,
            Rating {
                billed_seconds: 90,
                billed_kilobytes: 1548,
                connection_fee: Money(10),
                time: Money(75),
                volume: Money(4644),
                total: Money(4729),
            }
        );
        // A started second counts: 60.2 s bills 61 s.
        assert_eq!(t.billed_seconds(Duration::from_millis(60_200)), 61);
        assert_eq!(rate(&t, Duration::from_millis(60_200), 0), Money(61));
        // Half a second still bills the initial block; 0 s bills only the fee.
        assert_eq!(rate(&t, Duration::from_millis(500), 0), Money(60));
        assert_eq!(rate(&t, Duration::ZERO, 0), Money(10));
        // 3 minutes exactly: 150 + 10.
        assert_eq!(rate(&t, secs(180), 0), Money(160));
    }

    #[test]
    fn kilobytes_are_1000_bytes_every_started_one_counts() {
        assert_eq!(billed_kilobytes(0), 0);
        assert_eq!(billed_kilobytes(1), 1);
        assert_eq!(billed_kilobytes(1000), 1);
        assert_eq!(billed_kilobytes(1001), 2);
        let t = combo();
        assert_eq!(rate(&t, Duration::ZERO, 1001), Money(10 + 6));
    }

    #[test]
    fn other_increments() {
        let mut t = combo();
        t.increment_s = 60;
        assert_eq!(t.billed_seconds(secs(61)), 120);
        assert_eq!(rate(&t, secs(61), 0), Money(10 + 100));
        t.initial_increment_s = 30;
        t.increment_s = 6;
        assert_eq!(t.billed_seconds(secs(29)), 30);
        assert_eq!(t.billed_seconds(secs(31)), 36);
        assert_eq!(t.billed_seconds(secs(36)), 36);
        assert_eq!(t.billed_seconds(secs(37)), 42);
        // 1 minor unit per minute over 1 s: 1/60 rounds up to 1.
        let cheap = Tariff {
            per_minute: Money(1),
            per_kilobyte: Money(0),
            connection_fee: Money(0),
            increment_s: 1,
            initial_increment_s: 1,
            ..combo()
        };
        assert_eq!(rate(&cheap, secs(1), 0), Money(1));
        assert_eq!(rate(&cheap, secs(60), 0), Money(1));
        assert_eq!(rate(&cheap, secs(61), 0), Money(2));
    }

    #[test]
    fn huge_inputs_saturate_instead_of_panicking() {
        let t = Tariff {
            per_minute: Money(i64::MAX),
            per_kilobyte: Money(i64::MAX),
            connection_fee: Money(i64::MAX),
            ..combo()
        };
        assert_eq!(rate(&t, Duration::MAX, u64::MAX), Money(i64::MAX));
        // An invalid increment of 0 (not constructible through from_spec) does not divide by 0.
        let zero = Tariff {
            increment_s: 0,
            initial_increment_s: 0,
            ..combo()
        };
        assert_eq!(zero.billed_seconds(secs(5)), 5);
    }

    #[test]
    fn api_shape_defaults_initial_increment_and_validates() {
        let spec: TariffSpec = serde_json::from_str(
            r#"{"per_minute": 50, "per_kilobyte": 3, "increment_s": 1, "connection_fee": 10}"#,
        )
        .unwrap();
        let t = Tariff::from_spec("basic", &spec).unwrap();
        assert_eq!((t.increment_s, t.initial_increment_s), (1, 1));
        assert_eq!(t.per_minute, Money(50));
        let sixty: TariffSpec = serde_json::from_str(
            r#"{"per_minute": 50, "per_kilobyte": 3, "increment_s": 1,
                "initial_increment_s": 60, "connection_fee": 10}"#,
        )
        .unwrap();
        assert_eq!(Tariff::from_spec("combo", &sixty).unwrap(), combo());
        assert_eq!(combo().spec(), sixty);

        let bad = TariffSpec {
            per_minute: -1,
            ..sixty.clone()
        };
        assert_eq!(
            Tariff::from_spec("x", &bad),
            Err(TariffError::NegativePrice {
                field: "per_minute",
                value: -1
            })
        );
        let bad = TariffSpec {
            increment_s: 0,
            initial_increment_s: None,
            ..sixty.clone()
        };
        assert!(matches!(
            Tariff::from_spec("x", &bad),
            Err(TariffError::BadIncrement {
                field: "increment_s",
                ..
            })
        ));
        assert_eq!(Tariff::from_spec("", &sixty), Err(TariffError::BadId));
        assert!(serde_json::from_str::<TariffSpec>(r#"{"per_minute": 1.5}"#).is_err());
    }
}
