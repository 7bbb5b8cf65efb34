//! Choosing a member for a new session, and Apache's accounting of sticky requests.
//!
//! `byrequests` is Apache's weighted request counting (mod_lbmethod_byrequests): each pick
//! adds every candidate's loadfactor to its `lbstatus`, takes the highest (ties to the first
//! in map order) and subtracts the candidates' total from the winner. Over any window of
//! sum(loadfactor)/gcd picks each member gets exactly its share. The scores are atomics, so
//! picking takes no lock; concurrent picks can briefly disturb the order, never the long-run
//! ratio (the scores always sum to zero).

use crate::config::LbMethod;
use crate::member::Member;
use routemap::Status;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// Which members may take a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Enabled members.
    Regular,
    /// Standby members, used only when no regular member is usable.
    Standby,
}

fn in_pool(member: &Member, pool: Pool, now: u64) -> bool {
    matches!(
        (member.status_at(now), pool),
        (Status::Enabled, Pool::Regular) | (Status::Standby, Pool::Standby)
    )
}

/// Picks a member for a new session: healthy regular members, else healthy standby ones,
/// else (every candidate in error: Apache's forcerecovery) the same pools ignoring health.
/// `exclude` skips members already tried for this request.
pub fn pick(
    members: &[Arc<Member>],
    method: LbMethod,
    now: u64,
    exclude: &[usize],
) -> Option<usize> {
    for ignore_health in [false, true] {
        for pool in [Pool::Regular, Pool::Standby] {
            let eligible = |i: usize, m: &Member| {
                in_pool(m, pool, now)
                    && m.authority.is_some()
                    && !exclude.contains(&i)
                    && (ignore_health || m.state.is_healthy(now))
            };
            if let Some(i) = pick_among(members, method, eligible) {
                return Some(i);
            }
        }
    }
    None
}

fn pick_among(
    members: &[Arc<Member>],
    method: LbMethod,
    eligible: impl Fn(usize, &Member) -> bool,
) -> Option<usize> {
    let mut total: i64 = 0;
    let mut best: Option<(usize, i64, i64)> = None;
    for (i, m) in members.iter().enumerate() {
        if !eligible(i, m) {
            continue;
        }
        let factor = i64::from(m.loadfactor());
        let score = m.state.lbstatus.fetch_add(factor, Relaxed) + factor;
        total += factor;
        let busy = m.state.busy.load(Relaxed);
        let better = match (best, method) {
            (None, _) => true,
            (Some((_, s, _)), LbMethod::Byrequests) => score > s,
            (Some((_, s, b)), LbMethod::Bybusyness) => busy < b || (busy == b && score > s),
        };
        if better {
            best = Some((i, score, busy));
        }
    }
    let (winner, _, _) = best?;
    members[winner].state.lbstatus.fetch_sub(total, Relaxed);
    Some(winner)
}

