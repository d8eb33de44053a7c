//! What the agent does next, decided from what it has observed, and how long it then waits
//! ([`next_wait`]). Pure: no I/O and no clock — `now` is an argument — so every branch of the
//! agent's behaviour is a table row in the tests.

use jiff::Timestamp;

mod guard;
mod wait;

pub use guard::{LoopGuard, LoopRecord, reboot_loop};

pub use wait::{
    BLOCKER_RECHECK, ERROR_RETRY, METRIC_REFRESH, REBOOT_RETRY_MAX, Situation, WINDOW_JITTER, Wait,
    next_wait, time_until,
};

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
    /// All slots are taken by these holders; the first of them expires by its TTL at
    /// `next_expiry`, which frees a slot without any write.
    HeldByOthers {
        holders: Vec<String>,
        next_expiry: Option<Timestamp>,
    },
    /// This node has an entry, live or expired.
    Ours(OurEntry),
    /// The annotation is not a lock record: never overwritten, checked again when it changes.
    Unreadable(String),
    /// The lock object could not be read (API error): read again soon.
    ReadFailed(String),
    /// The rollout is halted: these holders' post-reboot health gates timed out (node, reason).
    Halted { holders: Vec<(String, String)> },
    /// The lock object says the fleet is paused (why).
    FleetPaused(String),
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
    /// The entry's TTL has run out: others may take its slot at any moment.
    pub expired: bool,
    /// When the post-reboot health gate started: the node is back in service and the lock is
    /// held until the gate passes.
    pub gate_since: Option<Timestamp>,
    /// The gate timed out: the rollout is halted at this node (the reason).
    pub halted: Option<String>,
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
    /// Whether the node carries kured's record of its own cordon (`kured.dev/cordoned`).
    pub kured_cordon: bool,
    /// This agent's drain failed and it has not yet given the node back (an uncordon or the
    /// release failed): finish that rather than drain again.
    pub drain_failed: bool,
    /// The node is paused by its `kured.dev/pause` (why).
    pub paused: Option<String>,
    /// A reboot was asked for by hand (`kured.dev/reboot-now`).
    pub reboot_now: bool,
    /// The node carries the halt mark (`kured.dev/halted`).
    pub halt_mark: bool,
    /// When kured last brought this node back from a reboot.
    pub last_reboot: Option<Timestamp>,
    /// The reboot loop recorded so far, if any.
    pub reboot_loop: Option<LoopRecord>,
}

/// Settings that shape the decision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// `--prefer-no-schedule-taint` is set.
    pub taint_while_waiting: bool,
    /// `--force-reboot`.
    pub force_reboot: bool,
    /// The post-reboot health gate is on: the lock is held after the reboot until it passes.
    pub gate: bool,
    /// The reboot-loop guard; `None`: off.
    pub loop_guard: Option<LoopGuard>,
}

/// The one thing to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// We hold the lock from before a reboot and the node has booted since: return it to service
    /// (uncordon unless it was unschedulable before, post-reboot labels, remove our annotation
    /// and taint, notify), then set the lock's release time.
    FinishReboot { uncordon: bool },
    /// The node is back; the lock is kept until `at` (`--lock-release-delay`).
    ReleaseLockAt(Timestamp),
    /// The release delay is over.
    ReleaseLock,
    /// We hold the lock but the node has not rebooted yet (the agent restarted during a drain or
    /// before the reboot took effect): cordon, drain and reboot again. `boot_id`: the boot our
    /// entry records, the one running now.
    ResumeReboot { boot_id: String },
    /// The node is not (or no longer) entitled to be out of service: our entry expired before
    /// the reboot, or kured's cordon outlived the lock entry. Uncordon if `uncordon`, then drop
    /// our entry if `release`; the reboot, if still needed, starts again from the lock.
    GiveBack { uncordon: bool, release: bool },
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
    /// Every slot is taken; add our taint while waiting, if configured and not there yet. A
    /// slot frees up at the latest at `next_expiry`.
    WaitForLock {
        holders: Vec<String>,
        next_expiry: Option<Timestamp>,
        add_taint: bool,
    },
    /// The annotation is not a lock record; it is left alone and read again when it changes.
    LockUnreadable(String),
    /// Reading the lock failed; read it again soon.
    LockReadFailed(String),
    /// The node is paused (why); remove our taint if it is there.
    Paused { why: String, remove_taint: bool },
    /// The node needed a reboot again right after kured rebooted it: no reboot before the
    /// record's `until`. The record is published with the phase.
    BackOff(LoopRecord),
    /// The node is back from its reboot and in service, the lock held: check the post-reboot
    /// health gate, started at `since`; `halted`: it timed out before.
    VerifyHealth { since: Timestamp, halted: bool },
    /// The rollout was halted at this node and an operator removed the halt mark: release the
    /// lock without the gate.
    HaltLifted,
    /// Another node halted the rollout: nothing is taken until it resumes.
    RolloutHalted(Vec<(String, String)>),
    /// The fleet is paused (why): nothing is taken until it resumes.
    FleetPaused(String),
}

