//! Reading the window's flags as upstream's Go code reads them: weekday names and numbers
//! (`strings.ToLower`, `strconv.Atoi`), times of day in Go time layouts (`time.Parse`), and time zone
//! names (`time.LoadLocation`).

use std::fmt;

use jiff::civil::{self, Weekday};
use jiff::tz::TimeZone;

use super::{Result, WindowError};

const WEEKDAYS_FROM_SUNDAY: [Weekday; 7] = [
    Weekday::Sunday,
    Weekday::Monday,
    Weekday::Tuesday,
    Weekday::Wednesday,
    Weekday::Thursday,
    Weekday::Friday,
    Weekday::Saturday,
];

/// Lower-cases like Go's `strings.ToLower`, which maps U+0130 (İ) to a plain `i` where Rust's full
/// mapping yields `i` plus a combining dot.
fn go_lowercase(text: &str) -> String {
    let mut lower = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{130}' {
            lower.push('i');
        } else {
            lower.extend(c.to_lowercase());
        }
    }
    lower
}

/// Reads `text` the way Go's `strconv.Atoi` does: `None` when it is not an optional sign followed by
/// decimal digits, otherwise `Some` of its value, itself `None` when it does not fit in `i64`.
fn atoi(text: &str) -> Option<Option<i64>> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<i64>().ok())
}

/// Parses one `--reboot-days` entry: `su`/`sun`/`sunday` … `sa`/`sat`/`saturday` in any case, or a
/// number from 0 (Sunday) to 6 (Saturday), optionally signed or zero-padded as Go's `strconv.Atoi`
/// allows (`+1`, `06`).
fn parse_weekday(text: &str) -> Result<Weekday> {
    let invalid = || WindowError::Weekday {
        value: text.to_owned(),
    };
    if let Some(number) = atoi(text) {
        return match number {
            Some(n @ 0..=6) => usize::try_from(n)
                .ok()
                .and_then(|i| WEEKDAYS_FROM_SUNDAY.get(i).copied())
                .ok_or_else(invalid),
            _ => Err(invalid()),
        };
    }
    let day = match go_lowercase(text).as_str() {
        "su" | "sun" | "sunday" => Weekday::Sunday,
        "mo" | "mon" | "monday" => Weekday::Monday,
        "tu" | "tue" | "tuesday" => Weekday::Tuesday,
        "we" | "wed" | "wednesday" => Weekday::Wednesday,
        "th" | "thu" | "thursday" => Weekday::Thursday,
        "fr" | "fri" | "friday" => Weekday::Friday,
        "sa" | "sat" | "saturday" => Weekday::Saturday,
        _ => return Err(invalid()),
    };
    Ok(day)
}

/// A set of weekdays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Weekdays(u8);

impl Weekdays {
    /// No day at all: a window that never opens.
    pub const NONE: Weekdays = Weekdays(0);

    /// Parses `--reboot-days` entries with [`parse_weekday`]. Empty entries are skipped, as upstream
    /// skips them, so `--reboot-days=` (or `,,,`) is the empty set: rebooting is never allowed.
    pub fn parse<S: AsRef<str>>(days: &[S]) -> Result<Weekdays> {
        days.iter()
            .map(AsRef::as_ref)
            .filter(|day| !day.is_empty())
            .try_fold(Weekdays::NONE, |set, day| Ok(set.with(parse_weekday(day)?)))
    }

    fn bit(day: Weekday) -> u8 {
        1 << day.to_sunday_zero_offset()
    }

    /// This set with `day` added.
    pub fn with(self, day: Weekday) -> Weekdays {
        Weekdays(self.0 | Self::bit(day))
    }

    /// Whether `day` is in the set.
    pub fn contains(self, day: Weekday) -> bool {
        self.0 & Self::bit(day) != 0
    }

    /// Whether the set has no day.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Upstream's notation: seven three-letter slots from Sunday, `---` for a missing day
/// (`---MonTueWedThuFri---`), and `(No days)` for the empty set.
impl fmt::Display for Weekdays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
        if self.is_empty() {
            return f.write_str("(No days)");
        }
        for (day, name) in WEEKDAYS_FROM_SUNDAY.iter().zip(NAMES) {
            f.write_str(if self.contains(*day) { name } else { "---" })?;
        }
        Ok(())
    }
}

