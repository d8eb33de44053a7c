//! README.md documents every flag and every metric in tables; these tests keep the tables exact.
//!
//! - The flag tables (between `<!-- flags:begin -->` and `<!-- flags:end -->`, and for the flags
//!   only a command has, between `<!-- command-flags:begin -->` and `<!-- command-flags:end -->`)
//!   are compared with the real command line, [`Cli::command`]: one row per flag, with its
//!   `KURED_*` variable and its default exactly as clap reports them, and no row for a flag that
//!   does not exist.
//! - The metrics table (between `<!-- metrics:begin -->` and `<!-- metrics:end -->`) is compared
//!   with what the agent's registry exposes: every metric with its type and label names, and no
//!   other; the schemes listed for `kured_notifications_failed_total` are every service's, in
//!   order, and `unknown`.
//! - The `needs-restarting -r` recipe (between `<!-- needs-restarting:begin -->` and its end) is
//!   run as a sentinel command with a stand-in that exits as the real program does.
//!
//! Cells are written as in the README: a name, variable or default in backticks, `""` for an
//! empty default, and `(none)` for no variable or no default.
//!
//! Needs no test cluster. clap reads each `KURED_*` variable while it builds the command, but
//! only into the value it would parse; the names and declared defaults compared here are the same
//! whatever the environment holds, so this file neither sets nor clears variables.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kured::config::Cli;
use kured::metrics::{Format, Metrics};

const README: &str = include_str!("../README.md");

/// What a cell shows for "no variable" or "no default".
const NONE: &str = "(none)";

/// The README text between `<!-- {name}:begin -->` and `<!-- {name}:end -->`.
fn section(name: &str) -> &'static str {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let start = README
        .find(&begin)
        .unwrap_or_else(|| panic!("README.md has no {begin} marker"))
        + begin.len();
    let len = README[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("README.md has no {end} marker after {begin}"));
    &README[start..start + len]
}

/// The body rows of every Markdown table in `text`, each cell keyed by its column's header.
fn table_rows(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut rows = Vec::new();
    let mut header: Option<Vec<String>> = None;
    for line in text.lines().map(str::trim) {
        if !line.starts_with('|') {
            header = None;
            continue;
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect();
        match &header {
            None => header = Some(cells),
            Some(_) if cells.iter().all(|c| is_rule(c)) => {}
            Some(names) => {
                assert_eq!(
                    cells.len(),
                    names.len(),
                    "README.md table row {line:?} has {} cells, its header {}",
                    cells.len(),
                    names.len()
                );
                rows.push(names.iter().cloned().zip(cells).collect());
            }
        }
    }
    rows
}

/// A cell of the line under a table's header: `---`, `:--`, `--:`.
fn is_rule(cell: &str) -> bool {
    !cell.is_empty() && cell.chars().all(|c| matches!(c, '-' | ':'))
}

/// A cell's column, which every row of the section must have.
fn cell<'a>(row: &'a BTreeMap<String, String>, column: &str) -> &'a str {
    row.get(column)
        .unwrap_or_else(|| panic!("README.md table row {row:?} has no {column:?} column"))
}

/// The text inside a cell that is one code span, `` `x` ``.
fn code(cell: &str) -> Option<&str> {
    cell.strip_prefix('`')
        .and_then(|c| c.strip_suffix('`'))
        .filter(|c| !c.is_empty() && !c.contains('`'))
}

/// The names in a cell of code spans separated by commas (`` `a`, `b` ``), or none for `(none)`.
fn code_list(cell: &str) -> Option<Vec<String>> {
    if cell == NONE {
        return Some(Vec::new());
    }
    cell.split(',')
        .map(|c| code(c.trim()).map(str::to_owned))
        .collect()
}

/// How the README shows an argument's environment variable.
fn env_cell(arg: &clap::Arg) -> String {
    match arg.get_env() {
        Some(var) => format!("`{}`", var.to_string_lossy()),
        None => NONE.to_owned(),
    }
}

