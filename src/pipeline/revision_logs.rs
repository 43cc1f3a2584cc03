//! A revision that failed to start or to verify explains itself: its
//! container logs are read from Cloud Logging and the lines that say what
//! went wrong (a traceback, a module not found, a port in use or the wrong
//! port) are quoted in the outcome, with the Logs Explorer link.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::cloud::LogLine;
use super::error::StageError;
use super::event::{Failure, Reporter, Stage};
use super::{Deployment, Pipeline};

/// Lines read from the revision's logs, newest kept.
const READ: u32 = 200;
/// Lines quoted in the outcome, at most.
const QUOTED: usize = 12;
/// Characters of one quoted line, at most.
const LINE: usize = 300;
/// How far before the run its revision's logs are read from (a resumed
/// run's revision may predate this daemon's start of it).
const BEFORE_RUN: Duration = Duration::from_secs(600);

/// What makes a line worth quoting.
const SIGNS: &[&str] = &[
    "traceback",
    "error",
    "exception",
    "cannot find module",
    "no module named",
    "not found",
    "address already in use",
    "eaddrinuse",
    "listening on",
    "listening at",
    "running on",
    "serving on",
    "permission denied",
    "exec format error",
    "panicked",
    "fatal",
    "killed",
    "exited",
    "failed",
    "no such file",
    "errno",
    "can't open",
    "cannot ",
    "segmentation fault",
    "out of memory",
];

/// The lines of `logs` that explain a failure: a whole traceback when
/// there is one, else the lines that look like errors or name a listening
/// port, else the last few; at most [`QUOTED`], each cut to [`LINE`].
pub fn relevant(logs: &[LogLine]) -> Vec<String> {
    let lines: Vec<&str> = logs
        .iter()
        .flat_map(|l| l.text.lines())
        .filter(|l| !l.trim().is_empty())
        .collect();
    let cut = |l: &&str| -> String {
        let l = l.trim_end();
        match l.char_indices().nth(LINE) {
            Some((i, _)) => format!("{}…", &l[..i]),
            None => l.to_string(),
        }
    };
    // Python's traceback runs from its header to the exception line.
    if let Some(start) = lines
        .iter()
        .rposition(|l| l.starts_with("Traceback (most recent call last)"))
    {
        let tail = &lines[start..];
        if tail.len() <= QUOTED {
            return tail.iter().map(cut).collect();
        }
        // The header, then the frames nearest the exception.
        let mut out = vec![cut(&tail[0])];
        out.extend(tail[tail.len() - (QUOTED - 1)..].iter().map(cut));
        return out;
    }
    let signs: Vec<&str> = lines
        .iter()
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            SIGNS.iter().any(|s| lower.contains(s))
        })
        .copied()
        .collect();
    // Without a sign of trouble, the last few lines.
    let (chosen, keep) = if signs.is_empty() {
        (lines, 5)
    } else {
        (signs, QUOTED)
    };
    chosen[chosen.len().saturating_sub(keep)..]
        .iter()
        .map(cut)
        .collect()
}

/// The port the container says it listens on, when it names one
/// ("listening on 3000", "Running on http://0.0.0.0:5000").
pub fn announced_port(logs: &[LogLine]) -> Option<u16> {
    for l in logs.iter().rev() {
        let lower = l.text.to_ascii_lowercase();
        for sign in [
            "listening on",
            "listening at",
            "running on",
            "serving on",
            "port ",
        ] {
            let Some(pos) = lower.find(sign) else {
                continue;
            };
            let after = &lower[pos + sign.len()..];
            // The first number after the phrase that follows a ':' or a
            // space: "0.0.0.0:3000", "port 3000", "http://[::]:8080/".
            let mut digits = String::new();
            let mut prev = ' ';
            for c in after.chars() {
                if c.is_ascii_digit() && (matches!(prev, ':' | ' ') || !digits.is_empty()) {
                    digits.push(c);
                } else if !digits.is_empty() {
                    if c == '.' {
                        // An address such as 0.0.0.0, not a port.
                        digits.clear();
                    } else {
                        break;
                    }
                }
                prev = c;
            }
            if let Ok(p) = digits.parse::<u16>() {
                if p >= 80 {
                    return Some(p);
                }
            }
        }
    }
    None
}

