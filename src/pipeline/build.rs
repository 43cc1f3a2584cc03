//! The build stage: pack the source, upload it (once per content digest),
//! run Cloud Build with `docker build --cache-from` the previous image, and
//! stream its log while it runs. Whole build attempts are retried when the
//! failure is on Google's side; a failing Dockerfile is not.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::cloud::{BuildInfo, BuildSpec, BuildStatus, BuildStep};
use super::error::{CloudError, StageError};
use super::event::{BuildFacts, EventKind, JournalError, Reporter, Stage};
use super::retry::{classify_cloud, retry, GaveUp, Retriability, RetryPolicy};
use super::{
    archive, build_tags, deployment_tag, naming, ArchiveRef, BuildRecord, Deployment, PendingBuild,
    Pipeline,
};
use crate::telemetry::metrics;

/// Log lines kept for the failure message.
const TAIL_LINES: usize = 200;
/// Consecutive failed polls tolerated before a build is given up as unknown.
const MAX_POLL_FAILURES: u32 = 10;

/// Why one build attempt did not produce an image.
#[derive(Debug)]
enum AttemptError {
    Api(CloudError),
    Build { info: BuildInfo, tail: Vec<String> },
    TimedOut { id: String, log_url: String },
    Journal(JournalError),
}

/// Build results: retriable when the failure is Google's, not the user's.
pub fn classify_build(info: &BuildInfo) -> Retriability {
    match info.status {
        BuildStatus::InternalError | BuildStatus::Timeout | BuildStatus::Expired => {
            Retriability::Retriable { after: None }
        }
        BuildStatus::Failure => match info.failure_type.as_deref() {
            Some("PUSH_FAILED") | Some("LOGGING_FAILURE") => {
                Retriability::Retriable { after: None }
            }
            _ => Retriability::Permanent,
        },
        _ => Retriability::Permanent,
    }
}

fn classify_attempt(e: &AttemptError) -> Retriability {
    match e {
        AttemptError::Api(e) => classify_cloud(e),
        AttemptError::Build { info, .. } => classify_build(info),
        AttemptError::TimedOut { .. } | AttemptError::Journal(_) => Retriability::Permanent,
    }
}

fn retry_reason(e: &AttemptError) -> &'static str {
    match e {
        AttemptError::Api(e) => e.code.name(),
        AttemptError::Build { info, .. } => match info.status {
            BuildStatus::InternalError => "BUILD_INTERNAL_ERROR",
            BuildStatus::Timeout => "BUILD_TIMEOUT",
            BuildStatus::Expired => "BUILD_EXPIRED",
            _ => "BUILD_PUSH_FAILED",
        },
        AttemptError::TimedOut { .. } => "DEADLINE",
        AttemptError::Journal(_) => "STORE",
    }
}

