//! A report budget: at most `per_window` audit records per source (a subject, an address…) in
//! any window, the ones over counted and summarised, so that a flood of refused requests cannot
//! flood — and with rotation, erase — the audit log.
//!
//! The mechanism is `tls.refused`'s (`crate::tls_accept`), generalised to many keys: a
//! record over the budget is not written; its count goes with the next record that source may
//! write (`suppressed_before`), or into a summary that [`ReportBudget::take_summaries`] hands
//! out at the end of the window, whichever comes first. Every refusal is counted exactly once.
//! Only the audit records are budgeted: the caller still answers every refused request.
//!
//! Memory is bounded: at most `max_sources` sources are tracked. A new source in a full table
//! takes the place of the one whose window started longest ago; what that one left out is kept
//! as a summary (with its source) for the next [`ReportBudget::take_summaries`], so a flood of
//! new sources never turns a known source's summary into an anonymous one. Those pending
//! summaries are bounded too (`max_sources`); beyond that their counts go to one summary
//! without a source. Sources with nothing left to report are forgotten when their window ends.
//! Keep kinds of sources that an attacker can mint at different costs (verified subjects,
//! addresses) in separate budgets, so that one kind cannot evict the other.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What one source may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetPolicy {
    /// Records written per source in one window.
    pub per_window: u32,
    /// The window's length (one minute in production).
    pub window: Duration,
    /// Sources tracked one by one; a new one beyond it evicts the oldest (its count kept).
    pub max_sources: usize,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        BudgetPolicy {
            per_window: 60,
            window: Duration::from_secs(60),
            max_sources: 4096,
        }
    }
}

/// The decision for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Write it, carrying this many records of its sources left out before it.
    Write {
        /// Records of its sources left out since the last one written.
        suppressed_before: u64,
    },
    /// Do not write it; it was counted against its first source over the budget.
    Suppressed,
}

/// Records left out for one source, handed out once as a summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary<K> {
    /// `None`: the counts of evicted sources beyond `max_sources` pending summaries.
    pub source: Option<K>,
    /// How many of its records were left out.
    pub left_out: u64,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    written: u32,
    suppressed: u64,
}

#[derive(Debug)]
struct State<K> {
    sources: HashMap<K, Window>,
    /// Summaries of evicted sources, not yet taken (at most `max_sources`).
    evicted: Vec<Summary<K>>,
    /// Left-out counts of evicted sources beyond `evicted`'s bound.
    evicted_overflow: u64,
}

/// Budgets per source of type `K`; share it behind an `Arc`.
#[derive(Debug)]
pub struct ReportBudget<K> {
    policy: BudgetPolicy,
    state: Mutex<State<K>>,
}

impl<K: Eq + Hash + Clone> ReportBudget<K> {
    /// A budget under `policy`, with nothing counted yet.
    pub fn new(policy: BudgetPolicy) -> Self {
        ReportBudget {
            policy,
            state: Mutex::new(State {
                sources: HashMap::new(),
                evicted: Vec::new(),
                evicted_overflow: 0,
            }),
        }
    }

    /// The policy it counts under.
    pub fn policy(&self) -> BudgetPolicy {
        self.policy
    }

    /// Whether one record attributed to every source in `sources` (a subject and an address,
    /// say) may be written: only if none of them is over its budget. When it is, each source's
    /// window counts it; when it is not, the first source over the budget counts it as left out.
    pub fn admit(&self, sources: &[K]) -> Admission {
        self.admit_at(sources, Instant::now())
    }

    fn admit_at(&self, sources: &[K], now: Instant) -> Admission {
        let policy = self.policy;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Every source gets its own entry (evicting the oldest when the table is full); roll
        // over ended windows and find the first source over its budget.
        let mut over: Option<usize> = None;
        for (i, key) in sources.iter().enumerate() {
            if !state.sources.contains_key(key) {
                if state.sources.len() >= policy.max_sources.max(1) {
                    state.evict_oldest(policy.max_sources, sources);
                }
                state.sources.insert(key.clone(), Window::new(now));
            }
            if let Some(window) = state.sources.get_mut(key) {
                window.roll(now, policy.window);
                if over.is_none() && window.written >= policy.per_window {
                    over = Some(i);
                }
            }
        }
        if let Some(i) = over {
            if let Some(window) = state.sources.get_mut(&sources[i]) {
                window.suppressed += 1;
            }
            return Admission::Suppressed;
        }
        let mut suppressed_before = 0;
        for key in sources {
            if let Some(window) = state.sources.get_mut(key) {
                window.written += 1;
                suppressed_before += std::mem::take(&mut window.suppressed);
            }
        }
        Admission::Write { suppressed_before }
    }

    /// The records left out since they were last reported, per source (taking them), and
    /// forgets the sources whose window has ended with nothing left to report. Call it at
    /// least once per window (a timer) and write one summary record for each.
    pub fn take_summaries(&self) -> Vec<Summary<K>> {
        self.take_summaries_at(Instant::now())
    }

    fn take_summaries_at(&self, now: Instant) -> Vec<Summary<K>> {
        let window = self.policy.window;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::mem::take(&mut state.evicted);
        state.sources.retain(|key, w| {
            let left_out = std::mem::take(&mut w.suppressed);
            if left_out > 0 {
                out.push(Summary {
                    source: Some(key.clone()),
                    left_out,
                });
            }
            now.duration_since(w.start) < window
        });
        let left_out = std::mem::take(&mut state.evicted_overflow);
        if left_out > 0 {
            out.push(Summary {
                source: None,
                left_out,
            });
        }
        out
    }
}

