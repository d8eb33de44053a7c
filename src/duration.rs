//! Go duration syntax (`1h30m`, `90s`, `-1.5h`): parsing and formatting compatible with Go's `time` package.
//!
//! Every duration flag of upstream kured (`--period`, `--drain-timeout`, `--lock-ttl`, …) is read with
//! Go's `time.ParseDuration`, and the lock record stores its TTL as Go's `time.Duration`, an `int64` count
//! of nanoseconds. [`GoDuration`] is that type: [`GoDuration::parse`] accepts exactly the strings Go
//! accepts and yields the same values, and its [`Display`](fmt::Display) prints what Go's
//! `Duration.String()` prints, so values written by either implementation read back identically.
//!
//! The single deliberate difference: Go's parser wraps around when two terms of exactly 2⁶³ ns each
//! are added (`"9223372036854775808ns9223372036854775808ns"` parses as `0` in Go); this parser reports
//! that input as out of range instead.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string or a [`std::time::Duration`] is not a valid [`GoDuration`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text does not have the shape `[-+]<number><unit>…` (empty, a sign alone, a term without
    /// digits, a character that cannot start a term).
    #[error("invalid duration {value:?}: expected a Go duration such as 90s, 1h30m, 1.5h or 0")]
    Invalid { value: String },
    /// A number is not followed by a unit (`"3"`, `"1.5"`). Only a bare `0` may omit it.
    #[error("missing unit in duration {value:?}: expected one of ns, us, µs, ms, s, m, h after each number")]
    MissingUnit { value: String },
    /// A number is followed by something that is not one of Go's units (`"1d"`, `"1h 30m"`).
    #[error("unknown unit {unit:?} in duration {value:?}: expected one of ns, us, µs, ms, s, m, h")]
    UnknownUnit { unit: String, value: String },
    /// The value does not fit in a signed 64-bit count of nanoseconds (about ±292 years).
    #[error(
        "duration {value:?} is out of range: a Go duration lies between -2562047h47m16.854775808s \
         and 2562047h47m16.854775807s"
    )]
    Overflow { value: String },
    /// A [`std::time::Duration`] longer than the largest Go duration.
    #[error("duration {value:?} is out of range: a Go duration is at most 2562047h47m16.854775807s")]
    StdOverflow { value: std::time::Duration },
}

/// Result alias for this module.
pub type Result<T, E = DurationError> = std::result::Result<T, E>;

const NANOSECOND: u64 = 1;
const MICROSECOND: u64 = 1_000 * NANOSECOND;
const MILLISECOND: u64 = 1_000 * MICROSECOND;
const SECOND: u64 = 1_000 * MILLISECOND;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;

/// 2⁶³: the magnitude of the most negative duration, and the bound Go's parser checks against.
const MAGNITUDE_LIMIT: u64 = 1 << 63;

/// A span of time as Go's `time.Duration`: a signed 64-bit count of nanoseconds.
///
/// Text form: Go's duration syntax in both directions ([`GoDuration::parse`], [`FromStr`],
/// [`Display`](fmt::Display)). Serde form: the integer count of nanoseconds, as Go's `encoding/json`
/// writes a `time.Duration` (upstream's lock record: `"TTL":3600000000000`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(i64);

impl GoDuration {
    /// The zero duration, `0s`.
    pub const ZERO: GoDuration = GoDuration(0);
    /// The longest duration, `2562047h47m16.854775807s`.
    pub const MAX: GoDuration = GoDuration(i64::MAX);

    /// The duration of `nanos` nanoseconds.
    pub const fn from_nanos(nanos: i64) -> GoDuration {
        GoDuration(nanos)
    }

    /// The duration of `secs` seconds, saturating at the shortest and the longest duration
    /// (beyond about ±292 years).
    pub const fn from_secs(secs: i64) -> GoDuration {
        GoDuration(secs.saturating_mul(SECOND as i64))
    }

    /// The signed count of nanoseconds.
    pub const fn as_nanos(&self) -> i64 {
        self.0
    }

    /// The same span as a [`std::time::Duration`], or `None` when it is negative.
    pub fn to_std(&self) -> Option<std::time::Duration> {
        u64::try_from(self.0).ok().map(std::time::Duration::from_nanos)
    }

