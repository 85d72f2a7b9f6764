//! The search for the highest rate a relay forwards with loss below a threshold: double the
//! rate from a start until a step fails, then bisect between the highest passing and the
//! lowest failing rate until they are within a relative precision. A step fails either by
//! loss (the relay's limit) or because the generator could not offer the rate (its own limit:
//! the relay was not the bottleneck, and the report says so). Sans-IO: the caller runs the
//! steps and reports their outcomes.

use serde::Serialize;

/// How a step at some rate went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Offered as asked, loss below the threshold.
    Pass,
    /// Loss at or above the threshold.
    Loss,
    /// No loss yet, but the relay fell behind: its sockets held more than
    /// [`crate::load::traffic::BACKLOG_LIMIT_S`] of traffic when sending stopped, so the loss
    /// only waits for its buffers to fill.
    Backlog,
    /// No verdict about the relay: the generator could not offer the rate, or was saturated.
    GeneratorLimited,
}

/// What ended the search (what the best rate is limited by).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// The relay lost packets (or fell behind) above the best rate.
    Relay,
    /// The generator could not offer more.
    Generator,
    /// The best rate is the configured maximum.
    MaxRate,
    /// Even the lowest rate tried failed.
    MinRate,
    /// The step budget ran out first.
    Steps,
}

/// Search parameters (rates in packets per second).
#[derive(Clone, Copy, Debug)]
pub struct SearchConfig {
    /// First rate tried.
    pub start: f64,
    /// Never above this.
    pub max: f64,
    /// Give up below this.
    pub min: f64,
    /// Stop bisecting when (fail - pass) / pass is at most this.
    pub precision: f64,
    /// At most this many steps.
    pub max_steps: u32,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            start: 10_000.0,
            max: 2_000_000.0,
            min: 100.0,
            precision: 0.05,
            max_steps: 14,
        }
    }
}

/// The search state.
#[derive(Clone, Debug)]
pub struct Search {
    cfg: SearchConfig,
    pass: Option<f64>,
    fail: Option<(f64, Outcome)>,
    next: Option<f64>,
    steps: u32,
}

impl Search {
    /// A search starting at `cfg.start` (clamped to `min..=max`).
    pub fn new(cfg: SearchConfig) -> Self {
        let start = cfg.start.clamp(cfg.min, cfg.max).round();
        Self {
            cfg,
            pass: None,
            fail: None,
            next: Some(start),
            steps: 0,
        }
    }

