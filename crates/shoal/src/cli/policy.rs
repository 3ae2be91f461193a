//! CLI: how a service changes and recovers: update and rollback settings, the restart
//! policy, health checks, and jobs' concurrency (flags shared by `service create` and
//! `service update`, and how `service inspect` shows them).

use clap::Args;
use serde_json::{json, Value};
use shoal_manager::orchestrator::{restart, update};
use shoal_proto::objects::{
    FailureAction, HealthCheck, RestartCondition, RestartPolicy, ServiceSpec, UpdateConfig,
    UpdateOrder, UpdateState, UpdateStatus,
};
use std::time::Duration;

fn dur(s: &str) -> Result<Duration, String> {
    crate::parse_duration_pub(s)
}

fn failure_action(s: &str) -> Result<i32, String> {
    match s {
        "pause" => Ok(FailureAction::Pause as i32),
        "continue" => Ok(FailureAction::Continue as i32),
        "rollback" => Ok(FailureAction::Rollback as i32),
        _ => Err(format!("{s:?}: use pause, continue or rollback")),
    }
}

fn order(s: &str) -> Result<i32, String> {
    match s {
        "stop-first" => Ok(UpdateOrder::StopFirst as i32),
        "start-first" => Ok(UpdateOrder::StartFirst as i32),
        _ => Err(format!("{s:?}: use stop-first or start-first")),
    }
}

fn ratio(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: give a fraction from 0 to 1")),
    }
}

