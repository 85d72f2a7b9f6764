//! Money as fixed-point integer minor units (cents, öre, …). The currency is the deployment's;
//! billing never converts. Owns the arithmetic rules for amounts, nothing else.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An amount in minor currency units (e.g. 0.50 = `Money(50)` for a currency with cents).
/// Negative amounts are debts (a post-paid balance) or debits in the journal.
///
/// `+` and `-` saturate at the `i64` bounds instead of overflowing: amounts come from operators
/// and billing systems, and a panic there would take the daemon down. Ledger mutations use the
/// `checked_*` forms and refuse to overflow.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Money(pub i64);

impl Money {
    /// Nothing.
    pub const ZERO: Money = Money(0);

    /// The amount in minor units.
    pub const fn minor(self) -> i64 {
        self.0
    }

    /// `self + other`, or None on overflow.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    /// `self - other`, or None on overflow.
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    /// Whether the amount is below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Whether the amount is above zero.
    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// From an `i128` intermediate, saturating at the `i64` bounds.
    pub(crate) fn from_i128_saturating(v: i128) -> Money {
        Money(i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX }))
    }
}

impl std::ops::Add for Money {
    type Output = Money;
    fn add(self, rhs: Money) -> Money {
        Money(self.0.saturating_add(rhs.0))
    }
}

impl std::ops::Sub for Money {
    type Output = Money;
    fn sub(self, rhs: Money) -> Money {
        Money(self.0.saturating_sub(rhs.0))
    }
}

impl std::ops::AddAssign for Money {
    fn add_assign(&mut self, rhs: Money) {
        *self = *self + rhs;
    }
}

impl std::ops::SubAssign for Money {
    fn sub_assign(&mut self, rhs: Money) {
        *self = *self - rhs;
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, |a, b| a + b)
    }
}

impl fmt::Display for Money {
    /// The integer minor units: billing does not know how many decimals the currency has.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<i64> for Money {
    fn from(v: i64) -> Money {
        Money(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_checked_refuses() {
        assert_eq!(Money(i64::MAX) + Money(1), Money(i64::MAX));
        assert_eq!(Money(i64::MIN) - Money(1), Money(i64::MIN));
        assert_eq!(Money(i64::MAX).checked_add(Money(1)), None);
        assert_eq!(Money(5).checked_sub(Money(7)), Some(Money(-2)));
        assert_eq!([Money(1), Money(2)].into_iter().sum::<Money>(), Money(3));
        assert_eq!(Money::from_i128_saturating(i128::MAX), Money(i64::MAX));
        assert_eq!(
            serde_json::to_string(&Money(42)).ok().as_deref(),
            Some("42")
        );
    }
}
