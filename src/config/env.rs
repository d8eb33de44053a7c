//! `KURED_*` variables and the flags of the command line, where both are given: they meet as in
//! upstream kured, which sets each flag again from its variable after parsing the command line.

use std::ffi::{OsStr, OsString};

/// What becomes of a flag given on the command line when its `KURED_*` variable is set too,
/// following upstream, which sets each flag again from its variable after parsing the command
/// line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Meeting {
    /// A single-valued flag: the variable's value replaces the flag's.
    VariableWins,
    /// A comma-separated list (`--reboot-days`, the node-label flags): the variable's values
    /// are added after the flag's, as setting a list flag again does in upstream.
    Appended,
    /// A repeatable flag whose values may contain commas (`--notify-url`,
    /// `--blocking-pod-selector`): upstream never reads these variables, so the flag's values
    /// stand; the variable counts only when the flag is not given.
    FlagWins,
}

/// A flag given on the command line whose `KURED_*` variable is set too.
#[derive(Debug)]
pub(super) struct Override {
    pub(super) long: String,
    variable: String,
    pub(super) meeting: Meeting,
    /// Whether `--long VALUE` takes the next argument as its value (flags with an optional
    /// value take it only as `--long=VALUE`).
    takes_next: bool,
    flag_values: Vec<OsString>,
    variable_value: OsString,
    delimiter: Option<char>,
}

/// Flags whose values may carry credentials: their values are never shown in a warning.
const SECRET_FLAGS: [&str; 3] = ["notify-url", "slack-hook-url", "prometheus-url"];

impl Override {
    /// The warning for a variable whose value differs from the flag's; none when they agree.
    pub(super) fn warning(&self) -> Option<String> {
        let given: Vec<String> = self
            .flag_values
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let from_variable = self.variable_value.to_string_lossy();
        let same = match self.delimiter {
            Some(d) => given.join(&d.to_string()) == from_variable,
            None => given.len() == 1 && given[0] == from_variable,
        };
        if same {
            return None;
        }
        let (variable, long) = (&self.variable, &self.long);
        let outcome = match self.meeting {
            Meeting::VariableWins => "the variable's value is used, as in upstream kured",
            Meeting::Appended => "the variable's values are added to the flag's, as in upstream kured",
            Meeting::FlagWins => "the flag's values are used: upstream kured never reads this variable",
        };
        Some(if SECRET_FLAGS.contains(&long.as_str()) {
            format!(
                "both {variable} and --{long} are set, to different values (not shown: they may hold credentials); {outcome}"
            )
        } else {
            let given: Vec<String> = given.iter().map(|v| format!("--{long}={v:?}")).collect();
            format!(
                "both {variable}={from_variable:?} and {} are set; {outcome}",
                given.join(" ")
            )
        })
    }
}

/// The flags of the command `matches` ran (the agent's or a subcommand's) that were given on the
/// command line while their variable is set.
pub(super) fn env_overrides(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    env: impl Fn(&str) -> Option<OsString>,
) -> Vec<Override> {
    let (command, matches) = match matches.subcommand() {
        Some((name, sub)) => match command.find_subcommand(name) {
            Some(found) => (found, sub),
            None => return Vec::new(),
        },
        None => (command, matches),
    };
    command
        .get_arguments()
        .filter_map(|arg| {
            let variable = arg.get_env()?.to_str()?;
            let long = arg.get_long()?;
            if matches.value_source(arg.get_id().as_str()) != Some(clap::parser::ValueSource::CommandLine) {
                return None;
            }
            // An empty variable counts as unset, as clap reads it.
            let variable_value = env(variable).filter(|v| !v.is_empty())?;
            let flag_values = matches
                .get_raw(arg.get_id().as_str())
                .map(|values| values.map(OsStr::to_owned).collect())
                .unwrap_or_default();
            let optional_value = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
            let takes_next =
                arg.get_action().takes_values() && !optional_value && !arg.is_require_equals_set();
            let delimiter = arg.get_value_delimiter();
            let meeting = match (arg.get_action(), delimiter) {
                (clap::ArgAction::Append, Some(_)) => Meeting::Appended,
                (clap::ArgAction::Append, None) => Meeting::FlagWins,
                _ => Meeting::VariableWins,
            };
            Some(Override {
                long: long.to_owned(),
                variable: variable.to_owned(),
                meeting,
                takes_next,
                flag_values,
                variable_value,
                delimiter,
            })
        })
        .collect()
}

/// `args` with the variables of `met` applied: the flags a variable wins over removed (each
/// `--long=VALUE`, or `--long` and, for a flag that takes one, the value after it, so that clap
/// takes the variable), and `--long=VALUE` added for the lists a variable adds to. Nothing after
/// `--` is touched.
pub(super) fn with_variables(args: &[OsString], met: &[Override]) -> Vec<OsString> {
    let mut kept = Vec::with_capacity(args.len());
    let mut rest = args.iter();
    let mut after_separator = Vec::new();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            after_separator.push(arg.clone());
            after_separator.extend(rest.by_ref().cloned());
            break;
        }
        let text = arg.to_string_lossy();
        let named = text
            .strip_prefix("--")
            .map(|s| s.split_once('=').map_or((s, false), |(n, _)| (n, true)));
        let replaced = named.and_then(|(name, with_value)| {
            met.iter()
                .find(|o| o.long == name && o.meeting == Meeting::VariableWins)
                .map(|o| (o, with_value))
        });
        match replaced {
            Some((o, false)) if o.takes_next => {
                rest.next();
            }
            Some(_) => {}
            None => kept.push(arg.clone()),
        }
    }
    for o in met.iter().filter(|o| o.meeting == Meeting::Appended) {
        let mut added = OsString::from(format!("--{}=", o.long));
        added.push(&o.variable_value);
        kept.push(added);
    }
    kept.extend(after_separator);
    kept
}