impl<K: Eq + Hash + Clone> State<K> {
    /// Drops the source whose window started longest ago, keeping what it left out as a
    /// pending summary (or, with `max_pending` of those waiting, in the sourceless count).
    /// O(sources): only a full table pays it, once per new source. The sources of the record
    /// being admitted (`keep`) stay.
    fn evict_oldest(&mut self, max_pending: usize, keep: &[K]) {
        let Some(oldest) = self
            .sources
            .iter()
            .filter(|(k, _)| !keep.contains(k))
            .min_by_key(|(_, w)| w.start)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        let Some(w) = self.sources.remove(&oldest) else {
            return;
        };
        if w.suppressed == 0 {
            return;
        }
        if self.evicted.len() < max_pending {
            self.evicted.push(Summary {
                source: Some(oldest),
                left_out: w.suppressed,
            });
        } else {
            self.evicted_overflow += w.suppressed;
        }
    }
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            start: now,
            written: 0,
            suppressed: 0,
        }
    }

    /// A new window once the last has ended (left-out counts are kept until reported).
    fn roll(&mut self, now: Instant, length: Duration) {
        if now.duration_since(self.start) >= length {
            self.start = now;
            self.written = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(per_window: u32, max_sources: usize) -> ReportBudget<&'static str> {
        ReportBudget::new(BudgetPolicy {
            per_window,
            window: Duration::from_secs(60),
            max_sources,
        })
    }

    #[test]
    fn records_over_the_budget_are_counted_once_and_carried_by_the_next_written() {
        let b = budget(2, 16);
        let t0 = Instant::now();
        let w0 = Admission::Write {
            suppressed_before: 0,
        };
        assert_eq!(b.admit_at(&["alice"], t0), w0);
        assert_eq!(b.admit_at(&["alice"], t0), w0);
        assert_eq!(b.admit_at(&["alice"], t0), Admission::Suppressed);
        assert_eq!(b.admit_at(&["alice"], t0), Admission::Suppressed);
        assert_eq!(b.admit_at(&["bob"], t0), w0, "another source has its own");
        let later = t0 + Duration::from_secs(61);
        assert_eq!(
            b.admit_at(&["alice"], later),
            Admission::Write {
                suppressed_before: 2
            }
        );
        assert!(b.take_summaries_at(later).is_empty(), "already carried");
    }

    #[test]
    fn a_record_is_written_only_when_every_source_has_budget_left() {
        let b = budget(1, 16);
        let t0 = Instant::now();
        assert!(matches!(
            b.admit_at(&["alice", "10.0.0.1"], t0),
            Admission::Write { .. }
        ));
        // A new subject from the same address: the address is over its budget.
        assert_eq!(
            b.admit_at(&["carol", "10.0.0.1"], t0),
            Admission::Suppressed
        );
        let summaries = b.take_summaries_at(t0);
        assert_eq!(
            summaries,
            vec![Summary {
                source: Some("10.0.0.1"),
                left_out: 1
            }]
        );
        // carol's own window was not charged by the suppressed record.
        assert!(matches!(
            b.admit_at(&["carol", "10.0.0.2"], t0),
            Admission::Write { .. }
        ));
    }

    #[test]
    fn summaries_are_taken_once_and_ended_windows_forgotten() {
        let b = budget(1, 16);
        let t0 = Instant::now();
        b.admit_at(&["alice"], t0);
        b.admit_at(&["alice"], t0);
        b.admit_at(&["alice"], t0);
        let s = b.take_summaries_at(t0);
        assert_eq!(
            s,
            vec![Summary {
                source: Some("alice"),
                left_out: 2
            }]
        );
        assert!(b.take_summaries_at(t0).is_empty());
        b.take_summaries_at(t0 + Duration::from_secs(61));
        assert!(b.state.lock().expect("lock").sources.is_empty());
    }

    /// Issue #10 review: 4,096 sources filled the table and every new one shared an overflow
    /// entry, so a real user's flood was summarised with no subject. A new source now gets its
    /// own entry; the oldest is evicted, its count kept under its own name.
    #[test]
    fn a_new_source_in_a_full_table_evicts_the_oldest_after_summarising_it() {
        let b = budget(1, 2);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        assert!(matches!(b.admit_at(&["a"], t0), Admission::Write { .. }));
        assert_eq!(b.admit_at(&["a"], t0), Admission::Suppressed);
        assert!(matches!(b.admit_at(&["b"], t1), Admission::Write { .. }));
        // The table is full: "c" takes the place of "a", the oldest, whose count is kept.
        assert!(matches!(b.admit_at(&["c"], t1), Admission::Write { .. }));
        assert_eq!(
            b.admit_at(&["c"], t1),
            Admission::Suppressed,
            "c's own budget"
        );
        assert_eq!(b.state.lock().expect("lock").sources.len(), 2);
        let mut s = b.take_summaries_at(t1);
        s.sort_by_key(|s| s.source);
        assert_eq!(
            s,
            vec![
                Summary {
                    source: Some("a"),
                    left_out: 1
                },
                Summary {
                    source: Some("c"),
                    left_out: 1
                },
            ]
        );
    }

    #[test]
    fn pending_summaries_of_evicted_sources_are_bounded() {
        let b = ReportBudget::new(BudgetPolicy {
            per_window: 0,
            window: Duration::from_secs(60),
            max_sources: 2,
        });
        let t0 = Instant::now();
        for i in 0..10u32 {
            assert_eq!(
                b.admit_at(&[i], t0 + Duration::from_millis(i.into())),
                Admission::Suppressed
            );
        }
        let s = b.take_summaries_at(t0 + Duration::from_secs(1));
        assert!(s.len() <= 2 + 2 + 1, "{s:?}");
        assert_eq!(
            s.iter().map(|s| s.left_out).sum::<u64>(),
            10,
            "each counted once"
        );
        assert!(s.iter().any(|s| s.source.is_none()));
    }
}
