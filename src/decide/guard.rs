//! The reboot-loop guard: a node that needs a reboot again right after kured rebooted it (a
//! package that keeps asking, a sentinel command that always says yes) backs off, longer at each
//! loop in a row, instead of rebooting every period forever.
//!
//! A loop is counted once per reboot: when the reboot is needed again within `window` of the
//! last one kured finished. Loops in a row add up: a loop counted for a reboot that itself
//! followed a back-off is the next of the series. The series ends at the first round that finds a
//! reboot needed outside the window: the record is dropped, and the next loop counts one again.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::Observation;

/// The longest back-off, however many loops in a row.
pub const BACKOFF_CAP: Duration = Duration::from_secs(24 * 3600);

/// `--reboot-loop-window` and `--reboot-loop-backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopGuard {
    /// A reboot needed again within this long after the last one is a loop.
    pub window: Duration,
    /// The first back-off; it doubles at each loop in a row, up to `BACKOFF_CAP`.
    pub backoff: Duration,
}

/// A series of reboot loops, as the agent records it on its Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopRecord {
    /// Loops in a row.
    pub count: u32,
    /// The reboot (its finish, as the agent recorded it) the last loop was counted for.
    pub reboot: Timestamp,
    /// No reboot before this.
    pub until: Timestamp,
}

impl LoopGuard {
    /// The back-off after `count` loops in a row.
    pub fn backoff(&self, count: u32) -> Duration {
        let doublings = count.saturating_sub(1).min(32);
        self.backoff
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(BACKOFF_CAP)
            .min(BACKOFF_CAP)
    }
}

/// The loop record that holds for `obs`, where a reboot is needed at `now`: the one recorded,
/// when it was counted for the last reboot; a new one, when the reboot is needed again within
/// the window; `None` when this is no loop (the agent drops its record then).
pub fn reboot_loop(obs: &Observation, guard: &LoopGuard, now: Timestamp) -> Option<LoopRecord> {
    let last = obs.last_reboot?;
    if let Some(record) = &obs.reboot_loop
        && record.reboot == last
    {
        return Some(record.clone());
    }
    // A reboot recorded a moment ahead of this clock (another host's clock, a rounding) was
    // just now.
    let since = now.duration_since(last).max(SignedDuration::ZERO);
    let window = SignedDuration::try_from(guard.window).unwrap_or(SignedDuration::MAX);
    if since >= window {
        return None;
    }
    let count = obs.reboot_loop.as_ref().map_or(1, |r| r.count.saturating_add(1));
    let backoff = SignedDuration::try_from(guard.backoff(count)).unwrap_or(SignedDuration::MAX);
    Some(LoopRecord {
        count,
        reboot: last,
        until: now.saturating_add(backoff).unwrap_or(Timestamp::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    const GUARD: LoopGuard = LoopGuard {
        window: Duration::from_secs(3600),
        backoff: Duration::from_secs(1800),
    };

    fn obs(last: Option<&str>, record: Option<LoopRecord>) -> Observation {
        Observation {
            last_reboot: last.map(t),
            reboot_loop: record,
            ..crate::decide::tests::base()
        }
    }

    #[test]
    fn the_backoff_doubles_up_to_a_day() {
        let h = |n: u64| Duration::from_secs(n * 60);
        assert_eq!(GUARD.backoff(0), h(30));
        assert_eq!(GUARD.backoff(1), h(30));
        assert_eq!(GUARD.backoff(2), h(60));
        assert_eq!(GUARD.backoff(3), h(120));
        assert_eq!(GUARD.backoff(6), h(960));
        assert_eq!(GUARD.backoff(7), BACKOFF_CAP);
        assert_eq!(GUARD.backoff(u32::MAX), BACKOFF_CAP);
        let huge = LoopGuard {
            backoff: Duration::MAX,
            ..GUARD
        };
        assert_eq!(huge.backoff(3), BACKOFF_CAP);
    }

    #[test]
    fn a_reboot_needed_again_within_the_window_is_a_loop() {
        let now = t("2026-12-06T10:20:00Z");
        // Never rebooted by kured, or long ago: no loop.
        assert_eq!(reboot_loop(&obs(None, None), &GUARD, now), None);
        assert_eq!(
            reboot_loop(&obs(Some("2026-12-06T09:00:00Z"), None), &GUARD, now),
            None
        );
        assert_eq!(
            reboot_loop(&obs(Some("2026-12-06T09:20:00Z"), None), &GUARD, now),
            None
        );
        // 20 minutes after: the first loop.
        let first = reboot_loop(&obs(Some("2026-12-06T10:00:00Z"), None), &GUARD, now).unwrap();
        assert_eq!(
            first,
            LoopRecord {
                count: 1,
                reboot: t("2026-12-06T10:00:00Z"),
                until: t("2026-12-06T10:50:00Z"),
            }
        );
        // Counted once per reboot: later rounds keep the record as it is.
        let later = t("2026-12-06T10:55:00Z");
        assert_eq!(
            reboot_loop(
                &obs(Some("2026-12-06T10:00:00Z"), Some(first.clone())),
                &GUARD,
                later
            ),
            Some(first.clone())
        );
        // The reboot after the back-off loops again: the second in a row, twice as long.
        let now = t("2026-12-06T11:05:00Z");
        let second = reboot_loop(
            &obs(Some("2026-12-06T11:00:00Z"), Some(first.clone())),
            &GUARD,
            now,
        )
        .unwrap();
        assert_eq!(second.count, 2);
        assert_eq!(second.until, t("2026-12-06T12:05:00Z"));
        // Needed again only after the window: the series ends.
        let now = t("2026-12-07T11:00:00Z");
        assert_eq!(
            reboot_loop(&obs(Some("2026-12-06T11:00:00Z"), Some(first)), &GUARD, now),
            None
        );
        // A reboot recorded a moment ahead of this clock was just now: a loop all the same.
        let ahead = reboot_loop(
            &obs(Some("2026-12-06T11:00:00.4Z"), None),
            &GUARD,
            t("2026-12-06T11:00:00Z"),
        )
        .unwrap();
        assert_eq!(ahead.count, 1);
        assert_eq!(ahead.until, t("2026-12-06T11:30:00Z"));
    }
}
