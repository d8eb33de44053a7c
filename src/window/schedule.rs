//! The report of `kured schedule`: whether an instant is inside the window, and the window's next
//! openings, as JSON for programs and as a table for people.

use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};
use serde::Serialize;

use super::{Opening, RebootWindow};

impl RebootWindow {
    /// What `kured schedule` reports for the instant `at`: whether it is inside the window, and the next
    /// `count` openings (see [`next_windows`](Self::next_windows)).
    pub fn schedule(&self, at: Timestamp, count: usize) -> Schedule {
        let windows = self
            .next_windows(at, count)
            .into_iter()
            .map(|opening| ScheduleWindow {
                opens: opening.opens.map(|ts| rfc3339_in(&self.zone, ts)),
                closes: opening.closes.map(|ts| rfc3339_in(&self.zone, ts)),
                opening,
            })
            .collect();
        Schedule {
            inside: self.contains(at),
            windows,
            at,
            zone: self.zone.clone(),
            zone_name: self.zone_name.clone(),
            window: self.to_string(),
        }
    }
}

/// RFC 3339 with the zone's offset at that instant: `2026-11-27T22:00:00+01:00`.
fn rfc3339_in(zone: &TimeZone, ts: Timestamp) -> String {
    ts.display_with_offset(zone.to_offset(ts)).to_string()
}

/// A readable instant in `zone`: `Fri 2026-11-27 22:00:00 +01:00`, with a fraction when there is one.
fn readable_in(zone: &TimeZone, ts: Timestamp) -> String {
    let zoned: ZonedDateTime = ts.to_zoned_datetime(zone.clone());
    jiff::fmt::strtime::format("%a %Y-%m-%d %H:%M:%S%.f %:z", &zoned).unwrap_or_else(|_| rfc3339_in(zone, ts))
}

/// The report of `kured schedule`. Its JSON form is exactly
/// `{"inside": bool, "windows": [{"opens": "<RFC 3339>", "closes": "<RFC 3339>"}]}`, instants in the
/// window's zone with their offset; an `opens` or `closes` beyond the search horizon (see [`Opening`])
/// is `null`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Schedule {
    /// Whether the instant asked about is inside the window.
    pub inside: bool,
    /// The next openings, the first one containing the instant when `inside`.
    pub windows: Vec<ScheduleWindow>,
    #[serde(skip)]
    at: Timestamp,
    #[serde(skip)]
    zone: TimeZone,
    #[serde(skip)]
    zone_name: String,
    #[serde(skip)]
    window: String,
}

/// One opening in a [`Schedule`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScheduleWindow {
    /// When the window opens, RFC 3339 in the window's zone; `None` (`null`) when open for over a year.
    pub opens: Option<String>,
    /// When it closes again (first instant outside); `None` (`null`) when it never closes.
    pub closes: Option<String>,
    #[serde(skip)]
    opening: Opening,
}

