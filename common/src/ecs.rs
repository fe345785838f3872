//! The ECS calls the project makes (`DescribeServices`, `UpdateService`,
//! `ListTasks`, `DescribeTasks`), as signed JSON requests (`awsJson1_1`, the
//! protocol of ECS's API) through [`SignedClient`], without aws-sdk-ecs. The
//! sidecar's idle stop and `bastion proxy` use them; the answers are parsed
//! into the few fields they read.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::signed::SignedClient;

/// The `X-Amz-Target` prefix of ECS's API.
const TARGET: &str = "AmazonEC2ContainerServiceV20141113";
/// Attempts for throttling and server errors.
const ATTEMPTS: u32 = 4;
/// One request's deadline.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An error answer from an AWS API, or a request that got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    /// The IAM action: `ecs:UpdateService`.
    pub action: String,
    /// The error code (`AccessDeniedException`, `ClusterNotFoundException`), or
    /// `HTTP 503` when the body names none, or `no answer` for a transport error.
    pub code: String,
    pub message: String,
}

impl AwsError {
    /// Access denied by IAM (HTTP 403 or an `AccessDenied…` / `UnauthorizedOperation` code).
    pub fn access_denied(&self) -> bool {
        self.code.starts_with("AccessDenied") || self.code == "UnauthorizedOperation" || self.code == "HTTP 403"
    }

    fn transient(&self, status: u16) -> bool {
        status >= 500
            || status == 429
            || matches!(self.code.as_str(), "ThrottlingException" | "Throttling" | "RequestLimitExceeded")
    }
}

impl std::fmt::Display for AwsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}: {}", self.action, self.code, self.message)
    }
}

/// An ECS service, as far as the idle stop and the proxy read it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub service_name: String,
    #[serde(default)]
    pub service_arn: String,
    /// `ACTIVE`, `DRAINING` or `INACTIVE` (deleted).
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub desired_count: u32,
    #[serde(default)]
    pub running_count: u32,
    #[serde(default)]
    pub pending_count: u32,
    /// The service's event log, newest first ("unable to place a task…").
    #[serde(default)]
    pub events: Vec<ServiceEvent>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ServiceEvent {
    #[serde(default)]
    pub message: String,
}

