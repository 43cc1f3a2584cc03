//! Who may do what, from a policy file (YAML or TOML by extension): rules
//! granting principals (globs) actions (RPC names) on projects and
//! services (globs), or, for Verify, on URL hosts. Nothing is allowed that
//! no rule grants.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

/// What a call does, named as its RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Deploy,
    Preflight,
    Verify,
    GetDeployment,
    ListDeployments,
    WatchDeployment,
    CancelDeployment,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::Deploy,
        Action::Preflight,
        Action::Verify,
        Action::GetDeployment,
        Action::ListDeployments,
        Action::WatchDeployment,
        Action::CancelDeployment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deploy => "Deploy",
            Action::Preflight => "Preflight",
            Action::Verify => "Verify",
            Action::GetDeployment => "GetDeployment",
            Action::ListDeployments => "ListDeployments",
            Action::WatchDeployment => "WatchDeployment",
            Action::CancelDeployment => "CancelDeployment",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Every action but Verify is about a project's services.
    fn on_projects(self) -> bool {
        self != Action::Verify
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading the policy {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the policy {path} is not valid {format}: {message}")]
    Parse {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("the policy {path} must end in .yaml, .yml or .toml")]
    Format { path: PathBuf },
    #[error("the policy {path}, rule {rule}: {message}")]
    Rule {
        path: PathBuf,
        rule: usize,
        message: String,
    },
}

/// The file's shape: `rules: [{principals, actions, projects, services,
/// hosts}]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rules: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    principals: Vec<String>,
    actions: Vec<String>,
    #[serde(default)]
    projects: Vec<String>,
    /// Default: every service of the projects.
    #[serde(default)]
    services: Option<Vec<String>>,
    /// For Verify: the URL hosts it may probe.
    #[serde(default)]
    hosts: Vec<String>,
}

#[derive(Debug)]
struct Rule {
    principals: GlobSet,
    actions: u8,
    projects: GlobSet,
    services: GlobSet,
    hosts: GlobSet,
}

/// A loaded policy. The empty policy allows nothing.
#[derive(Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

fn globs(patterns: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        if p.is_empty() {
            return Err("an empty pattern matches nothing; use \"*\" for all".into());
        }
        // `*` crosses `/` and `.` alike: names, not paths.
        let glob: Glob = GlobBuilder::new(p)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("{p:?} is not a glob: {e}"))?;
        set.add(glob);
    }
    set.build().map_err(|e| e.to_string())
}

