//! Which backup points a retention policy keeps, with restic's `forget`
//! semantics: points are grouped per VM (server and instance UUID) and
//! disk; within a group, newest first, `keep_last` keeps the N newest
//! points, and each of `keep_hourly` … `keep_yearly` keeps the newest
//! point of each of the N most recent hours, days, weeks (Monday to
//! Sunday), months or years that have points. Buckets are computed in
//! UTC from the points' times, so the result depends on nothing else.
//! A point is kept when any rule keeps it; a policy of all zeros keeps
//! everything (restic refuses to forget with an empty policy).

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
