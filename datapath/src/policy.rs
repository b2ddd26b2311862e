//! Replication policies, as ASR defines them, loaded from TOML and validated against the target
//! storage profile: a policy that would need more snapshots per blob than the profile allows
//! (30-second copies on premium) is refused when it is created, saying why.

use serde::{Deserialize, Serialize};

use pageblob::Profile;

/// Copy frequencies ASR offers.
pub const COPY_FREQUENCIES_SECS: [u32; 3] = [30, 300, 900];
/// Fastest zstd mode offered (`--fast=7`).
pub const MIN_ZSTD_LEVEL: i32 = -7;
/// Bandwidth throttle bounds: 512 Kbps to 102 Mbps.
pub const MIN_THROTTLE_KBPS: u32 = 512;
pub const MAX_THROTTLE_KBPS: u32 = 102 * 1024;

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy TOML: {0}")]
    Syntax(String),
    #[error("{field} = {value}: {rule}")]
    Invalid {
        field: &'static str,
        value: String,
        rule: String,
    },
    #[error("copy frequency 30 seconds is not supported on premium storage: keeping every point of the last hour needs {needed} snapshots per blob, premium allows {limit}")]
    TooManySnapshots { needed: usize, limit: usize },
}

fn invalid(field: &'static str, value: impl ToString, rule: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field,
        value: value.to_string(),
        rule: rule.into(),
    }
}

/// A policy as written (a `--policy` file, a scenario's `[policy]`, a workload's): each key
/// left out takes ASR's default. [`Policy::from_spec`] validates it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_frequency_secs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_hours: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_consistent_hours: Option<u32>,
    /// `"now"` or `"HH:00"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_replication_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypt_at_rest: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size_kib: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zstd_level: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_threads: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle: Option<ThrottleSpec>,
}

/// A policy's `[throttle]` as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_hours_kbps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub non_work_hours_kbps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_start_hour: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_end_hour: Option<u8>,
}

/// Values given over a policy (command-line flags), checked by the same rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyOverrides {
    pub block_size_kib: Option<u32>,
    pub zstd_level: Option<i32>,
    pub upload_threads: Option<u32>,
}

/// A bandwidth throttle by work hours (`None` limit: unthrottled in those hours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub work_hours_kbps: Option<u32>,
    pub non_work_hours_kbps: Option<u32>,
    pub work_start_hour: u8,
    pub work_end_hour: u8,
}

impl Throttle {
    /// The limit in hour-of-day `hour` (UTC, 0–23), in bytes per second (`None`: none).
    pub fn bytes_per_sec_in_hour(&self, hour: u8) -> Option<u64> {
        let kbps = if (self.work_start_hour..self.work_end_hour).contains(&hour) {
            self.work_hours_kbps
        } else {
            self.non_work_hours_kbps
        }?;
        Some(u64::from(kbps) * 1000 / 8)
    }
}

/// A validated replication policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub copy_frequency_secs: u32,
    pub retention_hours: u32,
    pub app_consistent_hours: Option<u32>,
    /// `None`: start now; `Some(h)`: at the next `h`:00 (off-peak start).
    pub initial_replication_hour: Option<u8>,
    pub encrypt_at_rest: bool,
    pub block_size: u32,
    pub zstd_level: i32,
    pub upload_threads: u32,
    pub throttle: Option<Throttle>,
}

/// The zstd level rule: negative levels are zstd's fast modes (less compression, more speed);
/// 0 would mean "zstd's default" (3), which is spelled 3.
fn check_zstd_level(level: i32) -> Result<(), PolicyError> {
    if !(MIN_ZSTD_LEVEL..=19).contains(&level) || level == 0 {
        return Err(invalid(
            "zstd_level",
            level,
            format!("{MIN_ZSTD_LEVEL} to -1 (fast modes) or 1 to 19"),
        ));
    }
    Ok(())
}

fn check_upload_threads(threads: u32) -> Result<(), PolicyError> {
    if !(1..=32).contains(&threads) {
        return Err(invalid("upload_threads", threads, "1 to 32"));
    }
    Ok(())
}