fn action_bits(names: &[String]) -> Result<u8, String> {
    let mut bits = 0;
    for n in names {
        bits |= match n.as_str() {
            "*" => Action::ALL.iter().fold(0, |b, a| b | a.bit()),
            // The three that only read.
            "read" => {
                Action::GetDeployment.bit()
                    | Action::ListDeployments.bit()
                    | Action::WatchDeployment.bit()
            }
            other => Action::ALL
                .iter()
                .find(|a| a.as_str() == other)
                .map(|a| a.bit())
                .ok_or_else(|| {
                    format!(
                        "unknown action {other:?}: use {}, \"read\" or \"*\"",
                        Action::ALL.map(|a| a.as_str()).join(", ")
                    )
                })?,
        };
    }
    Ok(bits)
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let parsed: PolicyFile = match ext {
            "yaml" | "yml" => serde_yaml_ng::from_str(&text).map_err(|e| PolicyError::Parse {
                path: path.to_path_buf(),
                format: "YAML",
                message: e.to_string(),
            })?,
            "toml" => toml::from_str(&text).map_err(|e| PolicyError::Parse {
                path: path.to_path_buf(),
                format: "TOML",
                message: e.to_string(),
            })?,
            _ => {
                return Err(PolicyError::Format {
                    path: path.to_path_buf(),
                })
            }
        };
        Self::from_rules(parsed.rules).map_err(|(rule, message)| PolicyError::Rule {
            path: path.to_path_buf(),
            rule,
            message,
        })
    }

    /// A policy from YAML text (tests, benches).
    pub fn from_yaml(text: &str) -> Result<Policy, String> {
        let parsed: PolicyFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        Self::from_rules(parsed.rules).map_err(|(i, m)| format!("rule {i}: {m}"))
    }

    fn from_rules(rules: Vec<RuleFile>) -> Result<Policy, (usize, String)> {
        let mut out = Vec::with_capacity(rules.len());
        for (i, r) in rules.into_iter().enumerate() {
            // Rules count from 1, as a reader of the file does.
            let n = i + 1;
            let fail = |m: String| (n, m);
            if r.principals.is_empty() {
                return Err(fail("`principals` is empty".into()));
            }
            let mut actions = action_bits(&r.actions).map_err(fail)?;
            // `*` grants Verify only with `hosts` to verify; named, Verify
            // needs them.
            let named_verify = r.actions.iter().any(|a| a == "Verify");
            if r.hosts.is_empty() && !named_verify {
                actions &= !Action::Verify.bit();
            }
            if actions == 0 {
                return Err(fail("`actions` is empty".into()));
            }
            let project_actions = Action::ALL
                .iter()
                .any(|a| a.on_projects() && actions & a.bit() != 0);
            // A rule that would silently grant nothing is a mistake.
            if project_actions && r.projects.is_empty() {
                return Err(fail(
                    "`projects` is required for its actions (\"*\" for all)".into(),
                ));
            }
            if actions & Action::Verify.bit() != 0 && r.hosts.is_empty() {
                return Err(fail(
                    "`hosts` is required for Verify (\"*.run.app\", for example)".into(),
                ));
            }
            out.push(Rule {
                principals: globs(&r.principals).map_err(fail)?,
                actions,
                projects: globs(&r.projects).map_err(fail)?,
                services: globs(r.services.as_deref().unwrap_or(&["*".to_string()]))
                    .map_err(fail)?,
                hosts: globs(&r.hosts).map_err(fail)?,
            });
        }
        Ok(Policy { rules: out })
    }

    fn rules_for<'a>(
        &'a self,
        principal: &'a str,
        action: Action,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules
            .iter()
            .filter(move |r| r.actions & action.bit() != 0 && r.principals.is_match(principal))
    }

    /// May `principal` do `action` to `service` of `project`?
    pub fn allows(&self, principal: &str, action: Action, project: &str, service: &str) -> bool {
        self.rules_for(principal, action)
            .any(|r| r.projects.is_match(project) && r.services.is_match(service))
    }

    /// May `principal` have `host` probed (Verify)?
    pub fn allows_host(&self, principal: &str, host: &str) -> bool {
        self.rules_for(principal, Action::Verify)
            .any(|r| r.hosts.is_match(host))
    }

    /// Could some deployment of `project` (any, when `None`) be visible to
    /// `principal` for `action`? Listing a project no rule names is refused
    /// rather than answered with an empty page.
    pub fn allows_some(&self, principal: &str, action: Action, project: Option<&str>) -> bool {
        self.rules_for(principal, action)
            .any(|r| project.is_none_or(|p| r.projects.is_match(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
rules:
  - principals: ["deployer@team-a.iam.gserviceaccount.com"]
    actions: [Deploy, Preflight, read, CancelDeployment]
    projects: ["team-a-*"]
  - principals: ["*@sre.example.com"]
    actions: ["*"]
    projects: ["*"]
    services: ["web-*"]
    hosts: ["*.run.app"]
"#;

    #[test]
    fn rules_grant_by_principal_action_and_target() {
        let p = Policy::from_yaml(POLICY).expect("policy");
        let a = "deployer@team-a.iam.gserviceaccount.com";
        assert!(p.allows(a, Action::Deploy, "team-a-prod", "api"));
        assert!(p.allows(a, Action::WatchDeployment, "team-a-dev", "x"));
        assert!(!p.allows(a, Action::Deploy, "team-b-prod", "api"));
        assert!(!p.allows_host(a, "x.run.app"));
        let sre = "alice@sre.example.com";
        assert!(p.allows(sre, Action::CancelDeployment, "anything", "web-1"));
        assert!(!p.allows(sre, Action::Deploy, "anything", "api"));
        assert!(p.allows_host(sre, "svc-abc.a.run.app"));
        assert!(!p.allows_host(sre, "evil.example.com"));
        assert!(!p.allows("mallory", Action::GetDeployment, "team-a-x", "a"));
        assert!(p.allows_some(a, Action::ListDeployments, Some("team-a-1")));
        assert!(!p.allows_some(a, Action::ListDeployments, Some("team-b-1")));
        assert!(p.allows_some(a, Action::ListDeployments, None));
        assert!(!p.allows_some(a, Action::Verify, None));
    }

    #[test]
    fn toml_reads_as_yaml_does() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("policy.toml");
        std::fs::write(
            &path,
            "[[rules]]\nprincipals = [\"ci\"]\nactions = [\"Deploy\"]\nprojects = [\"p\"]\nservices = [\"s\"]\n",
        )
        .expect("write");
        let p = Policy::load(&path).expect("toml policy");
        assert!(p.allows("ci", Action::Deploy, "p", "s"));
        assert!(!p.allows("ci", Action::Deploy, "p", "t"));
    }

    #[test]
    fn mistakes_are_refused_with_the_rule_number() {
        for (text, says) in [
            (
                "rules: [{principals: [a], actions: [Deplyo], projects: ['*']}]",
                "unknown action \"Deplyo\"",
            ),
            (
                "rules: [{principals: [a], actions: [Deploy]}]",
                "`projects` is required",
            ),
            (
                "rules: [{principals: [a], actions: [Verify]}]",
                "`hosts` is required",
            ),
            (
                "rules: [{principals: [a], actions: [Verify, '*'], projects: ['*']}]",
                "`hosts` is required",
            ),
            (
                "rules: [{principals: [a], actions: [Deploy], project: [x]}]",
                "unknown field",
            ),
            (
                "rules: [{principals: ['a[', ], actions: [Deploy], projects: [x]}]",
                "is not a glob",
            ),
        ] {
            let e = Policy::from_yaml(text).expect_err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn everything_without_hosts_is_everything_but_verify() {
        let p = Policy::from_yaml("rules: [{principals: [ops], actions: ['*'], projects: [p]}]")
            .expect("policy");
        assert!(p.allows("ops", Action::CancelDeployment, "p", "s"));
        assert!(!p.allows_host("ops", "x.run.app"));
        assert!(!p.allows_some("ops", Action::Verify, None));
    }

    #[test]
    fn the_empty_policy_allows_nothing() {
        let p = Policy::default();
        for a in Action::ALL {
            assert!(!p.allows("anyone", a, "p", "s"));
        }
        assert!(!p.allows_host("anyone", "x.run.app"));
    }
}
