//! The reboot window: weekdays and a time-of-day range in an IANA time zone.
//!
//! Built from upstream kured's flags `--reboot-days` (default every day), `--start-time` (default
//! `0:00`), `--end-time` (default `23:59:59`) and `--time-zone` (default `UTC`), and evaluated exactly as
//! upstream's `timewindow` package evaluates it, so a fleet mixing upstream agents and ours agrees on
//! when rebooting is allowed.
//!
//! # Semantics of [`RebootWindow::contains`]
//!
//! For an instant `t`, take its local date and weekday in the window's zone. If the weekday is not one of
//! the reboot days, `t` is outside. Otherwise `start` is that date at the start time and `end` is that
//! date at the end time plus 999 999 999 ns (so `--end-time=23:59:59` covers the whole last second).
//! When the start time of day is after the end time (a window across midnight), `start` moves back 24
//! hours if `t` is before `end`, and otherwise `end` moves forward 24 hours. `t` is inside iff
//! `start <= t <= end`. Consequences kept from upstream:
//!
//! - The weekday tested is the one of `t` itself: a `fr` window from 22:00 to 02:00 includes early
//!   Friday morning (the tail of Thursday night's window) and excludes early Saturday morning.
//! - The 24-hour moves are 24 elapsed hours, not a calendar day, so they shift by the DST change on the
//!   two days a year the clocks move.
//! - Across midnight, the end instant itself (`end-time` + 999 999 999 ns) is outside, one nanosecond
//!   earlier than in a same-day window.
//!
//! "That date at a time of day" is resolved like Go's `time.Date`: read the wall clock as if it were
//! UTC, take the zone's offset at that instant, and use the offset in force at the instant that offset
//! points to. In a DST gap this typically lands an hour forward in zones east of Greenwich (02:30 on Berlin's
//! spring-forward day is 03:30 CEST) and an hour back in zones west of it (02:30 on New York's is 01:30
//! EST); in a fold it picks the later occurrence east of Greenwich and the earlier one west of it.
//! Matching this keeps our answer equal to upstream's on those days too.
//!
//! # Time zones
//!
//! Names are looked up in the IANA database bundled into the binary, never in the host's
//! `/usr/share/zoneinfo`. As with Go's `time.LoadLocation`, `""` and `UTC` mean UTC and `Local` means
//! the zone of the system kured runs on; `Local` is the one name resolved from the environment (the
//! `TZ` variable or `/etc/localtime`), once, when the window is built, and it is an error when that zone
//! cannot be determined (always so in a build without jiff's `tz-system` feature).

use std::cmp::{max, min};
use std::fmt;

use jiff::civil;
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};

use self::parse::{Weekdays, load_time_zone, parse_time_of_day};
pub use self::schedule::{Schedule, ScheduleWindow};

mod parse;
mod schedule;

/// How far [`RebootWindow::next_windows`] looks for an opening or a closing: a year and a week, so the
/// span holds every weekday and every yearly rule of the zone.
const HORIZON_DAYS: i64 = 371;
/// How much of the timeline one pass over the boundaries covers: long enough to keep the days of
/// margin around it cheap, short enough that a nearby answer does not compute a month of boundaries.
const CHUNK_DAYS: i64 = 28;
/// Days of margin around a chunk when listing boundaries; zone offsets and the 24-hour moves reach at
/// most about two days from the local date an instant falls on.
const MARGIN_DAYS: i64 = 3;
const NANOS_PER_DAY: i64 = 86_400_000_000_000;
/// Added to the end of the window: the last nanosecond of the end second is inside.
const END_SUBSEC_NANOS: i64 = 999_999_999;

