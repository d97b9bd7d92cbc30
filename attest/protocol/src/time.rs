//! RFC 3339 UTC timestamps ↔ Unix seconds, without a clock (callers pass `now`).

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Days in month `m` (1-12) of year `y`.
fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Exactly `n` ASCII digits as a number.
fn digits(s: &str, n: usize) -> Option<i64> {
    if s.len() != n || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` (or `+00:00`) → Unix seconds; `None` if malformed or not a
/// real date (day of month checked, leap years included; `frac` is 1-9 digits, ignored).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let t = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = t.split_once(['T', 't'])?;
    let d: Vec<&str> = date.split('-').collect();
    let (time, frac) = match time.split_once('.') {
        Some((t, f)) => (t, Some(f)),
        None => (time, None),
    };
    if let Some(f) = frac {
        if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    let h: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || h.len() != 3 {
        return None;
    }
    let (y, mo, day) = (digits(d[0], 4)?, digits(d[1], 2)?, digits(d[2], 2)?);
    let (hh, mm, ss) = (digits(h[0], 2)?, digits(h[1], 2)?, digits(h[2], 2)?);
    if !(1..=12).contains(&mo)
        || !(1..=days_in_month(y, mo)).contains(&day)
        || !(0..=23).contains(&hh)
        || !(0..=59).contains(&mm)
        || !(0..=60).contains(&ss)
    {
        return None;
    }
    let secs = days_from_civil(y, mo, day) * 86400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs).ok()
}

/// `YYYY-MM-DD` → days since 1970-01-01 (may be negative); `None` if malformed or not a real
/// date.
pub fn parse_date(s: &str) -> Option<i64> {
    let d: Vec<&str> = s.split('-').collect();
    if d.len() != 3 {
        return None;
    }
    let (y, mo, day) = (digits(d[0], 4)?, digits(d[1], 2)?, digits(d[2], 2)?);
    if !(1..=12).contains(&mo) || !(1..=days_in_month(y, mo)).contains(&day) {
        return None;
    }
    Some(days_from_civil(y, mo, day))
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), proleptic Gregorian (H. Hinnant's
/// civil_from_days; the inverse of `days_from_civil`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix seconds → `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86400) as i64);
    let rem = secs % 86400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        // `date -u -d @1767225600` = 2026-01-01T00:00:00Z
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00Z"), Some(1767225600));
        for s in [0u64, 951782400, 1767225600, 4102444799] {
            assert_eq!(parse_rfc3339(&format_rfc3339(s)), Some(s));
        }
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-01-01 00:00:00Z",
            "2026-01-01T00:00:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn civil_from_days_inverts_days_from_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_675), (2023, 11, 14));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        // Every day from 1600 to 2400 round-trips, and consecutive days are consecutive dates.
        let mut prev = civil_from_days(days_from_civil(1600, 1, 1) - 1);
        for days in days_from_civil(1600, 1, 1)..days_from_civil(2400, 1, 1) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!((1..=days_in_month(y, m)).contains(&d), "{y}-{m}-{d}");
            assert!((y, m, d) > prev);
            prev = (y, m, d);
        }
    }

    #[test]
    fn impossible_dates_and_garbage_fractions_are_refused() {
        for bad in [
            "2030-02-31T00:00:00Z",
            "2030-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2030-04-31T00:00:00Z",
            "2030-01-00T00:00:00Z",
            "2030-01-01T00:00:00.Z",
            "2030-01-01T00:00:00.12abZ",
            "2030-01-01T00:00:00.-1Z",
            "2030-01-01T00:00:00.1234567890Z",
            "2030-01-01T00:00:00.1.2Z",
            "+2030-01-01T00:00:00Z",
            "2030-1-01T00:00:00Z",
            "2030-01-01T0:00:00Z",
            "2030-01-01T00:00:+1Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert!(parse_rfc3339("2028-02-29T00:00:00Z").is_some());
        assert!(parse_rfc3339("2000-02-29T23:59:59Z").is_some());
        assert_eq!(
            parse_rfc3339("2026-01-01T00:00:00.123456789Z"),
            Some(1767225600)
        );
        assert_eq!(parse_rfc3339("2026-01-01t00:00:00+00:00"), Some(1767225600));
    }
}