    /// The duration of a [`std::time::Duration`], which must not exceed [`GoDuration::MAX`].
    pub fn from_std(value: std::time::Duration) -> Result<GoDuration> {
        i64::try_from(value.as_nanos())
            .map(GoDuration)
            .map_err(|_| DurationError::StdOverflow { value })
    }

    /// The same span as a [`jiff::SignedDuration`] (always representable).
    pub const fn to_signed(&self) -> jiff::SignedDuration {
        jiff::SignedDuration::from_nanos(self.0)
    }

    /// Parses Go's duration syntax: an optional sign, then one or more `<number><unit>` terms.
    ///
    /// A number is decimal digits with an optional fraction (`1`, `1.5`, `.5`, `1.`); a unit is one of
    /// `ns`, `us`, `µs` (U+00B5), `μs` (U+03BC), `ms`, `s`, `m`, `h`. A bare `0` (also `+0`, `-0`) needs
    /// no unit. Terms are summed; nothing may separate them (`1h30m`, not `1h 30m`). Fractions finer than
    /// a nanosecond are truncated the way Go truncates them, and the result must fit in `i64`
    /// nanoseconds (`-9223372036854775808ns` is the lowest accepted value).
    pub fn parse(text: &str) -> Result<GoDuration> {
        parse_go_duration(text)
    }
}

/// The nanoseconds in one `unit`, for the unit spellings Go accepts.
fn unit_nanos(unit: &[u8]) -> Option<u64> {
    match unit {
        b"ns" => Some(NANOSECOND),
        b"us" => Some(MICROSECOND),
        // U+00B5 MICRO SIGN and U+03BC GREEK SMALL LETTER MU, in UTF-8.
        b"\xc2\xb5s" | b"\xce\xbcs" => Some(MICROSECOND),
        b"ms" => Some(MILLISECOND),
        b"s" => Some(SECOND),
        b"m" => Some(MINUTE),
        b"h" => Some(HOUR),
        _ => None,
    }
}

/// Reads the leading `[0-9]*` of `input`: its value, the rest, and whether any digit was read.
/// `None` when the value exceeds 2⁶³.
fn leading_int(input: &[u8]) -> Option<(u64, &[u8], bool)> {
    let digits = input.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut value: u64 = 0;
    for &c in &input[..digits] {
        if value > MAGNITUDE_LIMIT / 10 {
            return None;
        }
        value = value * 10 + u64::from(c - b'0');
        if value > MAGNITUDE_LIMIT {
            return None;
        }
    }
    Some((value, &input[digits..], digits > 0))
}

/// Reads the leading `[0-9]*` of the digits after a decimal point: the digits kept as an integer, the
/// power of ten they are scaled by, the rest, and whether any digit was read. Digits that would push
/// the integer past `i64::MAX` are skipped without error, so precision simply stops growing.
fn leading_fraction(input: &[u8]) -> (u64, f64, &[u8], bool) {
    let digits = input.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut value: u64 = 0;
    let mut scale: f64 = 1.0;
    let mut saturated = false;
    for &c in &input[..digits] {
        if saturated {
            continue;
        }
        if value > (MAGNITUDE_LIMIT - 1) / 10 {
            saturated = true;
            continue;
        }
        let next = value * 10 + u64::from(c - b'0');
        if next > MAGNITUDE_LIMIT {
            saturated = true;
            continue;
        }
        value = next;
        scale *= 10.0;
    }
    (value, scale, &input[digits..], digits > 0)
}

