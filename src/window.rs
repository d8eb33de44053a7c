//! The reboot window: weekdays and a time-of-day range in an IANA time zone.