/// One element of a Go time layout, as far as upstream's time-of-day layouts use them.
#[derive(Clone, Copy)]
enum LayoutField {
    /// `15`: hour 0–23, one or two digits.
    Hour24,
    /// `03` (two digits required) or `3` (one or two digits): hour 0–12, Go accepting 0 as well.
    Hour12 { two_digits: bool },
    /// `04`: minute, exactly two digits.
    Minute,
    /// `05`: second, exactly two digits, optionally followed by a fraction (`.5`, `,25`) as Go allows
    /// after seconds even when the layout has none.
    Second,
    /// `pm`: `am` or `pm`, lower case only.
    Meridiem,
    /// A literal `:`.
    Colon,
}

/// The time-of-day layouts upstream accepts, in the order it tries them: Go's `15:04`, `15:04:05`,
/// `03:04pm`, `15`, `03pm` and `3pm`.
const LAYOUTS: [&[LayoutField]; 6] = {
    use LayoutField::*;
    [
        &[Hour24, Colon, Minute],
        &[Hour24, Colon, Minute, Colon, Second],
        &[Hour12 { two_digits: true }, Colon, Minute, Meridiem],
        &[Hour24],
        &[Hour12 { two_digits: true }, Meridiem],
        &[Hour12 { two_digits: false }, Meridiem],
    ]
};

/// Go's `getnum`: one or two leading digits (two required when `two_digits`).
fn leading_number(input: &[u8], two_digits: bool) -> Option<(i8, &[u8])> {
    let digit = |i: usize| {
        input
            .get(i)
            .filter(|b| b.is_ascii_digit())
            .map(|b| (b - b'0') as i8)
    };
    let first = digit(0)?;
    match digit(1) {
        Some(second) => Some((first * 10 + second, &input[2..])),
        None if two_digits => None,
        None => Some((first, &input[1..])),
    }
}

/// Reads `text` with one layout under Go's `time.Parse` rules; the whole text must be consumed.
fn parse_with_layout(text: &str, layout: &[LayoutField]) -> Option<civil::Time> {
    let (mut hour, mut minute, mut second, mut subsec) = (0i8, 0i8, 0i8, 0i32);
    let (mut am, mut pm) = (false, false);
    let mut rest = text.as_bytes();
    for field in layout {
        match *field {
            LayoutField::Colon => rest = rest.strip_prefix(b":")?,
            LayoutField::Hour24 => {
                (hour, rest) = leading_number(rest, false).filter(|&(h, _)| h < 24)?;
            }
            LayoutField::Hour12 { two_digits } => {
                (hour, rest) = leading_number(rest, two_digits).filter(|&(h, _)| h <= 12)?;
            }
            LayoutField::Minute => {
                (minute, rest) = leading_number(rest, true).filter(|&(m, _)| m < 60)?;
            }
            LayoutField::Second => {
                (second, rest) = leading_number(rest, true).filter(|&(s, _)| s < 60)?;
                if let [b'.' | b',', next, ..] = rest
                    && next.is_ascii_digit()
                {
                    let digits = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
                    // Go keeps the first nine digits and drops the rest.
                    let kept = &rest[1..1 + digits.min(9)];
                    let value = kept.iter().fold(0i32, |acc, b| acc * 10 + i32::from(b - b'0'));
                    subsec = value * 10i32.pow(9 - kept.len() as u32);
                    rest = &rest[1 + digits..];
                }
            }
            LayoutField::Meridiem => {
                let (marker, tail) = rest.split_at_checked(2)?;
                match marker {
                    b"am" => am = true,
                    b"pm" => pm = true,
                    _ => return None,
                }
                rest = tail;
            }
        }
    }
    if !rest.is_empty() {
        return None;
    }
    if pm && hour < 12 {
        hour += 12;
    } else if am && hour == 12 {
        hour = 0;
    }
    civil::Time::new(hour, minute, second, subsec).ok()
}

/// Parses a time of day the way upstream does: each of [`LAYOUTS`] in turn, first match wins.
pub(super) fn parse_time_of_day(text: &str) -> Option<civil::Time> {
    LAYOUTS.iter().find_map(|layout| parse_with_layout(text, layout))
}

