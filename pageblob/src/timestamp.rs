//! UTC timestamps in the forms Azure uses: snapshot ids with seven fractional digits
//! (`2011-03-09T01:42:34.9360000Z`) and RFC 1123 dates for `Last-Modified`.

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Snapshot id for a time: `YYYY-MM-DDTHH:MM:SS.fffffffZ` (100 ns resolution).
pub fn snapshot_id(nanos: u64) -> String {
    let secs = nanos / NANOS_PER_SEC;
    let ticks = (nanos % NANOS_PER_SEC) / 100;
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{ticks:07}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Parse a snapshot id back to nanoseconds; `None` if it is not in the exact form.
pub fn parse_snapshot_id(id: &str) -> Option<u64> {
    let b = id.as_bytes();
    if b.len() != 28
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[27] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = &id[r];
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    let (h, mi, s, t) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..27)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 59 || y < 1970
    {
        return None;
    }
    let days = days_from_civil(y as i64, mo, d);
    if civil_from_days(days) != (y as i64, mo, d) {
        return None; // e.g. February 30
    }
    let secs = days as u64 * 86_400 + h * 3600 + mi * 60 + s;
    secs.checked_mul(NANOS_PER_SEC)?.checked_add(t * 100)
}

/// Parse the UTC times a shared access signature carries (`st`, `se`): `YYYY-MM-DD`,
/// `YYYY-MM-DDThh:mmZ`, `YYYY-MM-DDThh:mm:ssZ`, or with up to seven fraction digits.
pub fn parse_sas_time(s: &str) -> Option<u64> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z')?)),
        None => (s, None),
    };
    let digits = |part: &str, n: usize| -> Option<u64> {
        (part.len() == n && part.bytes().all(|c| c.is_ascii_digit())).then(|| part.parse().ok())?
    };
    let mut d = date.split('-');
    let (y, mo, day) = (
        digits(d.next()?, 4)?,
        digits(d.next()?, 2)? as u32,
        digits(d.next()?, 2)? as u32,
    );
    if d.next().is_some() || y < 1970 || !(1..=12).contains(&mo) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(y as i64, mo, day);
    if civil_from_days(days) != (y as i64, mo, day) {
        return None;
    }
    let (mut h, mut mi, mut sec, mut nanos) = (0, 0, 0, 0);
    if let Some(t) = time {
        let (hms, fraction) = t.split_once('.').map_or((t, None), |(a, b)| (a, Some(b)));
        let mut parts = hms.split(':');
        h = digits(parts.next()?, 2)?;
        mi = digits(parts.next()?, 2)?;
        sec = match parts.next() {
            Some(p) => digits(p, 2)?,
            None => 0,
        };
        if parts.next().is_some() || h > 23 || mi > 59 || sec > 59 {
            return None;
        }
        if let Some(f) = fraction {
            if f.is_empty() || f.len() > 7 || !f.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            nanos = f.parse::<u64>().ok()? * 10u64.pow(9 - f.len() as u32);
        }
    }
    let secs = days as u64 * 86_400 + h * 3600 + mi * 60 + sec;
    secs.checked_mul(NANOS_PER_SEC)?.checked_add(nanos)
}

/// RFC 1123 date (`Wed, 09 Mar 2011 01:42:34 GMT`) for HTTP headers.
pub fn http_date(nanos: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos))
}

/// Parse an HTTP date (RFC 1123, or the obsolete forms HTTP/1.1 readers accept) to nanoseconds.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(s).ok()?;
    let since = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_id_matches_azure_example_and_round_trips() {
        // 2011-03-09T01:42:34.9360000Z, the example in the Snapshot Blob docs.
        let nanos = 1_299_634_954_936_000_000;
        assert_eq!(snapshot_id(nanos), "2011-03-09T01:42:34.9360000Z");
        assert_eq!(
            parse_snapshot_id("2011-03-09T01:42:34.9360000Z"),
            Some(nanos)
        );
        assert_eq!(http_date(nanos), "Wed, 09 Mar 2011 01:42:34 GMT");
        assert_eq!(
            parse_http_date("Wed, 09 Mar 2011 01:42:34 GMT"),
            Some(nanos / NANOS_PER_SEC * NANOS_PER_SEC)
        );
    }

    #[test]
    fn malformed_snapshot_ids_are_refused() {
        for bad in [
            "",
            "2011-03-09T01:42:34.936Z",
            "2011-02-30T01:42:34.9360000Z",
            "2011-03-09T01:42:34.93600x0Z",
            "2011-13-09T01:42:34.9360000Z",
        ] {
            assert_eq!(parse_snapshot_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn calendar_round_trips_over_centuries() {
        for days in (-1000..200_000).step_by(37) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