/// An ECS task.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub task_arn: String,
    /// `PROVISIONING`, `PENDING`, `ACTIVATING`, `RUNNING`, `DEACTIVATING`, `STOPPING`, …, `STOPPED`.
    #[serde(default)]
    pub last_status: String,
    /// `RUNNING`, or `STOPPED` once ECS has decided to stop it.
    #[serde(default)]
    pub desired_status: String,
    /// `service:NAME` for a service's tasks.
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub stopped_reason: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub last_status: String,
    /// `HEALTHY`, `UNHEALTHY` or `UNKNOWN` (no health check, or not run yet).
    #[serde(default)]
    pub health_status: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Attachment {
    /// `ElasticNetworkInterface` (DescribeTasks), `eni` (events).
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub details: Vec<Detail>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Detail {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

impl Task {
    /// The short task id: the ARN's last part.
    pub fn id(&self) -> &str {
        self.task_arn.rsplit('/').next().unwrap_or(&self.task_arn)
    }

    /// The container called `name`.
    pub fn container(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// A detail of the task's network interface attachment (`networkInterfaceId`, `privateIPv4Address`).
    pub fn interface_detail(&self, name: &str) -> Option<&str> {
        self.attachments
            .iter()
            .filter(|a| a.kind == "ElasticNetworkInterface" || a.kind == "eni")
            .flat_map(|a| a.details.iter())
            .find(|d| d.name == name && !d.value.is_empty())
            .map(|d| d.value.as_str())
    }
}

/// Calls ECS with one set of credentials, in one region.
#[derive(Debug, Clone)]
pub struct Ecs {
    client: SignedClient,
    /// `https://ecs.<region>.amazonaws.com`, or `AWS_ENDPOINT_URL_ECS` / `AWS_ENDPOINT_URL`.
    endpoint: String,
}

impl Ecs {
    pub fn new(client: SignedClient) -> Self {
        let endpoint = crate::signed::endpoint("ECS", "ecs", &client.region);
        Self { client, endpoint }
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The service, or None when ECS says it does not exist (`MISSING`) or it
    /// was deleted (`INACTIVE`).
    pub async fn describe_service(&self, cluster: &str, service: &str) -> Result<Option<Service>, AwsError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            services: Vec<Service>,
        }
        let body = json!({ "cluster": cluster, "services": [service] });
        let answer: Answer = self.call("DescribeServices", &body).await?;
        Ok(answer.services.into_iter().find(|s| s.status != "INACTIVE"))
    }

    /// Sets the service's desired count; the service as ECS then describes it.
    pub async fn set_desired_count(&self, cluster: &str, service: &str, count: u32) -> Result<Service, AwsError> {
        #[derive(Deserialize)]
        struct Answer {
            service: Service,
        }
        let body = json!({ "cluster": cluster, "service": service, "desiredCount": count });
        let answer: Answer = self.call("UpdateService", &body).await?;
        Ok(answer.service)
    }

    /// The service's tasks that ECS means to keep running (`desiredStatus`
    /// RUNNING: not those it is stopping), described.
    pub async fn running_tasks(&self, cluster: &str, service: &str) -> Result<Vec<Task>, AwsError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Listed {
            #[serde(default)]
            task_arns: Vec<String>,
            next_token: Option<String>,
        }
        #[derive(Deserialize)]
        struct Described {
            #[serde(default)]
            tasks: Vec<Task>,
        }
        let mut arns = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut body = json!({ "cluster": cluster, "serviceName": service, "desiredStatus": "RUNNING" });
            if let Some(token) = &token {
                body["nextToken"] = json!(token);
            }
            let listed: Listed = self.call("ListTasks", &body).await?;
            arns.extend(listed.task_arns);
            match listed.next_token {
                Some(next) if !next.is_empty() && arns.len() < 1000 => token = Some(next),
                _ => break,
            }
        }
        let mut tasks = Vec::new();
        // DescribeTasks takes at most 100 tasks.
        for chunk in arns.chunks(100) {
            let described: Described =
                self.call("DescribeTasks", &json!({ "cluster": cluster, "tasks": chunk })).await?;
            tasks.extend(described.tasks);
        }
        // ListTasks filters on the service and the desired status; an emulator may not (moto
        // ignores serviceName), and the rule is checked here too.
        let group = format!("service:{service}");
        tasks.retain(|t| t.group == group && t.desired_status == "RUNNING");
        Ok(tasks)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        action: &str,
        body: &serde_json::Value,
    ) -> Result<T, AwsError> {
        let what = format!("ecs:{action}");
        let target = format!("{TARGET}.{action}");
        let headers = [("content-type", "application/x-amz-json-1.1"), ("x-amz-target", target.as_str())];
        let url = format!("{}/", self.endpoint.trim_end_matches('/'));
        let body = body.to_string();
        let mut delay = Duration::from_millis(300);
        for attempt in 1..=ATTEMPTS {
            let answer = self.client.post(&what, "ecs", &url, &headers, &body, TIMEOUT).await;
            let (status, text) = match answer {
                Ok(answer) => (answer.status.as_u16(), answer.body),
                Err(e) => {
                    let error = AwsError { action: what.clone(), code: "no answer".into(), message: e };
                    if attempt == ATTEMPTS {
                        return Err(error);
                    }
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    continue;
                }
            };
            if (200..300).contains(&status) {
                return serde_json::from_str(&text).map_err(|e| AwsError {
                    action: what.clone(),
                    code: "unexpected answer".into(),
                    message: format!("{e}: {}", text.chars().take(300).collect::<String>()),
                });
            }
            let error = parse_error(&what, status, &text);
            if !error.transient(status) || attempt == ATTEMPTS {
                return Err(error);
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        unreachable!("the loop returns on the last attempt")
    }
}

/// An error answer: JSON `{"__type": "…#Code", "message": "…"}` from ECS, or
/// whatever else came back (an emulator's XML, a proxy's HTML) by its status.
pub fn parse_error(action: &str, status: u16, body: &str) -> AwsError {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let kind = json["__type"].as_str().unwrap_or_default();
    let (code, message) = if kind.is_empty() {
        (
            xml_element(body, "Code").unwrap_or_else(|| format!("HTTP {status}")),
            xml_element(body, "Message").unwrap_or_else(|| body.chars().take(300).collect()),
        )
    } else {
        // `com.amazonaws.ecs#AccessDeniedException`, or with a `:` suffix from some services.
        let code = kind.rsplit('#').next().unwrap_or(kind);
        let code = code.split(':').next().unwrap_or(code);
        let message = json["message"].as_str().or(json["Message"].as_str()).unwrap_or_default();
        (code.to_string(), message.to_string())
    };
    AwsError { action: action.to_string(), code, message }
}

/// The text of the first `<name>` in an XML error body.
fn xml_element(body: &str, name: &str) -> Option<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&close)? + start;
    Some(body[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_code_and_message() {
        let denied = r#"{"__type":"AccessDeniedException","message":"User: arn:aws:iam::111122223333:user/alice is not authorized to perform: ecs:UpdateService on resource: arn:aws:ecs:eu-west-1:111122223333:service/bastion/bastion because no identity-based policy allows the ecs:UpdateService action"}"#;
        let e = parse_error("ecs:UpdateService", 400, denied);
        assert!(e.access_denied(), "{e}");
        assert!(e.to_string().starts_with("ecs:UpdateService failed: AccessDeniedException: User: arn:aws:iam"), "{e}");
        let e = parse_error(
            "ecs:DescribeServices",
            400,
            r#"{"__type":"com.amazonaws.ecs#ClusterNotFoundException","Message":"Cluster not found."}"#,
        );
        assert_eq!((e.code.as_str(), e.message.as_str()), ("ClusterNotFoundException", "Cluster not found."));
        // moto sends both spellings.
        let e = parse_error(
            "ecs:DescribeServices",
            400,
            r#"{"__type":"ClusterNotFoundException","message":"Cluster not found.","Message":"Cluster not found."}"#,
        );
        assert_eq!((e.code.as_str(), e.message.as_str()), ("ClusterNotFoundException", "Cluster not found."));
        let e = parse_error(
            "ecs:ListTasks",
            403,
            "<ErrorResponse><Error><Code>AccessDenied</Code><Message>no</Message></Error></ErrorResponse>",
        );
        assert!(e.access_denied() && e.code == "AccessDenied" && e.message == "no", "{e:?}");
        assert!(parse_error("ecs:ListTasks", 403, "<html>forbidden</html>").access_denied());
        assert!(parse_error("ecs:ListTasks", 503, "busy").transient(503));
    }

    #[test]
    fn a_task_answer_is_read() {
        let answer = r#"{"tasks":[{"taskArn":"arn:aws:ecs:eu-west-1:111122223333:task/bastion/3f2a9c","lastStatus":"RUNNING",
          "desiredStatus":"RUNNING","group":"service:bastion","healthStatus":"HEALTHY",
          "containers":[{"name":"bastion-sshd","lastStatus":"RUNNING","healthStatus":"HEALTHY"},{"name":"dns-sidecar","lastStatus":"RUNNING"}],
          "attachments":[{"id":"a","type":"ElasticNetworkInterface","status":"ATTACHED","details":[
            {"name":"subnetId","value":"subnet-1"},{"name":"networkInterfaceId","value":"eni-0abc"},
            {"name":"privateIPv4Address","value":"10.0.1.5"}]}]}],"failures":[]}"#;
        #[derive(Deserialize)]
        struct Described {
            tasks: Vec<Task>,
        }
        let task = serde_json::from_str::<Described>(answer).unwrap().tasks.remove(0);
        assert_eq!(task.id(), "3f2a9c");
        assert_eq!(task.container("bastion-sshd").unwrap().health_status, "HEALTHY");
        assert_eq!(task.container("dns-sidecar").unwrap().health_status, "");
        assert_eq!(task.interface_detail("networkInterfaceId"), Some("eni-0abc"));
        assert_eq!(task.interface_detail("privateIPv4Address"), Some("10.0.1.5"));
        assert_eq!(task.interface_detail("macAddress"), None);
    }
}