/// Resolves a `--time-zone` value the way Go's `time.LoadLocation` names zones.
pub(super) fn load_time_zone(name: &str) -> Result<TimeZone> {
    let zone = match name {
        "" | "UTC" => Ok(TimeZone::UTC),
        "Local" => TimeZone::try_system(),
        _ => TimeZone::get(name),
    };
    zone.map_err(|source| WindowError::TimeZone {
        value: name.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rustfmt::skip]
    #[test]
    fn weekday_names_and_numbers() {
        let accepted: &[(&str, Weekday)] = &[
            ("su", Weekday::Sunday), ("sun", Weekday::Sunday), ("sunday", Weekday::Sunday),
            ("mo", Weekday::Monday), ("mon", Weekday::Monday), ("monday", Weekday::Monday),
            ("tu", Weekday::Tuesday), ("tue", Weekday::Tuesday), ("tuesday", Weekday::Tuesday),
            ("we", Weekday::Wednesday), ("wed", Weekday::Wednesday), ("wednesday", Weekday::Wednesday),
            ("th", Weekday::Thursday), ("thu", Weekday::Thursday), ("thursday", Weekday::Thursday),
            ("fr", Weekday::Friday), ("fri", Weekday::Friday), ("friday", Weekday::Friday),
            ("sa", Weekday::Saturday), ("sat", Weekday::Saturday), ("saturday", Weekday::Saturday),
            ("THURSDAY", Weekday::Thursday), ("WeDnEsDaY", Weekday::Wednesday), ("Mo", Weekday::Monday),
            ("0", Weekday::Sunday), ("1", Weekday::Monday), ("6", Weekday::Saturday),
            // Numbers are read like Go's strconv.Atoi: a sign and leading zeros are allowed.
            ("+1", Weekday::Monday), ("-0", Weekday::Sunday), ("06", Weekday::Saturday),
            // Go lower-cases U+0130 (capital I with dot) to a plain i.
            ("FR\u{130}DAY", Weekday::Friday),
        ];
        for &(text, want) in accepted {
            assert_eq!(parse_weekday(text).ok(), Some(want), "{text:?}");
        }
        let rejected = [
            "funday", "7", "-1", "15", "-8", "8", "", " mo", "mo ", "m", "fridayyyy", "+", "0x1", "1_0",
            "99999999999999999999", "\u{ff2d}\u{ff2f}",
        ];
        for text in rejected {
            match parse_weekday(text) {
                Err(WindowError::Weekday { value }) => assert_eq!(value, text),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    /// Upstream's `TestParseWeekdays` and `TestParseWeekdaysErrors`.
    #[test]
    fn upstream_weekday_list_cases() {
        let cases: &[(&str, &str)] = &[
            ("0,4", "Sun---------Thu------"),
            ("su,mo,tu", "SunMonTue------------"),
            ("sunday,tu,thu", "Sun---Tue---Thu------"),
            ("THURSDAY", "------------Thu------"),
            ("we,WED,WeDnEsDaY", "---------Wed---------"),
            ("", "(No days)"),
            (",,,", "(No days)"),
        ];
        for &(input, want) in cases {
            let parts: Vec<&str> = input.split(',').collect();
            let days = Weekdays::parse(&parts).map(|d| d.to_string()).ok();
            assert_eq!(days.as_deref(), Some(want), "{input:?}");
        }
        for input in ["15", "-8", "8", "mon,tue,wed,fridayyyy"] {
            let parts: Vec<&str> = input.split(',').collect();
            assert!(Weekdays::parse(&parts).is_err(), "{input:?} should be rejected");
        }
        let every = ["su", "mo", "tu", "we", "th", "fr", "sa"];
        assert_eq!(
            Weekdays::parse(&every).map(|d| d.to_string()).ok().as_deref(),
            Some("SunMonTueWedThuFriSat"),
            "defaults"
        );
        assert!(
            Weekdays::NONE.is_empty() && !Weekdays::NONE.with(Weekday::Monday).is_empty(),
            "emptiness"
        );
    }

    /// Each row checked against Go's `time.Parse` with upstream's layouts tried in order.
    #[rustfmt::skip]
    #[test]
    fn time_of_day_formats() {
        type Clock = (i8, i8, i8, i32);
        let accepted: &[(&str, &str, Clock)] = &[
            ("single-digit hour and minutes", "0:00", (0, 0, 0, 0)),
            ("padded midnight", "00:00", (0, 0, 0, 0)),
            ("morning", "9:30", (9, 30, 0, 0)),
            ("padded morning", "09:30", (9, 30, 0, 0)),
            ("with seconds", "23:59:59", (23, 59, 59, 0)),
            ("single-digit hour with seconds", "7:00:00", (7, 0, 0, 0)),
            // Go accepts a fraction after the seconds even though no layout has one.
            ("fraction after seconds", "23:59:59.5", (23, 59, 59, 500_000_000)),
            ("comma fraction after seconds", "23:59:59,25", (23, 59, 59, 250_000_000)),
            ("fraction beyond nanoseconds is cut", "23:59:59.1234567899", (23, 59, 59, 123_456_789)),
            ("one nanosecond", "21:00:00.000000001", (21, 0, 0, 1)),
            ("padded twelve-hour pm", "09:30pm", (21, 30, 0, 0)),
            ("twelve-hour am", "11:30am", (11, 30, 0, 0)),
            ("midnight as 12:00am", "12:00am", (0, 0, 0, 0)),
            ("half past midnight", "12:30am", (0, 30, 0, 0)),
            ("noon as 12:00pm", "12:00pm", (12, 0, 0, 0)),
            // Go's 12-hour fields accept hour 0: 00:30pm is 12:30, 0am is midnight.
            ("hour zero pm", "00:30pm", (12, 30, 0, 0)),
            ("hour zero am", "00:30am", (0, 30, 0, 0)),
            ("hour only", "21", (21, 0, 0, 0)),
            ("single-digit hour only", "9", (9, 0, 0, 0)),
            ("hour zero only", "0", (0, 0, 0, 0)),
            ("padded hour only", "00", (0, 0, 0, 0)),
            ("padded pm", "09pm", (21, 0, 0, 0)),
            ("unpadded pm", "9pm", (21, 0, 0, 0)),
            ("unpadded am", "9am", (9, 0, 0, 0)),
            ("five pm", "5pm", (17, 0, 0, 0)),
            ("ten pm", "10pm", (22, 0, 0, 0)),
            ("twelve am", "12am", (0, 0, 0, 0)),
            ("twelve pm", "12pm", (12, 0, 0, 0)),
            ("zero pm", "0pm", (12, 0, 0, 0)),
            ("zero am", "0am", (0, 0, 0, 0)),
            ("upstream sample", "10:01", (10, 1, 0, 0)),
        ];
        for &(name, text, (h, m, s, n)) in accepted {
            assert_eq!(parse_time_of_day(text), civil::Time::new(h, m, s, n).ok(), "case {name}: {text:?}");
        }
        let rejected: &[(&str, &str)] = &[
            // Only the zero-padded "03:04pm" layout has minutes with am/pm.
            ("single-digit hour with minutes and am", "9:30am"),
            ("single-digit hour with minutes and pm", "9:30pm"),
            ("unpadded hour with minutes and pm", "3:04pm"),
            ("hour 24", "24:00"),
            ("hour 24 alone", "24"),
            ("hour 25", "25"),
            ("single-digit minute", "9:5"),
            ("single-digit minute after zero", "0:0"),
            ("three-digit minute", "9:055"),
            ("minute 60", "9:60"),
            ("second 60", "23:59:60"),
            ("single-digit minute and second", "1:2:3"),
            ("single-digit second", "1:02:3"),
            ("point without fraction digits", "23:59:59."),
            ("fraction after minutes", "23:59.5"),
            ("upper-case PM", "9PM"),
            ("mixed-case Pm", "9Pm"),
            ("hour 13 pm", "13pm"),
            ("hour 13 with minutes pm", "13:00pm"),
            ("seconds with pm", "9:30:00pm"),
            ("space before pm", "9:30 pm"),
            ("three-digit hour", "009"),
            ("leading space", " 9"),
            ("trailing space", "9 "),
            ("sign", "+9"),
            ("negative", "-1"),
            ("empty", ""),
        ];
        for &(name, text) in rejected {
            assert_eq!(parse_time_of_day(text), None, "case {name}: {text:?}");
        }
    }
}