impl Pipeline {
    pub(crate) async fn stage_build(
        &self,
        d: &mut Deployment,
        dir: Option<&std::path::Path>,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<(), StageError> {
        let target = d.request.target.clone();
        let opts = d.request.build.clone();
        let archive_ref = match (d.archive.clone(), dir) {
            (Some(a), _) => {
                events
                    .build_progress(
                        Stage::Build,
                        format!(
                            "building from gs://{}/{}, uploaded before",
                            a.bucket, a.object
                        ),
                        BuildFacts {
                            archive_uri: Some(format!("gs://{}/{}", a.bucket, a.object)),
                            archive_sha256: Some(a.sha256.clone()),
                            ..BuildFacts::default()
                        },
                    )
                    .await;
                a
            }
            (None, Some(dir)) => {
                let a = self.upload_source(d, dir, events, cancel).await?;
                // A resumed run builds from it without the source.
                events.checkpoint(d).await.map_err(StageError::Journal)?;
                a
            }
            (None, None) => {
                return Err(StageError::Source {
                    location: "(none)".into(),
                    reason: "the source stage did not run".into(),
                })
            }
        };
        let bucket = naming::source_bucket(&target.project, &target.region);
        let image = naming::image(&target, &opts.repository);
        let tag = &archive_ref.sha256[..12];
        let spec = BuildSpec {
            source_bucket: bucket.clone(),
            source_object: archive_ref.object.clone(),
            source_generation: archive_ref.generation.clone(),
            steps: vec![
                BuildStep {
                    id: "pull-cache".into(),
                    name: "gcr.io/cloud-builders/docker".into(),
                    entrypoint: Some("bash".into()),
                    // The previous image speeds up the build; its absence is fine.
                    args: vec!["-c".into(), format!("docker pull {image}:latest || exit 0")],
                    timeout: Some(opts.step_timeout),
                    wait_for: vec!["-".into()],
                },
                BuildStep {
                    id: "build".into(),
                    name: "gcr.io/cloud-builders/docker".into(),
                    entrypoint: None,
                    args: vec![
                        "build".into(),
                        "--cache-from".into(),
                        format!("{image}:latest"),
                        "-t".into(),
                        format!("{image}:{tag}"),
                        "-t".into(),
                        format!("{image}:latest"),
                        ".".into(),
                    ],
                    timeout: Some(opts.step_timeout),
                    wait_for: vec!["pull-cache".into()],
                },
            ],
            images: vec![format!("{image}:{tag}"), format!("{image}:latest")],
            timeout: opts.timeout,
            machine_type: opts.machine_type.clone(),
            logs_bucket: format!("gs://{bucket}/{}", naming::LOGS_PREFIX),
            tags: vec!["deployd".into(), format!("svc-{}", target.service)],
            service_account: opts.service_account.clone(),
        };

        // A resumed run goes on with the attempt it was in: polling the
        // build it recorded, or finding by its tags one it had no time to.
        let resume = match (&d.pending_build, d.build_attempts) {
            (Some(p), _) => Some(Adopt::Recorded(p.clone())),
            (None, n) if n > 0 && d.build.is_none() => Some(Adopt::Tagged(n)),
            _ => None,
        };
        let first = match &resume {
            Some(Adopt::Recorded(p)) => p.attempt,
            Some(Adopt::Tagged(n)) => *n,
            None => 1,
        };
        let policy = RetryPolicy {
            max_attempts: opts.max_attempts.saturating_sub(first - 1).max(1),
            ..RetryPolicy::builds(self.config.retry_base_delay)
        };
        let base = d.clone();
        let last_attempt = AtomicU32::new(first);
        let started = std::time::Instant::now();
        let result = retry(
            &policy,
            cancel,
            |attempt| {
                let (spec, project, base) = (&spec, &target.project, &base);
                let n = first + attempt - 1;
                last_attempt.store(n, Ordering::Relaxed);
                let adopt = if attempt == 1 { resume.clone() } else { None };
                async move {
                    let max = opts.max_attempts.max(n);
                    events
                        .build_progress(
                            Stage::Build,
                            format!("build attempt {n} of {max}"),
                            BuildFacts {
                                attempt: Some(n),
                                max_attempts: Some(max),
                                ..BuildFacts::default()
                            },
                        )
                        .await;
                    let r = self
                        .build_once(
                            project,
                            spec,
                            (n, adopt, base),
                            opts.timeout,
                            events,
                            cancel,
                        )
                        .await;
                    metrics::build_attempt(match &r {
                        Ok(_) => "success",
                        // Stopped because the run was: not the build's error.
                        Err(_) if cancel.is_cancelled() => "cancelled",
                        Err(e) if classify_attempt(e).is_retriable() => "retriable_error",
                        Err(_) => "permanent_error",
                    });
                    r
                }
            },
            classify_attempt,
            |attempt, delay, e| {
                let reason = retry_reason(e);
                metrics::build_retry(reason);
                d.retries += 1;
                events.emit(
                    Some(Stage::Build),
                    EventKind::Retry {
                        operation: "build".into(),
                        attempt,
                        delay,
                        reason: attempt_summary(e),
                    },
                )
            },
        )
        .await;
        let elapsed = started.elapsed();
        d.build_attempts = last_attempt.load(Ordering::Relaxed);
        d.pending_build = None;
        match result {
            Ok((info, attempts)) => {
                metrics::build_finished("success", elapsed);
                let pushed = info
                    .images
                    .iter()
                    .find(|(name, _)| name.ends_with(&format!(":{tag}")))
                    .map(|(_, digest)| format!("{image}@{digest}"))
                    .unwrap_or_else(|| format!("{image}:{tag}"));
                events
                    .build_progress(
                        Stage::Build,
                        format!("built {pushed} in {:.1}s", elapsed.as_secs_f64()),
                        BuildFacts {
                            build_id: Some(info.id.clone()),
                            log_url: Some(info.log_url.clone()),
                            attempt: Some(attempts),
                            image: Some(pushed.clone()),
                            ..BuildFacts::default()
                        },
                    )
                    .await;
                d.build = Some(BuildRecord {
                    id: info.id,
                    image: pushed,
                    log_url: info.log_url,
                    attempts,
                });
                Ok(())
            }
            Err(GaveUp::Cancelled { .. }) => {
                metrics::build_finished("cancelled", elapsed);
                Err(StageError::Cancelled { stage: "build" })
            }
            Err(GaveUp::Failed { error, attempts }) => {
                metrics::build_finished("failure", elapsed);
                Err(match error {
                    AttemptError::Journal(e) => StageError::Journal(e),
                    AttemptError::Api(e) => StageError::Cloud {
                        what: format!("creating a Cloud Build build in project {}", target.project),
                        attempts,
                        source: e,
                    },
                    AttemptError::TimedOut { id, log_url } => StageError::BuildTimedOut {
                        build_id: id,
                        timeout: opts.timeout,
                        log_url,
                    },
                    AttemptError::Build { info, tail } => {
                        let retriable = classify_build(&info).is_retriable();
                        d.build = Some(BuildRecord {
                            id: info.id.clone(),
                            image: String::new(),
                            log_url: info.log_url.clone(),
                            attempts,
                        });
                        StageError::BuildFailed {
                            detail: failure_detail(&info, &tail),
                            build_id: info.id,
                            status: info.status_name,
                            log_tail: tail,
                            log_url: info.log_url,
                            retriable,
                            attempts,
                        }
                    }
                })
            }
        }
    }

    async fn upload_source(
        &self,
        d: &mut Deployment,
        dir: &std::path::Path,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<ArchiveRef, StageError> {
        let target = d.request.target.clone();
        let owned = dir.to_path_buf();
        let max = self.config.max_source_bytes;
        let archive_err = |source| StageError::Archive {
            dir: dir.display().to_string(),
            source,
        };
        let extra = d.generated.clone();
        // Held until the upload is done; the semaphore is never closed.
        let _slot = self.archives.acquire().await.ok();
        let packed = tokio::task::spawn_blocking(move || archive::pack(&owned, max, &extra))
            .await
            .map_err(|e| {
                archive_err(archive::ArchiveError::Io {
                    path: "(packing task)".into(),
                    source: std::io::Error::other(e.to_string()),
                })
            })?
            .map_err(archive_err)?;
        let bucket = naming::source_bucket(&target.project, &target.region);
        let object = naming::source_object(&target.service, &packed.sha256);
        let size = packed.blob.len();
        let digest = BuildFacts {
            archive_sha256: Some(packed.sha256.clone()),
            ..BuildFacts::default()
        };
        let stored_at = BuildFacts {
            archive_uri: Some(format!("gs://{bucket}/{object}")),
            ..digest.clone()
        };
        events
            .build_progress(
                Stage::Build,
                format!(
                    "packed {} files ({} bytes) into {} bytes{} (sha256 {})",
                    packed.files,
                    packed.source_bytes,
                    size,
                    packed
                        .ignore_file
                        .map(|f| format!(", following {f}"))
                        .unwrap_or_default(),
                    &packed.sha256[..12]
                ),
                digest,
            )
            .await;
        let existing = self
            .cloud_call(
                Stage::Build,
                || format!("reading gs://{bucket}/{object}"),
                &mut d.retries,
                events,
                cancel,
                |_| self.cloud.object(&bucket, &object),
            )
            .await?;
        let stored = match existing {
            Some(o) if o.size == size => {
                events
                    .build_progress(
                        Stage::Build,
                        format!("source unchanged, reusing gs://{bucket}/{object}"),
                        stored_at,
                    )
                    .await;
                o
            }
            _ => {
                // The object is named by its digest, so a repeated upload
                // writes the same bytes.
                let o = self
                    .cloud_call(
                        Stage::Build,
                        || format!("uploading the source to gs://{bucket}"),
                        &mut d.retries,
                        events,
                        cancel,
                        |_| self.cloud.upload_object(&bucket, &object, &packed.blob),
                    )
                    .await?;
                events
                    .build_progress(
                        Stage::Build,
                        format!("uploaded gs://{bucket}/{object}#{}", o.generation),
                        stored_at,
                    )
                    .await;
                o
            }
        };
        let r = ArchiveRef {
            bucket,
            object,
            generation: stored.generation,
            sha256: packed.sha256,
            size,
        };
        d.archive = Some(r.clone());
        Ok(r)
    }

    /// The build of attempt `n`: created (recorded before and after, with
    /// tags naming the deployment and attempt), or for a resumed run the
    /// one it made before; `None` when there is none.
    async fn start_build(
        &self,
        project: &str,
        spec: &BuildSpec,
        (n, adopt, base): (u32, Option<Adopt>, &Deployment),
        events: &Reporter,
    ) -> Result<PendingBuild, AttemptError> {
        match adopt {
            Some(Adopt::Recorded(p)) => {
                events
                    .build_progress(
                        Stage::Build,
                        format!("polling build {}, created before the restart", p.id),
                        p.facts(),
                    )
                    .await;
                return Ok(p);
            }
            Some(Adopt::Tagged(n)) => {
                let tags = build_tags(&base.id, n);
                let found = self
                    .cloud
                    .find_builds(project, &deployment_tag(&base.id))
                    .await
                    .map_err(AttemptError::Api)?
                    .into_iter()
                    .find(|b| tags.iter().all(|t| b.tags.contains(t)));
                if let Some(b) = found {
                    let p = PendingBuild {
                        id: b.id,
                        attempt: n,
                        log_url: b.log_url,
                    };
                    events
                        .build_progress(
                            Stage::Build,
                            format!("found build {} by its tags (created before the restart, never recorded); polling it", p.id),
                            p.facts(),
                        )
                        .await;
                    return Ok(p);
                }
            }
            None => {}
        }
        // Recorded before the create: a crash right after it finds the
        // build by its tags.
        let mut snapshot = base.clone();
        snapshot.build_attempts = n;
        snapshot.pending_build = None;
        events
            .checkpoint(&snapshot)
            .await
            .map_err(AttemptError::Journal)?;
        let mut spec = spec.clone();
        spec.tags.extend(build_tags(&base.id, n));
        let created = self
            .cloud
            .create_build(project, &spec)
            .await
            .map_err(AttemptError::Api)?;
        let pending = PendingBuild {
            id: created.id,
            attempt: n,
            log_url: created.log_url,
        };
        snapshot.pending_build = Some(pending.clone());
        events
            .checkpoint(&snapshot)
            .await
            .map_err(AttemptError::Journal)?;
        events
            .build_progress(
                Stage::Build,
                format!("build {} queued; logs: {}", pending.id, pending.log_url),
                pending.facts(),
            )
            .await;
        Ok(pending)
    }

    /// One build attempt: started, then polled until terminal while its log
    /// streams.
    async fn build_once(
        &self,
        project: &str,
        spec: &BuildSpec,
        attempt: (u32, Option<Adopt>, &Deployment),
        timeout: Duration,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<BuildInfo, AttemptError> {
        let service = attempt.2.request.target.service.clone();
        let created = self.start_build(project, spec, attempt, events).await?;
        let id = created.id.clone();
        let log_object = naming::log_object(&id);
        let mut log = LogTail::default();
        // Our own deadline: Cloud Build's timeout plus time to queue and push.
        let deadline = tokio::time::Instant::now() + timeout + self.config.build_deadline_slack;
        let mut poll_failures = 0;
        // On a fixed schedule: the polls' own round trips do not stretch
        // the interval (they did, and detection lag was most of a deploy's
        // time above the critical path).
        let mut ticks = super::retry::poll_ticks(self.config.poll_interval);
        let created_at = tokio::time::Instant::now();
        let mut expected = self.build_times.expect(project, &service);
        let mut poll_at_expected_end = |ticks: &mut tokio::time::Interval| {
            let now = tokio::time::Instant::now();
            let next = now + self.config.poll_interval;
            if let Some(at) = expected.and_then(|e| expected_end_poll(created_at, e, now, next)) {
                ticks.reset_at(at);
                // Once: a build that runs longer is polled as usual.
                expected = None;
            }
        };
        poll_at_expected_end(&mut ticks);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = cancel.cancelled() => {
                    self.cancel_remote_build(project, &id).await;
                    return Err(AttemptError::Api(CloudError::new("deployd", super::error::Code::Cancelled, "deploy cancelled")));
                }
            }
            self.stream_log(&spec.source_bucket, &log_object, &mut log, events)
                .await;
            if tokio::time::Instant::now() >= deadline {
                self.cancel_remote_build(project, &id).await;
                return Err(AttemptError::TimedOut {
                    id,
                    log_url: created.log_url,
                });
            }
            let info = match self.cloud.get_build(project, &id).await {
                Ok(info) => {
                    poll_failures = 0;
                    info
                }
                // A reset or a 503 while polling says nothing about the build.
                Err(e)
                    if classify_cloud(&e).is_retriable() && poll_failures < MAX_POLL_FAILURES =>
                {
                    poll_failures += 1;
                    tracing::debug!(build = %id, error = %e, "poll failed; polling again");
                    continue;
                }
                Err(e) => return Err(AttemptError::Api(e)),
            };
            if !info.status.is_terminal() && log.says_finished() {
                // The steps are done; the status follows within moments.
                ticks.reset_after(super::retry::soon(self.config.poll_interval));
            } else if !info.status.is_terminal() {
                poll_at_expected_end(&mut ticks);
            }
            if info.status.is_terminal() {
                if let (BuildStatus::Success, Some(took)) = (info.status, info.took) {
                    self.build_times.record(project, &service, took);
                }
                // Cloud Build writes the whole log before it reports the end.
                self.stream_log(&spec.source_bucket, &log_object, &mut log, events)
                    .await;
                return if info.status == BuildStatus::Success {
                    Ok(info)
                } else {
                    Err(AttemptError::Build {
                        info,
                        tail: log.lines.into_iter().collect(),
                    })
                };
            }
        }
    }

    /// Retried like any call, but not cut short by the run's own
    /// cancellation: cancelling is what the run is doing.
    async fn cancel_remote_build(&self, project: &str, id: &str) {
        let policy = RetryPolicy::builds(self.config.retry_base_delay);
        let result = retry(
            &policy,
            &CancellationToken::new(),
            |_| self.cloud.cancel_build(project, id),
            classify_cloud,
            |_, _, _| async {},
        )
        .await;
        if let Err(GaveUp::Failed { error, attempts }) = result {
            tracing::warn!(build = %id, attempts, error = %error, "could not cancel build");
        }
    }

    /// Reads what the log gained since the last read; streaming is best
    /// effort and never fails the build.
    async fn stream_log(&self, bucket: &str, object: &str, log: &mut LogTail, events: &Reporter) {
        match self
            .cloud
            .read_object_from(bucket, object, log.offset)
            .await
        {
            Ok(Some(bytes)) if !bytes.is_empty() => {
                log.offset += bytes.len() as u64;
                log.partial.push_str(&String::from_utf8_lossy(&bytes));
                let mut read = vec![];
                while let Some(pos) = log.partial.find('\n') {
                    let line: String = log.partial.drain(..=pos).collect();
                    let line = line.trim_end().to_string();
                    read.push(EventKind::Log(line.clone()));
                    if log.lines.len() == TAIL_LINES {
                        log.lines.pop_front();
                    }
                    log.lines.push_back(line);
                }
                // One write for what one read brought.
                events.emit_all(Some(Stage::Build), read).await;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "log read failed; will read again"),
        }
    }
}

/// A build a resumed run takes up instead of creating one.
#[derive(Debug, Clone)]
enum Adopt {
    /// Its id was recorded.
    Recorded(PendingBuild),
    /// Attempt n may have been created without its id being recorded.
    Tagged(u32),
}

#[derive(Default)]
struct LogTail {
    offset: u64,
    partial: String,
    lines: VecDeque<String>,
}

impl LogTail {
    /// Cloud Build ends a finished build's log with `DONE` (or `ERROR`).
    fn says_finished(&self) -> bool {
        self.lines
            .back()
            .is_some_and(|l| matches!(l.trim(), "DONE" | "ERROR"))
    }
}

fn attempt_summary(e: &AttemptError) -> String {
    match e {
        AttemptError::Api(e) => format!("{} {}", e.code.name(), e.message),
        AttemptError::Build { info, .. } => format!(
            "build {} ended {}: {}",
            info.id, info.status_name, info.status_detail
        ),
        AttemptError::TimedOut { id, .. } => format!("build {id} timed out"),
        AttemptError::Journal(e) => e.to_string(),
    }
}

/// Names the failing step and quotes its last lines, not the whole log.
fn failure_detail(info: &BuildInfo, tail: &[String]) -> String {
    let step = info.failed_steps.first().cloned();
    let relevant = relevant_lines(tail, step.as_deref());
    let mut s = if info.status_detail.is_empty() {
        format!("build ended {}", info.status_name)
    } else {
        info.status_detail.clone()
    };
    if let Some(step) = step {
        s.push_str(&format!(" [failing step: {step}]"));
    }
    if !relevant.is_empty() {
        s.push('\n');
        s.push_str(&relevant.join("\n"));
    }
    s
}

/// The lines that explain a failure: the failing step's output (prefix
/// stripped), without Docker's progress noise, from just before its first
/// error-looking line near the end, at most [`RELEVANT_LINES`] of them.
pub fn relevant_lines(tail: &[String], step: Option<&str>) -> Vec<String> {
    let prefix = step.map(|s| format!("\"{s}\": "));
    let lines: Vec<String> = tail
        .iter()
        .filter_map(|l| match &prefix {
            Some(p) => l.split_once(p.as_str()).map(|(_, rest)| rest.to_string()),
            None => Some(l.clone()),
        })
        .filter(|l| !is_noise(l))
        .collect();
    let window_start = lines.len().saturating_sub(40);
    let first_error = lines[window_start..]
        .iter()
        .position(|l| looks_like_error(l))
        .map(|i| window_start + i);
    let start = match first_error {
        Some(i) => i.saturating_sub(1),
        None => lines.len().saturating_sub(RELEVANT_LINES),
    };
    lines[start..]
        .iter()
        .take(RELEVANT_LINES)
        .cloned()
        .collect()
}

const RELEVANT_LINES: usize = 10;

fn is_noise(l: &str) -> bool {
    let t = l.trim();
    t.is_empty()
        || t.starts_with("---> ")
        || t.starts_with("Removing intermediate container")
        || t.starts_with("Sending build context")
        || t.starts_with("Downloading ")
        || t.starts_with("Collecting ")
}

fn looks_like_error(l: &str) -> bool {
    let t = l.to_ascii_lowercase();
    [
        "error",
        "failed",
        "exception",
        "traceback",
        "cannot ",
        "not found",
        "non-zero",
    ]
    .iter()
    .any(|m| t.contains(m))
}

/// How long recent successful builds took (Cloud Build's own create and
/// finish times), by service and by project, to expect the next one's end.
#[derive(Default)]
pub struct BuildTimes {
    inner: std::sync::Mutex<BuildTimesInner>,
}

#[derive(Default)]
struct BuildTimesInner {
    by_service: std::collections::HashMap<(String, String), Duration>,
    /// The project's most recent durations, newest last.
    by_project: std::collections::HashMap<String, std::collections::VecDeque<Duration>>,
}

/// Services and projects remembered; past this the memory starts over.
const BUILD_TIMES_KEPT: usize = 10_000;
/// Durations kept per project for its median.
const BUILD_TIMES_PER_PROJECT: usize = 16;

impl BuildTimes {
    fn lock(&self) -> std::sync::MutexGuard<'_, BuildTimesInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, project: &str, service: &str, took: Duration) {
        let mut t = self.lock();
        if t.by_service.len() >= BUILD_TIMES_KEPT {
            t.by_service.clear();
        }
        if t.by_project.len() >= BUILD_TIMES_KEPT {
            t.by_project.clear();
        }
        t.by_service
            .insert((project.to_string(), service.to_string()), took);
        let recent = t.by_project.entry(project.to_string()).or_default();
        recent.push_back(took);
        if recent.len() > BUILD_TIMES_PER_PROJECT {
            recent.pop_front();
        }
    }

