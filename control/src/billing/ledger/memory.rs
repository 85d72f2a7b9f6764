//! The in-memory ledger, for engine unit tests and tools: the same rules and journal as the
//! database backends, nothing persisted.

use std::collections::HashMap;

use super::{Ledger, LedgerEntry, LedgerError, entry_for, is_noop, now_ms};
use crate::billing::{
    Account, AccountSpec, Money, Tariff,
    account::{Change, check_id},
};

/// Tariffs, accounts and journal in maps.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    tariffs: HashMap<String, Tariff>,
    accounts: HashMap<String, Account>,
    journal: Vec<LedgerEntry>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `rule` to a copy of the account and commits only if it succeeds (all or nothing,
    /// like the database transactions).
    fn mutate<R>(
        &mut self,
        id: &str,
        call_id: Option<&str>,
        rule: impl FnOnce(&mut Account) -> Result<(R, Change), LedgerError>,
    ) -> Result<(R, Account), LedgerError> {
        let current = self
            .accounts
            .get(id)
            .ok_or_else(|| LedgerError::NoSuchAccount(id.to_string()))?;
        let mut next = current.clone();
        let (r, change) = rule(&mut next)?;
        if !is_noop(&change) {
            self.append(entry_for(&next, &change, call_id, now_ms()));
        }
        self.accounts.insert(id.to_string(), next.clone());
        Ok((r, next))
    }

    fn append(&mut self, mut e: LedgerEntry) {
        e.id = i64::try_from(self.journal.len())
            .unwrap_or(i64::MAX)
            .saturating_add(1);
        self.journal.push(e);
    }
}

impl Ledger for MemoryLedger {
    fn put_tariff(&mut self, tariff: &Tariff) -> Result<(), LedgerError> {
        tariff.validate()?;
        self.tariffs.insert(tariff.id.clone(), tariff.clone());
        Ok(())
    }

    fn tariff(&mut self, id: &str) -> Result<Tariff, LedgerError> {
        self.tariffs
            .get(id)
            .cloned()
            .ok_or_else(|| LedgerError::NoSuchTariff(id.to_string()))
    }

    fn put_account(&mut self, id: &str, spec: &AccountSpec) -> Result<Account, LedgerError> {
        check_id(id)?;
        if !self.tariffs.contains_key(&spec.tariff) {
            return Err(LedgerError::NoSuchTariff(spec.tariff.clone()));
        }
        if self.accounts.contains_key(id) {
            return Ok(self.mutate(id, None, |a| Ok(((), a.apply_update(spec))))?.1);
        }
        let a = Account::from_spec(id, spec);
        self.append(entry_for(&a, &a.opened(), None, now_ms()));
        self.accounts.insert(id.to_string(), a.clone());
        Ok(a)
    }

    fn account(&mut self, id: &str) -> Result<Account, LedgerError> {
        self.accounts
            .get(id)
            .cloned()
            .ok_or_else(|| LedgerError::NoSuchAccount(id.to_string()))
    }

    super::account_operations!();

    fn entries(&mut self, id: &str, limit: usize) -> Result<Vec<LedgerEntry>, LedgerError> {
        let mine: Vec<&LedgerEntry> = self.journal.iter().filter(|e| e.account == id).collect();
        let skip = mine.len().saturating_sub(limit);
        Ok(mine.into_iter().skip(skip).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_ledger_conformance() {
        super::super::tests::conformance(&mut MemoryLedger::new());
    }
}