/// Decides the next step.
pub fn decide(obs: &Observation, policy: &Policy, now: Timestamp) -> Action {
    // A lock we hold comes first: it means a reboot is in progress or just happened, whatever
    // the window, the blockers or the sentinel say now.
    let taken_by_others = match &obs.lock {
        LockView::Ours(entry) => return continue_holding(entry, obs, now),
        LockView::Available => None,
        LockView::HeldByOthers { holders, next_expiry } => Some(Ok((holders, *next_expiry))),
        LockView::Unreadable(e) => Some(Err(Action::LockUnreadable(e.clone()))),
        LockView::Halted { holders } => Some(Err(Action::RolloutHalted(holders.clone()))),
        LockView::FleetPaused(why) => Some(Err(Action::FleetPaused(why.clone()))),
        // Whether this node holds the lock is unknown: change nothing until it is known.
        LockView::ReadFailed(e) => return Action::LockReadFailed(e.clone()),
    };
    // kured cordoned this node, and the node holds no entry (its TTL ran out and someone took the
    // slot, the annotation was removed, the DaemonSet re-created): it must not stay cordoned. An
    // unreadable lock may still hold our entry: then nothing is touched.
    if obs.kured_cordon && !matches!(taken_by_others, Some(Err(Action::LockUnreadable(_)))) {
        return Action::GiveBack {
            uncordon: true,
            release: false,
        };
    }
    match &obs.sentinel {
        _ if obs.reboot_now => {}
        SentinelView::NotRequired => {
            return Action::Idle {
                remove_taint: obs.taint_present,
            };
        }
        SentinelView::Failed(e) => return Action::SentinelFailed(e.clone()),
        SentinelView::Required => {}
    }
    if let Some(why) = &obs.paused {
        return Action::Paused {
            why: why.clone(),
            remove_taint: obs.taint_present,
        };
    }
    // A reboot asked for by hand is not a loop: the operator means it.
    if let Some(guard) = &policy.loop_guard
        && !obs.reboot_now
        && let Some(record) = reboot_loop(obs, guard, now)
        && record.until > now
    {
        return Action::BackOff(record);
    }
    if !obs.window_open {
        return Action::WaitForWindow {
            opens: obs.window_opens,
            remove_taint: obs.taint_present,
        };
    }
    match &obs.blockers {
        None => return Action::CheckBlockers,
        Some(reasons) if !reasons.is_empty() => return Action::Blocked(reasons.clone()),
        Some(_) => {}
    }
    match taken_by_others {
        None => Action::AcquireLock,
        Some(Ok((holders, next_expiry))) => Action::WaitForLock {
            holders: holders.clone(),
            next_expiry,
            add_taint: policy.taint_while_waiting && !obs.taint_present,
        },
        Some(Err(step)) => step,
    }
}