    /// The service's last build time, else the median of the project's
    /// recent ones.
    pub fn expect(&self, project: &str, service: &str) -> Option<Duration> {
        let t = self.lock();
        if let Some(d) = t
            .by_service
            .get(&(project.to_string(), service.to_string()))
        {
            return Some(*d);
        }
        let mut recent: Vec<Duration> = t.by_project.get(project)?.iter().copied().collect();
        recent.sort();
        recent.get(recent.len() / 2).copied()
    }
}

/// When to poll for a build expected to take `expected` from `created`:
/// just after that, if it falls before the next regular poll, so the end
/// is seen within moments instead of up to an interval late. Moving a poll
/// earlier adds none (at most one per build when the guess is early).
fn expected_end_poll(
    created: tokio::time::Instant,
    expected: Duration,
    now: tokio::time::Instant,
    next_regular: tokio::time::Instant,
) -> Option<tokio::time::Instant> {
    // A margin for builds that run a little longer than the last.
    let at = created + expected + expected / 50 + Duration::from_millis(20);
    (at > now && at < next_regular).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::cloud::{BuildInfo, BuildStatus};

    use crate::pipeline::retry::Retriability::*;

    fn info(status: BuildStatus, failure_type: Option<&str>) -> BuildInfo {
        BuildInfo {
            id: "b".into(),
            status,
            status_name: format!("{status:?}"),
            status_detail: String::new(),
            failure_type: failure_type.map(str::to_string),
            log_url: String::new(),
            logs_bucket: String::new(),
            images: vec![],
            failed_steps: vec![],
            tags: vec![],
            took: None,
        }
    }

    #[test]
    fn the_expected_end_is_a_service_s_last_build_else_the_project_s_median() {
        let t = BuildTimes::default();
        assert_eq!(t.expect("p", "web"), None);
        for s in [3, 1, 2] {
            t.record("p", &format!("svc-{s}"), Duration::from_secs(s));
        }
        assert_eq!(t.expect("p", "svc-3"), Some(Duration::from_secs(3)));
        assert_eq!(t.expect("p", "web"), Some(Duration::from_secs(2)));
        assert_eq!(t.expect("other", "web"), None);
    }

    /// The poll moves to just after the expected end only when that comes
    /// before the next regular poll.
    #[test]
    fn a_poll_is_moved_to_the_expected_end_only_when_it_comes_first() {
        let created = tokio::time::Instant::now();
        let s = Duration::from_secs;
        let at = expected_end_poll(created, s(10), created + s(9), created + s(10) + s(1))
            .expect("before the next poll");
        assert!(at > created + s(10) && at < created + s(10) + Duration::from_millis(300));
        // Next regular poll comes first: unchanged.
        assert_eq!(
            expected_end_poll(created, s(10), created + s(1), created + s(2)),
            None
        );
        // Already past: unchanged.
        assert_eq!(
            expected_end_poll(created, s(1), created + s(5), created + s(6)),
            None
        );
    }

    /// Every terminal build result and failure type, and its verdict.
    #[test]
    fn build_classification_table() {
        let r = Retriable { after: None };
        let cases = [
            (BuildStatus::InternalError, None, r),
            (BuildStatus::Timeout, None, r),
            (BuildStatus::Expired, None, r),
            (BuildStatus::Failure, Some("PUSH_FAILED"), r),
            (BuildStatus::Failure, Some("LOGGING_FAILURE"), r),
            (BuildStatus::Failure, Some("USER_BUILD_STEP"), Permanent),
            (BuildStatus::Failure, Some("FETCH_SOURCE_FAILED"), Permanent),
            (BuildStatus::Failure, Some("PUSH_NOT_AUTHORIZED"), Permanent),
            (
                BuildStatus::Failure,
                Some("PUSH_IMAGE_NOT_FOUND"),
                Permanent,
            ),
            (BuildStatus::Failure, None, Permanent),
            (BuildStatus::Cancelled, None, Permanent),
        ];
        for (status, ft, want) in cases {
            assert_eq!(classify_build(&info(status, ft)), want, "{status:?} {ft:?}");
        }
    }

    #[test]
    fn relevant_lines_quote_the_error_not_the_noise() {
        let step = "Step #1 - \"build\": ";
        let mut tail: Vec<String> = vec!["Starting Step #1 - \"build\"".into()];
        for i in 0..60 {
            tail.push(format!("{step}Collecting package{i}"));
            tail.push(format!("{step} ---> {i:012x}"));
        }
        tail.extend([
            format!("{step}Step 4/7 : RUN pip install -r requirements.txt"),
            format!("{step}ERROR: Could not find a version that satisfies the requirement flask==99.0"),
            format!("{step}ERROR: No matching distribution found for flask==99.0"),
            format!("{step}The command '/bin/sh -c pip install -r requirements.txt' returned a non-zero code: 1"),
            "Finished Step #1 - \"build\"".into(),
            "ERROR: build step 1 \"gcr.io/cloud-builders/docker\" failed: step exited with non-zero status: 1".into(),
        ]);
        let got = relevant_lines(&tail, Some("build"));
        assert_eq!(
            got,
            vec![
                "Step 4/7 : RUN pip install -r requirements.txt",
                "ERROR: Could not find a version that satisfies the requirement flask==99.0",
                "ERROR: No matching distribution found for flask==99.0",
                "The command '/bin/sh -c pip install -r requirements.txt' returned a non-zero code: 1",
            ]
        );
    }
}
