//! Polling with a deadline: the node ready for pdsup's jobs, a job version
//! healthy, and on failure what the scheduler and the task's log say.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::error::bail;

use super::client::NomadApi;
use super::types::*;
use super::ApiResult;

/// How many log lines a failure message quotes.
const LOG_TAIL_LINES: usize = 20;
const POLL: Duration = Duration::from_secs(1);
/// How long an allocation may stay unplaced, with the scheduler reporting why,
/// before `wait_job_*` gives up (the node was ready, so it will not fix itself).
const PLACEMENT_GRACE: Duration = Duration::from_secs(20);

/// What a wait for a job version takes as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// The allocation and all its tasks running: for a first start, where
    /// the caller then asks the service itself (nothing older can answer in
    /// its place), rather than wait out Nomad's check interval and
    /// `min_healthy_time`.
    Running,
    /// Nomad's own verdict: the allocation healthy (its checks passed for
    /// `min_healthy_time`) or the version's deployment successful.
    Healthy,
}

impl NomadApi {
    /// One look at whether the local node can run pdsup's jobs.
    pub async fn node_readiness(&self, volumes: &[&str]) -> Readiness {
        let health = match self.agent_health().await {
            Ok(h) => h,
            Err(e) => {
                return Readiness::NotReady(format!("Nomad's HTTP API does not answer ({e})"))
            }
        };
        if let Some(problem) = health.problem() {
            return Readiness::NotReady(format!("the Nomad agent is not healthy ({problem})"));
        }
        let node = match self.local_node().await {
            Ok(Some(n)) => n,
            Ok(None) => {
                return Readiness::NotReady(
                    "the Nomad client has not registered its node yet".into(),
                )
            }
            Err(e) => return Readiness::NotReady(format!("the node list is not available ({e})")),
        };
        if !node.is_ready() {
            let why = if node.status_description.is_empty() {
                String::new()
            } else {
                format!(": {}", node.status_description)
            };
            return Readiness::NotReady(format!(
                "node {} is {}{why}, not ready",
                node.name, node.status
            ));
        }
        match node.drivers.get("docker") {
            None => {
                return Readiness::NotReady(format!(
                    "node {} has not detected the docker driver",
                    node.name
                ))
            }
            Some(d) if !d.detected => {
                return Readiness::NotReady(format!(
                    "node {} has not detected the docker driver ({})",
                    node.name, d.health_description
                ))
            }
            Some(d) if !d.healthy => {
                return Readiness::NotReady(format!(
                    "the docker driver on node {} is not healthy ({})",
                    node.name, d.health_description
                ))
            }
            Some(_) => {}
        }
        let missing: Vec<&str> = volumes
            .iter()
            .copied()
            .filter(|v| !node.host_volumes.contains_key(*v))
            .collect();
        if !missing.is_empty() {
            let have = node.host_volume_names();
            return Readiness::NotReady(format!(
                "node {} has not fingerprinted the host volume(s) {} (it has: {})",
                node.name,
                missing.join(", "),
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            ));
        }
        Readiness::Ready(node)
    }

