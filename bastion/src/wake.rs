//! What `bastion proxy` does next, from what ECS says about the service and
//! its tasks. Pure: `proxy` makes the calls and the connection.

use bastion_common::ecs::{Service, Task};

/// The next step.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A task to connect to: RUNNING, its bastion container HEALTHY, and one
    /// ECS means to keep (not one it is stopping).
    Ready(Task),
    /// The desired count is 0: raise it to 1. `stopping`: a task still runs,
    /// being stopped (an idle stop in flight).
    Start { stopping: bool },
    /// A task is on its way (or the service is starting one): what to tell the user.
    Wait(String),
}

/// Judges the service and the tasks ECS means to keep running (`Ecs::running_tasks`).
pub fn judge(service: &Service, tasks: &[Task], container: &str) -> Step {
    if service.desired_count == 0 {
        return Step::Start { stopping: !tasks.is_empty() };
    }
    if let Some(task) = tasks.iter().find(|t| ready(t, container)) {
        return Step::Ready(task.clone());
    }
    let Some(task) = tasks.iter().max_by_key(|t| progress(&t.last_status)) else {
        return Step::Wait(format!(
            "service {} is starting a task (desired {}, pending {}, running {})",
            service.service_name, service.desired_count, service.pending_count, service.running_count
        ));
    };
    let id = short(task.id());
    if task.last_status != "RUNNING" {
        return Step::Wait(format!("task {id} {}", task.last_status));
    }
    match task.container(container) {
        None => Step::Wait(format!(
            "task {id} RUNNING, but it has no container named {container} (--container names the bastion's)"
        )),
        Some(c) => {
            let health = if c.health_status.is_empty() { "UNKNOWN" } else { &c.health_status };
            Step::Wait(format!("task {id} RUNNING, {container} health {health}"))
        }
    }
}

fn ready(task: &Task, container: &str) -> bool {
    task.last_status == "RUNNING"
        && task.desired_status == "RUNNING"
        && task.container(container).is_some_and(|c| c.health_status == "HEALTHY")
}

/// How far along a task is, to report the furthest one.
fn progress(status: &str) -> u8 {
    match status {
        "PROVISIONING" => 1,
        "PENDING" => 2,
        "ACTIVATING" => 3,
        "RUNNING" => 4,
        _ => 0,
    }
}

/// `3f2a…` from a 32-character task id, as the console shows it.
pub fn short(id: &str) -> String {
    if id.len() > 8 { format!("{}…", &id[..4]) } else { id.to_string() }
}

/// The service's latest events, for a timeout's message ("unable to place a task because…").
pub fn last_events(service: &Service, n: usize) -> String {
    let events: Vec<&str> = service.events.iter().take(n).map(|e| e.message.as_str()).collect();
    if events.is_empty() { "none".to_string() } else { events.join("; ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastion_common::ecs::{Container, ServiceEvent};

    fn service(desired: u32) -> Service {
        Service {
            service_name: "bastion".into(),
            service_arn: String::new(),
            status: "ACTIVE".into(),
            desired_count: desired,
            running_count: 0,
            pending_count: desired,
            events: vec![],
        }
    }

    fn task(status: &str, desired: &str, health: &str) -> Task {
        Task {
            task_arn: "arn:aws:ecs:eu-west-1:111122223333:task/bastion/3f2a9c0d1e2f4a5b6c7d8e9f0a1b2c3d".into(),
            last_status: status.into(),
            desired_status: desired.into(),
            group: "service:bastion".into(),
            containers: vec![
                Container { name: "bastion-sshd".into(), last_status: status.into(), health_status: health.into() },
                Container { name: "dns-sidecar".into(), last_status: status.into(), health_status: "HEALTHY".into() },
            ],
            attachments: vec![],
            stopped_reason: String::new(),
        }
    }

    #[test]
    fn a_service_at_zero_is_started_even_with_a_task_being_stopped() {
        assert_eq!(judge(&service(0), &[], "bastion-sshd"), Step::Start { stopping: false });
        let stopping = task("RUNNING", "RUNNING", "HEALTHY");
        assert_eq!(judge(&service(0), &[stopping], "bastion-sshd"), Step::Start { stopping: true });
    }

    #[test]
    fn only_a_running_task_with_a_healthy_bastion_is_ready() {
        let ready = task("RUNNING", "RUNNING", "HEALTHY");
        assert_eq!(judge(&service(1), std::slice::from_ref(&ready), "bastion-sshd"), Step::Ready(ready.clone()));
        assert_eq!(
            judge(&service(1), &[task("PROVISIONING", "RUNNING", "UNKNOWN")], "bastion-sshd"),
            Step::Wait("task 3f2a… PROVISIONING".into())
        );
        assert_eq!(
            judge(&service(1), &[task("RUNNING", "RUNNING", "UNKNOWN")], "bastion-sshd"),
            Step::Wait("task 3f2a… RUNNING, bastion-sshd health UNKNOWN".into())
        );
        // A task ECS is stopping is never chosen.
        assert!(matches!(judge(&service(1), &[task("RUNNING", "STOPPED", "HEALTHY")], "bastion-sshd"), Step::Wait(_)));
        // The furthest task is the one reported; a ready one wins over any.
        let tasks = [task("PENDING", "RUNNING", ""), task("RUNNING", "RUNNING", "UNHEALTHY")];
        assert_eq!(
            judge(&service(1), &tasks, "bastion-sshd"),
            Step::Wait("task 3f2a… RUNNING, bastion-sshd health UNHEALTHY".into())
        );
        assert!(matches!(judge(&service(1), &[tasks[0].clone(), ready], "bastion-sshd"), Step::Ready(_)));
        let wrong = judge(&service(1), &[task("RUNNING", "RUNNING", "HEALTHY")], "sshd");
        assert!(matches!(&wrong, Step::Wait(line) if line.contains("no container named sshd")), "{wrong:?}");
    }

    #[test]
    fn no_task_yet_says_what_the_service_does() {
        assert_eq!(
            judge(&service(1), &[], "bastion-sshd"),
            Step::Wait("service bastion is starting a task (desired 1, pending 1, running 0)".into())
        );
    }

    #[test]
    fn events_for_a_timeout() {
        let mut s = service(1);
        assert_eq!(last_events(&s, 3), "none");
        s.events = ["a", "b", "c", "d"].iter().map(|m| ServiceEvent { message: m.to_string() }).collect();
        assert_eq!(last_events(&s, 3), "a; b; c");
        assert_eq!(short("3f2a9c0d1e2f4a5b"), "3f2a…");
    }
}