fn continue_holding(entry: &OurEntry, obs: &Observation, now: Timestamp) -> Action {
    // Uncordon what kured cordoned: the node's own record says so; an entry written without that
    // record (by upstream, or before it existed) says whether the node was schedulable before.
    let uncordon = obs.kured_cordon || !entry.was_unschedulable;
    match (&entry.release_after, &entry.boot_id) {
        (Some(at), _) if now >= *at || entry.expired => Action::ReleaseLock,
        (Some(at), _) => Action::ReleaseLockAt(*at),
        // Not rebooted, and the slot may be someone else's by now: the node goes back into
        // service and takes its turn again.
        (None, Some(recorded)) if recorded == &obs.boot_id && (entry.expired || obs.drain_failed) => {
            Action::GiveBack {
                uncordon,
                release: true,
            }
        }
        (None, Some(recorded)) if recorded == &obs.boot_id => Action::ResumeReboot {
            boot_id: recorded.clone(),
        },
        // A different boot ID, or an entry that does not record one: the node rebooted. An
        // expired entry still is ours to finish: the node must come back into service.
        (None, _) => match (&entry.gate_since, &entry.halted) {
            (None, _) => Action::FinishReboot { uncordon },
            // The operator removed the halt mark: the rollout goes on.
            (Some(_), Some(_)) if !obs.halt_mark => Action::HaltLifted,
            (Some(since), halted) => Action::VerifyHealth {
                since: *since,
                halted: halted.is_some(),
            },
        },
    }
}

/// After a drain that failed: reboot anyway (`--force-reboot`) or give the node back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDrainFailure {
    RebootAnyway,
    /// Uncordon (if kured cordoned it), then release the lock, and try again later.
    Abort {
        uncordon: bool,
    },
}