fn condition(s: &str) -> Result<i32, String> {
    match s {
        "none" => Ok(RestartCondition::None as i32),
        "on-failure" => Ok(RestartCondition::OnFailure as i32),
        "any" => Ok(RestartCondition::Any as i32),
        _ => Err(format!("{s:?}: use none, on-failure or any")),
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Update (or rollback) settings; `None` leaves a setting as it is.
#[derive(Args, Clone, Default)]
pub struct UpdateFlags {
    /// Tasks replaced at once (0: all).
    #[arg(long)]
    update_parallelism: Option<u64>,
    /// Wait between replacing tasks.
    #[arg(long, value_parser = dur)]
    update_delay: Option<Duration>,
    /// pause, continue or rollback.
    #[arg(long, value_parser = failure_action)]
    update_failure_action: Option<i32>,
    /// How long a new task must run (and be healthy) to count as updated.
    #[arg(long, value_parser = dur)]
    update_monitor: Option<Duration>,
    /// Failures tolerated during an update, as a fraction of the tasks.
    #[arg(long, value_parser = ratio)]
    update_max_failure_ratio: Option<f32>,
    /// stop-first or start-first.
    #[arg(long, value_parser = order)]
    update_order: Option<i32>,
    #[arg(long)]
    rollback_parallelism: Option<u64>,
    #[arg(long, value_parser = dur)]
    rollback_delay: Option<Duration>,
    /// pause or continue.
    #[arg(long, value_parser = failure_action)]
    rollback_failure_action: Option<i32>,
    #[arg(long, value_parser = dur)]
    rollback_monitor: Option<Duration>,
    #[arg(long, value_parser = ratio)]
    rollback_max_failure_ratio: Option<f32>,
    #[arg(long, value_parser = order)]
    rollback_order: Option<i32>,
    /// none, on-failure or any.
    #[arg(long, value_parser = condition)]
    restart_condition: Option<i32>,
    #[arg(long, value_parser = dur)]
    restart_delay: Option<Duration>,
    /// Restarts before giving up (0: unlimited).
    #[arg(long)]
    restart_max_attempts: Option<u64>,
    /// The window restarts are counted in.
    #[arg(long, value_parser = dur)]
    restart_window: Option<Duration>,
    /// Command run inside the container to check its health (by /bin/sh -c).
    #[arg(long)]
    health_cmd: Option<String>,
    #[arg(long, value_parser = dur)]
    health_interval: Option<Duration>,
    #[arg(long, value_parser = dur)]
    health_timeout: Option<Duration>,
    /// Failures in a row that make the task unhealthy.
    #[arg(long)]
    health_retries: Option<u32>,
    /// Failures during this time after the start do not count.
    #[arg(long, value_parser = dur)]
    health_start_period: Option<Duration>,
    /// No health check, even if the image has one.
    #[arg(long, conflicts_with = "health_cmd")]
    no_healthcheck: bool,
    /// Replicated jobs: tasks run at once (default: all).
    #[arg(long)]
    max_concurrent: Option<u64>,
}

fn apply_update(
    c: &mut Option<UpdateConfig>,
    f: [Option<u64>; 4],
    r: Option<f32>,
    a: [Option<i32>; 2],
) {
    let [parallelism, delay, monitor, _] = f;
    let [action, order] = a;
    if parallelism.is_none()
        && delay.is_none()
        && monitor.is_none()
        && r.is_none()
        && action.is_none()
        && order.is_none()
    {
        return;
    }
    let c = c.get_or_insert_with(UpdateConfig::default);
    if let Some(v) = parallelism {
        c.parallelism = Some(v);
    }
    if let Some(v) = delay {
        c.delay_ms = v;
    }
    if let Some(v) = monitor {
        c.monitor_ms = Some(v);
    }
    if let Some(v) = r {
        c.max_failure_ratio = v;
    }
    if let Some(v) = action {
        c.failure_action = v;
    }
    if let Some(v) = order {
        c.order = v;
    }
}

impl UpdateFlags {
    pub fn apply(&self, spec: &mut ServiceSpec) {
        apply_update(
            &mut spec.update,
            [
                self.update_parallelism,
                self.update_delay.map(ms),
                self.update_monitor.map(ms),
                None,
            ],
            self.update_max_failure_ratio,
            [self.update_failure_action, self.update_order],
        );
        apply_update(
            &mut spec.rollback,
            [
                self.rollback_parallelism,
                self.rollback_delay.map(ms),
                self.rollback_monitor.map(ms),
                None,
            ],
            self.rollback_max_failure_ratio,
            [self.rollback_failure_action, self.rollback_order],
        );
        if self.restart_condition.is_some()
            || self.restart_delay.is_some()
            || self.restart_max_attempts.is_some()
            || self.restart_window.is_some()
        {
            let r = spec.restart.get_or_insert_with(RestartPolicy::default);
            if let Some(v) = self.restart_condition {
                r.condition = v;
            }
            if let Some(v) = self.restart_delay {
                r.delay_ms = Some(ms(v));
            }
            if let Some(v) = self.restart_max_attempts {
                r.max_attempts = v;
            }
            if let Some(v) = self.restart_window {
                r.window_ms = ms(v);
            }
        }
        let c = spec.container.get_or_insert_with(Default::default);
        if self.no_healthcheck {
            c.healthcheck = Some(HealthCheck {
                test: vec!["NONE".into()],
                ..Default::default()
            });
        } else if self.health_cmd.is_some()
            || self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some()
        {
            let h = c.healthcheck.get_or_insert_with(HealthCheck::default);
            if h.test.first().map(String::as_str) == Some("NONE") {
                h.test.clear();
            }
            if let Some(cmd) = &self.health_cmd {
                h.test = vec!["CMD-SHELL".into(), cmd.clone()];
            }
            if let Some(v) = self.health_interval {
                h.interval_ms = ms(v);
            }
            if let Some(v) = self.health_timeout {
                h.timeout_ms = ms(v);
            }
            if let Some(v) = self.health_retries {
                h.retries = v;
            }
            if let Some(v) = self.health_start_period {
                h.start_period_ms = ms(v);
            }
        }
        if let Some(m) = self.max_concurrent {
            spec.max_concurrent = m;
        }
    }
}

/// A duration as Go's time.Duration prints it, roughly: 5s, 1m30s, 500ms.
pub fn fmt_ms(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    humantime::format_duration(Duration::from_millis(ms as u64))
        .to_string()
        .replace(' ', "")
}

fn action_name(a: FailureAction) -> &'static str {
    match a {
        FailureAction::Pause => "pause",
        FailureAction::Continue => "continue",
        FailureAction::Rollback => "rollback",
    }
}

fn order_name(o: UpdateOrder) -> &'static str {
    match o {
        UpdateOrder::StopFirst => "stop-first",
        UpdateOrder::StartFirst => "start-first",
    }
}

pub fn condition_name(spec: &ServiceSpec) -> &'static str {
    match RestartCondition::try_from(restart::policy(spec).condition) {
        Ok(RestartCondition::None) => "none",
        Ok(RestartCondition::OnFailure) => "on-failure",
        _ => "any",
    }
}

pub fn state_name(s: UpdateState) -> &'static str {
    match s {
        UpdateState::None => "",
        UpdateState::Updating => "updating",
        UpdateState::Paused => "paused",
        UpdateState::Completed => "completed",
        UpdateState::RollbackStarted => "rollback_started",
        UpdateState::RollbackPaused => "rollback_paused",
        UpdateState::RollbackCompleted => "rollback_completed",
    }
}

