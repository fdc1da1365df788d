//! Which backup points a retention policy keeps, with restic's `forget`
//! semantics: points are grouped per VM (server and instance UUID) and
//! disk; within a group, newest first, `keep_last` keeps the N newest
//! points, and each of `keep_hourly` … `keep_yearly` keeps the newest
//! point of each of the N most recent hours, days, weeks (Monday to
//! Sunday), months or years that have points. Buckets are computed in
//! UTC from the points' times, so the result depends on nothing else.
//! As in restic 0.14 and later, when a group has fewer buckets than a
//! calendar rule asks for, its oldest point is kept as well
//! ([`KeepReason::Oldest`]). A point is kept when any rule keeps it; a
//! policy of all zeros keeps everything (restic refuses to forget with an
//! empty policy).

use std::collections::BTreeMap;

use crate::index::{BackupId, VmIdentity};

/// A retention policy. Zero disables a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PrunePolicy {
    /// Keep the N newest points.
    pub keep_last: u32,
    /// Keep the newest point of each of the last N hours with points.
    pub keep_hourly: u32,
    /// … days.
    pub keep_daily: u32,
    /// … ISO weeks (Monday 00:00 UTC to Sunday).
    pub keep_weekly: u32,
    /// … calendar months.
    pub keep_monthly: u32,
    /// … calendar years.
    pub keep_yearly: u32,
}

impl PrunePolicy {
    /// Whether every rule is zero.
    pub fn is_empty(&self) -> bool {
        *self == PrunePolicy::default()
    }
}

/// Why a point is kept.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum KeepReason {
    /// Among the `keep_last` newest.
    Last,
    /// Newest of its hour.
    Hourly,
    /// Newest of its day.
    Daily,
    /// Newest of its week.
    Weekly,
    /// Newest of its month.
    Monthly,
    /// Newest of its year.
    Yearly,
    /// The oldest point of a group with fewer buckets than a calendar
    /// rule asks for.
    Oldest,
    /// The policy is empty: everything is kept.
    NoPolicy,
}

/// A point of one disk, as prune sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunePoint {
    /// The point.
    pub id: BackupId,
    /// Its time, unix seconds.
    pub time: u64,
    /// Its VM.
    pub vm: VmIdentity,
    /// Its disk.
    pub disk_key: i32,
}

/// The verdict on one point; `reasons` is empty when it is to be removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneDecision {
    /// The point.
    pub id: BackupId,
    /// Its disk.
    pub disk_key: i32,
    /// Why it is kept, or empty.
    pub reasons: Vec<KeepReason>,
}

impl PruneDecision {
    /// Whether the point is kept.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Days since 1970-01-01 to (year, month 1..=12), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32) {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32)
}

/// The bucket of `time` for each calendar rule, in rule order
/// (hour, day, week, month, year).
fn buckets(time: u64) -> [i64; 5] {
    let t = i64::try_from(time).unwrap_or(i64::MAX);
    let days = t.div_euclid(86_400);
    let (y, m) = civil(days);
    // 1970-01-01 was a Thursday; +3 puts week boundaries on Mondays.
    [
        t.div_euclid(3600),
        days,
        (days + 3).div_euclid(7),
        y * 12 + i64::from(m) - 1,
        y,
    ]
}

const CALENDAR: [KeepReason; 5] = [
    KeepReason::Hourly,
    KeepReason::Daily,
    KeepReason::Weekly,
    KeepReason::Monthly,
    KeepReason::Yearly,
];