/// The replication block size rule: a power of two from 4 KiB to 4 MiB.
pub fn check_block_size(bytes: u32) -> Result<(), PolicyError> {
    if !bytes.is_power_of_two() || !(4096..=4 << 20).contains(&bytes) {
        return Err(invalid(
            "block_size_kib",
            bytes / 1024,
            "a power of two from 4 to 4096",
        ));
    }
    Ok(())
}

impl Policy {
    /// Live snapshots per blob this policy keeps at most: every point of the last hour, then
    /// one per hour for the rest of the retention window.
    pub fn snapshots_needed(&self) -> usize {
        let last_hour = 3600 / self.copy_frequency_secs as usize;
        let hourly = self.retention_hours.saturating_sub(1) as usize;
        (last_hour + hourly).max(1)
    }

    /// Parse and validate a policy for a target with `profile`.
    pub fn from_toml(text: &str, profile: Profile) -> Result<Policy, PolicyError> {
        let spec: PolicySpec =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        Policy::from_spec(&spec, profile)
    }

    /// `overrides` applied, each checked by the rule its policy key has.
    pub fn with_overrides(mut self, overrides: &PolicyOverrides) -> Result<Policy, PolicyError> {
        if let Some(kib) = overrides.block_size_kib {
            self.block_size = kib.saturating_mul(1024);
            check_block_size(self.block_size)?;
        }
        if let Some(level) = overrides.zstd_level {
            check_zstd_level(level)?;
            self.zstd_level = level;
        }
        if let Some(threads) = overrides.upload_threads {
            check_upload_threads(threads)?;
            self.upload_threads = threads;
        }
        Ok(self)
    }