fn update_json(c: Option<&UpdateConfig>) -> Value {
    let s = update::Settings::of(c);
    json!({
        "Parallelism": s.parallelism, "Delay": s.delay_ms * 1_000_000,
        "FailureAction": action_name(s.failure_action), "Monitor": s.monitor_ms * 1_000_000,
        "MaxFailureRatio": s.max_failure_ratio, "Order": order_name(s.order),
    })
}

/// The parts of `service inspect` this module owns: (UpdateConfig, RollbackConfig,
/// RestartPolicy, Healthcheck), and UpdateStatus if the service has one.
pub fn inspect_json(spec: &ServiceSpec, status: Option<&UpdateStatus>) -> [Value; 5] {
    let r = restart::policy(spec);
    let h = spec.container.as_ref().and_then(|c| c.healthcheck.clone());
    let status = status.filter(|s| s.state != 0).map(|s| {
        json!({
            "State": state_name(UpdateState::try_from(s.state).unwrap_or(UpdateState::None)),
            "StartedAt": crate::cli::fmt_time(s.started_at_ms / 1000),
            "CompletedAt": if s.completed_at_ms > 0 { crate::cli::fmt_time(s.completed_at_ms / 1000) } else { String::new() },
            "Message": s.message,
        })
    });
    [
        update_json(spec.update.as_ref()),
        update_json(spec.rollback.as_ref()),
        json!({
            "Condition": condition_name(spec),
            "Delay": r.delay_ms.unwrap_or(restart::DEFAULT_DELAY_MS) * 1_000_000,
            "MaxAttempts": r.max_attempts, "Window": r.window_ms * 1_000_000,
        }),
        match h {
            Some(h) => json!({
                "Test": h.test, "Interval": h.interval_ms * 1_000_000,
                "Timeout": h.timeout_ms * 1_000_000, "Retries": h.retries,
                "StartPeriod": h.start_period_ms * 1_000_000,
            }),
            None => Value::Null,
        },
        status.unwrap_or(Value::Null),
    ]
}

fn print_update(title: &str, c: Option<&UpdateConfig>) {
    let s = update::Settings::of(c);
    println!("{title}:");
    println!(" Parallelism:\t{}", s.parallelism);
    if s.delay_ms > 0 {
        println!(" Delay:\t\t{}", fmt_ms(s.delay_ms));
    }
    println!(" On failure:\t{}", action_name(s.failure_action));
    println!(" Monitoring Period: {}", fmt_ms(s.monitor_ms));
    println!(" Max failure ratio: {}", s.max_failure_ratio);
    println!(" Update order:      {}", order_name(s.order));
}

/// The same for `inspect --pretty`.
pub fn print_pretty(spec: &ServiceSpec, status: Option<&UpdateStatus>) {
    if let Some(s) = status.filter(|s| s.state != 0) {
        println!("UpdateStatus:");
        println!(
            " State:\t\t{}",
            state_name(UpdateState::try_from(s.state).unwrap_or(UpdateState::None))
        );
        println!(
            " Started:\t{}",
            crate::cli::fmt_time(s.started_at_ms / 1000)
        );
        if s.completed_at_ms > 0 {
            println!(
                " Completed:\t{}",
                crate::cli::fmt_time(s.completed_at_ms / 1000)
            );
        }
        println!(" Message:\t{}", s.message);
    }
    let r = restart::policy(spec);
    println!("RestartPolicy:");
    println!(" Condition:\t{}", condition_name(spec));
    println!(
        " Delay:\t\t{}",
        fmt_ms(r.delay_ms.unwrap_or(restart::DEFAULT_DELAY_MS) as i64)
    );
    println!(" Max attempts:\t{}", r.max_attempts);
    if r.window_ms > 0 {
        println!(" Window:\t{}", fmt_ms(r.window_ms as i64));
    }
    print_update("UpdateConfig", spec.update.as_ref());
    print_update("RollbackConfig", spec.rollback.as_ref());
    if let Some(h) = spec.container.as_ref().and_then(|c| c.healthcheck.as_ref()) {
        println!("Healthcheck:");
        println!(" Test:\t\t{}", h.test.join(" "));
        for (what, v) in [
            ("Interval", h.interval_ms),
            ("Timeout", h.timeout_ms),
            ("Start period", h.start_period_ms),
        ] {
            if v > 0 {
                println!(" {what}:\t{}", fmt_ms(v as i64));
            }
        }
        if h.retries > 0 {
            println!(" Retries:\t{}", h.retries);
        }
    }
}
