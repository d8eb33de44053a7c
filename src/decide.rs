//! What the agent does next, decided from what it has observed. Pure: no I/O and no clock —
//! `now` is an argument — so every branch of the agent's behaviour is a table row in the tests.

use jiff::Timestamp;

/// What the sentinel says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentinelView {
    Required,
    NotRequired,
    /// The check failed; never taken as "required".
    Failed(String),
}

/// The lock, as far as this node is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockView {
    /// A slot is free (or every other entry has expired).
    Available,
    /// All slots are taken by these holders.
    HeldByOthers(Vec<String>),
    /// This node holds a slot.
    Ours(OurEntry),
    /// The annotation cannot be read (corrupt JSON, API error): never overwritten, checked again.
    Unreadable(String),
}

/// What our lock entry recorded when we took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OurEntry {
    /// The node's boot ID when the lock was taken; `None` for an entry that does not record it
    /// (written by an upstream agent before a migration).
    pub boot_id: Option<String>,
    /// Whether the node was already unschedulable before kured cordoned it.
    pub was_unschedulable: bool,
    /// Set once the node is back in service: the lock is released at this time.
    pub release_after: Option<Timestamp>,
}

/// Everything `decide` looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub sentinel: SentinelView,
    pub window_open: bool,
    /// When the window next opens, if it is closed.
    pub window_opens: Option<Timestamp>,
    /// Reasons reboots are blocked now; `None` when not consulted yet (they are consulted only
    /// when a reboot is needed and allowed by the window).
    pub blockers: Option<Vec<String>>,
    pub lock: LockView,
    /// The node's current boot ID.
    pub boot_id: String,
    /// Whether our PreferNoSchedule taint is on the node.
    pub taint_present: bool,
}

/// Settings that shape the decision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// `--prefer-no-schedule-taint` is set.
    pub taint_while_waiting: bool,
    /// `--force-reboot`.
    pub force_reboot: bool,
}

/// The one thing to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// We hold the lock from before a reboot and the node has booted since: return it to service
    /// (uncordon unless it was unschedulable before, post-reboot labels, remove our annotation
    /// and taint, notify), then set the lock's release time.
    FinishReboot { uncordon: bool },
    /// The node is back; the lock is kept until `at` (`--lock-release-delay`).
    ReleaseLockAt(Timestamp),
    /// The release delay is over.
    ReleaseLock,
    /// We hold the lock but the node has not rebooted yet (the agent restarted during a drain or
    /// before the reboot took effect): cordon, drain and reboot again.
    ResumeReboot,
    /// No reboot needed. Remove our taint if it is there.
    Idle { remove_taint: bool },
    /// The sentinel could not be checked; nothing changes until it can.
    SentinelFailed(String),
    /// Outside the reboot window. Remove our taint if it is there.
    WaitForWindow {
        opens: Option<Timestamp>,
        remove_taint: bool,
    },
    /// Look at the blockers, then decide again.
    CheckBlockers,
    /// A reboot is needed but blocked.
    Blocked(Vec<String>),
    /// Take a slot of the lock, then cordon, drain and reboot.
    AcquireLock,
    /// Every slot is taken; add our taint while waiting, if configured and not there yet.
    WaitForLock { holders: Vec<String>, add_taint: bool },
    /// The lock cannot be read; it is left alone and read again.
    LockUnreadable(String),
}