/// Apache counts sticky requests too ("so that even session routes get into account"):
/// every healthy regular member gains its loadfactor and the sticky member pays the total.
/// Skipped when the sticky member is not itself a regular candidate (draining, standby).
pub fn account_sticky(members: &[Arc<Member>], sticky: usize, now: u64) {
    let candidate = |m: &Member| in_pool(m, Pool::Regular, now) && m.is_healthy(now);
    if !candidate(&members[sticky]) {
        return;
    }
    let mut total = 0;
    for m in members.iter().filter(|m| candidate(m)) {
        let factor = i64::from(m.loadfactor());
        m.state.lbstatus.fetch_add(factor, Relaxed);
        total += factor;
    }
    members[sticky].state.lbstatus.fetch_sub(total, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{MemberTable, Resolved};
    use routemap::{RouteMap, Snapshot};
    use std::time::{Duration, SystemTime};

    fn table(text: &str) -> MemberTable {
        let snapshot = Arc::new(Snapshot::new(
            RouteMap::parse(text.as_bytes()).unwrap(),
            1,
            SystemTime::now(),
        ));
        MemberTable::build(snapshot, None, &Resolved::new(), 80).0
    }

    /// The members `picks` new sessions go to, in order.
    fn picks(table: &MemberTable, picks: usize, method: LbMethod) -> Vec<usize> {
        (0..picks)
            .map(|_| {
                pick(
                    table.members(),
                    method,
                    stickyroute_relay::clock::now_ms(),
                    &[],
                )
                .unwrap()
            })
            .collect()
    }

    fn counts(table: &MemberTable, picks: usize, method: LbMethod) -> Vec<usize> {
        let mut counts = vec![0; table.members().len()];
        for index in self::picks(table, picks, method) {
            counts[index] += 1;
        }
        counts
    }

    const SEED: &str = "10.16.4.4 www1 loadfactor=60\n10.16.4.6 www2 loadfactor=60\n10.16.4.7 www3 loadfactor=60\n10.12.2.13 www0 loadfactor=20\n";

    #[test]
    fn byrequests_gives_the_seed_weights_exactly_in_every_window_of_200() {
        let t = table(SEED);
        for _window in 0..5 {
            assert_eq!(counts(&t, 200, LbMethod::Byrequests), [60, 60, 60, 20]);
        }
        // Apache's order for 3:3:3:1: ties go to the first in map order.
        let order = picks(&t, 10, LbMethod::Byrequests);
        assert_eq!(order.iter().filter(|i| **i == 3).count(), 1);
    }

    #[test]
    fn sticky_requests_count_in_the_accounting_as_in_apache() {
        let t = table("10.0.0.1 www1\n10.0.0.2 www2\n");
        // Two sticky hits on www1 are "owed" to www2: the next two new sessions go there.
        account_sticky(t.members(), 0, stickyroute_relay::clock::now_ms());
        account_sticky(t.members(), 0, stickyroute_relay::clock::now_ms());
        assert_eq!(picks(&t, 2, LbMethod::Byrequests), [1, 1]);
    }

    #[test]
    fn unresolved_members_are_never_picked() {
        let t = table("web-0 www0\n10.0.0.1 www1\n");
        assert_eq!(counts(&t, 5, LbMethod::Byrequests), [0, 5]);
    }

    #[test]
    fn drain_disabled_standby_and_health_shape_the_candidates() {
        let t = table(
            "10.0.0.1 www1 status=drain\n10.0.0.2 www2 status=disabled\n10.0.0.3 www3 status=standby\n10.0.0.4 www4\n",
        );
        assert_eq!(
            counts(&t, 10, LbMethod::Byrequests),
            [0, 0, 0, 10],
            "only the enabled member"
        );
        t.members()[3].state.mark_error(Duration::from_secs(60));
        assert_eq!(
            counts(&t, 10, LbMethod::Byrequests),
            [0, 0, 10, 0],
            "standby when no regular member is usable"
        );
        t.members()[2].state.mark_error(Duration::from_secs(60));
        assert_eq!(
            counts(&t, 10, LbMethod::Byrequests),
            [0, 0, 0, 10],
            "all in error: forced recovery"
        );
        assert_eq!(
            pick(
                t.members(),
                LbMethod::Byrequests,
                stickyroute_relay::clock::now_ms(),
                &[2, 3]
            ),
            None
        );
    }

    #[test]
    fn bybusyness_prefers_the_least_busy() {
        let t = table("10.0.0.1 www1\n10.0.0.2 www2\n10.0.0.3 www3\n");
        t.members()[0].state.busy.store(5, Relaxed);
        t.members()[1].state.busy.store(1, Relaxed);
        t.members()[2].state.busy.store(3, Relaxed);
        assert_eq!(picks(&t, 1, LbMethod::Bybusyness), [1]);
        t.members()[1].state.busy.store(9, Relaxed);
        assert_eq!(picks(&t, 1, LbMethod::Bybusyness), [2]);
    }
}