/// A problem with one of the reboot-window flags.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// A `--reboot-days` entry that is neither a weekday name nor a number from 0 to 6.
    #[error(
        "invalid --reboot-days entry {value:?}: expected a weekday (su, sun, sunday, mo, …, sa, sat, \
         saturday, any case) or a number from 0 (Sunday) to 6 (Saturday)"
    )]
    Weekday { value: String },
    /// A `--start-time` in none of the accepted layouts.
    #[error(
        "invalid --start-time {value:?}: expected a time of day like 15:04, 15:04:05, 03:04pm, 15, 03pm \
         or 3pm"
    )]
    StartTime { value: String },
    /// An `--end-time` in none of the accepted layouts.
    #[error(
        "invalid --end-time {value:?}: expected a time of day like 15:04, 15:04:05, 03:04pm, 15, 03pm or 3pm"
    )]
    EndTime { value: String },
    /// A `--time-zone` that names no zone of the bundled database (or `Local` when the system zone
    /// cannot be determined).
    #[error(
        "invalid --time-zone {value:?}: expected an IANA time zone name such as Europe/Berlin, UTC or Local"
    )]
    TimeZone {
        value: String,
        #[source]
        source: jiff::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = WindowError> = std::result::Result<T, E>;

/// `ts` moved by `nanos`, clamped to the range jiff can represent.
fn shift(ts: Timestamp, nanos: i64) -> Timestamp {
    ts.checked_add(SignedDuration::from_nanos(nanos))
        .unwrap_or(if nanos < 0 { Timestamp::MIN } else { Timestamp::MAX })
}

/// The instant Go's `time.Date` yields for `date` at the whole seconds of `time` in `zone`.
///
/// Go reads the wall clock as a UTC instant, takes the zone's offset there, and then uses the offset in
/// force at the instant that first offset points to. Dates at the very ends of jiff's range clamp.
fn go_date(zone: &TimeZone, date: civil::Date, time: civil::Time) -> Timestamp {
    let resolved = civil::Time::new(time.hour(), time.minute(), time.second(), 0).and_then(|whole| {
        let wall = date.to_datetime(whole);
        let guess = zone.to_offset(Offset::UTC.to_timestamp(wall)?);
        zone.to_offset(guess.to_timestamp(wall)?).to_timestamp(wall)
    });
    resolved.unwrap_or(if date.year() < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// The weekdays, times of day and time zone during which rebooting is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebootWindow {
    days: Weekdays,
    start: civil::Time,
    end: civil::Time,
    zone: TimeZone,
    zone_name: String,
}

/// One maximal stretch of time during which [`RebootWindow::contains`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opening {
    /// The first instant inside. `None` when the window was already open a year (the search horizon)
    /// before the instant asked about, which in practice means it is always open.
    pub opens: Option<Timestamp>,
    /// The first instant after `opens` that is outside again (exclusive end). `None` when the window
    /// stays open for a year (the search horizon) after opening; zone rules repeat yearly, so it never
    /// closes.
    pub closes: Option<Timestamp>,
}

impl Opening {
    /// Whether `t` falls in this opening.
    pub fn contains(&self, t: Timestamp) -> bool {
        self.opens.is_none_or(|opens| opens <= t) && self.closes.is_none_or(|closes| t < closes)
    }
}

impl RebootWindow {
    /// Builds the window from the four flags, checked in upstream's order: days, zone, start, end.
    ///
    /// `days` are `--reboot-days` entries (weekday names or numbers as upstream reads them; empty
    /// entries are skipped), `start` and `end` are times of day in one of upstream's layouts
    /// (`15:04`, `15:04:05`, `03:04pm`, `15`, `03pm`, `3pm`), `zone` an IANA name, `""` or `UTC` for
    /// UTC, or `Local` for the system's zone.
    pub fn new<S: AsRef<str>>(days: &[S], start: &str, end: &str, zone: &str) -> Result<RebootWindow> {
        let days = Weekdays::parse(days)?;
        let time_zone = load_time_zone(zone)?;
        let start_time = parse_time_of_day(start).ok_or_else(|| WindowError::StartTime {
            value: start.to_owned(),
        })?;
        let end_time = parse_time_of_day(end).ok_or_else(|| WindowError::EndTime {
            value: end.to_owned(),
        })?;
        let zone_name = if zone.is_empty() { "UTC" } else { zone };
        Ok(RebootWindow {
            days,
            start: start_time,
            end: end_time,
            zone: time_zone,
            zone_name: zone_name.to_owned(),
        })
    }

    /// Whether the window runs across midnight (start time of day after end time of day).
    fn spans_midnight(&self) -> bool {
        self.start > self.end
    }

    /// Whether rebooting is allowed at `t`, with exactly upstream's semantics (see the module docs).
    pub fn contains(&self, t: Timestamp) -> bool {
        let local = self.zone.to_datetime(t);
        if !self.days.contains(local.weekday()) {
            return false;
        }
        let date = local.date();
        let mut start = go_date(&self.zone, date, self.start);
        let mut end = shift(go_date(&self.zone, date, self.end), END_SUBSEC_NANOS);
        if self.spans_midnight() {
            if t < end {
                start = shift(start, -NANOS_PER_DAY);
            } else {
                end = shift(end, NANOS_PER_DAY);
            }
        }
        start <= t && t <= end
    }

    /// Every instant in `[lo, hi)` at which [`contains`](Self::contains) may change its answer, plus `lo`.
    ///
    /// The answer depends on the local date of the instant and on comparisons with instants derived from
    /// that date, so it can only change at a local midnight, at a zone transition, at a window start
    /// (also 24 hours earlier), just after a window end (also 24 hours later) or, across midnight, at a
    /// window end. Between two consecutive boundaries the answer is constant.
    fn boundaries(&self, lo: Timestamp, hi: Timestamp) -> Vec<Timestamp> {
        let margin = SignedDuration::from_hours(24 * MARGIN_DAYS);
        let first = self.zone.to_datetime(lo).date().saturating_sub(margin);
        let last = self.zone.to_datetime(hi).date().saturating_add(margin);
        let mut points = vec![lo];
        let mut date = first;
        loop {
            let start = go_date(&self.zone, date, self.start);
            let end = shift(go_date(&self.zone, date, self.end), END_SUBSEC_NANOS);
            points.extend([start, shift(end, 1)]);
            if self.spans_midnight() {
                points.extend([shift(start, -NANOS_PER_DAY), end, shift(end, NANOS_PER_DAY + 1)]);
            }
            let midnight = date.to_datetime(civil::Time::midnight());
            let offsets = match self.zone.to_ambiguous_timestamp(midnight).offset() {
                AmbiguousOffset::Unambiguous { offset } => [Some(offset), None],
                AmbiguousOffset::Gap { before, after } | AmbiguousOffset::Fold { before, after } => {
                    [Some(before), Some(after)]
                }
            };
            points.extend(
                offsets
                    .into_iter()
                    .flatten()
                    .filter_map(|offset| offset.to_timestamp(midnight).ok()),
            );
            match date.tomorrow() {
                Ok(next) if date < last => date = next,
                _ => break,
            }
        }
        let transitions = self
            .zone
            .following(shift(lo, -1))
            .map(|transition| transition.timestamp());
        points.extend(transitions.take_while(|&at| at < hi));
        points.retain(|&at| lo <= at && at < hi);
        points.sort_unstable();
        points.dedup();
        points
    }

    /// `[lo, hi)` split into maximal runs of equal [`contains`](Self::contains) answers: each run's first
    /// instant and answer, consecutive runs alternating.
    fn runs(&self, lo: Timestamp, hi: Timestamp) -> Vec<(Timestamp, bool)> {
        fn push(runs: &mut Vec<(Timestamp, bool)>, at: Timestamp, inside: bool) {
            if runs.last().map(|&(_, previous)| previous) != Some(inside) {
                runs.push((at, inside));
            }
        }
        let points = self.boundaries(lo, hi);
        let mut runs = Vec::new();
        for (i, &at) in points.iter().enumerate() {
            push(&mut runs, at, self.contains(at));
            let next = points.get(i + 1).copied().unwrap_or(hi);
            let between = shift(at, 1);
            if between < next {
                push(&mut runs, between, self.contains(between));
            }
        }
        runs
    }

    /// The first instant after `after` and before `limit` whose answer differs from `inside`.
    fn next_change(&self, after: Timestamp, inside: bool, limit: Timestamp) -> Option<Timestamp> {
        let mut lo = shift(after, 1);
        while lo < limit {
            let hi = min(shift(lo, CHUNK_DAYS * NANOS_PER_DAY), limit);
            if let Some(&(at, _)) = self.runs(lo, hi).iter().find(|&&(_, answer)| answer != inside) {
                return Some(at);
            }
            lo = hi;
        }
        None
    }

    /// The earliest instant from which the answer is `inside` all the way up to `at` (included), or
    /// `None` when that stretch reaches back to `limit`.
    fn run_start(&self, at: Timestamp, inside: bool, limit: Timestamp) -> Option<Timestamp> {
        let mut hi = shift(at, 1);
        while limit < hi {
            let lo = max(shift(hi, -CHUNK_DAYS * NANOS_PER_DAY), limit);
            let runs = self.runs(lo, hi);
            if let Some(i) = runs.iter().rposition(|&(_, answer)| answer != inside) {
                return Some(runs.get(i + 1).map_or(hi, |&(start, _)| start));
            }
            hi = lo;
        }
        None
    }

    /// The next `count` openings of the window, in order, starting with the one containing `from` if
    /// `from` is inside (its `opens` is then the true opening, before `from`).
    ///
    /// Openings are maximal: where the window of one day ends exactly when the next begins (every day
    /// 0:00–23:59:59), they form one opening. A window that stays open for the whole search horizon (a
    /// year) is reported as one opening with `closes: None`; one that was already open a year before
    /// `from` has `opens: None`. Fewer than `count` openings come back when the window does not open
    /// again within a year of the last closing, and none at all for an empty set of days.
    pub fn next_windows(&self, from: Timestamp, count: usize) -> Vec<Opening> {
        let mut openings = Vec::new();
        if count == 0 || self.days.is_empty() {
            return openings;
        }
        let horizon = HORIZON_DAYS * NANOS_PER_DAY;
        let mut cursor = from;
        if self.contains(from) {
            let opens = self.run_start(from, true, shift(from, -horizon));
            let closes = self.next_change(from, true, shift(from, horizon));
            openings.push(Opening { opens, closes });
            match closes {
                Some(closes) => cursor = closes,
                None => return openings,
            }
        }
        while openings.len() < count {
            let Some(opens) = self.next_change(cursor, false, shift(cursor, horizon)) else {
                break;
            };
            let closes = self.next_change(opens, true, shift(opens, horizon));
            openings.push(Opening {
                opens: Some(opens),
                closes,
            });
            match closes {
                Some(closes) => cursor = closes,
                None => break,
            }
        }
        openings
    }
}

/// Writes a time of day as `HH:MM`, adding `:SS` and a fraction only when they are not zero.
fn write_time_of_day(f: &mut fmt::Formatter<'_>, time: civil::Time) -> fmt::Result {
    write!(f, "{:02}:{:02}", time.hour(), time.minute())?;
    if time.second() != 0 || time.subsec_nanosecond() != 0 {
        write!(f, ":{:02}", time.second())?;
    }
    if time.subsec_nanosecond() != 0 {
        let fraction = format!("{:09}", time.subsec_nanosecond());
        write!(f, ".{}", fraction.trim_end_matches('0'))?;
    }
    Ok(())
}

/// Upstream's description, with seconds when the flags had them:
/// `---MonTueWedThuFri--- between 22:00 and 06:00 Europe/Berlin`.
impl fmt::Display for RebootWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} between ", self.days)?;
        write_time_of_day(f, self.start)?;
        f.write_str(" and ")?;
        write_time_of_day(f, self.end)?;
        write!(f, " {}", self.zone_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(super) fn ts(text: &str) -> Timestamp {
        match text.parse::<Timestamp>() {
            Ok(ts) => ts,
            Err(err) => panic!("bad test instant {text:?}: {err}"),
        }
    }

    pub(super) type Flags = (&'static str, &'static str, &'static str, &'static str);

    pub(super) fn window((days, start, end, zone): Flags) -> RebootWindow {
        let days: Vec<&str> = days.split(',').collect();
        match RebootWindow::new(&days, start, end, zone) {
            Ok(window) => window,
            Err(err) => panic!("bad test window {days:?} {start} {end} {zone}: {err}"),
        }
    }

    /// Each row: case name, window flags, instant, expected `contains`.
    fn check_contains(cases: &[(&str, Flags, &str, bool)]) {
        for &(name, flags, at, inside) in cases {
            let w = window(flags);
            assert_eq!(w.contains(ts(at)), inside, "case {name}: {w} at {at}");
        }
    }

    const LA_WEEKDAY_9_TO_5: Flags = ("mon,tue,wed,thu,fri", "9am", "5pm", "America/Los_Angeles");
    const LA_MWF_MORNING: Flags = ("mon,we,fri", "10:01", "11:30am", "America/Los_Angeles");
    const UTC_WORKDAYS: Flags = ("mo,tu,we,th,fr", "00:00", "23:59:59", "UTC");
    const LA_WEEKNIGHTS: Flags = ("mon,tue,wed,thu,fri", "9pm", "5am", "America/Los_Angeles");
    pub(super) const UTC_DEFAULTS: Flags = ("su,mo,tu,we,th,fr,sa", "0:00", "23:59:59", "UTC");
    const UTC_FRIDAY_NIGHT: Flags = ("fr", "22:00", "02:00", "UTC");
    const UTC_FRIDAY_EARLY: Flags = ("fr", "05:00", "06:00", "UTC");
    const UTC_FRIDAY_SECOND: Flags = ("fr", "05:00", "05:00", "UTC");
    const UTC_FRIDAY_HALF_SECOND: Flags = ("fr", "10:00:00.5", "10:00:00", "UTC");
    const AUCKLAND_SATURDAY: Flags = ("sa", "0:00", "23:59:59", "Pacific/Auckland");
    pub(super) const BERLIN_WEEKNIGHTS: Flags = ("mo,tu,we,th,fr", "22:00", "06:00", "Europe/Berlin");

    /// Every day, as upstream's default `--reboot-days` lists them.
    const EVERY_DAY: [&str; 7] = ["su", "mo", "tu", "we", "th", "fr", "sa"];

    /// Every case of upstream's `TestTimeWindows`, plus the across-midnight cases of upstream issue #204.
    #[rustfmt::skip]
    #[test]
    fn upstream_time_window_cases() {
        check_contains(&[
            ("LA 9-5: Thursday 00:49", LA_WEEKDAY_9_TO_5, "2019-04-04T00:49:00-07:00", false),
            ("LA 9-5: Friday 08:59", LA_WEEKDAY_9_TO_5, "2019-04-05T08:59:00-07:00", false),
            ("LA 9-5: Friday 09:01", LA_WEEKDAY_9_TO_5, "2019-04-05T09:01:00-07:00", true),
            ("LA 9-5: Sunday 10:00", LA_WEEKDAY_9_TO_5, "2019-03-31T10:00:00-07:00", false),
            ("LA 9-5: Thursday 12:00", LA_WEEKDAY_9_TO_5, "2019-04-04T12:00:00-07:00", true),
            ("LA 9-5: 11:59 UTC is 04:59 PDT", LA_WEEKDAY_9_TO_5, "2019-04-04T11:59:00Z", false),
            ("LA MWF morning: Friday", LA_MWF_MORNING, "2019-04-05T10:30:00-07:00", true),
            ("LA MWF morning: Saturday", LA_MWF_MORNING, "2019-04-06T10:30:00-07:00", false),
            ("LA MWF morning: Sunday", LA_MWF_MORNING, "2019-04-07T10:30:00-07:00", false),
            ("LA MWF morning: Monday", LA_MWF_MORNING, "2019-04-08T10:30:00-07:00", true),
            ("LA MWF morning: Tuesday", LA_MWF_MORNING, "2019-04-09T10:30:00-07:00", false),
            ("LA MWF morning: Wednesday", LA_MWF_MORNING, "2019-04-10T10:30:00-07:00", true),
            ("LA MWF morning: Thursday", LA_MWF_MORNING, "2019-04-11T10:30:00-07:00", false),
            ("UTC workdays: midnight", UTC_WORKDAYS, "2019-04-18T00:00:00Z", true),
            ("UTC workdays: 23:59", UTC_WORKDAYS, "2019-04-18T23:59:00Z", true),
            ("LA weeknights: Thursday 00:49", LA_WEEKNIGHTS, "2019-04-04T00:49:00-07:00", true),
            ("LA weeknights: Thursday 22:49", LA_WEEKNIGHTS, "2019-04-04T22:49:00-07:00", true),
            ("LA weeknights: Friday 08:59", LA_WEEKNIGHTS, "2019-04-05T08:59:00-07:00", false),
            ("LA weeknights: Friday 09:01", LA_WEEKNIGHTS, "2019-04-05T09:01:00-07:00", false),
            ("LA weeknights: Sunday 10:00", LA_WEEKNIGHTS, "2019-03-31T10:00:00-07:00", false),
            ("LA weeknights: Thursday noon", LA_WEEKNIGHTS, "2019-04-04T12:00:00-07:00", false),
        ]);
    }

    /// 2026-11-27 is a Friday.
    #[rustfmt::skip]
    #[test]
    fn window_bounds_and_midnight() {
        check_contains(&[
            ("same day: at start", UTC_WORKDAYS, "2026-11-27T00:00:00Z", true),
            ("same day: last nanosecond", UTC_WORKDAYS, "2026-11-27T23:59:59.999999999Z", true),
            ("same day: Saturday", UTC_WORKDAYS, "2026-11-28T00:00:00Z", false),
            ("defaults: any instant", UTC_DEFAULTS, "2026-11-28T13:14:15.5Z", true),
            ("end minute: within its first second", UTC_FRIDAY_EARLY, "2026-11-27T06:00:00.5Z", true),
            ("end minute: one second later", UTC_FRIDAY_EARLY, "2026-11-27T06:00:01Z", false),
            ("before start", UTC_FRIDAY_EARLY, "2026-11-27T04:59:59.999999999Z", false),
            ("start equals end: that second", UTC_FRIDAY_SECOND, "2026-11-27T05:00:00.9Z", true),
            ("start equals end: next second", UTC_FRIDAY_SECOND, "2026-11-27T05:00:01Z", false),
            ("across midnight: Friday 22:00", UTC_FRIDAY_NIGHT, "2026-11-27T22:00:00Z", true),
            ("across midnight: Friday 21:59:59", UTC_FRIDAY_NIGHT, "2026-11-27T21:59:59Z", false),
            ("across midnight: Friday 23:59", UTC_FRIDAY_NIGHT, "2026-11-27T23:59:00Z", true),
            // The weekday is that of the instant tested: Friday 01:00 is the tail of Thursday night...
            ("across midnight: Friday 01:00", UTC_FRIDAY_NIGHT, "2026-11-27T01:00:00Z", true),
            // ...and Saturday 01:00, though it follows Friday 22:00, is outside.
            ("across midnight: Saturday 01:00", UTC_FRIDAY_NIGHT, "2026-11-28T01:00:00Z", false),
            ("across midnight: Friday 02:00:00.5", UTC_FRIDAY_NIGHT, "2026-11-27T02:00:00.5Z", true),
            // Across midnight the end instant itself takes the "not before end" branch and is outside.
            ("across midnight: end instant", UTC_FRIDAY_NIGHT, "2026-11-27T02:00:00.999999999Z", false),
            ("across midnight: 02:00:01", UTC_FRIDAY_NIGHT, "2026-11-27T02:00:01Z", false),
            ("across midnight: Thursday 23:00", UTC_FRIDAY_NIGHT, "2026-11-26T23:00:00Z", false),
            // A start a fraction of a second after the end counts as across midnight: open all day.
            ("fractional start after end", UTC_FRIDAY_HALF_SECOND, "2026-11-27T03:00:00Z", true),
            ("empty days never open", ("", "0:00", "23:59:59", "UTC"), "2026-11-27T12:00:00Z", false),
            ("the zone decides the day", AUCKLAND_SATURDAY, "2026-11-27T12:00:00Z", true),
        ]);
    }

    /// Go's `time.Date` as `go_date` reproduces it, each row checked against Go: in a gap, forward east of
    /// Greenwich and back west of it; in a fold, the later occurrence east and the earlier one west.
    #[rustfmt::skip]
    #[test]
    fn local_times_resolve_like_go() {
        let cases: &[(&str, &str, &str, &str, &str)] = &[
            ("ordinary day", "Europe/Berlin", "2026-07-01", "12:00", "2026-07-01T10:00:00Z"),
            ("New York gap goes back", "America/New_York", "2026-03-08", "02:30", "2026-03-08T06:30:00Z"),
            ("Berlin gap goes forward", "Europe/Berlin", "2026-03-29", "02:30", "2026-03-29T01:30:00Z"),
            ("NY fold takes the first", "America/New_York", "2026-11-01", "01:30", "2026-11-01T05:30:00Z"),
            ("Berlin fold takes the second", "Europe/Berlin", "2026-10-25", "02:30", "2026-10-25T01:30:00Z"),
            ("Lord Howe gap", "Australia/Lord_Howe", "2026-10-04", "02:15", "2026-10-03T15:45:00Z"),
            ("Lord Howe fold", "Australia/Lord_Howe", "2026-04-05", "01:45", "2026-04-04T15:15:00Z"),
            ("Santiago midnight gap", "America/Santiago", "2026-09-06", "00:00", "2026-09-06T03:00:00Z"),
            ("Santiago midnight fold", "America/Santiago", "2026-04-04", "23:59", "2026-04-05T02:59:00Z"),
            ("Apia skipped day", "Pacific/Apia", "2011-12-30", "10:00", "2011-12-30T20:00:00Z"),
        ];
        for &(name, zone, date, time, want) in cases {
            let zone = load_time_zone(zone).ok();
            let date = date.parse::<civil::Date>().ok();
            let time = parse_time_of_day(time);
            let got = zone.zip(date).zip(time).map(|((zone, date), time)| go_date(&zone, date, time));
            assert_eq!(got, Some(ts(want)), "case {name}");
        }
    }

    #[rustfmt::skip]
    #[test]
    fn daylight_saving_days() {
        const NY_GAP: Flags = ("su", "02:30", "03:30", "America/New_York");
        const BERLIN_GAP: Flags = ("su", "02:30", "04:00", "Europe/Berlin");
        const NY_FOLD: Flags = ("su", "01:30", "01:45", "America/New_York");
        const BERLIN_FOLD: Flags = ("su", "02:30", "02:45", "Europe/Berlin");
        const NY_NIGHTS: Flags = ("su,mo,tu,we,th,fr,sa", "22:00", "02:00", "America/New_York");
        const LORD_HOWE_GAP: Flags = ("su", "02:10", "03:00", "Australia/Lord_Howe");
        check_contains(&[
            // New York springs forward on 2026-03-08 at 02:00 EST; a 02:30 start means 01:30 EST.
            ("NY gap: 01:29:59 EST", NY_GAP, "2026-03-08T01:29:59-05:00", false),
            ("NY gap: 01:30 EST", NY_GAP, "2026-03-08T01:30:00-05:00", true),
            ("NY gap: within 03:30 EDT", NY_GAP, "2026-03-08T03:30:00.5-04:00", true),
            ("NY gap: 03:30:01 EDT", NY_GAP, "2026-03-08T03:30:01-04:00", false),
            // Berlin springs forward on 2026-03-29 at 02:00 CET; a 02:30 start means 03:30 CEST.
            ("Berlin gap: 03:29:59 CEST", BERLIN_GAP, "2026-03-29T03:29:59+02:00", false),
            ("Berlin gap: 03:30 CEST", BERLIN_GAP, "2026-03-29T03:30:00+02:00", true),
            // New York falls back on 2026-11-01: 01:30-01:45 happens twice; the first one counts.
            ("NY fold: first 01:40", NY_FOLD, "2026-11-01T01:40:00-04:00", true),
            ("NY fold: second 01:40", NY_FOLD, "2026-11-01T01:40:00-05:00", false),
            // Berlin falls back on 2026-10-25: 02:30-02:45 happens twice; the second one counts.
            ("Berlin fold: first 02:40", BERLIN_FOLD, "2026-10-25T02:40:00+02:00", false),
            ("Berlin fold: second 02:40", BERLIN_FOLD, "2026-10-25T02:40:00+01:00", true),
            // Sunday's start moved back 24 elapsed hours: 22:00 EDT less a day is 21:00 EST on Saturday.
            ("NY nights: Sunday 01:00 EST", NY_NIGHTS, "2026-03-08T01:00:00-05:00", true),
            // Sunday's end, 02:00, does not exist and resolves to 01:00 EST: the night ends an hour early.
            ("NY nights: Sunday 03:30 EDT", NY_NIGHTS, "2026-03-08T03:30:00-04:00", false),
            ("NY nights: 01:59 EST after falling back", NY_NIGHTS, "2026-11-01T01:59:00-05:00", true),
            // Lord Howe moves its clocks by 30 minutes: 02:00 -> 02:30 on 2026-10-04; 02:10 means 02:40.
            ("Lord Howe gap: 02:40 +11", LORD_HOWE_GAP, "2026-10-04T02:40:00+11:00", true),
            ("Lord Howe gap: 02:39:59 +11", LORD_HOWE_GAP, "2026-10-04T02:39:59+11:00", false),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn construction_errors_name_flag_and_value() {
        let every: &[&str] = &EVERY_DAY;
        type Row<'a> = (&'a str, &'a [&'a str], &'a str, &'a str, &'a str, &'a str);
        let cases: &[Row] = &[
            ("bad day", &["mo", "funday"], "0:00", "23:59:59", "UTC",
             "invalid --reboot-days entry \"funday\": expected a weekday (su, sun, sunday, mo, …, sa, sat, \
              saturday, any case) or a number from 0 (Sunday) to 6 (Saturday)"),
            ("bad start", every, "25:00", "23:59:59", "UTC",
             "invalid --start-time \"25:00\": expected a time of day like 15:04, 15:04:05, 03:04pm, 15, \
              03pm or 3pm"),
            ("bad end", every, "0:00", "9PM", "UTC",
             "invalid --end-time \"9PM\": expected a time of day like 15:04, 15:04:05, 03:04pm, 15, 03pm \
              or 3pm"),
            ("unknown zone", every, "0:00", "23:59:59", "Mars/Olympus_Mons",
             "invalid --time-zone \"Mars/Olympus_Mons\": expected an IANA time zone name such as \
              Europe/Berlin, UTC or Local"),
            // Upstream checks days, then the zone, then start and end: the first problem is reported.
            ("zone checked before times", every, "25:00", "99", "Nowhere/Else",
             "invalid --time-zone \"Nowhere/Else\": expected an IANA time zone name such as Europe/Berlin, \
              UTC or Local"),
            ("days checked first", &["7"], "25:00", "99", "Nowhere/Else",
             "invalid --reboot-days entry \"7\": expected a weekday (su, sun, sunday, mo, …, sa, sat, \
              saturday, any case) or a number from 0 (Sunday) to 6 (Saturday)"),
        ];
        for &(name, days, start, end, zone, want) in cases {
            let message = RebootWindow::new(days, start, end, zone).err().map(|e| e.to_string());
            assert_eq!(message.as_deref(), Some(want), "case {name}");
        }
        let err = RebootWindow::new(every, "0:00", "1:00", "Nowhere/Else").err();
        let source = err.as_ref().and_then(std::error::Error::source);
        assert!(source.is_some(), "zone lookup error kept as source");
    }

    #[test]
    fn time_zone_names() {
        let cases: &[(&str, &str, &str)] = &[
            ("empty is UTC", "", "UTC"),
            ("UTC", "UTC", "UTC"),
            ("IANA name", "Europe/Berlin", "Europe/Berlin"),
            ("half-hour DST zone", "Australia/Lord_Howe", "Australia/Lord_Howe"),
        ];
        for &(name, zone, want) in cases {
            assert_eq!(
                window(("mo", "0:00", "1:00", zone)).zone_name,
                want,
                "case {name}"
            );
        }
        assert_eq!(
            window(("mo", "0:00", "1:00", "")).zone,
            TimeZone::UTC,
            "empty zone is UTC itself"
        );
        // "Local" depends on the host and the build; whatever happens, a failure names the value.
        if let Err(err) = RebootWindow::new(&["mo"], "0:00", "1:00", "Local") {
            assert!(
                matches!(&err, WindowError::TimeZone { value, .. } if value == "Local"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_flags_are_kept_as_parsed() {
        let w = window(BERLIN_WEEKNIGHTS);
        assert_eq!(
            w.days,
            Weekdays::parse(&["mo", "tu", "we", "th", "fr"]).unwrap_or_default()
        );
        assert_eq!(w.start, civil::Time::constant(22, 0, 0, 0));
        assert_eq!(w.end, civil::Time::constant(6, 0, 0, 0));
        assert!(w.spans_midnight(), "22:00-06:00 runs across midnight");
        assert!(!window(UTC_DEFAULTS).spans_midnight(), "the defaults do not");
    }

    #[rustfmt::skip]
    #[test]
    fn display_follows_upstream() {
        let cases: &[(&str, Flags, &str)] = &[
            ("weekday nights", BERLIN_WEEKNIGHTS,
             "---MonTueWedThuFri--- between 22:00 and 06:00 Europe/Berlin"),
            ("defaults", UTC_DEFAULTS,
             "SunMonTueWedThuFriSat between 00:00 and 23:59:59 UTC"),
            ("twelve-hour input", ("sa", "9am", "5pm", ""),
             "------------------Sat between 09:00 and 17:00 UTC"),
            ("fraction", ("su", "1:00:00.25", "2", "UTC"),
             "Sun------------------ between 01:00:00.25 and 02:00 UTC"),
            ("no days", ("", "1", "2", "UTC"),
             "(No days) between 01:00 and 02:00 UTC"),
        ];
        for &(name, flags, want) in cases {
            assert_eq!(window(flags).to_string(), want, "case {name}");
        }
    }

    pub(super) fn opening(opens: &str, closes: &str) -> Opening {
        Opening {
            opens: Some(ts(opens)),
            closes: Some(ts(closes)),
        }
    }

    /// 2026-11-25 is a Wednesday.
    #[rustfmt::skip]
    #[test]
    fn next_windows_over_a_week() {
        let nights = window(BERLIN_WEEKNIGHTS);
        assert_eq!(
            nights.next_windows(ts("2026-11-25T12:00:00+01:00"), 6),
            vec![
                // Wednesday night: the morning tail is Thursday's window, evaluated as Thursday.
                opening("2026-11-25T22:00:00+01:00", "2026-11-26T06:00:00.999999999+01:00"),
                opening("2026-11-26T22:00:00+01:00", "2026-11-27T06:00:00.999999999+01:00"),
                // Friday night ends at Saturday midnight: Saturday is not a reboot day.
                opening("2026-11-27T22:00:00+01:00", "2026-11-28T00:00:00+01:00"),
                // Sunday is not a reboot day either, but Monday's 00:00-06:00 tail is.
                opening("2026-11-30T00:00:00+01:00", "2026-11-30T06:00:00.999999999+01:00"),
                opening("2026-11-30T22:00:00+01:00", "2026-12-01T06:00:00.999999999+01:00"),
                opening("2026-12-01T22:00:00+01:00", "2026-12-02T06:00:00.999999999+01:00"),
            ],
            "weeknights in Berlin"
        );
        assert_eq!(
            nights.next_windows(ts("2026-11-26T03:00:00+01:00"), 1),
            vec![opening("2026-11-25T22:00:00+01:00", "2026-11-26T06:00:00.999999999+01:00")],
            "an opening containing the instant reports its true opening"
        );
        assert_eq!(
            window(UTC_WORKDAYS).next_windows(ts("2026-11-28T12:00:00Z"), 2),
            vec![
                opening("2026-11-30T00:00:00Z", "2026-12-05T00:00:00Z"),
                opening("2026-12-07T00:00:00Z", "2026-12-12T00:00:00Z"),
            ],
            "consecutive full days merge into one opening"
        );
        let saturday = window(("sa", "9am", "5pm", "UTC"));
        assert_eq!(
            saturday.next_windows(ts("2026-11-28T17:00:00.5Z"), 1),
            vec![opening("2026-11-28T09:00:00Z", "2026-11-28T17:00:01Z")],
            "the whole last second of the end time is inside"
        );
        assert_eq!(
            saturday.next_windows(ts("2026-11-28T17:00:01Z"), 1),
            vec![opening("2026-12-05T09:00:00Z", "2026-12-05T17:00:01Z")],
            "just after closing comes next week's opening"
        );
        assert_eq!(saturday.next_windows(ts("2026-11-28T12:00:00Z"), 0), vec![], "count zero");
        let never = window(("", "0:00", "23:59:59", "UTC"));
        assert_eq!(never.next_windows(ts("2026-11-28T12:00:00Z"), 3), vec![], "no days");
    }

    #[rustfmt::skip]
    #[test]
    fn next_windows_across_daylight_saving_changes() {
        let berlin = window(("su,mo,tu,we,th,fr,sa", "01:00", "03:00", "Europe/Berlin"));
        assert_eq!(
            berlin.next_windows(ts("2026-03-28T12:00:00+01:00"), 3),
            vec![
                // Spring forward at 02:00: 01:00 CET to 03:00 CEST is one hour of real time.
                opening("2026-03-29T01:00:00+01:00", "2026-03-29T03:00:01+02:00"),
                opening("2026-03-30T01:00:00+02:00", "2026-03-30T03:00:01+02:00"),
                opening("2026-03-31T01:00:00+02:00", "2026-03-31T03:00:01+02:00"),
            ],
            "Berlin spring forward"
        );
        assert_eq!(
            berlin.next_windows(ts("2026-10-24T12:00:00+02:00"), 2),
            vec![
                // Fall back at 03:00 CEST: 02:00-03:00 happens twice, three hours of real time.
                opening("2026-10-25T01:00:00+02:00", "2026-10-25T03:00:01+01:00"),
                opening("2026-10-26T01:00:00+01:00", "2026-10-26T03:00:01+01:00"),
            ],
            "Berlin fall back"
        );
        let ny = window(("su,mo,tu,we,th,fr,sa", "22:00", "02:00", "America/New_York"));
        assert_eq!(
            ny.next_windows(ts("2026-03-07T12:00:00-05:00"), 2),
            vec![
                // Sunday's end time 02:00 does not exist and resolves to 01:00 EST: an hour early.
                opening("2026-03-07T22:00:00-05:00", "2026-03-08T01:00:00.999999999-05:00"),
                opening("2026-03-08T22:00:00-04:00", "2026-03-09T02:00:00.999999999-04:00"),
            ],
            "New York spring forward"
        );
        assert_eq!(
            ny.next_windows(ts("2026-10-31T12:00:00-04:00"), 2),
            vec![
                // Sunday's start is 24 real hours before 22:00 EST, 23:00 EDT on Saturday, inside
                // Saturday's own window: one opening from Saturday 22:00 EDT to Sunday 02:00 EST.
                opening("2026-10-31T22:00:00-04:00", "2026-11-01T02:00:00.999999999-05:00"),
                opening("2026-11-01T22:00:00-05:00", "2026-11-02T02:00:00.999999999-05:00"),
            ],
            "New York fall back"
        );
    }

    #[test]
    fn always_open_window_never_closes() {
        let always = window(("su,mo,tu,we,th,fr,sa", "0:00", "23:59:59", "Europe/Berlin"));
        assert_eq!(
            always.next_windows(ts("2026-11-27T21:30:00Z"), 3),
            vec![Opening {
                opens: None,
                closes: None
            }],
            "default flags in Berlin"
        );
        // Santiago falls back at midnight: the last hour of Saturday 2026-04-04 happens twice, and Go's
        // resolution of 23:59:59 picks the first one, so the repeated hour is outside.
        let santiago = window(("su,mo,tu,we,th,fr,sa", "0:00", "23:59:59", "America/Santiago"));
        let windows = santiago.next_windows(ts("2026-03-01T12:00:00-03:00"), 2);
        assert_eq!(windows.len(), 2, "two openings: {windows:?}");
        assert_eq!(
            windows[0].closes,
            Some(ts("2026-04-05T00:00:00-03:00")),
            "closes for the repeated hour"
        );
        assert_eq!(
            windows[1].opens,
            Some(ts("2026-04-05T00:00:00-04:00")),
            "reopens when Sunday begins"
        );
    }
    const DST_ZONES: [&str; 6] = [
        "America/New_York",
        "Europe/Berlin",
        "Australia/Lord_Howe",
        "Pacific/Apia",
        "America/Santiago",
        "UTC",
    ];

    /// Instants from 2010 to 2031 (Apia's 2011 jump across the date line included), to the nanosecond.
    fn instant() -> impl Strategy<Value = Timestamp> {
        (1_262_304_000i64..1_956_528_000, 0i32..1_000_000_000)
            .prop_map(|(s, n)| Timestamp::new(s, n).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    fn time_of_day_text() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u8..24, 0u8..60).prop_map(|(h, m)| format!("{h}:{m:02}")),
            (0u8..24, 0u8..60, 0u8..60).prop_map(|(h, m, s)| format!("{h:02}:{m:02}:{s:02}")),
            // Around the hours at which clocks usually change.
            (0u8..4, prop::sample::select(vec![0u8, 30, 59])).prop_map(|(h, m)| format!("{h}:{m:02}")),
        ]
    }

    fn reboot_window() -> impl Strategy<Value = RebootWindow> {
        let zone = prop::sample::select(DST_ZONES.to_vec());
        (1u8..0b111_1111, time_of_day_text(), time_of_day_text(), zone).prop_filter_map(
            "valid window",
            |(mask, start, end, zone)| {
                let days: Vec<&str> = (0..7)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| EVERY_DAY[i])
                    .collect();
                RebootWindow::new(&days, &start, &end, zone).ok()
            },
        )
    }

    /// Instants worth checking in `[from, until)`: spread ones from `seeds`, plus the neighbourhood of
    /// every zone transition and of every opening and closing.
    fn probes(
        w: &RebootWindow,
        openings: &[Opening],
        from: Timestamp,
        until: Timestamp,
        seeds: &[i64],
    ) -> Vec<Timestamp> {
        let span = (until.as_second() - from.as_second()).max(1);
        let mut probes: Vec<Timestamp> = seeds
            .iter()
            .map(|s| shift(from, s.rem_euclid(span) * 1_000_000_000 + s.rem_euclid(7)))
            .collect();
        let transitions = w
            .zone
            .following(from)
            .map(|t| t.timestamp())
            .take_while(|&t| t < until);
        let edges = openings.iter().flat_map(|o| [o.opens, o.closes]).flatten();
        for at in transitions.chain(edges) {
            for delta in [
                -3_600_000_000_000,
                -1_000_000_000,
                -1,
                0,
                1,
                1_000_000_000,
                3_600_000_000_000,
            ] {
                probes.push(shift(at, delta));
            }
        }
        probes.retain(|&t| from <= t && t < until);
        probes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn next_windows_agree_with_contains(
            w in reboot_window(),
            from in instant(),
            seeds in prop::collection::vec(any::<i64>(), 200),
        ) {
            let openings = w.next_windows(from, 8);
            prop_assert!(!openings.is_empty(), "{} never opens", w);
            // The openings describe everything from `from` up to the last closing (a fortnight if none).
            let until = openings.last().and_then(|o| o.closes).unwrap_or(shift(from, 14 * NANOS_PER_DAY));
            for pair in openings.windows(2) {
                prop_assert!(pair[0].closes < pair[1].opens, "{}: openings overlap or touch: {:?}", w, pair);
            }
            for o in &openings {
                if let (Some(opens), Some(closes)) = (o.opens, o.closes) {
                    prop_assert!(opens < closes, "{}: empty opening {:?}", w, o);
                }
                if let Some(opens) = o.opens {
                    let edge = w.contains(opens) && !w.contains(shift(opens, -1));
                    prop_assert!(edge, "{}: bad opening {:?}", w, o);
                }
                if let Some(closes) = o.closes {
                    let edge = !w.contains(closes) && w.contains(shift(closes, -1));
                    prop_assert!(edge, "{}: bad closing {:?}", w, o);
                }
            }
            for t in probes(&w, &openings, from, until, &seeds) {
                let listed = openings.iter().any(|o| o.contains(t));
                prop_assert_eq!(w.contains(t), listed, "{} at {} with openings {:?}", w, t, openings);
            }
        }
    }
}
