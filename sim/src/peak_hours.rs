//! A workload's busy hours: `"H1-H2"` (UTC, `H1 < H2 <= 24`) take a share of the day's writes
//! and the other hours share the rest evenly. The planner models churn with them and the
//! simulator's disks write by them, so `drplane plan --verify` compares like with like.

/// Share of the day's writes in the busy hours when none is given.
pub const DEFAULT_SHARE: f64 = 0.7;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakHours {
    /// First busy hour of the day (UTC).
    pub start: u8,
    /// The hour the busy hours end (exclusive; 24 is midnight).
    pub end: u8,
    /// Share of the day's writes in `start..end`.
    pub share: f64,
}

/// A `peak_hours` or `peak_share` key that is wrong, for the caller to name with its place.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyError {
    /// `peak_hours` or `peak_share`.
    pub field: &'static str,
    pub value: String,
    pub rule: String,
}

impl PeakHours {
    /// From a table's optional `peak_hours` and `peak_share` keys: none without `peak_hours`
    /// (a share alone is an error).
    pub fn from_keys(
        hours: Option<&str>,
        share: Option<f64>,
    ) -> Result<Option<PeakHours>, KeyError> {
        match (hours, share) {
            (None, None) => Ok(None),
            (None, Some(v)) => Err(KeyError {
                field: "peak_share",
                value: v.to_string(),
                rule: "needs peak_hours".into(),
            }),
            (Some(h), share) => PeakHours::parse(h, share)
                .map(Some)
                .map_err(|(field, rule)| {
                    let value = match field {
                        "peak_hours" => format!("{h:?}"),
                        _ => share.unwrap_or_default().to_string(),
                    };
                    KeyError { field, value, rule }
                }),
        }
    }

    /// `hours` as `"H1-H2"` and `share` (0 to 1, default [`DEFAULT_SHARE`]). The error says
    /// which of the two is wrong and why: `(field, rule)`.
    pub fn parse(hours: &str, share: Option<f64>) -> Result<PeakHours, (&'static str, String)> {
        let (start, end) = hours
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u8>().ok()?, b.trim().parse::<u8>().ok()?)))
            .filter(|(a, b)| a < b && *b <= 24)
            .ok_or(("peak_hours", "\"H1-H2\" with H1 < H2 <= 24".to_string()))?;
        let share = share.unwrap_or(DEFAULT_SHARE);
        if !(0.0..=1.0).contains(&share) {
            return Err(("peak_share", "0 to 1".to_string()));
        }
        Ok(PeakHours { start, end, share })
    }

    /// The churn in hour-of-day `hour` (0–23) relative to the day's average hour. Busy hours
    /// spanning the whole day leave no other hours for the rest: every hour is average.
    pub fn factor(&self, hour: u8) -> f64 {
        let busy = f64::from(self.end - self.start);
        if busy >= 24.0 {
            1.0
        } else if (self.start..self.end).contains(&hour) {
            self.share * 24.0 / busy
        } else {
            (1.0 - self.share) * 24.0 / (24.0 - busy)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_factors_of_a_day_average_to_one_and_the_busy_hours_hold_their_share() {
        for (hours, share) in [("9-17", 0.7), ("0-24", 1.0), ("22-24", 0.25), ("0-1", 0.0)] {
            let p = PeakHours::parse(hours, Some(share)).unwrap();
            let day: f64 = (0..24).map(|h| p.factor(h)).sum();
            assert!((day - 24.0).abs() < 1e-9, "{hours}: {day}");
            let busy: f64 = (p.start..p.end).map(|h| p.factor(h)).sum();
            assert!((busy / 24.0 - share).abs() < 1e-9, "{hours}");
        }
        // The whole day busy: whatever the share, the day's writes are all there, evenly.
        let all_day = PeakHours::parse("0-24", Some(0.3)).unwrap();
        assert!((0..24).all(|h| all_day.factor(h) == 1.0));
        let p = PeakHours::parse(" 8 - 18 ", None).unwrap();
        assert_eq!((p.start, p.end, p.share), (8, 18, DEFAULT_SHARE));
    }

    #[test]
    fn bad_hours_and_shares_are_named() {
        for bad in ["", "9", "17-9", "9-9", "0-25", "a-b", "-1-3", "9-17-20"] {
            assert_eq!(
                PeakHours::parse(bad, None).unwrap_err().0,
                "peak_hours",
                "{bad:?}"
            );
        }
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert_eq!(
                PeakHours::parse("9-17", Some(bad)).unwrap_err().0,
                "peak_share"
            );
        }
    }
}
