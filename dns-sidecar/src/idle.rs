//! The idle stop's decision: when nobody has been logged in to the bastion
//! for `--idle-stop`, scale the service to zero; when someone logs in while
//! that stop is in flight, scale it back. Pure: the loop in `scale` feeds it
//! bastion-sshd's activity reports and the clock, and makes the ECS calls.
//!
//! The stop is in flight from the `UpdateService` (desired count 0) until
//! ECS sends SIGTERM, which may take a while. In that window:
//! - a login on this task (bastion-sshd's login count grows) scales the
//!   service back to 1: the session then lives, or, if ECS has already
//!   picked this task to stop, gets the drain and finds a new task on its
//!   next connection;
//! - a desired count raised again by someone else (`bastion proxy` waking
//!   the service) cancels the stop, and the idle clock starts again: the
//!   user it woke the service for is about to log in.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// bastion-sshd's activity report (bastion-sshd `usage::Report`), the fields read here.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Activity {
    /// Logged-in connections open now.
    pub sessions: usize,
    /// Logins since bastion-sshd started.
    pub logins: u64,
    /// Seconds since the last logged-in connection closed (or the start); null while one is open.
    pub idle_seconds: Option<f64>,
    /// bastion-sshd is draining (SIGTERM).
    #[serde(default)]
    pub draining: bool,
}

impl Activity {
    fn idle(&self) -> Option<Duration> {
        self.idle_seconds.filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64)
    }
}

/// What to do after a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing now.
    Wait,
    /// Idle for long enough: scale the service to 0.
    Stop { idle: Duration },
    /// Someone logged in while the stop was in flight: scale it back to 1.
    Restore,
}

/// Whether the service may be scaled to 0 by the idle stop: only a one-task
/// service at rest. With several tasks (a deploy rolling, a service scaled
/// out), 0 would stop the others too, and their users with them.
pub fn may_stop(desired_count: u32, running_count: u32) -> bool {
    desired_count == 1 && running_count <= 1
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Watching,
    /// We set the desired count to 0; `logins` is bastion-sshd's count then.
    Stopping {
        logins: u64,
    },
}

#[derive(Debug)]
pub struct IdleStop {
    after: Duration,
    phase: Phase,
    /// When the service was last woken or restored: the idle clock counts from
    /// here too, so the user who woke it has a full period to log in.
    woken_at: Option<Instant>,
}

impl IdleStop {
    pub fn new(after: Duration) -> Self {
        Self { after, phase: Phase::Watching, woken_at: None }
    }