/// Decides the next step.
pub fn decide(obs: &Observation, policy: &Policy, now: Timestamp) -> Step {
    // A lock we hold comes first: it means a reboot is in progress or just happened, whatever
    // the window, the blockers or the sentinel say now.
    let taken_by_others = match &obs.lock {
        LockView::Ours(entry) => return continue_holding(entry, &obs.boot_id, now),
        LockView::Available => None,
        LockView::HeldByOthers(holders) => Some(Ok(holders)),
        LockView::Unreadable(e) => Some(Err(e)),
    };
    match &obs.sentinel {
        SentinelView::NotRequired => {
            return Step::Idle {
                remove_taint: obs.taint_present,
            };
        }
        SentinelView::Failed(e) => return Step::SentinelFailed(e.clone()),
        SentinelView::Required => {}
    }
    if !obs.window_open {
        return Step::WaitForWindow {
            opens: obs.window_opens,
            remove_taint: obs.taint_present,
        };
    }
    match &obs.blockers {
        None => return Step::CheckBlockers,
        Some(reasons) if !reasons.is_empty() => return Step::Blocked(reasons.clone()),
        Some(_) => {}
    }
    match taken_by_others {
        None => Step::AcquireLock,
        Some(Ok(holders)) => Step::WaitForLock {
            holders: holders.clone(),
            add_taint: policy.taint_while_waiting && !obs.taint_present,
        },
        Some(Err(e)) => Step::LockUnreadable(e.clone()),
    }
}

fn continue_holding(entry: &OurEntry, boot_id: &str, now: Timestamp) -> Step {
    match (&entry.release_after, &entry.boot_id) {
        (Some(at), _) if now >= *at => Step::ReleaseLock,
        (Some(at), _) => Step::ReleaseLockAt(*at),
        (None, Some(recorded)) if recorded == boot_id => Step::ResumeReboot,
        // A different boot ID, or an entry that does not record one: the node rebooted.
        (None, _) => Step::FinishReboot {
            uncordon: !entry.was_unschedulable,
        },
    }
}

/// After a drain that failed: reboot anyway (`--force-reboot`) or give the node back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDrainFailure {
    RebootAnyway,
    /// Uncordon (unless the node was unschedulable before), release the lock, try again later.
    Abort {
        uncordon: bool,
    },
}

