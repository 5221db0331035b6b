//! Where a quota's window begins and ends: fixed lengths aligned to the Unix epoch (every replica
//! and every restart agrees on them without talking), and calendar days and months in the
//! configured time zone (a month budget resets at local midnight on the 1st, DST included).

use crate::config::Window;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// The window `[start, end)` (Unix milliseconds) that holds `now_ms`.
pub fn bounds(w: Window, now_ms: i64, tz: &TimeZone) -> (i64, i64) {
    match w {
        Window::Every(d) => {
            let len = (d.as_millis() as i64).max(1);
            let start = now_ms.div_euclid(len) * len;
            (start, start + len)
        }
        Window::Day | Window::Month => calendar(w, now_ms, tz).unwrap_or_else(|| {
            // Out of the calendar's range (year 9999): one UTC day.
            let start = now_ms.div_euclid(86_400_000) * 86_400_000;
            (start, start + 86_400_000)
        }),
    }
}

fn calendar(w: Window, now_ms: i64, tz: &TimeZone) -> Option<(i64, i64)> {
    let now = Timestamp::from_millisecond(now_ms)
        .ok()?
        .to_zoned(tz.clone());
    let (start, end) = match w {
        Window::Month => {
            let start = now.first_of_month().ok()?.start_of_day().ok()?;
            let end = start.checked_add(1.month()).ok()?.start_of_day().ok()?;
            (start, end)
        }
        _ => {
            let start = now.start_of_day().ok()?;
            let end = now.tomorrow().ok()?.start_of_day().ok()?;
            (start, end)
        }
    };
    Some((
        start.timestamp().as_millisecond(),
        end.timestamp().as_millisecond(),
    ))
}

/// The calendar day of `now_ms` in `tz` (`2026-12-05`), the key of daily usage totals.
pub fn day(now_ms: i64, tz: &TimeZone) -> String {
    Timestamp::from_millisecond(now_ms)
        .map(|t| t.to_zoned(tz.clone()).date().to_string())
        .unwrap_or_default()
}

/// A duration the way OpenAI's `x-ratelimit-reset-*` headers write it: `250ms`, `1s`, `6m0s`,
/// `1h2m3s`.
pub fn reset_str(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = (ms + 999) / 1000;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}
