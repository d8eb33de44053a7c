//! Which write an Event takes, as the event series API intends (pure): the first occurrence of a
//! reason and note is a new Event; a repeat within [`SAME_SERIES`] of the last one counts in that
//! Event's `series` instead, written at most once per [`PATCH_SPACING`]. A repeat held back by
//! the spacing is written when the spacing has passed ([`Series::due`]), so the count an Event
//! shows lags the truth by at most that long.

use jiff::{SignedDuration, Timestamp};

/// A repeat this soon after the last occurrence belongs to the same series: a node waiting for
/// hours has one Event per reason and note, not one per round.
pub const SAME_SERIES: SignedDuration = SignedDuration::from_secs(30 * 60);

/// At most one patch of a series this often: a round every few seconds costs the API server one
/// write a minute, not one a round.
pub const PATCH_SPACING: SignedDuration = SignedDuration::from_secs(60);

/// Series kept at most: reasons times the notes of the last half hour are far fewer; the bound
/// only keeps a note that changes every round (a duration in it) from growing the list.
const KEPT: usize = 64;

/// What to write for an occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A new Event; [`Series::created`] records its name once it exists.
    Create,
    /// The series of Event `name`: `count` occurrences so far, the last at `last_observed`.
    Patch {
        name: String,
        count: u32,
        last_observed: Timestamp,
    },
    /// Counted; a later patch carries it.
    Held,
}

#[derive(Debug, Clone)]
struct Entry {
    reason: String,
    note: String,
    /// The Event's name.
    name: String,
    /// Occurrences so far, the first included.
    count: u32,
    last_observed: Timestamp,
    /// The count the Event shows, and when it was last written.
    written: u32,
    written_at: Timestamp,
}

impl Entry {
    fn patch(&mut self, now: Timestamp) -> Write {
        self.written = self.count;
        self.written_at = now;
        Write::Patch {
            name: self.name.clone(),
            count: self.count,
            last_observed: self.last_observed,
        }
    }

    fn pending(&self) -> bool {
        self.count > self.written
    }
}

/// The series of one node's Events of the last [`SAME_SERIES`].
#[derive(Debug, Clone, Default)]
pub struct Series {
    entries: Vec<Entry>,
}

