//! Floor control for half-duplex splices (push-to-talk): one talker at a time.

use crate::types::LegId;

/// Who holds the floor of a half-duplex splice.
#[derive(Clone, Copy, Debug)]
pub struct Floor {
    holder: Option<LegId>,
    last_ns: u64,
    /// Granted by the owner: kept until released or re-granted, whatever the silence.
    explicit: bool,
    release_after_ns: u64,
}

impl Floor {
    /// A free floor that passes to a new talker after `release_after_ns` of silence.
    pub fn new(release_after_ns: u64) -> Self {
        Self {
            holder: None,
            last_ns: 0,
            explicit: false,
            release_after_ns,
        }
    }

    /// Current holder.
    pub fn holder(&self) -> Option<LegId> {
        self.holder
    }

    /// Whether a packet from `leg` at `now_ns` may be forwarded; takes a free floor.
    #[inline]
    pub fn admit(&mut self, leg: LegId, now_ns: u64) -> bool {
        match self.holder {
            Some(h) if h == leg => {
                self.last_ns = now_ns;
                true
            }
            Some(_)
                if self.explicit || now_ns.saturating_sub(self.last_ns) < self.release_after_ns =>
            {
                false
            }
            _ => {
                self.holder = Some(leg);
                self.last_ns = now_ns;
                self.explicit = false;
                true
            }
        }
    }

    /// Grants the floor to `leg` (or frees it with `None`).
    pub fn grant(&mut self, leg: Option<LegId>, now_ns: u64) {
        self.holder = leg;
        self.explicit = leg.is_some();
        self.last_ns = now_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn first_talker_takes_the_floor_and_silence_frees_it() {
        let (a, b) = (LegId(1), LegId(2));
        let mut f = Floor::new(500 * MS);
        assert!(f.admit(a, 0));
        assert!(!f.admit(b, 100 * MS));
        assert!(f.admit(a, 400 * MS));
        assert!(!f.admit(b, 800 * MS), "a spoke 400 ms ago");
        assert!(f.admit(b, 901 * MS), "a silent for 501 ms");
        assert_eq!(f.holder(), Some(b));
        assert!(!f.admit(a, 950 * MS));
    }

    #[test]
    fn an_explicit_grant_holds_through_silence() {
        let (a, b) = (LegId(1), LegId(2));
        let mut f = Floor::new(500 * MS);
        f.grant(Some(b), 0);
        assert!(!f.admit(a, 10_000 * MS));
        assert!(f.admit(b, 10_001 * MS));
        f.grant(None, 10_002 * MS);
        assert!(f.admit(a, 10_003 * MS));
    }
}
