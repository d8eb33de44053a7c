//! The annotations an operator sets to steer kured by hand, and how the agent reads them: a
//! node's `kured.dev/pause` and `kured.dev/reboot-now`, the rollout's `kured.dev/halted` mark,
//! and the fleet's `kured.dev/pause` on the lock object. Pure: no I/O.
//!
//! Values are written by hand, so every reading has a safe side: a pause whose value is neither
//! `true` nor `false` pauses, a reboot request whose value is neither does not reboot; both come
//! with a warning naming the value.

use std::collections::BTreeMap;

/// On a Node: never reboot it. On the lock object: no node takes a slot.
pub const PAUSE_ANNOTATION: &str = "kured.dev/pause";
/// On a Node: reboot it as if its sentinel said so; removed once that reboot is done.
pub const REBOOT_NOW_ANNOTATION: &str = "kured.dev/reboot-now";
/// On a Node: its post-reboot health gate timed out and the rollout is halted at it; the value
/// is the reason. Removing it resumes the rollout.
pub const HALTED_ANNOTATION: &str = "kured.dev/halted";

/// What a node's annotations ask of its agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeControls {
    /// `Some(why)`: the node is paused, `why` saying by what.
    pub paused: Option<String>,
    /// A reboot was asked for by hand.
    pub reboot_now: bool,
    /// The halt mark is on the node.
    pub halted: bool,
    /// Values that were neither `true` nor `false`, each read on its safe side.
    pub warnings: Vec<String>,
}

/// Reads the controls from a Node's annotations.
pub fn node_controls(annotations: Option<&BTreeMap<String, String>>) -> NodeControls {
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    let mut controls = NodeControls {
        halted: get(HALTED_ANNOTATION).is_some(),
        ..NodeControls::default()
    };
    match Switch::read(get(PAUSE_ANNOTATION)) {
        Switch::Off => {}
        Switch::On => controls.paused = Some(format!("node paused ({PAUSE_ANNOTATION}=true)")),
        Switch::Unreadable(value) => {
            controls.warnings.push(format!(
                "annotation {PAUSE_ANNOTATION}={value:?} is neither true nor false; the node counts as paused"
            ));
            controls.paused = Some(format!(
                "node paused ({PAUSE_ANNOTATION}={value:?}, not true or false)"
            ));
        }
    }
    match Switch::read(get(REBOOT_NOW_ANNOTATION)) {
        Switch::Off => {}
        Switch::On => controls.reboot_now = true,
        Switch::Unreadable(value) => controls.warnings.push(format!(
            "annotation {REBOOT_NOW_ANNOTATION}={value:?} is neither true nor false; no reboot is requested"
        )),
    }
    controls
}

/// The fleet's pause as the lock object's [`PAUSE_ANNOTATION`] says (`value`: `None` when
/// absent): `Some(why)` when paused, which a value other than `false` is.
pub fn fleet_paused(value: Option<&str>, object: &str) -> Option<String> {
    match Switch::read(value) {
        Switch::Off => None,
        Switch::On => Some(format!("fleet paused ({PAUSE_ANNOTATION} on {object})")),
        Switch::Unreadable(value) => Some(format!(
            "fleet paused ({PAUSE_ANNOTATION}={value:?} on {object}, not true or false)"
        )),
    }
}

/// A `true`/`false` annotation as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch {
    /// Absent, or `false`.
    Off,
    /// `true`.
    On,
    /// Any other value, as it was found.
    Unreadable(String),
}

impl Switch {
    pub fn read(value: Option<&str>) -> Switch {
        match value.map(flag) {
            None | Some(Some(false)) => Switch::Off,
            Some(Some(true)) => Switch::On,
            Some(None) => Switch::Unreadable(value.unwrap_or_default().to_owned()),
        }
    }

    /// Whether a pause reads as paused: an unreadable value does (the safe reading).
    pub fn paused(&self) -> bool {
        !matches!(self, Switch::Off)
    }

