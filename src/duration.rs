//! Go duration syntax (`1h30m`, `90s`, `-1.5h`): parsing and formatting compatible with Go's `time` package.