fn parse_go_duration(text: &str) -> Result<GoDuration> {
    let invalid = || DurationError::Invalid {
        value: text.to_owned(),
    };
    let overflow = || DurationError::Overflow {
        value: text.to_owned(),
    };

    let mut rest = text.as_bytes();
    let mut negative = false;
    if let Some((&sign, tail)) = rest.split_first()
        && (sign == b'-' || sign == b'+')
    {
        negative = sign == b'-';
        rest = tail;
    }
    if rest == b"0" {
        return Ok(GoDuration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }

    let mut total: u64 = 0;
    while let Some(&first) = rest.first() {
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        let (whole, after_whole, has_whole) = leading_int(rest).ok_or_else(overflow)?;
        rest = after_whole;

        let (mut fraction, mut scale, mut has_fraction) = (0, 1.0, false);
        if let Some((b'.', after_point)) = rest.split_first() {
            let (digits, digits_scale, after_fraction, any) = leading_fraction(after_point);
            (fraction, scale, has_fraction) = (digits, digits_scale, any);
            rest = after_fraction;
        }
        if !has_whole && !has_fraction {
            return Err(invalid());
        }

        let unit_len = rest
            .iter()
            .take_while(|&&c| !(c == b'.' || c.is_ascii_digit()))
            .count();
        if unit_len == 0 {
            return Err(DurationError::MissingUnit {
                value: text.to_owned(),
            });
        }
        let (unit_text, after_unit) = rest.split_at(unit_len);
        rest = after_unit;
        let unit = unit_nanos(unit_text).ok_or_else(|| DurationError::UnknownUnit {
            unit: String::from_utf8_lossy(unit_text).into_owned(),
            value: text.to_owned(),
        })?;

        if whole > MAGNITUDE_LIMIT / unit {
            return Err(overflow());
        }
        let mut term = whole * unit;
        if fraction > 0 {
            // Go computes the fractional part in float64, which is exact to the nanosecond for every
            // unit up to an hour; the same expression keeps results bit-for-bit identical. The product
            // is below `unit`, so the conversion never saturates.
            term += (fraction as f64 * (unit as f64 / scale)) as u64;
            if term > MAGNITUDE_LIMIT {
                return Err(overflow());
            }
        }
        total = total
            .checked_add(term)
            .filter(|&sum| sum <= MAGNITUDE_LIMIT)
            .ok_or_else(overflow)?;
    }

    if negative {
        // `total` is at most 2⁶³, whose negation is exactly i64::MIN.
        return Ok(GoDuration(0i64.wrapping_sub_unsigned(total)));
    }
    i64::try_from(total).map(GoDuration).map_err(|_| overflow())
}

impl FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<GoDuration> {
        GoDuration::parse(text)
    }
}

/// Writes `value / 10^precision` as `.ddd` into the tail of `buf` ending at `end`, without trailing
/// zeros (and without the point when the fraction is zero). Returns the new start and the integer part.
fn write_fraction(buf: &mut [u8], mut end: usize, mut value: u64, precision: usize) -> (usize, u64) {
    let mut printing = false;
    for _ in 0..precision {
        let digit = (value % 10) as u8;
        printing = printing || digit != 0;
        if printing {
            end -= 1;
            buf[end] = b'0' + digit;
        }
        value /= 10;
    }
    if printing {
        end -= 1;
        buf[end] = b'.';
    }
    (end, value)
}

/// Writes `value` in decimal into the tail of `buf` ending at `end`; returns the new start.
fn write_int(buf: &mut [u8], mut end: usize, mut value: u64) -> usize {
    loop {
        end -= 1;
        buf[end] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return end;
        }
    }
}

/// Formats like Go's `Duration.String()`: `0s`, `1.5s`, `300ms`, `1µs`, `1h30m0s`, `-1s`. Durations
/// under a second use the largest of ns, µs (U+00B5) and ms that keeps the integer part non-zero;
/// longer ones use `h`, `m` and `s`, leading zero units omitted. Trailing fractional zeros are trimmed.
impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The longest output, "-2562047h47m16.854775808s", is 25 bytes.
        let mut buf = [0u8; 32];
        let mut start = buf.len();
        let magnitude = self.0.unsigned_abs();

        if magnitude < SECOND {
            start -= 1;
            buf[start] = b's';
            let precision = match magnitude {
                0 => return f.write_str("0s"),
                m if m < MICROSECOND => {
                    start -= 1;
                    buf[start] = b'n';
                    0
                }
                m if m < MILLISECOND => {
                    let micro = "µ".as_bytes();
                    start -= micro.len();
                    buf[start..start + micro.len()].copy_from_slice(micro);
                    3
                }
                _ => {
                    start -= 1;
                    buf[start] = b'm';
                    6
                }
            };
            let (fraction_start, whole) = write_fraction(&mut buf, start, magnitude, precision);
            start = write_int(&mut buf, fraction_start, whole);
        } else {
            start -= 1;
            buf[start] = b's';
            let (fraction_start, secs) = write_fraction(&mut buf, start, magnitude, 9);
            start = write_int(&mut buf, fraction_start, secs % 60);
            let mins = secs / 60;
            if mins > 0 {
                start -= 1;
                buf[start] = b'm';
                start = write_int(&mut buf, start, mins % 60);
                let hours = mins / 60;
                if hours > 0 {
                    start -= 1;
                    buf[start] = b'h';
                    start = write_int(&mut buf, start, hours);
                }
            }
        }
        if self.0 < 0 {
            start -= 1;
            buf[start] = b'-';
        }
        f.write_str(&String::from_utf8_lossy(&buf[start..]))
    }
}