    /// Whether a reboot request reads as one: an unreadable value does not (the safe reading).
    pub fn on(&self) -> bool {
        matches!(self, Switch::On)
    }
}

/// `true` or `false`, as Kubernetes' own boolean annotations are written; `None` for anything
/// else. Surrounding white space and case are forgiven.
fn flag(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> NodeControls {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        node_controls(Some(&map))
    }

    #[test]
    fn each_value_has_a_safe_reading() {
        assert_eq!(node_controls(None), NodeControls::default());
        assert_eq!(read(&[]), NodeControls::default());
        type Case<'a> = (&'a [(&'a str, &'a str)], bool, bool, usize);
        let cases: &[Case] = &[
            // (annotations, paused, reboot_now, warnings)
            (&[(PAUSE_ANNOTATION, "true")], true, false, 0),
            (&[(PAUSE_ANNOTATION, " True ")], true, false, 0),
            (&[(PAUSE_ANNOTATION, "false")], false, false, 0),
            (&[(PAUSE_ANNOTATION, "yes")], true, false, 1),
            (&[(PAUSE_ANNOTATION, "")], true, false, 1),
            (&[(REBOOT_NOW_ANNOTATION, "true")], false, true, 0),
            (&[(REBOOT_NOW_ANNOTATION, "FALSE")], false, false, 0),
            (&[(REBOOT_NOW_ANNOTATION, "please")], false, false, 1),
            (
                &[(PAUSE_ANNOTATION, "1"), (REBOOT_NOW_ANNOTATION, "1")],
                true,
                false,
                2,
            ),
            (
                &[(PAUSE_ANNOTATION, "true"), (REBOOT_NOW_ANNOTATION, "true")],
                true,
                true,
                0,
            ),
        ];
        for (annotations, paused, reboot_now, warnings) in cases {
            let c = read(annotations);
            assert_eq!(c.paused.is_some(), *paused, "{annotations:?}");
            assert_eq!(c.reboot_now, *reboot_now, "{annotations:?}");
            assert_eq!(c.warnings.len(), *warnings, "{annotations:?}: {:?}", c.warnings);
        }
        let odd = read(&[(PAUSE_ANNOTATION, "yes")]);
        assert!(
            odd.warnings[0].contains(r#"kured.dev/pause="yes""#),
            "{:?}",
            odd.warnings
        );
        assert!(odd.paused.unwrap().contains("\"yes\""));
    }

    #[test]
    fn the_halt_mark_counts_whatever_its_value() {
        assert!(read(&[(HALTED_ANNOTATION, "pod x not Ready")]).halted);
        assert!(read(&[(HALTED_ANNOTATION, "")]).halted);
        assert!(!read(&[(PAUSE_ANNOTATION, "true")]).halted);
    }

    #[test]
    fn the_fleet_pause_is_read_on_its_safe_side() {
        let ds = "DaemonSet kube-system/kured";
        assert_eq!(fleet_paused(None, ds), None);
        assert_eq!(fleet_paused(Some("false"), ds), None);
        assert_eq!(
            fleet_paused(Some("true"), ds).as_deref(),
            Some("fleet paused (kured.dev/pause on DaemonSet kube-system/kured)")
        );
        assert!(fleet_paused(Some("on"), ds).unwrap().contains("\"on\""));
    }

    #[test]
    fn a_switch_reads_true_false_and_anything_else_safely() {
        let cases = [
            (None, Switch::Off, false, false),
            (Some("false"), Switch::Off, false, false),
            (Some("true"), Switch::On, true, true),
            (Some("yes"), Switch::Unreadable("yes".into()), true, false),
            (Some(""), Switch::Unreadable(String::new()), true, false),
            (Some(" True "), Switch::On, true, true),
        ];
        for (value, read, paused, on) in cases {
            let switch = Switch::read(value);
            assert_eq!(switch, read, "{value:?}");
            assert_eq!(switch.paused(), paused, "{value:?} paused");
            assert_eq!(switch.on(), on, "{value:?} reboot requested");
        }
    }
}