/// Decides, for every point, whether `policy` keeps it. The result is in
/// the order of `points`.
pub fn plan(points: &[PrunePoint], policy: &PrunePolicy) -> Vec<PruneDecision> {
    let mut reasons: Vec<Vec<KeepReason>> = vec![Vec::new(); points.len()];
    let mut groups: BTreeMap<(&str, &str, i32), Vec<usize>> = BTreeMap::new();
    for (i, p) in points.iter().enumerate() {
        groups
            .entry((&p.vm.server, &p.vm.instance_uuid, p.disk_key))
            .or_default()
            .push(i);
    }
    for members in groups.values_mut() {
        members
            .sort_by(|&a, &b| (points[b].time, points[b].id).cmp(&(points[a].time, points[a].id)));
        if policy.is_empty() {
            for &i in members.iter() {
                reasons[i].push(KeepReason::NoPolicy);
            }
            continue;
        }
        let mut left = [
            policy.keep_hourly,
            policy.keep_daily,
            policy.keep_weekly,
            policy.keep_monthly,
            policy.keep_yearly,
        ];
        let mut last: [Option<i64>; 5] = [None; 5];
        for (rank, &i) in members.iter().enumerate() {
            if (rank as u64) < u64::from(policy.keep_last) {
                reasons[i].push(KeepReason::Last);
            }
            let b = buckets(points[i].time);
            for r in 0..5 {
                if left[r] > 0 && last[r] != Some(b[r]) {
                    reasons[i].push(CALENDAR[r]);
                    last[r] = Some(b[r]);
                    left[r] -= 1;
                }
            }
        }
        let requested = [
            policy.keep_hourly,
            policy.keep_daily,
            policy.keep_weekly,
            policy.keep_monthly,
            policy.keep_yearly,
        ];
        let short = requested
            .iter()
            .zip(left)
            .any(|(&asked, l)| asked > 0 && l > 0);
        if let (true, Some(&oldest)) = (short, members.last()) {
            reasons[oldest].push(KeepReason::Oldest);
        }
    }
    points
        .iter()
        .zip(reasons)
        .map(|(p, reasons)| PruneDecision {
            id: p.id,
            disk_key: p.disk_key,
            reasons,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vm(server: &str, uuid: &str) -> VmIdentity {
        VmIdentity {
            server: server.into(),
            instance_uuid: uuid.into(),
            moref: "vm-1".into(),
            name: "n".into(),
        }
    }

    fn pts(times: &[u64]) -> Vec<PrunePoint> {
        times
            .iter()
            .enumerate()
            .map(|(i, &t)| PrunePoint {
                id: BackupId::new(t, [i as u8; 16]),
                time: t,
                vm: vm("vc", "u1"),
                disk_key: 2000,
            })
            .collect()
    }

    fn kept(points: &[PrunePoint], policy: &PrunePolicy) -> Vec<u64> {
        plan(points, policy)
            .iter()
            .zip(points)
            .filter(|(d, _)| d.keep())
            .map(|(_, p)| p.time)
            .collect()
    }

    const H: u64 = 3600;
    const D: u64 = 86_400;

    #[test]
    fn calendar_math() {
        assert_eq!(civil(0), (1970, 1));
        assert_eq!(civil(-1), (1969, 12));
        assert_eq!(civil(1_709_164_800 / 86_400), (2024, 2)); // 2024-02-29
        assert_eq!(civil(1_709_251_200 / 86_400), (2024, 3)); // 2024-03-01
        assert_eq!(civil(1_704_067_140 / 86_400), (2023, 12));
        assert_eq!(civil(1_704_067_200 / 86_400), (2024, 1));
        // Sunday 2026-11-29 23:00 and Monday 2026-11-30 01:00 are in
        // different weeks; Monday 01:00 and Sunday 2026-12-06 are not.
        let sun = buckets(1_795_993_200)[2];
        let mon = buckets(1_796_000_400)[2];
        assert_eq!(mon, sun + 1);
        assert_eq!(buckets(1_796_000_400 + 6 * D + 20 * H)[2], mon);
    }

    #[test]
    fn keep_last() {
        let p = pts(&[10, 50, 20, 40, 30]);
        let policy = PrunePolicy {
            keep_last: 2,
            ..Default::default()
        };
        assert_eq!(kept(&p, &policy), vec![50, 40]);
        let d = plan(&p, &policy);
        assert_eq!(d[1].reasons, vec![KeepReason::Last]);
        assert!(d[0].reasons.is_empty());
    }

    #[test]
    fn keep_daily_takes_newest_of_each_day() {
        let day1 = 20_000 * D;
        let p = pts(&[
            day1 + 10 * H,
            day1 + 12 * H,
            day1 + D + 9 * H,
            day1 + 3 * D - 1,
            day1 + 3 * D,
        ]);
        let policy = PrunePolicy {
            keep_daily: 3,
            ..Default::default()
        };
        assert_eq!(
            kept(&p, &policy),
            vec![day1 + D + 9 * H, day1 + 3 * D - 1, day1 + 3 * D]
        );
        let policy = PrunePolicy {
            keep_daily: 10,
            ..Default::default()
        };
        // Fewer days than asked for: the oldest point is kept too.
        assert_eq!(
            kept(&p, &policy),
            vec![
                day1 + 10 * H,
                day1 + 12 * H,
                day1 + D + 9 * H,
                day1 + 3 * D - 1,
                day1 + 3 * D
            ]
        );
        assert_eq!(plan(&p, &policy)[0].reasons, vec![KeepReason::Oldest]);
        assert_eq!(plan(&p, &policy)[1].reasons, vec![KeepReason::Daily]);
        // keep_last never triggers it.
        let policy = PrunePolicy {
            keep_last: 10,
            ..Default::default()
        };
        assert!(plan(&p, &policy)
            .iter()
            .all(|d| d.reasons == vec![KeepReason::Last]));
    }

    #[test]
    fn weekly_monthly_yearly_and_reasons() {
        let p = pts(&[
            1_795_993_200,
            1_796_000_400,
            1_706_702_400,
            1_706_788_800,
            1_704_067_140,
            1_704_067_200,
        ]);
        let weekly = PrunePolicy {
            keep_weekly: 2,
            ..Default::default()
        };
        assert_eq!(kept(&p, &weekly), vec![1_795_993_200, 1_796_000_400]);
        let monthly = PrunePolicy {
            keep_monthly: 4,
            ..Default::default()
        };
        // Nov 2026 (newest: Monday), Feb 2024, Jan 2024 (31st), Dec 2023.
        assert_eq!(
            kept(&p, &monthly),
            vec![1_796_000_400, 1_706_702_400, 1_706_788_800, 1_704_067_140]
        );
        let yearly = PrunePolicy {
            keep_yearly: 5,
            ..Default::default()
        };
        assert_eq!(
            kept(&p, &yearly),
            vec![1_796_000_400, 1_706_788_800, 1_704_067_140]
        );
        let all = PrunePolicy {
            keep_last: 1,
            keep_hourly: 1,
            keep_daily: 1,
            keep_weekly: 1,
            keep_monthly: 1,
            keep_yearly: 1,
        };
        let d = plan(&p, &all);
        assert_eq!(
            d[1].reasons,
            vec![
                KeepReason::Last,
                KeepReason::Hourly,
                KeepReason::Daily,
                KeepReason::Weekly,
                KeepReason::Monthly,
                KeepReason::Yearly
            ]
        );
        assert_eq!(d.iter().filter(|d| d.keep()).count(), 1);
    }

    #[test]
    fn groups_are_per_vm_and_disk() {
        let mut p = pts(&[100, 200, 300]);
        p[0].vm = vm("vc2", "u1"); // same moref and UUID, other server
        p[1].disk_key = 2001;
        let policy = PrunePolicy {
            keep_last: 1,
            ..Default::default()
        };
        assert!(plan(&p, &policy).iter().all(|d| d.keep()));
        p[0].vm = vm("vc", "u1");
        p[0].vm.moref = "vm-99".into(); // re-registered: same VM
        assert_eq!(kept(&p, &policy), vec![200, 300]);
    }

    #[test]
    fn empty_policy_keeps_everything() {
        let p = pts(&[1, 2, 3]);
        let d = plan(&p, &PrunePolicy::default());
        assert!(d.iter().all(|d| d.reasons == vec![KeepReason::NoPolicy]));
        assert!(plan(&[], &PrunePolicy::default()).is_empty());
    }

    fn arb_points() -> impl Strategy<Value = Vec<PrunePoint>> {
        prop::collection::vec((0u64..4 * 365 * D, 0u8..3, 0i32..2), 0..60).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (t, g, disk))| PrunePoint {
                    id: BackupId::new(t, [i as u8; 16]),
                    time: t,
                    vm: vm("vc", &format!("u{g}")),
                    disk_key: disk,
                })
                .collect()
        })
    }

    fn arb_policy() -> impl Strategy<Value = PrunePolicy> {
        (0u32..5, 0u32..5, 0u32..5, 0u32..5, 0u32..5, 0u32..3).prop_map(|(a, b, c, d, e, f)| {
            PrunePolicy {
                keep_last: a,
                keep_hourly: b,
                keep_daily: c,
                keep_weekly: d,
                keep_monthly: e,
                keep_yearly: f,
            }
        })
    }

    fn group_of(p: &PrunePoint) -> (String, i32) {
        (p.vm.instance_uuid.clone(), p.disk_key)
    }

    proptest! {
        #[test]
        fn newest_of_each_group_survives(points in arb_points(), policy in arb_policy()) {
            let d = plan(&points, &policy);
            for (i, p) in points.iter().enumerate() {
                let newest = points.iter().filter(|q| group_of(q) == group_of(p)).map(|q| (q.time, q.id)).max();
                if newest == Some((p.time, p.id)) {
                    prop_assert!(d[i].keep());
                }
            }
        }

        #[test]
        fn keep_last_keeps_exactly_the_n_newest(points in arb_points(), n in 1u32..10) {
            let policy = PrunePolicy { keep_last: n, ..Default::default() };
            let d = plan(&points, &policy);
            for (i, p) in points.iter().enumerate() {
                let newer = points.iter()
                    .filter(|q| group_of(q) == group_of(p) && (q.time, q.id) > (p.time, p.id))
                    .count();
                prop_assert_eq!(d[i].keep(), newer < n as usize);
            }
        }

        #[test]
        fn daily_matches_naive_oracle(points in arb_points(), n in 1u32..6) {
            let policy = PrunePolicy { keep_daily: n, ..Default::default() };
            let d = plan(&points, &policy);
            for (i, p) in points.iter().enumerate() {
                let group: Vec<&PrunePoint> = points.iter().filter(|q| group_of(q) == group_of(p)).collect();
                let mut days: Vec<u64> = group.iter().map(|q| q.time / D).collect();
                days.sort_unstable();
                days.dedup();
                let recent = &days[days.len().saturating_sub(n as usize)..];
                let newest_of_day = group.iter()
                    .filter(|q| q.time / D == p.time / D)
                    .all(|q| (q.time, q.id) <= (p.time, p.id));
                let oldest = days.len() < n as usize
                    && group.iter().all(|q| (q.time, q.id) >= (p.time, p.id));
                prop_assert_eq!(d[i].keep(), oldest || (newest_of_day && recent.contains(&(p.time / D))));
            }
        }

        #[test]
        fn kept_count_bounded_by_policy(points in arb_points(), policy in arb_policy()) {
            prop_assume!(!policy.is_empty());
            let d = plan(&points, &policy);
            let total = policy.keep_last + policy.keep_hourly + policy.keep_daily
                + policy.keep_weekly + policy.keep_monthly + policy.keep_yearly;
            let mut groups: Vec<(String, i32)> = points.iter().map(group_of).collect();
            groups.sort();
            groups.dedup();
            for g in groups {
                let k = points.iter().zip(&d).filter(|(p, d)| group_of(p) == g && d.keep()).count();
                prop_assert!(k <= total as usize + 1);
            }
        }
    }
}
