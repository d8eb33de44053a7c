//! Whose turn it is to take a freed slot.
//!
//! Every waiting agent sees a freed slot at about the same moment (the watch). Were they all to
//! write at once, one would win and every other write would meet a conflict (409), each costing
//! the API server a write and a fresh read. So each waiter first waits [`turn_delay`]: a delay
//! drawn from a hash of the lock's state, its node's name and a salt the agent draws afresh
//! whenever a slot frees up, and writes only if the lock is still free for it when the delay
//! ends. The one with the shortest delay writes; the others see its write (the watch) before
//! their own delay ends, and go on waiting — for their turns as drawn while a slot is still free
//! (at higher concurrency), for the next free slot otherwise. Every hand-off draws a fresh order,
//! so no node waits behind the same others every time. The salt matters: at concurrency 1 the lock reads the same (absent)
//! after every release, and an order drawn from the state alone would be the same at every
//! hand-off — the nodes that drew long delays would take their turns last, packed close together,
//! and meet conflicts.
//!
//! The shape of the delay is what keeps the first two apart whatever the number of waiters:
//! `delay = horizon + spacing × ln(u)`, `u` uniform in (0, 1]. Among N waiters the two shortest
//! delays lie `spacing × E` apart, with `E` exponentially distributed with mean 1, for any N (the
//! logarithms of the smallest uniforms are spaced like that); a uniform delay, by contrast, puts
//! them `max / N` apart, which at 100 waiters is less than the time a write takes to be seen.
//! A waiter whose delay ends within the blind time `b` after the first one's (its write in
//! flight, not yet seen through the watch) writes too and meets a conflict: about
//! `exp(b / spacing) − 1` of them per hand-off. The shortest delay of N waiters is about
//! `horizon − spacing × (ln N + 0.58)`, so the hand-off waits less the more nodes wait; delays
//! are clamped at zero, which starts to crowd the front beyond `exp(horizon / spacing)` waiters.
//!
//! The blind time is what the spacing must outgrow, and it grows with the fleet and the load:
//! the API server answers the winner's read and write more slowly under load, and delivers each
//! change of the lock to every watching agent, one after the other. `bench/handoff` at 500
//! waiting agents on 2 cores found a few tens of milliseconds with the machine otherwise quiet,
//! about half a conflict a hand-off at a spacing of 100 ms; with other work running, a tenth of
//! a second and more, two conflicts a hand-off, and now and then more than `horizon − first
//! delay`, when every waiter's turn came before it saw the first write: hundreds of Node reads
//! and tens of conflicts in one hand-off, over a second of latency. A spacing of 250 ms kept 500
//! waiters under one conflict a hand-off and the p99 under a second both ways, and moves that
//! cliff out from 0.7 s to 1.7 s of blind time. The price is the wait when few nodes wait: the
//! horizon grows with the spacing (`spacing × ln 1100`), so a lone waiter waits about 1.6 s
//! instead of 0.6 s; at 50 waiters the first waits about 0.6 s, at 500 under 0.1 s.

use std::time::Duration;

/// Spacing of the delays: a multiple of the time a lock write takes to be seen by the other
/// agents through their watch (a tenth of a second at 500 waiting agents on a busy machine,
/// measured by `bench/handoff`), so that few waiters write within it after the first one.
const SPACING: Duration = Duration::from_millis(250);
/// The longest delay: `SPACING × ln(1100)`, so that up to about a thousand waiters are spread
/// out without crowding at zero.
const HORIZON: Duration = Duration::from_millis(1750);

/// How long the agent of `node` waits, once the lock as it reads `state` (the annotation's text,
/// `None` when absent) has a free slot, before it takes it; `salt` is drawn afresh for every
/// change of the lock. See the [module documentation](self).
pub fn turn_delay(state: Option<&str>, node: &str, salt: u64) -> Duration {
    delay_for(unit(state, node, salt), SPACING, HORIZON)
}