    /// Waits until the agent is healthy, its node ready, the docker driver
    /// detected and healthy, and `volumes` fingerprinted as host volumes.
    pub async fn wait_node_ready(
        &self,
        volumes: &[&str],
        timeout: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> crate::error::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let reason = match self.node_readiness(volumes).await {
                Readiness::Ready(_) => return Ok(()),
                Readiness::NotReady(reason) => reason,
            };
            if reason != last {
                progress(&format!("waiting for Nomad: {reason}"));
                last = reason;
            }
            if Instant::now() >= deadline {
                bail!(
                    TimedOut,
                    "the Nomad node was not ready after {}s: {last}",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the job's current version is running and healthy.
    pub async fn wait_job_healthy(
        &self,
        job: &str,
        timeout: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> crate::error::Result<()> {
        let version = self.current_version(job).await?;
        self.wait_job_version(job, version, Until::Healthy, timeout, progress)
            .await
    }

    /// Waits until the job's current version runs: on its first start
    /// (version 0) until its allocation runs, after that until Nomad finds
    /// it healthy (an older allocation may still be answering meanwhile).
    pub async fn wait_job_started(
        &self,
        job: &str,
        timeout: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> crate::error::Result<()> {
        let version = self.current_version(job).await?;
        let until = match version {
            0 => Until::Running,
            _ => Until::Healthy,
        };
        self.wait_job_version(job, version, until, timeout, progress)
            .await
    }

    async fn current_version(&self, job: &str) -> crate::error::Result<u64> {
        let Some(spec) = self.job(job).await? else {
            bail!(Api, "job {job} is not registered with Nomad");
        };
        Ok(spec["Version"].as_u64().unwrap_or(0))
    }

    /// Waits until the newest allocation of `version` of `job` runs and is
    /// healthy (or that version's deployment succeeded). Fails early, quoting
    /// Nomad's event and the task's last log lines, when the allocation fails,
    /// a task hits a `Driver Failure` (an image that cannot be pulled), or
    /// the scheduler cannot place it.
    pub async fn wait_job_version_healthy(
        &self,
        job: &str,
        version: u64,
        timeout: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> crate::error::Result<()> {
        self.wait_job_version(job, version, Until::Healthy, timeout, progress)
            .await
    }

    /// As [`NomadApi::wait_job_version_healthy`], done at `until`.
    pub async fn wait_job_version(
        &self,
        job: &str,
        version: u64,
        until: Until,
        timeout: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> crate::error::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        let mut unplaced_since: Option<Instant> = None;
        loop {
            let status = match self.job_health_until(job, version, until).await {
                Ok(s) => s,
                Err(e) => JobHealth::Waiting(format!("Nomad's API does not answer ({e})")),
            };
            let text = match status {
                JobHealth::Healthy => return Ok(()),
                JobHealth::Failed(failure) => return Err(failure.into()),
                JobHealth::Unplaceable(why) => {
                    let since = *unplaced_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= PLACEMENT_GRACE {
                        bail!(Unhealthy, "Nomad cannot place job {job}: {why}");
                    }
                    format!("Nomad cannot place it yet: {why}")
                }
                JobHealth::Waiting(text) => {
                    unplaced_since = None;
                    text
                }
            };
            if text != last {
                progress(&format!("job {job}: {text}"));
                last = text;
            }
            if Instant::now() >= deadline {
                bail!(
                    TimedOut,
                    "job {job} (version {version}) was not healthy after {}s: {last}",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One look at a job version's health.
    pub async fn job_health(&self, job: &str, version: u64) -> ApiResult<JobHealth> {
        self.job_health_until(job, version, Until::Healthy).await
    }

    /// One look at a job version, [`JobHealth::Healthy`] once `until` holds.
    pub async fn job_health_until(
        &self,
        job: &str,
        version: u64,
        until: Until,
    ) -> ApiResult<JobHealth> {
        let allocs = self.allocations(job).await?;
        let newest = allocs
            .iter()
            .filter(|a| a.job_version == version)
            .max_by_key(|a| (a.desired_status == "run", a.create_index, a.create_time));
        let Some(alloc) = newest else {
            return self.unplaced(job, version, &allocs).await;
        };
        let images = self.task_images(job).await;
        // A failure the task has not since recovered from (no `Started` after it).
        let fatal = alloc.task_states.iter().find_map(|(task, state)| {
            let events = &state.events;
            let i = events.iter().rposition(|e| {
                matches!(
                    e.kind.as_str(),
                    "Driver Failure" | "Setup Failure" | "Failed Validation"
                )
            })?;
            let recovered = events[i + 1..].iter().any(|e| e.kind == "Started");
            (!recovered).then(|| {
                (
                    task.clone(),
                    events[i].clone(),
                    StartFailure::of(&events[..=i]),
                )
            })
        });
        if let Some((task, event, cause)) = fatal {
            let message = format!(
                "job {job}: allocation {} failed to start task {task}{}: {event}",
                alloc.short_id(),
                image_note(&images, &task)
            );
            let message = self.with_logs(message, alloc).await;
            return Ok(JobHealth::Failed(JobFailed { message, cause }));
        }
        match alloc.client_status.as_str() {
            "failed" | "lost" | "complete" => {
                let message = format!(
                    "job {job}: allocation {} is {}{}{}",
                    alloc.short_id(),
                    alloc.client_status,
                    describe(&alloc.client_description),
                    task_summary(alloc, &images)
                );
                return Ok(JobHealth::Failed(JobFailed::other(
                    self.with_logs(message, alloc).await,
                )));
            }
            _ => {}
        }
        let tasks_running = alloc.client_status == "running"
            && !alloc.task_states.is_empty()
            && alloc.task_states.values().all(|t| t.state == "running");
        if until == Until::Running && tasks_running {
            return Ok(JobHealth::Healthy);
        }
        match alloc.healthy() {
            Some(true) if alloc.client_status == "running" => return Ok(JobHealth::Healthy),
            Some(false) => {
                let message = format!(
                    "job {job}: allocation {} is unhealthy (its checks did not pass in time){}",
                    alloc.short_id(),
                    task_summary(alloc, &images)
                );
                return Ok(JobHealth::Failed(JobFailed::other(
                    self.with_logs(message, alloc).await,
                )));
            }
            _ => {}
        }
        let deployment = self.deployment(job).await?;
        match &deployment {
            Some(d) if d.job_version == version => match d.status.as_str() {
                "successful" if alloc.client_status == "running" => return Ok(JobHealth::Healthy),
                "failed" => {
                    let message = format!(
                        "job {job}: deployment {} failed{}{}",
                        d.id.get(..8).unwrap_or(&d.id),
                        describe(&d.status_description),
                        task_summary(alloc, &images)
                    );
                    return Ok(JobHealth::Failed(JobFailed::other(
                        self.with_logs(message, alloc).await,
                    )));
                }
                "cancelled" => {
                    return Ok(JobHealth::Failed(JobFailed::other(format!(
                        "job {job}: deployment of version {version} was cancelled{}",
                        describe(&d.status_description)
                    ))))
                }
                _ => {}
            },
            // A job without deployments (none ever created): running tasks are
            // all the health Nomad will report.
            None if tasks_running => return Ok(JobHealth::Healthy),
            _ => {}
        }
        let mut text = format!("allocation {} {}", alloc.short_id(), alloc.client_status);
        if alloc.client_status == "running" {
            text.push_str(", waiting for it to be healthy");
        }
        for (task, state) in &alloc.task_states {
            if let Some(e) = state.last_event() {
                text.push_str(&format!("; {task}: {e}"));
            }
        }
        Ok(JobHealth::Waiting(text))
    }

    /// No allocation of the version yet: ask the scheduler why.
    async fn unplaced(
        &self,
        job: &str,
        version: u64,
        allocs: &[AllocStub],
    ) -> ApiResult<JobHealth> {
        // The scheduler's answer for this version: the newest evaluation that
        // reports failed placements (the blocked evaluation it leaves behind may not).
        let modify_index = match self.job(job).await {
            Ok(Some(spec)) => spec["JobModifyIndex"].as_u64().unwrap_or(0),
            _ => 0,
        };
        let evals = self.evaluations(job).await.unwrap_or_default();
        let failed = evals
            .iter()
            .filter(|e| !e.failed_tg_allocs.is_empty() && e.job_modify_index >= modify_index)
            .max_by_key(|e| e.create_index);
        if let Some(eval) = failed {
            let why: Vec<String> = eval
                .failed_tg_allocs
                .iter()
                .map(|(tg, m)| format!("group {tg}: {m}"))
                .collect();
            return Ok(JobHealth::Unplaceable(why.join("; ")));
        }
        let older = if allocs.is_empty() {
            String::new()
        } else {
            format!(" ({} allocation(s) of older versions)", allocs.len())
        };
        Ok(JobHealth::Waiting(format!(
            "waiting for an allocation of version {version}{older}"
        )))
    }

    /// Task name → docker image, from the registered job.
    async fn task_images(&self, job: &str) -> BTreeMap<String, String> {
        let mut images = BTreeMap::new();
        if let Ok(Some(spec)) = self.job(job).await {
            for group in spec["TaskGroups"].as_array().into_iter().flatten() {
                for task in group["Tasks"].as_array().into_iter().flatten() {
                    if let (Some(name), Some(image)) =
                        (task["Name"].as_str(), task["Config"]["image"].as_str())
                    {
                        images.insert(name.to_string(), image.to_string());
                    }
                }
            }
        }
        images
    }

    /// Appends the tasks' last stderr lines (stdout when stderr is empty).
    async fn with_logs(&self, mut message: String, alloc: &AllocStub) -> String {
        for task in alloc.task_states.keys() {
            for stream in [LogStream::Stderr, LogStream::Stdout] {
                let Ok(text) = self.logs(&alloc.id, task, stream).await else {
                    continue;
                };
                let tail = last_lines(&text, LOG_TAIL_LINES);
                if !tail.is_empty() {
                    message.push_str(&format!(
                        "\nlast {} lines of task {task}:\n",
                        stream.as_str()
                    ));
                    for line in tail.lines() {
                        message.push_str("  ");
                        message.push_str(line);
                        message.push('\n');
                    }
                    break;
                }
            }
        }
        message.trim_end().to_string()
    }
}

/// The result of one readiness check of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready(Node),
    NotReady(String),
}

/// The result of one look at a job version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobHealth {
    Healthy,
    /// Will not get better by waiting.
    Failed(JobFailed),
    /// The scheduler reported why it cannot place the job.
    Unplaceable(String),
    Waiting(String),
}

/// A job version that will not become healthy by waiting, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobFailed {
    /// Nomad's event or status, with the task's last log lines.
    pub message: String,
    pub cause: StartFailure,
}

impl JobFailed {
    fn other(message: String) -> Self {
        JobFailed {
            message,
            cause: StartFailure::Other,
        }
    }
}

/// What stopped a task, as far as Nomad's events tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFailure {
    /// The driver could not pull the task's image.
    ImagePull,
    Other,
}

impl StartFailure {
    /// Classifies the last of `events` (a fatal one): a `Driver Failure` right
    /// after the driver's `Downloading image` event, or one the docker driver
    /// words as a failed pull, is an image that cannot be pulled.
    pub fn of(events: &[TaskEvent]) -> Self {
        let Some((failure, before)) = events.split_last() else {
            return StartFailure::Other;
        };
        let downloading = before
            .last()
            .is_some_and(|e| e.kind == "Driver" && e.text() == "Downloading image");
        if failure.kind == "Driver Failure"
            && (downloading || failure.text().starts_with("Failed to pull"))
        {
            StartFailure::ImagePull
        } else {
            StartFailure::Other
        }
    }
}

/// A job that did not come up: [`ErrorKind::Unhealthy`](crate::error::ErrorKind::Unhealthy).
impl From<JobFailed> for crate::error::Error {
    fn from(e: JobFailed) -> Self {
        crate::error::Error::from_source(crate::error::ErrorKind::Unhealthy, e)
    }
}

fn describe(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(" ({text})")
    }
}

fn image_note(images: &BTreeMap<String, String>, task: &str) -> String {
    images
        .get(task)
        .map(|i| format!(" (image {i})"))
        .unwrap_or_default()
}

/// "; task pds (image X) dead: Terminated: Exit Code: 1" for each task.
fn task_summary(alloc: &AllocStub, images: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (task, state) in &alloc.task_states {
        out.push_str(&format!(
            "; task {task}{} {}",
            image_note(images, task),
            state.state
        ));
        if state.restarts > 0 {
            out.push_str(&format!(" after {} restart(s)", state.restarts));
        }
        if let Some(e) = state.last_event() {
            out.push_str(&format!(": {e}"));
        }
    }
    out
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_last_lines() {
        let text = (1..=30)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let tail = last_lines(&text, 3);
        assert_eq!(tail, "line 28\nline 29\nline 30");
    }
}