impl Schedule {
    /// The report for people: the window, the instant and whether it is inside, then each opening and
    /// closing in the window's zone and in UTC, in aligned columns.
    pub fn render_text(&self) -> String {
        let utc = TimeZone::UTC;
        let mut out = String::new();
        out.push_str(&format!("Window  {}\n", self.window));
        out.push_str(&format!(
            "At      {}  ({})\n",
            readable_in(&self.zone, self.at),
            readable_in(&utc, self.at)
        ));
        out.push_str(&format!("Inside  {}\n", if self.inside { "yes" } else { "no" }));
        out.push('\n');
        if self.windows.is_empty() {
            out.push_str("The window does not open within a year.\n");
            return out;
        }
        let bound = |ts: Option<Timestamp>, zone: &TimeZone, unbounded: &str| {
            ts.map_or_else(|| unbounded.to_owned(), |ts| readable_in(zone, ts))
        };
        let mut rows: Vec<[String; 4]> = vec![[
            "#".to_owned(),
            "zone".to_owned(),
            "opens".to_owned(),
            "closes".to_owned(),
        ]];
        for (i, window) in self.windows.iter().enumerate() {
            let Opening { opens, closes } = window.opening;
            rows.push([
                (i + 1).to_string(),
                self.zone_name.clone(),
                bound(opens, &self.zone, "(open for over a year)"),
                bound(closes, &self.zone, "never"),
            ]);
            rows.push([
                String::new(),
                "UTC".to_owned(),
                bound(opens, &utc, "(open for over a year)"),
                bound(closes, &utc, "never"),
            ]);
        }
        let mut widths = [0usize; 4];
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in &rows {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::window::tests::{BERLIN_WEEKNIGHTS, UTC_DEFAULTS, opening, ts, window};

    #[test]
    fn schedule_json_shape() {
        let nights = window(BERLIN_WEEKNIGHTS);
        let json = serde_json::to_value(nights.schedule(ts("2026-11-27T21:30:00+01:00"), 2)).ok();
        let want = serde_json::json!({
            "inside": false,
            "windows": [
                {"opens": "2026-11-27T22:00:00+01:00", "closes": "2026-11-28T00:00:00+01:00"},
                {"opens": "2026-11-30T00:00:00+01:00", "closes": "2026-11-30T06:00:00.999999999+01:00"},
            ]
        });
        assert_eq!(json, Some(want), "outside, two windows");

        let json = serde_json::to_value(nights.schedule(ts("2026-11-27T23:00:00+01:00"), 1)).ok();
        let want = serde_json::json!({
            "inside": true,
            "windows": [{"opens": "2026-11-27T22:00:00+01:00", "closes": "2026-11-28T00:00:00+01:00"}]
        });
        assert_eq!(json, Some(want), "inside, the current window first");

        let always = window(UTC_DEFAULTS);
        let json = serde_json::to_value(always.schedule(ts("2026-11-27T21:30:00Z"), 2)).ok();
        let want = serde_json::json!({"inside": true, "windows": [{"opens": null, "closes": null}]});
        assert_eq!(json, Some(want), "always open");

        let never = window(("", "0:00", "23:59:59", "UTC"));
        let json = serde_json::to_value(never.schedule(ts("2026-11-27T21:30:00Z"), 2)).ok();
        assert_eq!(
            json,
            Some(serde_json::json!({"inside": false, "windows": []})),
            "no days"
        );
    }

    #[test]
    fn schedule_text() {
        let at = ts("2026-11-27T21:30:00+01:00");
        let schedule = window(BERLIN_WEEKNIGHTS).schedule(at, 3);
        assert_eq!(schedule.at, at);
        assert_eq!(
            schedule.windows[0].opening,
            opening("2026-11-27T22:00:00+01:00", "2026-11-28T00:00:00+01:00")
        );
        insta::assert_snapshot!(schedule.render_text(), @r"
        Window  ---MonTueWedThuFri--- between 22:00 and 06:00 Europe/Berlin
        At      Fri 2026-11-27 21:30:00 +01:00  (Fri 2026-11-27 20:30:00 +00:00)
        Inside  no

        #  zone           opens                           closes
        1  Europe/Berlin  Fri 2026-11-27 22:00:00 +01:00  Sat 2026-11-28 00:00:00 +01:00
           UTC            Fri 2026-11-27 21:00:00 +00:00  Fri 2026-11-27 23:00:00 +00:00
        2  Europe/Berlin  Mon 2026-11-30 00:00:00 +01:00  Mon 2026-11-30 06:00:00.999999999 +01:00
           UTC            Sun 2026-11-29 23:00:00 +00:00  Mon 2026-11-30 05:00:00.999999999 +00:00
        3  Europe/Berlin  Mon 2026-11-30 22:00:00 +01:00  Tue 2026-12-01 06:00:00.999999999 +01:00
           UTC            Mon 2026-11-30 21:00:00 +00:00  Tue 2026-12-01 05:00:00.999999999 +00:00
        ");

        let always = window(UTC_DEFAULTS).schedule(ts("2026-11-27T21:30:00Z"), 3);
        insta::assert_snapshot!(always.render_text(), @r"
        Window  SunMonTueWedThuFriSat between 00:00 and 23:59:59 UTC
        At      Fri 2026-11-27 21:30:00 +00:00  (Fri 2026-11-27 21:30:00 +00:00)
        Inside  yes

        #  zone  opens                   closes
        1  UTC   (open for over a year)  never
           UTC   (open for over a year)  never
        ");

        let never = window(("", "0:00", "23:59:59", "UTC")).schedule(ts("2026-11-27T21:30:00Z"), 3);
        insta::assert_snapshot!(never.render_text(), @r"
        Window  (No days) between 00:00 and 23:59:59 UTC
        At      Fri 2026-11-27 21:30:00 +00:00  (Fri 2026-11-27 21:30:00 +00:00)
        Inside  no

        The window does not open within a year.
        ");
    }
}