/// How the README shows an argument's default, exactly as clap reports it.
fn default_cell(arg: &clap::Arg) -> String {
    let values: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if values.is_empty() {
        return NONE.to_owned();
    }
    values
        .iter()
        .map(|v| {
            if v.is_empty() {
                "`\"\"`".to_owned()
            } else {
                format!("`{v}`")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A flag as documented or as defined: the command it belongs to (`None`: the agent, and every
/// command that has a flag of the same name, variable and default), and the flag.
type FlagKey = (Option<String>, String);

#[derive(Debug, PartialEq, Eq)]
struct FlagDoc {
    env: String,
    default: String,
}

/// Every flag of the real command line, with how the README must show it.
fn defined_flags() -> BTreeMap<FlagKey, FlagDoc> {
    let mut cmd = Cli::command();
    cmd.build();
    let flags = |cmd: &clap::Command| -> BTreeMap<String, FlagDoc> {
        cmd.get_arguments()
            .filter_map(|arg| {
                let long = arg.get_long()?;
                (!matches!(long, "help" | "version")).then(|| {
                    (
                        format!("--{long}"),
                        FlagDoc {
                            env: env_cell(arg),
                            default: default_cell(arg),
                        },
                    )
                })
            })
            .collect()
    };
    let agent = flags(&cmd);
    assert!(!agent.is_empty(), "the agent has no flags?");
    let mut all: BTreeMap<FlagKey, FlagDoc> = BTreeMap::new();
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        for (flag, doc) in flags(sub) {
            // A command's flag that is the agent's flag (same variable, same default) is
            // documented once, in the agent's table.
            if agent.get(&flag) != Some(&doc) {
                all.insert((Some(sub.get_name().to_owned()), flag), doc);
            }
        }
    }
    all.extend(agent.into_iter().map(|(flag, doc)| ((None, flag), doc)));
    all
}

/// Every flag row of the README, keyed like [`defined_flags`].
fn documented_flags() -> BTreeMap<FlagKey, FlagDoc> {
    let mut documented = BTreeMap::new();
    let sections = [("flags", false), ("command-flags", true)];
    for (name, per_command) in sections {
        let rows = table_rows(section(name));
        assert!(
            !rows.is_empty(),
            "README.md has no table rows between its {name} markers"
        );
        for row in rows {
            let flag = code(cell(&row, "Flag"))
                .unwrap_or_else(|| panic!("README.md: flag cell of {row:?} is not `--flag`"))
                .to_owned();
            let command = per_command.then(|| {
                let text = code(cell(&row, "Command"))
                    .unwrap_or_else(|| panic!("README.md: command cell of {row:?} is not `kured <command>`"));
                text.strip_prefix("kured ").unwrap_or(text).to_owned()
            });
            assert!(
                !cell(&row, "Meaning").is_empty(),
                "README.md: {flag} has no meaning"
            );
            let doc = FlagDoc {
                env: cell(&row, "Environment variable").to_owned(),
                default: cell(&row, "Default").to_owned(),
            };
            let key = (command, flag);
            assert!(
                documented.insert(key.clone(), doc).is_none(),
                "README.md documents {key:?} twice"
            );
        }
    }
    documented
}

fn describe(key: &FlagKey) -> String {
    match key {
        (None, flag) => flag.clone(),
        (Some(command), flag) => format!("kured {command} {flag}"),
    }
}

#[test]
fn flag_tables_match_the_command_line() {
    let defined = defined_flags();
    let documented = documented_flags();
    let mut problems = Vec::new();
    for (key, want) in &defined {
        match documented.get(key) {
            None => problems.push(format!(
                "{}: no row (variable {}, default {})",
                describe(key),
                want.env,
                want.default
            )),
            Some(got) => {
                if got.env != want.env {
                    problems.push(format!(
                        "{}: variable is {}, README says {}",
                        describe(key),
                        want.env,
                        got.env
                    ));
                }
                if got.default != want.default {
                    problems.push(format!(
                        "{}: default is {}, README says {}",
                        describe(key),
                        want.default,
                        got.default
                    ));
                }
            }
        }
    }
    for key in documented.keys().filter(|k| !defined.contains_key(*k)) {
        problems.push(format!("{}: documented, but no such flag", describe(key)));
    }
    assert!(
        problems.is_empty(),
        "README.md's flag tables disagree with the command line:\n  {}",
        problems.join("\n  ")
    );
}

/// Every metric family the agent exposes, by the name a scrape shows, with its type and label
/// names.
fn exposed_metrics() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let metrics = Metrics::new("node-a");
    // Give every family a sample, so that its labels show.
    metrics.set_reboot_required(true);
    metrics.count_sentinel_error();
    metrics.notification_failures().count("slack");
    metrics.count_blocked("blocker_pod");
    // OpenMetrics names a counter's family without its `_total`, so the type says which it is.
    let text = metrics.encode(Format::OpenMetrics);

    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            families.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).expect("a sample line");
            let labels = match line[name_end..].strip_prefix('{') {
                Some(rest) => {
                    let inner = &rest[..rest.find('}').expect("closing brace")];
                    inner
                        .split(',')
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| pair.split_once('=').expect("label=value").0.to_owned())
                        .collect()
                }
                None => BTreeSet::new(),
            };
            samples
                .entry(line[..name_end].to_owned())
                .or_default()
                .extend(labels);
        }
    }
    families
        .into_iter()
        .map(|(family, kind)| {
            // A counter's samples carry the suffix _total; that is the name queries use. A
            // histogram's series are told apart by their suffixes: its labels are those of _count.
            let (scraped, series) = match kind.as_str() {
                "counter" => (format!("{family}_total"), format!("{family}_total")),
                "histogram" => (family.clone(), format!("{family}_count")),
                _ => (family.clone(), family.clone()),
            };
            let labels = samples
                .remove(&series)
                .unwrap_or_else(|| panic!("metric {family} has no sample: give it one in exposed_metrics()"));
            (scraped, (kind, labels))
        })
        .collect()
}