/// Serialized as the integer count of nanoseconds, like Go's `encoding/json` does for `time.Duration`.
impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.0)
    }
}

/// Deserialized from an integer count of nanoseconds (any integer that fits in `i64`).
impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        i64::deserialize(deserializer).map(GoDuration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const US: i64 = 1_000;
    const MS: i64 = 1_000_000;
    const S: i64 = 1_000_000_000;
    const M: i64 = 60 * S;
    const H: i64 = 60 * M;

    /// Go's own `parseDurationTests` (time_test.go), plus the cases named by kured's flags.
    #[test]
    fn parses_what_go_accepts() {
        let cases: &[(&str, &str, i64)] = &[
            ("zero alone", "0", 0),
            ("simple seconds", "5s", 5 * S),
            ("two-digit seconds", "30s", 30 * S),
            ("many seconds", "1478s", 1478 * S),
            ("minus sign", "-5s", -5 * S),
            ("plus sign", "+5s", 5 * S),
            ("negative zero", "-0", 0),
            ("positive zero", "+0", 0),
            ("zero fraction", "5.0s", 5 * S),
            ("fraction", "5.6s", 5 * S + 600 * MS),
            ("trailing point", "5.s", 5 * S),
            ("leading point", ".5s", 500 * MS),
            ("one point zero", "1.0s", S),
            ("one point zero zero", "1.00s", S),
            ("three fraction digits", "1.004s", S + 4 * MS),
            ("trailing fraction zero", "1.0040s", S + 4 * MS),
            ("fraction with inner zeros", "100.00100s", 100 * S + MS),
            ("nanoseconds", "10ns", 10),
            ("microseconds us", "11us", 11 * US),
            ("microseconds micro sign U+00B5", "12\u{b5}s", 12 * US),
            ("microseconds greek mu U+03BC", "12\u{3bc}s", 12 * US),
            ("milliseconds", "13ms", 13 * MS),
            ("seconds", "14s", 14 * S),
            ("minutes", "15m", 15 * M),
            ("hours", "16h", 16 * H),
            ("hours and minutes", "3h30m", 3 * H + 30 * M),
            ("terms in any order", "10.5s4m", 4 * M + 10 * S + 500 * MS),
            ("negative composite", "-2m3.4s", -(2 * M + 3 * S + 400 * MS)),
            (
                "every unit",
                "1h2m3s4ms5us6ns",
                H + 2 * M + 3 * S + 4 * MS + 5 * US + 6,
            ),
            (
                "composite with fraction",
                "39h9m14.425s",
                39 * H + 9 * M + 14 * S + 425 * MS,
            ),
            ("large nanoseconds", "52763797000ns", 52_763_797_000),
            ("more than nine fraction digits", "0.3333333333333333333h", 20 * M),
            (
                "beyond float64 integer precision",
                "9007199254740993ns",
                (1 << 53) + 1,
            ),
            ("largest in nanoseconds", "9223372036854775807ns", i64::MAX),
            ("largest in microseconds", "9223372036854775.807us", i64::MAX),
            ("largest composite", "9223372036s854ms775us807ns", i64::MAX),
            ("smallest in nanoseconds", "-9223372036854775808ns", i64::MIN),
            ("smallest in microseconds", "-9223372036854775.808us", i64::MIN),
            ("smallest composite", "-9223372036s854ms775us808ns", i64::MIN),
            ("smallest as Go prints it", "-2562047h47m16.854775808s", i64::MIN),
            ("huge fraction string", "0.100000000000000000000h", 6 * M),
            (
                "fraction overflow check",
                "0.830103483285477580700h",
                49 * M + 48 * S + 372_539_827,
            ),
            ("hour and a half", "1.5h", 90 * M),
            ("point after integer", "1.s", S),
            ("negative leading point", "-.5s", -500 * MS),
            ("zero with unit", "0s", 0),
            ("sub-nanosecond fraction truncates", "0.9ns", 0),
            ("nanosecond fraction truncates", "1.9ns", 1),
            ("one nanosecond as seconds", "0.000000001s", 1),
            ("below a nanosecond as seconds", "0.0000000009s", 0),
            ("tenth of an hour", "0.1h", 6 * M),
            ("fractional minutes", "2.7m", 162 * S),
            ("kured default period", "1h", H),
            ("kured lock ttl disabled", "0", 0),
        ];
        for &(name, input, want) in cases {
            assert_eq!(
                GoDuration::parse(input),
                Ok(GoDuration::from_nanos(want)),
                "case {name}: {input:?}"
            );
            assert_eq!(
                input.parse::<GoDuration>(),
                Ok(GoDuration::from_nanos(want)),
                "case {name} (FromStr)"
            );
        }
    }

    /// Go's own `parseDurationErrorTests` (time_test.go), plus kured-relevant mistakes.
    #[test]
    fn rejects_what_go_rejects() {
        fn invalid(value: &str) -> DurationError {
            DurationError::Invalid {
                value: value.to_owned(),
            }
        }
        fn missing(value: &str) -> DurationError {
            DurationError::MissingUnit {
                value: value.to_owned(),
            }
        }
        fn unknown(unit: &str, value: &str) -> DurationError {
            DurationError::UnknownUnit {
                unit: unit.to_owned(),
                value: value.to_owned(),
            }
        }
        fn overflow(value: &str) -> DurationError {
            DurationError::Overflow {
                value: value.to_owned(),
            }
        }
        let cases: Vec<(&str, &str, DurationError)> = vec![
            ("empty", "", invalid("")),
            ("number without unit", "3", missing("3")),
            ("sign alone", "-", invalid("-")),
            ("plus alone", "+", invalid("+")),
            ("unit alone", "s", invalid("s")),
            ("point alone", ".", invalid(".")),
            ("sign and point", "-.", invalid("-.")),
            ("point and unit", ".s", invalid(".s")),
            ("signed point and unit", "+.s", invalid("+.s")),
            ("days are not a unit", "1d", unknown("d", "1d")),
            ("replacement character", "\u{fffd}", invalid("\u{fffd}")),
            (
                "replacement characters and words",
                "\u{fffd} hello \u{fffd} world",
                invalid("\u{fffd} hello \u{fffd} world"),
            ),
            ("space between terms", "1h 30m", unknown("h ", "1h 30m")),
            ("zero with fraction needs a unit", "0.0", missing("0.0")),
            ("double zero needs a unit", "00", missing("00")),
            ("two points", "0..5s", missing("0..5s")),
            ("second fraction", "1.5.5s", missing("1.5.5s")),
            ("exponent", "1e3s", unknown("e", "1e3s")),
            ("digit separator", "1_000s", unknown("_", "1_000s")),
            ("upper-case unit", "1H", unknown("H", "1H")),
            ("mega-seconds", "1Ms", unknown("Ms", "1Ms")),
            ("full-width digit", "\u{ff11}s", invalid("\u{ff11}s")),
            ("sign inside", "1h-30m", unknown("h-", "1h-30m")),
            ("leading space", " 1h", invalid(" 1h")),
            (
                "overflow by two",
                "9223372036854775810ns",
                overflow("9223372036854775810ns"),
            ),
            (
                "overflow by one",
                "9223372036854775808ns",
                overflow("9223372036854775808ns"),
            ),
            (
                "negative overflow",
                "-9223372036854775809ns",
                overflow("-9223372036854775809ns"),
            ),
            (
                "overflow in microseconds",
                "9223372036854776us",
                overflow("9223372036854776us"),
            ),
            ("overflow in hours", "3000000h", overflow("3000000h")),
            (
                "overflow by fraction",
                "9223372036854775.808us",
                overflow("9223372036854775.808us"),
            ),
            (
                "overflow by sum",
                "9223372036854ms775us808ns",
                overflow("9223372036854ms775us808ns"),
            ),
            (
                "largest as Go prints the smallest",
                "2562047h47m16.854775808s",
                overflow("2562047h47m16.854775808s"),
            ),
            (
                "overflow in the integer",
                "99999999999999999999ns",
                overflow("99999999999999999999ns"),
            ),
            // Go's own parser wraps this sum of two 2^63 ns terms around to 0; it is rejected here.
            (
                "sum that wraps around in Go",
                "9223372036854775808ns9223372036854775808ns",
                overflow("9223372036854775808ns9223372036854775808ns"),
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(GoDuration::parse(input), Err(want), "case {name}: {input:?}");
        }
    }

    /// Go's own `durationTests` (time_test.go) for `Duration.String()`.
    #[test]
    fn formats_like_go() {
        let cases: &[(&str, i64, &str)] = &[
            ("zero", 0, "0s"),
            ("one nanosecond", 1, "1ns"),
            ("microseconds with fraction", 1100, "1.1\u{b5}s"),
            ("milliseconds with fraction", 2200 * US, "2.2ms"),
            ("seconds with fraction", 3300 * MS, "3.3s"),
            ("minutes and seconds", 4 * M + 5 * S, "4m5s"),
            ("minutes and fractional seconds", 4 * M + 5001 * MS, "4m5.001s"),
            ("hours minutes seconds", 5 * H + 6 * M + 7001 * MS, "5h6m7.001s"),
            ("nanosecond after minutes", 8 * M + 1, "8m0.000000001s"),
            ("largest", i64::MAX, "2562047h47m16.854775807s"),
            ("smallest", i64::MIN, "-2562047h47m16.854775808s"),
            ("hour and a half", 90 * M, "1h30m0s"),
            ("one and a half seconds", 1500 * MS, "1.5s"),
            ("milliseconds", 300 * MS, "300ms"),
            ("one microsecond", US, "1\u{b5}s"),
            ("one hour", H, "1h0m0s"),
            ("one minute", M, "1m0s"),
            ("hour and half a second", H + 500 * MS, "1h0m0.5s"),
            ("just under a second", S - 1, "999.999999ms"),
            ("just under a millisecond", MS - 1, "999.999\u{b5}s"),
            ("just under a microsecond", US - 1, "999ns"),
            ("minus one nanosecond", -1, "-1ns"),
            ("minus one second", -S, "-1s"),
        ];
        for &(name, nanos, want) in cases {
            assert_eq!(GoDuration::from_nanos(nanos).to_string(), want, "case {name}");
            if nanos > 0 {
                assert_eq!(
                    GoDuration::from_nanos(-nanos).to_string(),
                    format!("-{want}"),
                    "case {name} negated"
                );
            }
        }
    }

    #[test]
    fn extremes_round_trip() {
        for d in [
            GoDuration::MAX,
            GoDuration::from_nanos(i64::MIN),
            GoDuration::ZERO,
        ] {
            assert_eq!(GoDuration::parse(&d.to_string()), Ok(d), "{d}");
        }
    }

    #[test]
    fn serde_uses_integer_nanoseconds() {
        let cases: &[(&str, i64, &str)] = &[
            ("zero", 0, "0"),
            ("an hour", H, "3600000000000"),
            ("negative", -S, "-1000000000"),
            ("largest", i64::MAX, "9223372036854775807"),
        ];
        for &(name, nanos, json) in cases {
            let d = GoDuration::from_nanos(nanos);
            assert_eq!(
                serde_json::to_string(&d).ok().as_deref(),
                Some(json),
                "case {name} serialize"
            );
            assert_eq!(
                serde_json::from_str::<GoDuration>(json).ok(),
                Some(d),
                "case {name} deserialize"
            );
        }
        assert!(
            serde_json::from_str::<GoDuration>("\"1h\"").is_err(),
            "a string is not a TTL"
        );
        assert!(
            serde_json::from_str::<GoDuration>("9223372036854775808").is_err(),
            "beyond i64"
        );
    }

    #[test]
    fn lock_ttl_field_matches_upstream_shape() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Record {
            #[serde(rename = "TTL")]
            ttl: GoDuration,
        }
        let record = Record {
            ttl: GoDuration::from_secs(300),
        };
        let json = serde_json::to_string(&record).ok();
        assert_eq!(json.as_deref(), Some(r#"{"TTL":300000000000}"#));
        assert_eq!(
            serde_json::from_str::<Record>(r#"{"TTL":300000000000}"#).ok(),
            Some(record)
        );
    }

    #[test]
    fn conversions() {
        let std = std::time::Duration::from_millis(1500);
        assert_eq!(
            GoDuration::from_std(std),
            Ok(GoDuration::from_nanos(1500 * MS)),
            "from std"
        );
        assert_eq!(GoDuration::from_nanos(1500 * MS).to_std(), Some(std), "to std");
        assert_eq!(
            GoDuration::from_nanos(-1).to_std(),
            None,
            "negative has no std form"
        );
        assert_eq!(
            GoDuration::ZERO.to_std(),
            Some(std::time::Duration::ZERO),
            "zero to std"
        );
        let too_long = std::time::Duration::from_secs(u64::MAX);
        assert_eq!(
            GoDuration::from_std(too_long),
            Err(DurationError::StdOverflow { value: too_long })
        );
        let largest = std::time::Duration::from_nanos(i64::MAX as u64);
        assert_eq!(
            GoDuration::from_std(largest),
            Ok(GoDuration::MAX),
            "largest std that fits"
        );
        assert_eq!(
            GoDuration::from_secs(90),
            GoDuration::from_nanos(90 * S),
            "from secs"
        );
        assert_eq!(
            GoDuration::from_secs(i64::MAX),
            GoDuration::MAX,
            "from secs saturates up"
        );
        assert_eq!(
            GoDuration::from_secs(i64::MIN),
            GoDuration::from_nanos(i64::MIN),
            "from secs saturates down"
        );
        assert_eq!(GoDuration::from_nanos(-5).as_nanos(), -5, "as nanos");
        assert_eq!(
            GoDuration::from_nanos(-1500 * MS).to_signed(),
            jiff::SignedDuration::from_millis(-1500)
        );
        assert!(
            GoDuration::from_secs(1) < GoDuration::from_secs(2),
            "ordered by length"
        );
    }

    #[test]
    fn error_messages_name_the_value() {
        let cases: &[(&str, &str)] = &[
            (
                "",
                r#"invalid duration "": expected a Go duration such as 90s, 1h30m, 1.5h or 0"#,
            ),
            (
                "1d",
                r#"unknown unit "d" in duration "1d": expected one of ns, us, µs, ms, s, m, h"#,
            ),
            (
                "90",
                r#"missing unit in duration "90": expected one of ns, us, µs, ms, s, m, h after each number"#,
            ),
        ];
        for &(input, want) in cases {
            let message = GoDuration::parse(input).err().map(|e| e.to_string());
            assert_eq!(message.as_deref(), Some(want), "{input:?}");
        }
    }

    /// Valid duration text: an optional sign and one to four `<number><unit>` terms.
    fn duration_text() -> impl Strategy<Value = String> {
        let unit = prop::sample::select(vec!["ns", "us", "\u{b5}s", "\u{3bc}s", "ms", "s", "m", "h"]);
        let number = prop_oneof![
            "[0-9]{1,6}",
            "[0-9]{1,4}\\.[0-9]{0,12}",
            "\\.[0-9]{1,12}",
            "[0-9]{1,20}",
        ];
        let term = (number, unit).prop_map(|(n, u)| format!("{n}{u}"));
        (
            prop::sample::select(vec!["", "-", "+"]),
            prop::collection::vec(term, 1..=4),
        )
            .prop_map(|(sign, terms)| format!("{sign}{}", terms.concat()))
    }

    proptest! {
        #[test]
        fn formatting_round_trips(nanos in any::<i64>()) {
            let d = GoDuration::from_nanos(nanos);
            prop_assert_eq!(GoDuration::parse(&d.to_string()), Ok(d));
        }

        #[test]
        fn parsed_values_format_stably(text in duration_text()) {
            match GoDuration::parse(&text) {
                Ok(d) => {
                    let printed = d.to_string();
                    prop_assert_eq!(GoDuration::parse(&printed), Ok(d));
                    prop_assert_eq!(GoDuration::parse(&printed).map(|again| again.to_string()), Ok(printed));
                }
                Err(err) => prop_assert!(matches!(err, DurationError::Overflow { .. }), "{}: {}", text, err),
            }
        }
    }
}