/// `cordoned`: whether the node is cordoned now; `by_kured`: whether kured cordoned it. A node
/// that is not cordoned is never rebooted, whatever `--force-reboot` says: it would go down with
/// its pods still being scheduled onto it.
pub fn after_drain_failure(policy: &Policy, cordoned: bool, by_kured: bool) -> AfterDrainFailure {
    if policy.force_reboot && cordoned {
        AfterDrainFailure::RebootAnyway
    } else {
        AfterDrainFailure::Abort { uncordon: by_kured }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    const NOW: &str = "2026-11-27T10:00:00Z";

    pub(super) fn base() -> Observation {
        Observation {
            sentinel: SentinelView::Required,
            window_open: true,
            window_opens: None,
            blockers: Some(vec![]),
            lock: LockView::Available,
            boot_id: "boot-2".into(),
            taint_present: false,
            kured_cordon: false,
            drain_failed: false,
            paused: None,
            reboot_now: false,
            halt_mark: false,
            last_reboot: None,
            reboot_loop: None,
        }
    }

    fn ours(boot_id: Option<&str>, was_unschedulable: bool, release_after: Option<&str>) -> LockView {
        LockView::Ours(OurEntry {
            boot_id: boot_id.map(Into::into),
            was_unschedulable,
            release_after: release_after.map(t),
            expired: false,
            gate_since: None,
            halted: None,
        })
    }

    fn expired(view: LockView) -> LockView {
        match view {
            LockView::Ours(entry) => LockView::Ours(OurEntry {
                expired: true,
                ..entry
            }),
            other => other,
        }
    }

    fn others(holders: &[&str], next_expiry: Option<&str>) -> LockView {
        LockView::HeldByOthers {
            holders: holders.iter().map(|h| (*h).to_owned()).collect(),
            next_expiry: next_expiry.map(t),
        }
    }

    #[test]
    fn decisions() {
        let taint = Policy {
            taint_while_waiting: true,
            ..Policy::default()
        };
        let plain = Policy::default();
        #[rustfmt::skip]
        let cases: Vec<(&str, Observation, &Policy, Action)> = vec![
            ("reboot needed, window open, nothing blocks, lock free: take it",
             base(), &plain, Action::AcquireLock),
            ("no reboot needed: idle",
             Observation { sentinel: SentinelView::NotRequired, ..base() }, &plain,
             Action::Idle { remove_taint: false }),
            ("no reboot needed and our taint is there: idle and remove it",
             Observation { sentinel: SentinelView::NotRequired, taint_present: true, ..base() }, &taint,
             Action::Idle { remove_taint: true }),
            ("sentinel failed: never a reboot",
             Observation { sentinel: SentinelView::Failed("exit 2".into()), ..base() }, &plain,
             Action::SentinelFailed("exit 2".into())),
            ("window closed: wait for it and drop the taint",
             Observation { window_open: false, window_opens: Some(t("2026-11-27T22:00:00Z")), taint_present: true, ..base() }, &taint,
             Action::WaitForWindow { opens: Some(t("2026-11-27T22:00:00Z")), remove_taint: true }),
            ("window closed wins over blockers",
             Observation { window_open: false, blockers: Some(vec!["alert X".into()]), ..base() }, &plain,
             Action::WaitForWindow { opens: None, remove_taint: false }),
            ("blockers not consulted yet: consult them",
             Observation { blockers: None, ..base() }, &plain, Action::CheckBlockers),
            ("blocked: say why, do not touch the lock",
             Observation { blockers: Some(vec!["pod db/x".into(), "alert Y".into()]), ..base() }, &plain,
             Action::Blocked(vec!["pod db/x".into(), "alert Y".into()])),
            ("lock held by others: wait, adding the taint when configured",
             Observation { lock: others(&["n1"], None), ..base() }, &taint,
             Action::WaitForLock { holders: vec!["n1".into()], next_expiry: None, add_taint: true }),
            ("lock held by others, taint already there: wait until the holder expires at the latest",
             Observation { lock: others(&["n1"], Some("2026-11-27T10:30:00Z")), taint_present: true, ..base() }, &taint,
             Action::WaitForLock { holders: vec!["n1".into()], next_expiry: Some(t("2026-11-27T10:30:00Z")), add_taint: false }),
            ("lock held by others, no taint configured",
             Observation { lock: others(&["manual"], None), ..base() }, &plain,
             Action::WaitForLock { holders: vec!["manual".into()], next_expiry: None, add_taint: false }),
            ("lock unreadable: leave it alone",
             Observation { lock: LockView::Unreadable("not JSON".into()), ..base() }, &plain,
             Action::LockUnreadable("not JSON".into())),
            ("lock read failed: read again, whatever else holds",
             Observation { lock: LockView::ReadFailed("503".into()), kured_cordon: true, ..base() }, &plain,
             Action::LockReadFailed("503".into())),
            ("kured's cordon without an entry, lock free: give the node back first",
             Observation { kured_cordon: true, ..base() }, &plain,
             Action::GiveBack { uncordon: true, release: false }),
            ("kured's cordon without an entry, lock taken by others: give the node back",
             Observation { kured_cordon: true, lock: others(&["n1"], None), sentinel: SentinelView::NotRequired, ..base() }, &plain,
             Action::GiveBack { uncordon: true, release: false }),
            ("kured's cordon, lock unreadable: leave both alone",
             Observation { kured_cordon: true, lock: LockView::Unreadable("x".into()), ..base() }, &plain,
             Action::LockUnreadable("x".into())),
            ("ours, booted since: finish the reboot and uncordon",
             Observation { lock: ours(Some("boot-1"), false, None), ..base() }, &plain,
             Action::FinishReboot { uncordon: true }),
            ("ours, booted since, node was cordoned before kured: stay cordoned",
             Observation { lock: ours(Some("boot-1"), true, None), ..base() }, &plain,
             Action::FinishReboot { uncordon: false }),
            ("ours without a boot ID (upstream's entry): the reboot happened",
             Observation { lock: ours(None, false, None), ..base() }, &plain,
             Action::FinishReboot { uncordon: true }),
            ("ours, same boot: the agent restarted before the reboot; carry on",
             Observation { lock: ours(Some("boot-2"), false, None), ..base() }, &plain,
             Action::ResumeReboot { boot_id: "boot-2".into() }),
            ("ours, finished, release delay running",
             Observation { lock: ours(Some("boot-1"), false, Some("2026-11-27T10:05:00Z")), ..base() }, &plain,
             Action::ReleaseLockAt(t("2026-11-27T10:05:00Z"))),
            ("ours, finished, release delay over",
             Observation { lock: ours(Some("boot-1"), false, Some("2026-11-27T09:59:59Z")), ..base() }, &plain,
             Action::ReleaseLock),
            ("ours, release time is exactly now: release",
             Observation { lock: ours(Some("boot-1"), false, Some(NOW)), ..base() }, &plain,
             Action::ReleaseLock),
            ("ours, booted since, node carries kured's cordon though the entry says unschedulable: uncordon",
             Observation { lock: ours(Some("boot-1"), true, None), kured_cordon: true, ..base() }, &plain,
             Action::FinishReboot { uncordon: true }),
            ("ours but expired, booted since: still ours to finish",
             Observation { lock: expired(ours(Some("boot-1"), false, None)), kured_cordon: true, ..base() }, &plain,
             Action::FinishReboot { uncordon: true }),
            ("ours but expired, same boot: give the node back and the entry up",
             Observation { lock: expired(ours(Some("boot-2"), false, None)), kured_cordon: true, ..base() }, &plain,
             Action::GiveBack { uncordon: true, release: true }),
            ("ours, same boot, our drain failed and the node is not given back yet: finish that",
             Observation { lock: ours(Some("boot-2"), false, None), kured_cordon: true, drain_failed: true, ..base() }, &plain,
             Action::GiveBack { uncordon: true, release: true }),
            ("ours but expired, same boot, cordoned by someone else before: keep their cordon",
             Observation { lock: expired(ours(Some("boot-2"), true, None)), ..base() }, &plain,
             Action::GiveBack { uncordon: false, release: true }),
            ("ours but expired during the release delay: release now",
             Observation { lock: expired(ours(Some("boot-1"), false, Some("2026-11-27T10:05:00Z"))), ..base() }, &plain,
             Action::ReleaseLock),
            ("ours wins over a closed window and a failing sentinel",
             Observation { lock: ours(Some("boot-1"), false, None), window_open: false, sentinel: SentinelView::Failed("x".into()), ..base() }, &plain,
             Action::FinishReboot { uncordon: true }),
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
        let plain = Policy::default();
        #[rustfmt::skip]
        let cases = [
            ("forced, cordoned by kured", &force, true, true, AfterDrainFailure::RebootAnyway),
            ("forced, cordoned by someone else", &force, true, false, AfterDrainFailure::RebootAnyway),
            ("forced, but the cordon failed: never reboot", &force, false, false, AfterDrainFailure::Abort { uncordon: false }),
            ("not forced, cordoned by kured", &plain, true, true, AfterDrainFailure::Abort { uncordon: true }),
            ("not forced, cordoned by someone else", &plain, true, false, AfterDrainFailure::Abort { uncordon: false }),
            ("not forced, the cordon failed", &plain, false, false, AfterDrainFailure::Abort { uncordon: false }),
        ];
        for (name, policy, cordoned, by_kured, want) in cases {
            assert_eq!(after_drain_failure(policy, cordoned, by_kured), want, "{name}");
        }
    }

    fn gated(since: &str, halted: Option<&str>) -> LockView {
        LockView::Ours(OurEntry {
            boot_id: Some("boot-1".into()),
            was_unschedulable: false,
            release_after: None,
            expired: false,
            gate_since: Some(t(since)),
            halted: halted.map(Into::into),
        })
    }

    #[test]
    fn controls_gate_and_loop_decisions() {
        let plain = Policy::default();
        let guard = Policy {
            loop_guard: Some(LoopGuard {
                window: std::time::Duration::from_secs(3600),
                backoff: std::time::Duration::from_secs(1800),
            }),
            ..Policy::default()
        };
        let paused = || Some("node paused (kured.dev/pause=true)".to_owned());
        let halted_at = vec![("n1".to_owned(), "pod x not Ready".to_owned())];
        #[rustfmt::skip]
        let cases: Vec<(&str, Observation, &Policy, Action)> = vec![
            ("paused and a reboot needed: paused, dropping the taint",
             Observation { paused: paused(), taint_present: true, ..base() }, &plain,
             Action::Paused { why: paused().unwrap(), remove_taint: true }),
            ("paused, no reboot needed: idle",
             Observation { paused: paused(), sentinel: SentinelView::NotRequired, ..base() }, &plain,
             Action::Idle { remove_taint: false }),
            ("paused, holding the lock from before: the cycle finishes",
             Observation { paused: paused(), lock: ours(Some("boot-1"), false, None), ..base() }, &plain,
             Action::FinishReboot { uncordon: true }),
            ("paused wins over a reboot asked for by hand",
             Observation { paused: paused(), reboot_now: true, sentinel: SentinelView::NotRequired, ..base() }, &plain,
             Action::Paused { why: paused().unwrap(), remove_taint: false }),
            ("a reboot asked for by hand: as if the sentinel said so",
             Observation { reboot_now: true, sentinel: SentinelView::NotRequired, ..base() }, &plain,
             Action::AcquireLock),
            ("a reboot asked for by hand, sentinel failing: still asked for",
             Observation { reboot_now: true, sentinel: SentinelView::Failed("x".into()), ..base() }, &plain,
             Action::AcquireLock),
            ("a reboot asked for by hand waits for the window",
             Observation { reboot_now: true, sentinel: SentinelView::NotRequired, window_open: false, ..base() }, &plain,
             Action::WaitForWindow { opens: None, remove_taint: false }),
            ("needed again 10 minutes after kured's reboot: back off",
             Observation { last_reboot: Some(t("2026-11-27T09:50:00Z")), ..base() }, &guard,
             Action::BackOff(LoopRecord { count: 1, reboot: t("2026-11-27T09:50:00Z"), until: t("2026-11-27T10:30:00Z") })),
            ("needed again soon, but no guard: reboot",
             Observation { last_reboot: Some(t("2026-11-27T09:50:00Z")), ..base() }, &plain,
             Action::AcquireLock),
            ("needed again soon, asked for by hand: reboot",
             Observation { last_reboot: Some(t("2026-11-27T09:50:00Z")), reboot_now: true, ..base() }, &guard,
             Action::AcquireLock),
            ("the back-off is over: reboot",
             Observation { last_reboot: Some(t("2026-11-27T09:00:00Z")),
                 reboot_loop: Some(LoopRecord { count: 1, reboot: t("2026-11-27T09:00:00Z"), until: t("2026-11-27T09:40:00Z") }), ..base() }, &guard,
             Action::AcquireLock),
            ("needed long after the last reboot: no loop",
             Observation { last_reboot: Some(t("2026-11-26T09:00:00Z")), ..base() }, &guard,
             Action::AcquireLock),
            ("another node halted the rollout: wait",
             Observation { lock: LockView::Halted { holders: halted_at.clone() }, ..base() }, &plain,
             Action::RolloutHalted(halted_at.clone())),
            ("halted rollout and kured's cordon without an entry: give the node back",
             Observation { lock: LockView::Halted { holders: halted_at.clone() }, kured_cordon: true, ..base() }, &plain,
             Action::GiveBack { uncordon: true, release: false }),
            ("fleet paused: wait",
             Observation { lock: LockView::FleetPaused("fleet paused".into()), ..base() }, &plain,
             Action::FleetPaused("fleet paused".into())),
            ("fleet paused, no reboot needed: idle",
             Observation { lock: LockView::FleetPaused("fleet paused".into()), sentinel: SentinelView::NotRequired, ..base() }, &plain,
             Action::Idle { remove_taint: false }),
            ("back with the gate started: verify",
             Observation { lock: gated("2026-11-27T09:58:00Z", None), ..base() }, &plain,
             Action::VerifyHealth { since: t("2026-11-27T09:58:00Z"), halted: false }),
            ("halted, mark still there: verify, still halted",
             Observation { lock: gated("2026-11-27T09:58:00Z", Some("x")), halt_mark: true, ..base() }, &plain,
             Action::VerifyHealth { since: t("2026-11-27T09:58:00Z"), halted: true }),
            ("halted, the operator removed the mark: release",
             Observation { lock: gated("2026-11-27T09:58:00Z", Some("x")), ..base() }, &plain,
             Action::HaltLifted),
            ("gate running, a mark without a halted entry (a halt cut short): verify",
             Observation { lock: gated("2026-11-27T09:58:00Z", None), halt_mark: true, ..base() }, &plain,
             Action::VerifyHealth { since: t("2026-11-27T09:58:00Z"), halted: false }),
        ];
        for (name, obs, policy, want) in cases {
            assert_eq!(decide(&obs, policy, t(NOW)), want, "{name}");
        }
    }
}