    /// Validate a policy as written for a target with `profile`.
    pub fn from_spec(f: &PolicySpec, profile: Profile) -> Result<Policy, PolicyError> {
        let copy_frequency_secs = f.copy_frequency_secs.unwrap_or(300);
        if !COPY_FREQUENCIES_SECS.contains(&copy_frequency_secs) {
            return Err(invalid(
                "copy_frequency_secs",
                copy_frequency_secs,
                "30, 300 or 900",
            ));
        }
        let retention_hours = f.retention_hours.unwrap_or(2);
        if retention_hours > 24 {
            return Err(invalid("retention_hours", retention_hours, "at most 24"));
        }
        if let Some(h) = f.app_consistent_hours {
            if !(1..=12).contains(&h) {
                return Err(invalid("app_consistent_hours", h, "1 to 12"));
            }
            if h >= retention_hours {
                return Err(invalid(
                    "app_consistent_hours",
                    h,
                    format!("must be less than the retained hours of points ({retention_hours})"),
                ));
            }
        }
        let initial_replication_hour = match f.initial_replication_start.as_deref() {
            None | Some("now") => None,
            Some(s) => {
                let hour = s
                    .strip_suffix(":00")
                    .and_then(|h| h.parse::<u8>().ok())
                    .filter(|h| *h < 24);
                Some(hour.ok_or_else(|| {
                    invalid("initial_replication_start", s, "\"now\" or \"HH:00\"")
                })?)
            }
        };
        let block_size = f.block_size_kib.unwrap_or(64).saturating_mul(1024);
        check_block_size(block_size)?;
        let zstd_level = f.zstd_level.unwrap_or(1);
        check_zstd_level(zstd_level)?;
        let upload_threads = f.upload_threads.unwrap_or(4);
        check_upload_threads(upload_threads)?;
        let throttle = match f.throttle {
            None => None,
            Some(t) => {
                for (field, v) in [
                    ("throttle.work_hours_kbps", t.work_hours_kbps),
                    ("throttle.non_work_hours_kbps", t.non_work_hours_kbps),
                ] {
                    if let Some(v) = v {
                        if !(MIN_THROTTLE_KBPS..=MAX_THROTTLE_KBPS).contains(&v) {
                            return Err(invalid(field, v, "512 Kbps to 102 Mbps (104448 Kbps)"));
                        }
                    }
                }
                let start = t.work_start_hour.unwrap_or(9);
                let end = t.work_end_hour.unwrap_or(18);
                if start >= end || end > 24 {
                    return Err(invalid(
                        "throttle.work_end_hour",
                        end,
                        format!("after work_start_hour ({start}), at most 24"),
                    ));
                }
                Some(Throttle {
                    work_hours_kbps: t.work_hours_kbps,
                    non_work_hours_kbps: t.non_work_hours_kbps,
                    work_start_hour: start,
                    work_end_hour: end,
                })
            }
        };
        let policy = Policy {
            copy_frequency_secs,
            retention_hours,
            app_consistent_hours: f.app_consistent_hours,
            initial_replication_hour,
            encrypt_at_rest: f.encrypt_at_rest.unwrap_or(true),
            block_size,
            zstd_level,
            upload_threads,
            throttle,
        };
        if let Some(limit) = profile.max_snapshots_per_blob() {
            // ASR: 30 s copy frequency is not supported on premium storage at all.
            let needed = policy
                .snapshots_needed()
                .max(3600 / policy.copy_frequency_secs as usize);
            if needed > limit {
                return Err(PolicyError::TooManySnapshots { needed, limit });
            }
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREMIUM: Profile = Profile::Premium {
        snapshot_spacing: false,
    };

    #[test]
    fn overrides_apply_by_the_policy_keys_rules() {
        let base = Policy::from_toml("zstd_level = 3", Profile::Standard).unwrap();
        let p = base
            .clone()
            .with_overrides(&PolicyOverrides {
                block_size_kib: Some(256),
                zstd_level: None,
                upload_threads: Some(8),
            })
            .unwrap();
        assert_eq!(
            (p.block_size, p.zstd_level, p.upload_threads),
            (256 * 1024, 3, 8)
        );
        for (bad, field) in [
            (
                PolicyOverrides {
                    block_size_kib: Some(100),
                    ..Default::default()
                },
                "block_size_kib",
            ),
            (
                PolicyOverrides {
                    zstd_level: Some(0),
                    ..Default::default()
                },
                "zstd_level",
            ),
            (
                PolicyOverrides {
                    upload_threads: Some(33),
                    ..Default::default()
                },
                "upload_threads",
            ),
        ] {
            match base.clone().with_overrides(&bad) {
                Err(PolicyError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn defaults_are_asrs() {
        let p = Policy::from_toml("", Profile::Standard).unwrap();
        assert_eq!(
            (
                p.copy_frequency_secs,
                p.retention_hours,
                p.block_size,
                p.upload_threads
            ),
            (300, 2, 65536, 4)
        );
        assert!(p.encrypt_at_rest);
    }

    #[test]
    fn thirty_seconds_on_premium_is_refused_saying_why() {
        let text = "copy_frequency_secs = 30\nretention_hours = 24\n";
        Policy::from_toml(text, Profile::Standard).unwrap();
        let err = Policy::from_toml(text, PREMIUM).unwrap_err();
        assert_eq!(
            err,
            PolicyError::TooManySnapshots {
                needed: 143,
                limit: 100
            }
        );
        assert!(err.to_string().contains("premium allows 100"));
        let five = Policy::from_toml("copy_frequency_secs = 300\nretention_hours = 24\n", PREMIUM)
            .unwrap();
        assert_eq!(five.snapshots_needed(), 35);
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        for (text, field) in [
            ("copy_frequency_secs = 60", "copy_frequency_secs"),
            ("retention_hours = 25", "retention_hours"),
            (
                "retention_hours = 4\napp_consistent_hours = 4",
                "app_consistent_hours",
            ),
            ("app_consistent_hours = 13", "app_consistent_hours"),
            ("block_size_kib = 48", "block_size_kib"),
            ("block_size_kib = 8192", "block_size_kib"),
            ("upload_threads = 33", "upload_threads"),
            ("zstd_level = 0", "zstd_level"),
            (
                "initial_replication_start = \"25:00\"",
                "initial_replication_start",
            ),
            (
                "[throttle]\nwork_hours_kbps = 100",
                "throttle.work_hours_kbps",
            ),
            (
                "[throttle]\nwork_start_hour = 18\nwork_end_hour = 9",
                "throttle.work_end_hour",
            ),
        ] {
            match Policy::from_toml(text, Profile::Standard) {
                Err(PolicyError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            Policy::from_toml("typo_field = 1", Profile::Standard),
            Err(PolicyError::Syntax(_))
        ));
        assert!(matches!(
            Policy::from_toml("retention_hours = \"x\"", Profile::Standard),
            Err(PolicyError::Syntax(_))
        ));
    }
}