impl Pipeline {
    /// `failure` with the revision's own words, for a revision that did
    /// not become ready or did not verify. Reading the logs is best effort:
    /// when it fails the outcome says so and still links them.
    pub(crate) async fn with_revision_logs(
        &self,
        d: &mut Deployment,
        e: &StageError,
        mut failure: Failure,
        run_started: SystemTime,
        events: &Reporter,
    ) -> Failure {
        let revision = match e {
            StageError::RevisionNotReady { revision, .. } if !revision.is_empty() => {
                revision.clone()
            }
            StageError::Unhealthy { .. } => match &d.revision {
                Some(r) => r.clone(),
                None => return failure,
            },
            _ => return failure,
        };
        let target = d.request.target.clone();
        let since = run_started
            .checked_sub(BEFORE_RUN)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let link = self.cloud.logs_link(&target, &revision, since);
        // The revision's own logs replace the generic pointer to the console.
        failure
            .remediation
            .retain(|r| !r.starts_with("Revision logs: https://console.cloud.google.com/run"));
        // Not the run's cancellation: the logs explain a failure that
        // happened before any cancel.
        let own = CancellationToken::new();
        let read = self
            .cloud_call(
                Stage::Deploy,
                || format!("reading the logs of revision {revision}"),
                &mut d.retries,
                events,
                &own,
                |_| self.cloud.revision_logs(&target, &revision, since, READ),
            )
            .await;
        match read {
            Ok(logs) if logs.is_empty() => {
                failure
                    .remediation
                    .push(format!("The revision logged nothing yet; its logs: {link}"));
            }
            Ok(logs) => {
                let quoted = relevant(&logs);
                failure.message.push_str(&format!(
                    "\nrevision {revision} logged:\n{}",
                    quoted
                        .iter()
                        .map(|l| format!("  | {l}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ));
                let expected = d.revision_runtime().container_port;
                let expected = if expected == 0 { 8080 } else { expected };
                if let Some(port) = announced_port(&logs).filter(|p| *p != expected) {
                    failure.remediation.insert(
                        0,
                        format!(
                            "The app listens on port {port}, but Cloud Run sends requests to $PORT ({expected}): read the PORT environment variable instead of a fixed port."
                        ),
                    );
                }
                failure.remediation.push(format!("Its logs: {link}"));
            }
            Err(err) => {
                failure.remediation.push(format!(
                    "Its logs could not be read ({}); read them here: {link}",
                    super::error::error_chain(&err)
                ));
            }
        }
        failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(lines: &[&str]) -> Vec<LogLine> {
        lines
            .iter()
            .map(|l| LogLine {
                text: l.to_string(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn a_traceback_is_quoted_whole() {
        let l = logs(&[
            "starting",
            "Traceback (most recent call last):",
            "  File \"/app/main.py\", line 3, in <module>",
            "    import flask",
            "ModuleNotFoundError: No module named 'flask'",
        ]);
        assert_eq!(
            relevant(&l),
            [
                "Traceback (most recent call last):",
                "  File \"/app/main.py\", line 3, in <module>",
                "    import flask",
                "ModuleNotFoundError: No module named 'flask'",
            ]
        );
    }

    #[test]
    fn error_lines_are_chosen_over_noise() {
        let l = logs(&[
            "npm info using npm@10",
            "> app@1.0.0 start",
            "Error: listen EADDRINUSE: address already in use :::8080",
            "npm info ok",
        ]);
        assert_eq!(
            relevant(&l),
            ["Error: listen EADDRINUSE: address already in use :::8080"]
        );
        let quiet = logs(&["a", "b", "c", "d", "e", "f", "g"]);
        assert_eq!(relevant(&quiet), ["c", "d", "e", "f", "g"]);
        let long = "x".repeat(400) + " error";
        assert!(relevant(&logs(&[&long]))[0].ends_with('…'));
    }

    #[test]
    fn a_named_port_is_found() {
        assert_eq!(
            announced_port(&logs(&["Server listening on 3000"])),
            Some(3000)
        );
        assert_eq!(
            announced_port(&logs(&[" * Running on http://0.0.0.0:5000"])),
            Some(5000)
        );
        assert_eq!(
            announced_port(&logs(&["listening on port 8080"])),
            Some(8080)
        );
        assert_eq!(
            announced_port(&logs(&["Listening at http://[::]:9000/"])),
            Some(9000)
        );
        assert_eq!(announced_port(&logs(&["ready"])), None);
    }
}