/// `horizon + spacing × ln(u)`, clamped to `[0, horizon]`.
fn delay_for(u: f64, spacing: Duration, horizon: Duration) -> Duration {
    let secs = horizon.as_secs_f64() + spacing.as_secs_f64() * u.ln();
    Duration::from_secs_f64(secs.clamp(0.0, horizon.as_secs_f64()))
}

/// A number in (0, 1] that depends on the state, the node and the salt, the same in every
/// process and every build.
fn unit(state: Option<&str>, node: &str, salt: u64) -> f64 {
    // FNV-1a over both (a separator byte keeps ("ab", "c") apart from ("a", "bc")), then the
    // splitmix64 finaliser, whose output bits all depend on every input bit.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = match state {
        Some(s) => s.as_bytes(),
        None => b"",
    };
    for &b in bytes
        .iter()
        .chain([u8::from(state.is_some()), 0xff].iter())
        .chain(node.as_bytes())
        .chain(salt.to_le_bytes().iter())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // The top 53 bits, as a float in (0, 1].
    ((h >> 11) + 1) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    /// The delays of `n` waiters for one state, shortest first.
    fn sorted_delays(state: &str, n: usize) -> Vec<Duration> {
        let mut d: Vec<Duration> = nodes(n)
            .iter()
            .map(|node| turn_delay(Some(state), node, 7))
            .collect();
        d.sort();
        d
    }

    #[test]
    fn the_delay_is_the_same_for_the_same_state_and_node() {
        let state = r#"{"nodeID":"a","created":"2026-01-01T00:00:00Z","TTL":0}"#;
        assert_eq!(turn_delay(Some(state), "n1", 1), turn_delay(Some(state), "n1", 1));
        assert_eq!(turn_delay(None, "n1", 1), turn_delay(None, "n1", 1));
    }

    #[test]
    fn the_delay_stays_within_the_horizon() {
        for state in ["", "x", "{}", "a longer state with more text in it"] {
            for node in nodes(200) {
                let d = turn_delay(Some(state), &node, 3);
                assert!(d <= HORIZON, "{state:?} {node}: {d:?}");
            }
        }
        assert_eq!(delay_for(1.0, SPACING, HORIZON), HORIZON, "u = 1: the longest");
        assert_eq!(
            delay_for(1e-300, SPACING, HORIZON),
            Duration::ZERO,
            "clamped at zero"
        );
        let mid = delay_for(0.5, SPACING, HORIZON);
        let want = HORIZON.as_secs_f64() - SPACING.as_secs_f64() * std::f64::consts::LN_2;
        assert!((mid.as_secs_f64() - want).abs() < 1e-9, "{mid:?}");
    }

    #[test]
    fn an_absent_annotation_and_an_empty_one_draw_different_orders() {
        let absent: Vec<Duration> = nodes(20).iter().map(|n| turn_delay(None, n, 0)).collect();
        let empty: Vec<Duration> = nodes(20).iter().map(|n| turn_delay(Some(""), n, 0)).collect();
        assert_ne!(absent, empty);
    }

    #[test]
    fn each_state_draws_a_fresh_order_so_nobody_always_comes_last() {
        // Over many hand-offs among the same 20 waiters, every one of them comes first sometimes
        // and none comes first much more often than its share.
        let waiters = nodes(20);
        let mut first = std::collections::BTreeMap::<&str, u32>::new();
        for handoff in 0..2000 {
            let state = format!(r#"{{"nodeID":"holder-{handoff}","created":"2026-01-01T00:00:00Z"}}"#);
            let winner = waiters
                .iter()
                .min_by_key(|n| turn_delay(Some(&state), n, 0))
                .expect("waiters");
            *first.entry(winner).or_default() += 1;
        }
        assert_eq!(
            first.len(),
            waiters.len(),
            "every waiter came first at least once: {first:?}"
        );
        assert!(
            first.values().all(|&n| n < 250),
            "no waiter first far beyond its share of 100: {first:?}"
        );
    }

    #[test]
    fn a_fresh_salt_draws_a_fresh_order_for_the_same_state() {
        // Concurrency 1: after every release the lock reads the same (absent). Every hand-off must
        // still draw a fresh order among those left, else the ones with long delays go last, and
        // close together: the gap between the first two would shrink as the rollout goes on.
        let mut waiting = nodes(100);
        let mut gaps = Vec::new();
        for handoff in 0..90u64 {
            let salt = handoff.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut d: Vec<(Duration, usize)> = waiting
                .iter()
                .enumerate()
                .map(|(i, n)| (turn_delay(None, n, salt), i))
                .collect();
            d.sort();
            gaps.push(d[1].0 - d[0].0);
            waiting.remove(d[0].1);
        }
        // The last 30 hand-offs (10 to 40 waiters) keep the gap of the first ones.
        let mut late: Vec<Duration> = gaps[60..].to_vec();
        late.sort();
        let median = late[late.len() / 2];
        assert!(
            median >= SPACING * 3 / 10,
            "median gap late in the rollout: {median:?}"
        );
        // Without a fresh salt the order is the same at every hand-off.
        let first = |left: &[String]| left.iter().min_by_key(|n| turn_delay(None, n, 0)).cloned();
        let mut left = nodes(10);
        let winner = first(&left).expect("waiters");
        assert_eq!(first(&left), Some(winner.clone()));
        left.retain(|n| *n != winner);
        assert_ne!(first(&left), Some(winner));
    }

    #[test]
    fn the_first_two_stay_apart_however_many_wait() {
        // The gap between the shortest and the second shortest delay is SPACING times an
        // exponential variable of mean 1, whatever the number of waiters: its median over many
        // states is about SPACING × ln 2 for 10 waiters as for 500. A uniform delay over the
        // same range would put them HORIZON / N apart: 3.5 ms at 500.
        for n in [10, 100, 500] {
            let mut gaps: Vec<Duration> = (0..301)
                .map(|k| {
                    let d = sorted_delays(&format!("state {k}"), n);
                    d[1] - d[0]
                })
                .collect();
            gaps.sort();
            let median = gaps[gaps.len() / 2];
            assert!(
                (SPACING * 45 / 100..=SPACING).contains(&median),
                "{n} waiters: median gap {median:?}"
            );
        }
    }

    #[test]
    fn a_tenth_of_a_second_of_blind_time_costs_under_one_conflict() {
        // The waiters whose turn comes within the blind time after the first one's write each
        // meet a conflict: about exp(b / SPACING) − 1 of them, whatever the number of waiters.
        // `bench/handoff` measured about a tenth of a second at 500 waiters on a busy machine.
        let blind = Duration::from_millis(100);
        for n in [20, 100, 500] {
            let states = 400;
            let within: usize = (0..states)
                .map(|k| {
                    let d = sorted_delays(&format!("blind {k}"), n);
                    d[1..].iter().take_while(|&&x| x <= d[0] + blind).count()
                })
                .sum();
            let mean = within as f64 / f64::from(states);
            assert!(
                mean < 0.75,
                "{n} waiters: {mean} writes within {blind:?} of the first"
            );
        }
    }

    #[test]
    fn the_first_turn_comes_sooner_the_more_nodes_wait() {
        let median_first = |n: usize| {
            let mut firsts: Vec<Duration> = (0..201).map(|k| sorted_delays(&format!("s{k}"), n)[0]).collect();
            firsts.sort();
            firsts[firsts.len() / 2]
        };
        let (one, five, hundred) = (median_first(1), median_first(5), median_first(100));
        assert!(one > five && five > hundred, "{one:?} {five:?} {hundred:?}");
        // One waiter: horizon − spacing × ln 2 at the median; a hundred: about
        // horizon − spacing × 5.2.
        assert!(one <= HORIZON && one >= HORIZON / 2, "{one:?}");
        assert!(hundred <= HORIZON - SPACING * 4, "{hundred:?}");
    }
}