    /// The rate to try next; `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        self.next
    }

    /// Records the outcome of a step at `rate` and decides the next rate.
    pub fn record(&mut self, rate: f64, outcome: Outcome) {
        self.steps += 1;
        match outcome {
            Outcome::Pass => self.pass = Some(self.pass.map_or(rate, |p| p.max(rate))),
            _ => {
                if self.fail.is_none_or(|(f, _)| rate <= f) {
                    self.fail = Some((rate, outcome));
                }
            }
        }
        self.next = self.decide();
    }

    fn decide(&self) -> Option<f64> {
        if self.steps >= self.cfg.max_steps {
            return None;
        }
        let next = match (self.pass, self.fail) {
            (Some(p), None) if p >= self.cfg.max => return None,
            (Some(p), None) => (p * 2.0).min(self.cfg.max),
            (None, Some((f, _))) if f / 2.0 < self.cfg.min => return None,
            (None, Some((f, _))) => f / 2.0,
            (Some(p), Some((f, _))) if f <= p || (f - p) / p <= self.cfg.precision => {
                return None;
            }
            (Some(p), Some((f, _))) => (p + f) / 2.0,
            (None, None) => return Some(self.cfg.start),
        };
        Some(next.round())
    }

    /// The highest rate that passed.
    pub fn best(&self) -> Option<f64> {
        self.pass
    }

    /// The lowest rate that failed, and how.
    pub fn lowest_failure(&self) -> Option<(f64, Outcome)> {
        self.fail
    }

    /// Steps run so far.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// What limits [`Search::best`] (meaningful once the search is over).
    pub fn limit(&self) -> Limit {
        match (self.pass, self.fail) {
            (None, _) => Limit::MinRate,
            (Some(p), None) if p >= self.cfg.max => Limit::MaxRate,
            (Some(_), None) => Limit::Steps,
            (Some(p), Some((f, _)))
                if self.steps >= self.cfg.max_steps && (f - p) / p > self.cfg.precision =>
            {
                Limit::Steps
            }
            (Some(_), Some((_, Outcome::GeneratorLimited))) => Limit::Generator,
            (Some(_), Some(_)) => Limit::Relay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a relay that passes up to `relay_max` and a generator that can
    /// offer up to `gen_max`; returns the rates tried.
    fn run(cfg: SearchConfig, relay_max: f64, gen_max: f64) -> (Search, Vec<f64>) {
        let mut s = Search::new(cfg);
        let mut tried = Vec::new();
        while let Some(r) = s.next_rate() {
            tried.push(r);
            let outcome = if r > gen_max {
                Outcome::GeneratorLimited
            } else if r > relay_max {
                Outcome::Loss
            } else {
                Outcome::Pass
            };
            s.record(r, outcome);
            assert!(tried.len() < 100, "does not terminate");
        }
        (s, tried)
    }

    #[test]
    fn doubles_then_bisects_to_the_precision() {
        let (s, tried) = run(SearchConfig::default(), 135_000.0, 1e9);
        assert_eq!(
            &tried[..5],
            &[10_000.0, 20_000.0, 40_000.0, 80_000.0, 160_000.0]
        );
        let best = s.best().unwrap();
        let (fail, how) = s.lowest_failure().unwrap();
        assert!((135_000.0 / 1.05..=135_000.0).contains(&best), "{best}");
        assert!((fail - best) / best <= 0.05);
        assert_eq!(how, Outcome::Loss);
        assert_eq!(s.limit(), Limit::Relay);
        assert!(s.steps() <= 10, "{tried:?}");
    }

    #[test]
    fn generator_limit_is_reported_as_such() {
        let (s, _) = run(SearchConfig::default(), 1e9, 190_000.0);
        assert_eq!(s.limit(), Limit::Generator);
        assert!(s.best().unwrap() >= 190_000.0 / 1.05);
    }

    #[test]
    fn goes_down_when_the_start_fails() {
        let cfg = SearchConfig {
            start: 100_000.0,
            ..SearchConfig::default()
        };
        let (s, tried) = run(cfg, 30_000.0, 1e9);
        assert_eq!(&tried[..3], &[100_000.0, 50_000.0, 25_000.0]);
        assert!(s.best().unwrap() >= 30_000.0 / 1.05);
        assert_eq!(s.limit(), Limit::Relay);
    }

    #[test]
    fn stops_at_max_and_min() {
        let cfg = SearchConfig {
            max: 50_000.0,
            ..SearchConfig::default()
        };
        let (s, tried) = run(cfg, 1e9, 1e9);
        assert_eq!(tried, [10_000.0, 20_000.0, 40_000.0, 50_000.0]);
        assert_eq!(s.limit(), Limit::MaxRate);
        assert_eq!(s.best(), Some(50_000.0));

        let (s, _) = run(SearchConfig::default(), 10.0, 1e9);
        assert_eq!(s.best(), None);
        assert_eq!(s.limit(), Limit::MinRate);
    }

    #[test]
    fn step_budget() {
        let cfg = SearchConfig {
            max_steps: 3,
            precision: 0.0001,
            ..SearchConfig::default()
        };
        let (s, tried) = run(cfg, 15_000.0, 1e9);
        assert_eq!(tried.len(), 3);
        assert_eq!(s.limit(), Limit::Steps);
    }
}
