//! The Events the agent reports, and the ones a round's decision reports (pure).

use crate::decide::Action;

/// Longest note the API server accepts (`note` must be under 1 kB).
pub const NOTE_LIMIT: usize = 1023;

/// The reason of an Event on the Node: one per step of a reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    RebootRequired,
    Blocked,
    WaitingForLock,
    LockAcquired,
    Cordoned,
    Drained,
    DrainFailed,
    Rebooting,
    Rebooted,
    Uncordoned,
    LockReleased,
    Halted,
    RebootLoop,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RebootRequired => "RebootRequired",
            Reason::Blocked => "Blocked",
            Reason::WaitingForLock => "WaitingForLock",
            Reason::LockAcquired => "LockAcquired",
            Reason::Cordoned => "Cordoned",
            Reason::Drained => "Drained",
            Reason::DrainFailed => "DrainFailed",
            Reason::Rebooting => "Rebooting",
            Reason::Rebooted => "Rebooted",
            Reason::Uncordoned => "Uncordoned",
            Reason::LockReleased => "LockReleased",
            Reason::Halted => "Halted",
            Reason::RebootLoop => "RebootLoop",
        }
    }

    /// The Event's `type`: `Warning` for what an operator must look at.
    pub fn event_type(self) -> &'static str {
        match self {
            Reason::DrainFailed | Reason::Halted | Reason::RebootLoop => "Warning",
            _ => "Normal",
        }
    }

    /// The note of a step that has nothing to add.
    pub fn note(self) -> &'static str {
        match self {
            Reason::LockAcquired => "holds a slot of the reboot lock",
            Reason::Rebooted => "back from its reboot",
            Reason::Uncordoned => "uncordoned: back in service",
            Reason::LockReleased => "released its slot of the reboot lock",
            _ => self.as_str(),
        }
    }

    /// The Event's `action`, what the agent did or failed to do (required by events.k8s.io/v1).
    pub fn action(self) -> &'static str {
        match self {
            Reason::RebootRequired => "Check",
            Reason::Blocked | Reason::WaitingForLock => "Wait",
            Reason::LockAcquired => "Lock",
            Reason::Cordoned => "Cordon",
            Reason::Drained | Reason::DrainFailed => "Drain",
            Reason::Rebooting | Reason::Rebooted | Reason::RebootLoop => "Reboot",
            Reason::Uncordoned => "Uncordon",
            Reason::LockReleased => "Unlock",
            Reason::Halted => "Halt",
        }
    }
}

/// The Events a round reports once it has decided: `RebootRequired` when the sentinel starts
/// saying so (`was`: what it said before, as far as known), and the waiting steps, which repeat
/// every round and so become series.
pub fn of_round(was: Option<bool>, required: Option<bool>, step: &Action) -> Vec<(Reason, String)> {
    let mut events = Vec::new();
    if required == Some(true) && was != Some(true) {
        events.push((
            Reason::RebootRequired,
            "the reboot sentinel says a reboot is needed".to_owned(),
        ));
    }
    match step {
        Action::Blocked(reasons) => events.push((Reason::Blocked, reasons.join("; "))),
        Action::WaitForLock { holders, .. } => {
            events.push((
                Reason::WaitingForLock,
                format!("lock held by {}", holders.join(", ")),
            ));
        }
        Action::BackOff(record) => events.push((
            Reason::RebootLoop,
            format!(
                "rebooted {} times in a row; next reboot not before {}",
                record.count, record.until
            ),
        )),
        _ => {}
    }
    events
}

/// `note` cut to [`NOTE_LIMIT`] bytes, at a character boundary.
pub fn bounded(mut note: String) -> String {
    if note.len() > NOTE_LIMIT {
        let mut end = NOTE_LIMIT;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    note
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::decide::LoopRecord;

    fn waiting() -> Action {
        Action::WaitForLock {
            holders: vec!["n2".to_owned(), "n3".to_owned()],
            next_expiry: None,
            add_taint: false,
        }
    }

    fn reasons(events: &[(Reason, String)]) -> Vec<Reason> {
        events.iter().map(|(r, _)| *r).collect()
    }

    #[test]
    fn reboot_required_is_reported_when_the_sentinel_starts_saying_so() {
        let idle = Action::Idle { remove_taint: false };
        let cases = [
            (None, Some(true), vec![Reason::RebootRequired]),
            (Some(false), Some(true), vec![Reason::RebootRequired]),
            (Some(true), Some(true), vec![]),
            (Some(true), Some(false), vec![]),
            (Some(false), None, vec![]),
        ];
        for (was, required, expected) in cases {
            assert_eq!(
                reasons(&of_round(was, required, &idle)),
                expected,
                "{was:?} → {required:?}"
            );
        }
    }

    #[test]
    fn waiting_steps_are_reported_every_round_with_what_they_wait_for() {
        assert_eq!(
            of_round(Some(true), Some(true), &waiting()),
            [(Reason::WaitingForLock, "lock held by n2, n3".to_owned())]
        );
        assert_eq!(
            of_round(
                Some(true),
                Some(true),
                &Action::Blocked(vec!["a".into(), "b".into()])
            ),
            [(Reason::Blocked, "a; b".to_owned())]
        );
        let record = LoopRecord {
            count: 3,
            reboot: Timestamp::UNIX_EPOCH,
            until: Timestamp::from_second(3600).expect("a time"),
        };
        assert_eq!(
            of_round(Some(true), Some(true), &Action::BackOff(record)),
            [(
                Reason::RebootLoop,
                "rebooted 3 times in a row; next reboot not before 1970-01-01T01:00:00Z".to_owned()
            )]
        );
    }

    #[test]
    fn the_first_round_of_a_reboot_reports_both() {
        assert_eq!(
            reasons(&of_round(Some(false), Some(true), &waiting())),
            [Reason::RebootRequired, Reason::WaitingForLock]
        );
    }

    #[test]
    fn steps_that_act_report_nothing_here() {
        for step in [Action::AcquireLock, Action::ReleaseLock, Action::CheckBlockers] {
            assert_eq!(of_round(Some(true), Some(true), &step), [], "{step:?}");
        }
    }

    #[test]
    fn warnings_are_what_an_operator_must_look_at() {
        let warnings: Vec<Reason> = [
            Reason::RebootRequired,
            Reason::Blocked,
            Reason::WaitingForLock,
            Reason::LockAcquired,
            Reason::Cordoned,
            Reason::Drained,
            Reason::DrainFailed,
            Reason::Rebooting,
            Reason::Rebooted,
            Reason::Uncordoned,
            Reason::LockReleased,
            Reason::Halted,
            Reason::RebootLoop,
        ]
        .into_iter()
        .filter(|r| r.event_type() == "Warning")
        .collect();
        assert_eq!(
            warnings,
            [Reason::DrainFailed, Reason::Halted, Reason::RebootLoop]
        );
    }

    #[test]
    fn long_notes_are_cut_at_a_character_boundary() {
        assert_eq!(bounded("short".to_owned()), "short");
        let long = "é".repeat(600);
        let cut = bounded(long);
        assert!(cut.len() <= NOTE_LIMIT, "{}", cut.len());
        assert_eq!(cut.len(), 1022);
    }
}
