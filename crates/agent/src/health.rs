//! Health checks, as Docker runs them: a command inside the container every interval;
//! `retries` failures in a row make the container unhealthy (failures during the start
//! period do not count until it has once been healthy). The task controller runs the
//! checks and fails an unhealthy task, so the orchestrator replaces it.

use crate::image::ImageHealthcheck;
use shoal_proto::objects::{HealthCheck, HealthState};
use std::time::{Duration, Instant};

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 3;
/// Output kept from the last check.
const MAX_OUTPUT: usize = 512;

#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub args: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

fn pick(ms: u64, image_ns: u64, default: Duration) -> Duration {
    match (ms, image_ns) {
        (0, 0) => default,
        (0, ns) => Duration::from_nanos(ns),
        (ms, _) => Duration::from_millis(ms),
    }
}

/// The check in force for a task: the service's, else the image's HEALTHCHECK; none for
/// `NONE` or when neither has one.
pub fn effective(spec: Option<&HealthCheck>, image: Option<&ImageHealthcheck>) -> Option<Check> {
    let spec = spec.cloned().unwrap_or_default();
    let image = image.cloned().unwrap_or_default();
    let test = if spec.test.is_empty() {
        image.test.clone()
    } else {
        spec.test.clone()
    };
    let args: Vec<String> = match test.first().map(String::as_str) {
        None | Some("NONE") => return None,
        Some("CMD") => test[1..].to_vec(),
        Some("CMD-SHELL") => {
            vec!["/bin/sh".into(), "-c".into(), test[1..].join(" ")]
        }
        Some(_) => test,
    };
    if args.is_empty() {
        return None;
    }
    Some(Check {
        args,
        interval: pick(spec.interval_ms, image.interval, DEFAULT_INTERVAL),
        timeout: pick(spec.timeout_ms, image.timeout, DEFAULT_TIMEOUT),
        retries: match (spec.retries, image.retries) {
            (0, 0) => DEFAULT_RETRIES,
            (0, r) => r,
            (r, _) => r,
        },
        start_period: pick(spec.start_period_ms, image.start_period, Duration::ZERO),
    })
}

/// A running container's health.
pub struct Tracker {
    pub check: Check,
    started: Instant,
    streak: u32,
    pub state: HealthState,
    pub output: String,
}

impl Tracker {
    pub fn new(check: Check) -> Tracker {
        Tracker {
            check,
            started: Instant::now(),
            streak: 0,
            state: HealthState::Starting,
            output: String::new(),
        }
    }

    /// Records one check's result (exit code and output, or why it could not run);
    /// returns whether the health changed.
    pub fn record(&mut self, result: Result<(i32, String), String>) -> bool {
        let (ok, output) = match result {
            Ok((0, out)) => (true, out),
            Ok((code, out)) => (false, format!("exit code {code}: {out}")),
            Err(e) => (false, e),
        };
        let mut output = output.trim().to_string();
        shoal_proto::limits::truncate(&mut output, MAX_OUTPUT);
        self.output = output;
        let before = self.state;
        if ok {
            self.streak = 0;
            self.state = HealthState::Healthy;
        } else {
            let starting =
                before == HealthState::Starting && self.started.elapsed() < self.check.start_period;
            if !starting {
                self.streak += 1;
                if self.streak >= self.check.retries {
                    self.state = HealthState::Unhealthy;
                }
            }
        }
        self.state != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_check_wins_over_the_image_and_none_turns_it_off() {
        let image = ImageHealthcheck {
            test: vec!["CMD-SHELL".into(), "curl -f localhost".into()],
            interval: 2_000_000_000,
            retries: 5,
            ..Default::default()
        };
        let c = effective(None, Some(&image)).unwrap();
        assert_eq!(c.args, ["/bin/sh", "-c", "curl -f localhost"]);
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.retries, 5);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);

        let spec = HealthCheck {
            test: vec!["CMD".into(), "true".into()],
            interval_ms: 1000,
            ..Default::default()
        };
        let c = effective(Some(&spec), Some(&image)).unwrap();
        assert_eq!(c.args, ["true"]);
        assert_eq!(c.interval, Duration::from_secs(1));

        let none = HealthCheck {
            test: vec!["NONE".into()],
            ..Default::default()
        };
        assert_eq!(effective(Some(&none), Some(&image)), None);
        assert_eq!(effective(None, None), None);
    }

    #[test]
    fn retries_failures_in_a_row_make_it_unhealthy() {
        let mut t = Tracker::new(Check {
            args: vec!["x".into()],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries: 2,
            start_period: Duration::ZERO,
        });
        assert!(t.record(Ok((0, "fine".into()))));
        assert_eq!(t.state, HealthState::Healthy);
        assert!(
            !t.record(Ok((1, "bad".into()))),
            "one failure is not enough"
        );
        assert!(t.record(Err("timed out".into())));
        assert_eq!(t.state, HealthState::Unhealthy);
        assert_eq!(t.output, "timed out");
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let mut t = Tracker::new(Check {
            args: vec!["x".into()],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries: 1,
            start_period: Duration::from_secs(3600),
        });
        assert!(!t.record(Ok((1, String::new()))));
        assert_eq!(t.state, HealthState::Starting);
    }
}