impl Series {
    /// An occurrence of `reason` with `note` at `now`, and what to write for it.
    pub fn observe(&mut self, reason: &str, note: &str, now: Timestamp) -> Write {
        self.entries
            .retain(|e| now.duration_since(e.last_observed) < SAME_SERIES);
        let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.reason == reason && e.note == note)
        else {
            return Write::Create;
        };
        entry.count += 1;
        entry.last_observed = now;
        if now.duration_since(entry.written_at) >= PATCH_SPACING {
            entry.patch(now)
        } else {
            Write::Held
        }
    }

    /// Event `name` was created for the first occurrence of `reason` with `note`, at `at`.
    pub fn created(&mut self, reason: &str, note: &str, name: &str, at: Timestamp) {
        self.entries.retain(|e| !(e.reason == reason && e.note == note));
        if self.entries.len() >= KEPT {
            // The one seen longest ago.
            if let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_observed) {
                self.entries.remove(oldest);
            }
        }
        self.entries.push(Entry {
            reason: reason.to_owned(),
            note: note.to_owned(),
            name: name.to_owned(),
            count: 1,
            last_observed: at,
            written: 1,
            written_at: at,
        });
    }

    /// Event `name` is gone (expired on the API server, deleted) or cannot be written: its next
    /// occurrence starts a new one.
    pub fn forget(&mut self, name: &str) {
        self.entries.retain(|e| e.name != name);
    }

    /// The patches of counts held back whose spacing has passed by `now`.
    pub fn due(&mut self, now: Timestamp) -> Vec<Write> {
        self.entries
            .iter_mut()
            .filter(|e| e.pending() && now.duration_since(e.written_at) >= PATCH_SPACING)
            .map(|e| e.patch(now))
            .collect()
    }

    /// When the first held-back count falls due; `None` when none is held back.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.entries
            .iter()
            .filter(|e| e.pending())
            .filter_map(|e| e.written_at.checked_add(PATCH_SPACING).ok())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).expect("a time")
    }

    fn patch(count: u32, last: i64) -> Write {
        Write::Patch {
            name: "n1.1".to_owned(),
            count,
            last_observed: at(last),
        }
    }

    /// One occurrence after another: (reason, note, second, the write expected). A `Create` is
    /// followed by the creation of Event `n1.1`.
    type Steps = &'static [(&'static str, &'static str, i64, fn() -> Write)];

    fn create() -> Write {
        Write::Create
    }

    fn held() -> Write {
        Write::Held
    }

    #[test]
    fn occurrences_are_created_counted_and_patched_as_the_series_api_intends() {
        const W: &str = "WaitingForLock";
        #[rustfmt::skip]
        let cases: &[(&str, Steps)] = &[
            ("the first occurrence is a new Event", &[(W, "n2", 0, create)]),
            ("repeats within a minute of the last write are held",
             &[(W, "n2", 0, create), (W, "n2", 10, held), (W, "n2", 59, held)]),
            ("a repeat a minute after the last write patches the series with every count",
             &[(W, "n2", 0, create), (W, "n2", 30, held), (W, "n2", 60, || patch(3, 60)),
               (W, "n2", 90, held), (W, "n2", 120, || patch(5, 120))]),
            ("a repeat within half an hour of the last occurrence continues the series",
             &[("Blocked", "alert", 0, create), ("Blocked", "alert", 29 * 60, || patch(2, 29 * 60)),
               ("Blocked", "alert", 58 * 60, || patch(3, 58 * 60))]),
            ("a repeat half an hour after the last occurrence is a new Event",
             &[("Blocked", "alert", 0, create), ("Blocked", "alert", 30 * 60, create)]),
            ("another note or reason is another series",
             &[(W, "n2", 0, create), (W, "n3", 1, create), ("Blocked", "n2", 2, create)]),
            ("a series interrupted by another reason goes on",
             &[("Blocked", "alert", 0, create), (W, "n2", 100, create), ("Blocked", "alert", 200, || patch(2, 200))]),
        ];
        for (case, steps) in cases {
            let mut series = Series::default();
            for (i, (reason, note, second, expected)) in steps.iter().enumerate() {
                let write = series.observe(reason, note, at(*second));
                assert_eq!(write, expected(), "{case}: step {i}");
                if write == Write::Create {
                    series.created(reason, note, "n1.1", at(*second));
                }
            }
        }
    }

    #[test]
    fn an_occurrence_whose_event_was_never_created_is_created_again() {
        let mut series = Series::default();
        assert_eq!(series.observe("Cordoned", "", at(0)), Write::Create);
        // The create failed: nothing recorded.
        assert_eq!(series.observe("Cordoned", "", at(1)), Write::Create);
    }

    #[test]
    fn a_forgotten_event_starts_a_new_series() {
        let mut series = Series::default();
        assert_eq!(series.observe("WaitingForLock", "n2", at(0)), Write::Create);
        series.created("WaitingForLock", "n2", "n1.1", at(0));
        series.forget("n1.1");
        assert_eq!(series.observe("WaitingForLock", "n2", at(100)), Write::Create);
    }

    #[test]
    fn held_counts_fall_due_a_minute_after_the_last_write() {
        let mut series = Series::default();
        assert_eq!(series.next_due(), None);
        series.observe("WaitingForLock", "n2", at(0));
        series.created("WaitingForLock", "n2", "n1.1", at(0));
        assert_eq!(series.next_due(), None, "nothing held back");
        assert_eq!(series.observe("WaitingForLock", "n2", at(20)), Write::Held);
        assert_eq!(series.observe("WaitingForLock", "n2", at(40)), Write::Held);
        assert_eq!(series.next_due(), Some(at(60)));
        assert_eq!(series.due(at(59)), []);
        assert_eq!(series.due(at(60)), [patch(3, 40)]);
        assert_eq!(series.next_due(), None, "written");
        assert_eq!(series.due(at(200)), []);
    }

    #[test]
    fn the_list_is_bounded_by_forgetting_the_series_seen_longest_ago() {
        let mut series = Series::default();
        for i in 0..=KEPT {
            let note = i.to_string();
            series.created("Drained", &note, &format!("n1.{i}"), at(i as i64));
        }
        assert_eq!(series.entries.len(), KEPT);
        assert_eq!(
            series.observe("Drained", "0", at(100)),
            Write::Create,
            "the oldest went"
        );
        assert_eq!(
            series.observe("Drained", "1", at(100)),
            patch_named("n1.1", 2, 100)
        );
    }

    fn patch_named(name: &str, count: u32, last: i64) -> Write {
        Write::Patch {
            name: name.to_owned(),
            count,
            last_observed: at(last),
        }
    }
}
