//! Usage totals summed by identity, group, route or model over the last days: what
//! `agentgate usage` prints and `GET /v1/usage` answers.

use super::Totals;

/// What totals are summed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Identity,
    /// A caller in several groups counts in each of them.
    Group,
    Route,
    Model,
}

impl By {
    pub fn parse(s: &str) -> Option<By> {
        Some(match s {
            "identity" => By::Identity,
            "group" => By::Group,
            "route" => By::Route,
            "model" => By::Model,
            _ => return None,
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Row {
    pub key: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub reasoning_tokens: u64,
    pub unreported: u64,
    pub cost: f64,
    #[serde(skip)]
    pub cost_micros: u64,
}

/// `30d` (days) or a duration in hours (`48h`): how many calendar days back, today included.
pub fn days(since: &str) -> Result<u32, String> {
    let s = since.trim();
    let bad = || format!("`--since {s}`: write days (30d) or hours (48h)");
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u32 = n.parse().map_err(|_| bad())?;
    match unit {
        "d" => Ok(n.max(1)),
        "h" => Ok(n.div_ceil(24).max(1)),
        _ => Err(bad()),
    }
}

/// The totals summed by `by`, most expensive first (then most tokens).
pub fn summarize(totals: &[Totals], by: By) -> Vec<Row> {
    let mut sums: std::collections::BTreeMap<String, Totals> = Default::default();
    for t in totals {
        let keys: Vec<&str> = match by {
            By::Identity => vec![&t.identity],
            By::Group => t.groups.iter().map(String::as_str).collect(),
            By::Route => vec![&t.route],
            By::Model => vec![&t.model],
        };
        for k in keys {
            sums.entry(k.to_string()).or_default().add_counts(t);
        }
    }
    let mut out: Vec<Row> = sums
        .into_iter()
        .map(|(key, t)| Row {
            key,
            requests: t.requests,
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            cached_input_tokens: t.cached_input_tokens,
            reasoning_tokens: t.reasoning_tokens,
            unreported: t.unreported,
            cost: crate::usage::micros_f64(t.cost_micros),
            cost_micros: t.cost_micros,
        })
        .collect();
    out.sort_by(|a, b| {
        (b.cost_micros, b.input_tokens + b.output_tokens)
            .cmp(&(a.cost_micros, a.input_tokens + a.output_tokens))
    });
    out
}

/// The first day (`YYYY-MM-DD` in `tz`) of the last `days` days, today included.
pub fn first_day(days: u32, now_ms: i64, tz: &jiff::tz::TimeZone) -> String {
    super::window::day(now_ms - i64::from(days.saturating_sub(1)) * 86_400_000, tz)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(
        identity: &str,
        groups: &[&str],
        route: &str,
        model: &str,
        input: u64,
        cost: u64,
    ) -> Totals {
        Totals {
            day: "2026-12-01".into(),
            identity: identity.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            route: route.into(),
            model: model.into(),
            requests: 1,
            input_tokens: input,
            cost_micros: cost,
            ..Totals::default()
        }
    }

    #[test]
    fn totals_are_summed_by_each_key_most_expensive_first() {
        let all = [
            t("a", &["x", "y"], "r1", "gpt-4o", 10, 5),
            t("b", &["y"], "r1", "o3", 20, 50),
            t("a", &["x", "y"], "r2", "gpt-4o", 1, 1),
        ];
        let keys = |by| {
            summarize(&all, by)
                .into_iter()
                .map(|r| (r.key, r.requests, r.input_tokens, r.cost_micros))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(By::Identity),
            [("b".into(), 1, 20, 50), ("a".into(), 2, 11, 6)]
        );
        assert_eq!(
            keys(By::Group),
            [("y".into(), 3, 31, 56), ("x".into(), 2, 11, 6)]
        );
        assert_eq!(
            keys(By::Route),
            [("r1".into(), 2, 30, 55), ("r2".into(), 1, 1, 1)]
        );
        assert_eq!(
            keys(By::Model),
            [("o3".into(), 1, 20, 50), ("gpt-4o".into(), 2, 11, 6)]
        );
        assert_eq!(summarize(&all, By::Identity)[0].cost, 0.00005);
    }

    #[test]
    fn since_is_days_or_hours() {
        for (s, want) in [
            ("30d", Ok(30)),
            ("1d", Ok(1)),
            ("0d", Ok(1)),
            ("48h", Ok(2)),
            ("25h", Ok(2)),
            ("1h", Ok(1)),
        ] {
            assert_eq!(days(s), want, "{s}");
        }
        for bad in ["", "d", "30", "3w", "-1d"] {
            assert!(days(bad).is_err(), "{bad}");
        }
        let utc = jiff::tz::TimeZone::UTC;
        // 2026-12-05T02:30Z: the last 30 days began on 2026-11-06.
        assert_eq!(first_day(30, 1_796_437_810_500, &utc), "2026-11-06");
        assert_eq!(first_day(1, 1_796_437_810_500, &utc), "2026-12-05");
    }
}
