//! Where a client command's project and region come from when no flag
//! names them, in the order gcloud users expect: deployd's own variable,
//! then gcloud's (`CLOUDSDK_CORE_PROJECT`, `CLOUDSDK_RUN_REGION`), then the
//! active gcloud configuration's `core/project` and `run/region`.

use std::path::{Path, PathBuf};

/// A value and where it came from, for the run's opening line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub value: String,
    pub from: String,
}

/// The environment and files gcloud reads, injectable for tests.
pub struct Gcloud<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// `$CLOUDSDK_CONFIG`, else `~/.config/gcloud`.
    pub config_dir: Option<PathBuf>,
}

impl Gcloud<'_> {
    pub fn from_process() -> Gcloud<'static> {
        fn env(k: &str) -> Option<String> {
            std::env::var(k).ok().filter(|v| !v.trim().is_empty())
        }
        let config_dir = env("CLOUDSDK_CONFIG")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config/gcloud")));
        Gcloud {
            env: &env,
            config_dir,
        }
    }

    /// `section/key` of the active configuration
    /// (`CLOUDSDK_ACTIVE_CONFIG_NAME`, else the `active_config` file, else
    /// `default`).
    fn property(&self, section: &str, key: &str) -> Option<Found> {
        let dir = self.config_dir.as_ref()?;
        let name = (self.env)("CLOUDSDK_ACTIVE_CONFIG_NAME")
            .or_else(|| {
                std::fs::read_to_string(dir.join("active_config"))
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "default".into());
        // A configuration name is a file name: nothing that leaves the
        // directory.
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return None;
        }
        let text =
            std::fs::read_to_string(dir.join("configurations").join(format!("config_{name}")))
                .ok()?;
        ini_value(&text, section, key).map(|value| Found {
            value,
            from: format!("gcloud configuration {name:?} ({section}/{key})"),
        })
    }

    fn var(&self, name: &str) -> Option<Found> {
        (self.env)(name).map(|value| Found {
            value,
            from: name.to_string(),
        })
    }

    /// The project when no flag or DEPLOYD_PROJECT gave one.
    pub fn project(&self) -> Option<Found> {
        self.var("CLOUDSDK_CORE_PROJECT")
            .or_else(|| self.property("core", "project"))
    }

    /// The region when no flag or DEPLOYD_REGION gave one.
    pub fn region(&self) -> Option<Found> {
        self.var("CLOUDSDK_RUN_REGION")
            .or_else(|| self.property("run", "region"))
    }
}

/// `key = value` in `[section]` of an INI file as gcloud writes them.
fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_string();
            continue;
        }
        if current != section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key && !v.trim().is_empty() {
                return Some(v.trim().to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcloud<'a>(env: &'a dyn Fn(&str) -> Option<String>, dir: &Path) -> Gcloud<'a> {
        Gcloud {
            env,
            config_dir: Some(dir.to_path_buf()),
        }
    }

    #[test]
    fn the_active_configuration_fills_what_no_variable_gives() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join("configurations")).expect("mkdir");
        std::fs::write(dir.path().join("active_config"), "work\n").expect("write");
        std::fs::write(
            dir.path().join("configurations/config_work"),
            "[core]\naccount = me@example.com\nproject = from-config\n\n[run]\nregion = europe-west1\n",
        )
        .expect("write");
        let none = |_: &str| None;
        let g = gcloud(&none, dir.path());
        assert_eq!(
            g.project(),
            Some(Found {
                value: "from-config".into(),
                from: "gcloud configuration \"work\" (core/project)".into()
            })
        );
        assert_eq!(g.region().map(|f| f.value), Some("europe-west1".into()));
        // gcloud's variables come first, and name another configuration.
        let env = |k: &str| match k {
            "CLOUDSDK_CORE_PROJECT" => Some("from-env".to_string()),
            "CLOUDSDK_ACTIVE_CONFIG_NAME" => Some("other".to_string()),
            _ => None,
        };
        let g = gcloud(&env, dir.path());
        assert_eq!(
            g.project().map(|f| f.from),
            Some("CLOUDSDK_CORE_PROJECT".into())
        );
        assert_eq!(g.region(), None, "configuration \"other\" has none");
        // A configuration name cannot point elsewhere.
        let env = |k: &str| (k == "CLOUDSDK_ACTIVE_CONFIG_NAME").then(|| "../../x".to_string());
        assert_eq!(gcloud(&env, dir.path()).region(), None);
    }
}