/// The code spans of `text`, in order.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[test]
fn notification_failure_schemes_are_every_service_and_unknown() {
    let row = table_rows(section("metrics"))
        .into_iter()
        .find(|row| code(cell(row, "Metric")) == Some("kured_notifications_failed_total"))
        .expect("README.md documents kured_notifications_failed_total");
    let documented = code_spans(cell(&row, "Meaning"));
    let mut expected = kured::notify::target::metric_schemes();
    expected.push("unknown");
    assert_eq!(
        documented, expected,
        "README.md's schemes of kured_notifications_failed_total (left) disagree with the services (right)"
    );
}

#[test]
fn metrics_table_matches_the_registry() {
    let exposed = exposed_metrics();
    let mut documented: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for row in table_rows(section("metrics")) {
        let name = code(cell(&row, "Metric"))
            .unwrap_or_else(|| panic!("README.md: metric cell of {row:?} is not `name`"))
            .to_owned();
        let labels = code_list(cell(&row, "Labels"))
            .unwrap_or_else(|| panic!("README.md: labels of {name} are not `a`, `b` or (none)"));
        assert!(
            !cell(&row, "Meaning").is_empty(),
            "README.md: {name} has no meaning"
        );
        let doc = (cell(&row, "Type").to_owned(), labels.into_iter().collect());
        assert!(
            documented.insert(name.clone(), doc).is_none(),
            "README.md documents {name} twice"
        );
    }
    assert_eq!(
        documented, exposed,
        "README.md's metrics table (left) disagrees with the registry (right)"
    );
}

/// The README's `needs-restarting -r` recipe, run as the agent runs a sentinel command, with a
/// stand-in for `needs-restarting` that exits as the real one does: 1 when a reboot is needed, 0
/// when not, and 2 for an error of its own (which must stay a failed check, never a reboot).
#[tokio::test]
async fn the_needs_restarting_recipe_turns_its_exit_codes_the_right_way_round() {
    use kured::reboot::HostNamespace;
    use kured::sentinel::Sentinel;

    let block = section("needs-restarting");
    let flag = block
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("--reboot-sentinel-command="))
        .expect("the recipe's flag line");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let stand_in = dir.path().join("needs-restarting");
    let code_file = dir.path().join("code");
    std::fs::write(
        &stand_in,
        format!(
            "#!/bin/sh\necho 'Reboot is required to fully utilize these updates.'\nexit $(cat {})\n",
            code_file.display()
        ),
    )
    .expect("writing the stand-in");
    std::fs::set_permissions(&stand_in, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    // The recipe names the program as the host's PATH finds it; here it is the stand-in.
    assert!(flag.contains("'needs-restarting -r "), "{flag}");
    let line = flag.replacen(
        "'needs-restarting -r ",
        &format!("'{} -r ", stand_in.display()),
        1,
    );
    let sentinel = Sentinel::command(
        &line,
        HostNamespace::of_pid(std::process::id()),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{flag}: {e}"));

    let check = |code: &'static str| {
        std::fs::write(&code_file, code).expect("writing the exit code");
        sentinel.check()
    };
    assert!(
        check("1").await.expect("a check"),
        "needs-restarting exit 1: a reboot is needed"
    );
    assert!(
        !check("0").await.expect("a check"),
        "needs-restarting exit 0: none is needed"
    );
    let failed = check("2").await;
    assert!(
        failed.is_err(),
        "needs-restarting failing is a failed check: {failed:?}"
    );
}