pub fn after_drain_failure(policy: &Policy, was_unschedulable: bool) -> AfterDrainFailure {
    if policy.force_reboot {
        AfterDrainFailure::RebootAnyway
    } else {
        AfterDrainFailure::Abort {
            uncordon: !was_unschedulable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    const NOW: &str = "2026-11-27T10:00:00Z";

    fn base() -> Observation {
        Observation {
            sentinel: SentinelView::Required,
            window_open: true,
            window_opens: None,
            blockers: Some(vec![]),
            lock: LockView::Available,
            boot_id: "boot-2".into(),
            taint_present: false,
        }
    }

    fn ours(boot_id: Option<&str>, was_unschedulable: bool, release_after: Option<&str>) -> LockView {
        LockView::Ours(OurEntry {
            boot_id: boot_id.map(Into::into),
            was_unschedulable,
            release_after: release_after.map(t),
        })
    }

    #[test]
    fn decisions() {
        let taint = Policy {
            taint_while_waiting: true,
            force_reboot: false,
        };
        let plain = Policy::default();
        #[rustfmt::skip]
        let cases: Vec<(&str, Observation, &Policy, Step)> = vec![
            ("reboot needed, window open, nothing blocks, lock free: take it",
             base(), &plain, Step::AcquireLock),
            ("no reboot needed: idle",
             Observation { sentinel: SentinelView::NotRequired, ..base() }, &plain,
             Step::Idle { remove_taint: false }),
            ("no reboot needed and our taint is there: idle and remove it",
             Observation { sentinel: SentinelView::NotRequired, taint_present: true, ..base() }, &taint,
             Step::Idle { remove_taint: true }),
            ("sentinel failed: never a reboot",
             Observation { sentinel: SentinelView::Failed("exit 2".into()), ..base() }, &plain,
             Step::SentinelFailed("exit 2".into())),
            ("window closed: wait for it and drop the taint",
             Observation { window_open: false, window_opens: Some(t("2026-11-27T22:00:00Z")), taint_present: true, ..base() }, &taint,
             Step::WaitForWindow { opens: Some(t("2026-11-27T22:00:00Z")), remove_taint: true }),
            ("window closed wins over blockers",
             Observation { window_open: false, blockers: Some(vec!["alert X".into()]), ..base() }, &plain,
             Step::WaitForWindow { opens: None, remove_taint: false }),
            ("blockers not consulted yet: consult them",
             Observation { blockers: None, ..base() }, &plain, Step::CheckBlockers),
            ("blocked: say why, do not touch the lock",
             Observation { blockers: Some(vec!["pod db/x".into(), "alert Y".into()]), ..base() }, &plain,
             Step::Blocked(vec!["pod db/x".into(), "alert Y".into()])),
            ("lock held by others: wait, adding the taint when configured",
             Observation { lock: LockView::HeldByOthers(vec!["n1".into()]), ..base() }, &taint,
             Step::WaitForLock { holders: vec!["n1".into()], add_taint: true }),
            ("lock held by others, taint already there: wait",
             Observation { lock: LockView::HeldByOthers(vec!["n1".into()]), taint_present: true, ..base() }, &taint,
             Step::WaitForLock { holders: vec!["n1".into()], add_taint: false }),
            ("lock held by others, no taint configured",
             Observation { lock: LockView::HeldByOthers(vec!["manual".into()]), ..base() }, &plain,
             Step::WaitForLock { holders: vec!["manual".into()], add_taint: false }),
            ("lock unreadable: leave it alone",
             Observation { lock: LockView::Unreadable("not JSON".into()), ..base() }, &plain,
             Step::LockUnreadable("not JSON".into())),
            ("ours, booted since: finish the reboot and uncordon",
             Observation { lock: ours(Some("boot-1"), false, None), ..base() }, &plain,
             Step::FinishReboot { uncordon: true }),
            ("ours, booted since, node was cordoned before kured: stay cordoned",
             Observation { lock: ours(Some("boot-1"), true, None), ..base() }, &plain,
             Step::FinishReboot { uncordon: false }),
            ("ours without a boot ID (upstream's entry): the reboot happened",
             Observation { lock: ours(None, false, None), ..base() }, &plain,
             Step::FinishReboot { uncordon: true }),
            ("ours, same boot: the agent restarted before the reboot; carry on",
             Observation { lock: ours(Some("boot-2"), false, None), ..base() }, &plain,
             Step::ResumeReboot),
            ("ours, finished, release delay running",
             Observation { lock: ours(Some("boot-1"), false, Some("2026-11-27T10:05:00Z")), ..base() }, &plain,
             Step::ReleaseLockAt(t("2026-11-27T10:05:00Z"))),
            ("ours, finished, release delay over",
             Observation { lock: ours(Some("boot-1"), false, Some("2026-11-27T09:59:59Z")), ..base() }, &plain,
             Step::ReleaseLock),
            ("ours, release time is exactly now: release",
             Observation { lock: ours(Some("boot-1"), false, Some(NOW)), ..base() }, &plain,
             Step::ReleaseLock),
            ("ours wins over a closed window and a failing sentinel",
             Observation { lock: ours(Some("boot-1"), false, None), window_open: false, sentinel: SentinelView::Failed("x".into()), ..base() }, &plain,
             Step::FinishReboot { uncordon: true }),
        ];
        for (name, obs, policy, want) in cases {
            assert_eq!(decide(&obs, policy, t(NOW)), want, "{name}");
        }
    }

    #[test]
    fn drain_failures() {
        let force = Policy {
            force_reboot: true,
            ..Policy::default()
        };
        assert_eq!(
            after_drain_failure(&force, false),
            AfterDrainFailure::RebootAnyway
        );
        assert_eq!(
            after_drain_failure(&Policy::default(), false),
            AfterDrainFailure::Abort { uncordon: true }
        );
        assert_eq!(
            after_drain_failure(&Policy::default(), true),
            AfterDrainFailure::Abort { uncordon: false }
        );
    }
}