    pub fn stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. })
    }

    /// Judges one activity report.
    pub fn observe(&self, now: Instant, activity: &Activity) -> Decision {
        match self.phase {
            Phase::Watching => {
                if activity.sessions > 0 || activity.draining {
                    return Decision::Wait;
                }
                let Some(idle) = activity.idle() else { return Decision::Wait };
                let quiet = match self.woken_at {
                    Some(at) => idle.min(now.saturating_duration_since(at)),
                    None => idle,
                };
                if quiet >= self.after { Decision::Stop { idle: quiet } } else { Decision::Wait }
            }
            Phase::Stopping { logins } => {
                if activity.sessions > 0 || activity.logins > logins {
                    Decision::Restore
                } else {
                    Decision::Wait
                }
            }
        }
    }

    /// The service is now at 0; `logins` is the count in the report that decided it.
    pub fn stopped(&mut self, logins: u64) {
        self.phase = Phase::Stopping { logins };
    }

    /// The service is back at 1 (we restored it, or someone else raised the
    /// count while our stop was in flight): watch again, from now.
    pub fn woken(&mut self, now: Instant) {
        self.phase = Phase::Watching;
        self.woken_at = Some(now);
    }

    /// At SIGTERM: true if a stop of ours is in flight and the latest report
    /// (read now, or the last one read: bastion-sshd, which got the same
    /// SIGTERM, may be gone) shows a login since: the service must be scaled
    /// back to 1, so that user finds a task again.
    pub fn restore_at_exit(&self, latest: Option<&Activity>) -> bool {
        match (&self.phase, latest) {
            (Phase::Stopping { .. }, Some(a)) => self.observe(Instant::now(), a) == Decision::Restore,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(sessions: usize, logins: u64, idle: Option<f64>) -> Activity {
        Activity { sessions, logins, idle_seconds: idle, draining: false }
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn stops_only_after_the_idle_period_with_nobody_logged_in() {
        let stop = IdleStop::new(30 * MIN);
        let now = Instant::now();
        assert_eq!(stop.observe(now, &report(0, 0, Some(29.0 * 60.0))), Decision::Wait);
        assert_eq!(stop.observe(now, &report(0, 0, Some(1800.0))), Decision::Stop { idle: 30 * MIN });
        // An open session, whatever the clock says.
        assert_eq!(stop.observe(now, &report(1, 5, None)), Decision::Wait);
        // bastion-sshd already draining: ECS is stopping the task anyway.
        let draining = Activity { draining: true, ..report(0, 0, Some(7200.0)) };
        assert_eq!(stop.observe(now, &draining), Decision::Wait);
        // Garbage in the report is no reason to stop.
        assert_eq!(stop.observe(now, &report(0, 0, Some(f64::NAN))), Decision::Wait);
        assert_eq!(stop.observe(now, &report(0, 0, Some(-1.0))), Decision::Wait);
    }

    #[test]
    fn a_login_while_the_stop_is_in_flight_scales_the_service_back() {
        let mut stop = IdleStop::new(30 * MIN);
        let now = Instant::now();
        stop.stopped(3);
        assert!(stop.stopping());
        assert_eq!(stop.observe(now, &report(0, 3, Some(1900.0))), Decision::Wait);
        // Someone logged in, and may even have left again.
        assert_eq!(stop.observe(now, &report(0, 4, Some(1.0))), Decision::Restore);
        assert_eq!(stop.observe(now, &report(1, 4, None)), Decision::Restore);
    }

    #[test]
    fn after_a_wake_the_idle_clock_starts_again() {
        let mut stop = IdleStop::new(30 * MIN);
        let start = Instant::now();
        stop.stopped(0);
        // `bastion proxy` raised the count again while our stop was in flight.
        stop.woken(start);
        assert!(!stop.stopping());
        // bastion-sshd's clock says two hours idle; the wake was a minute ago.
        assert_eq!(stop.observe(start + MIN, &report(0, 0, Some(7200.0))), Decision::Wait);
        assert_eq!(
            stop.observe(start + 30 * MIN, &report(0, 0, Some(7200.0 + 1740.0))),
            Decision::Stop { idle: 30 * MIN }
        );
        // A login after the wake: bastion-sshd's own clock is the shorter one.
        assert_eq!(stop.observe(start + 40 * MIN, &report(0, 1, Some(60.0))), Decision::Wait);
    }

    #[test]
    fn at_sigterm_a_stop_in_flight_with_a_new_login_is_undone() {
        let mut stop = IdleStop::new(MIN);
        assert!(!stop.restore_at_exit(None), "not our stop: nothing to undo");
        stop.stopped(2);
        assert!(!stop.restore_at_exit(Some(&report(0, 2, Some(90.0)))));
        assert!(stop.restore_at_exit(Some(&report(1, 3, None))));
        assert!(!stop.restore_at_exit(None));
    }

    #[test]
    fn only_a_one_task_service_at_rest_is_stopped() {
        assert!(may_stop(1, 1));
        assert!(may_stop(1, 0));
        assert!(!may_stop(2, 2), "scaled out: the other task has its own users");
        assert!(!may_stop(1, 2), "a deploy rolling: old and new task");
        assert!(!may_stop(0, 1), "already at 0");
    }

    #[test]
    fn the_report_of_bastion_sshd_parses() {
        let line = r#"{"sessions":0,"connections":2,"tunnels":0,"logins":7,"idle_seconds":12.5,"draining":false}"#;
        let a: Activity = serde_json::from_str(line).unwrap();
        assert_eq!(a, report(0, 7, Some(12.5)));
        let busy: Activity = serde_json::from_str(r#"{"sessions":1,"logins":1,"idle_seconds":null}"#).unwrap();
        assert_eq!(busy.idle(), None);
    }
}
