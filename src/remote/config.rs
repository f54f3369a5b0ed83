//! Which remote, in which mode: `--remote URL` / `PIPE_REMOTE`, else `remote = "URL"` in the
//! project's `pipe.toml` (beside `cache/`); `--remote-mode` / `PIPE_REMOTE_MODE` / `remote_mode`
//! likewise; `PIPE_REMOTE_KEY` for record MACs. The pipeline file stays free of environment.
//!
//! S3 credentials and endpoint come the standard AWS ways: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
//! `AWS_ENDPOINT_URL` (an S3-compatible server; path-style requests), or the shared credentials
//! and config files (`~/.aws/credentials`, `~/.aws/config`, `AWS_PROFILE`).

use std::path::{Path, PathBuf};

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

/// What pipe does with the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Ignore it.
    Off,
    /// Pull from it, never push (for untrusted contexts: forks' CI, laptops).
    Read,
    /// Pull and push; a failing remote is a warning (the default).
    #[default]
    Write,
    /// Pull and push; a failing remote fails the node.
    Require,
}

impl Mode {
    /// Whether reads are attempted.
    pub fn reads(self) -> bool {
        self != Mode::Off
    }

    /// Whether pushes are attempted.
    pub fn writes(self) -> bool {
        matches!(self, Mode::Write | Mode::Require)
    }

    /// The accepted spellings.
    pub const NAMES: [&'static str; 4] = ["off", "read", "write", "require"];
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "off" => Ok(Mode::Off),
            "read" => Ok(Mode::Read),
            "write" => Ok(Mode::Write),
            "require" => Ok(Mode::Require),
            other => Err(format!("unknown remote mode `{other}` (expected one of: {})", Mode::NAMES.join(", "))),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Off => "off",
            Mode::Read => "read",
            Mode::Write => "write",
            Mode::Require => "require",
        })
    }
}

/// A resolved remote setting.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// `s3://bucket/prefix` or `file:///path`.
    pub url: String,
    /// What to do with it.
    pub mode: Mode,
    /// The MAC secret (`PIPE_REMOTE_KEY`).
    pub key: Option<String>,
}

/// The project config file's settings.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// The remote cache URL.
    pub remote: Option<String>,
    /// The remote mode.
    pub remote_mode: Option<String>,
}

/// A bad `pipe.toml`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, with line and column where the parser gives them.
    pub message: String,
}

/// The name of the project config file.
pub const FILE: &str = "pipe.toml";

/// Reads `pipe.toml` in `project` if there is one.
pub fn project_config(project: &Path) -> Result<ProjectConfig, ConfigError> {
    let path = project.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ProjectConfig::default()),
        Err(e) => return Err(ConfigError { path, message: e.to_string() }),
    };
    toml::from_str(&text).map_err(|e| {
        let at = e.span().map(|s| line_col(&text, s.start)).map(|(l, c)| format!("line {l}, column {c}: ")).unwrap_or_default();
        ConfigError { path, message: format!("{at}{}", e.message()) }
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

/// Resolves the remote from the flag/variable values and the project config; `None` when no
/// remote is set or the mode is `off`.
pub fn resolve(
    url: Option<&str>,
    mode: Option<&str>,
    project: &ProjectConfig,
    config_path: &Path,
) -> Result<Option<RemoteConfig>, ConfigError> {
    let bad = |message: String| ConfigError { path: config_path.to_path_buf(), message };
    let url = url.map(str::to_string).or_else(|| project.remote.clone()).filter(|u| !u.trim().is_empty());
    let mode = match mode {
        Some(m) => m.parse::<Mode>().map_err(|e| ConfigError { path: PathBuf::from("--remote-mode"), message: e })?,
        None => match &project.remote_mode {
            Some(m) => m.parse::<Mode>().map_err(|e| bad(format!("remote_mode: {e}")))?,
            None => Mode::default(),
        },
    };
    let key = std::env::var("PIPE_REMOTE_KEY").ok().filter(|k| !k.is_empty());
    Ok(url.filter(|_| mode != Mode::Off).map(|url| RemoteConfig { url, mode, key }))
}

/// `url` without a user name or password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => url.split('@').next_back().unwrap_or("").to_string(),
    }
}

/// Completes an S3 builder made from the environment: `AWS_ENDPOINT_URL` (http allowed for
/// local servers), a default region, and credentials from the shared files when the
/// environment has none.
pub(crate) fn s3_builder(mut b: AmazonS3Builder) -> Result<AmazonS3Builder, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(ep) = env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")).or_else(|| env("AWS_ENDPOINT")) {
        if ep.starts_with("http://") {
            b = b.with_allow_http(true);
        }
        b = b.with_endpoint(ep);
    }
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let home = env("HOME").map(PathBuf::from);
    if env("AWS_ACCESS_KEY_ID").is_none() {
        let file =
            env("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
        if let Some(section) = file.and_then(|f| ini_section(&f, &profile)) {
            for (k, v) in section {
                match k.as_str() {
                    "aws_access_key_id" => b = b.with_access_key_id(v),
                    "aws_secret_access_key" => b = b.with_secret_access_key(v),
                    "aws_session_token" => b = b.with_token(v),
                    _ => {}
                }
            }
        }
    }
    if b.get_config_value(&AmazonS3ConfigKey::Region).is_none() {
        let file = env("AWS_CONFIG_FILE").map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
        let section = if profile == "default" { "default".to_string() } else { format!("profile {profile}") };
        let region =
            file.and_then(|f| ini_section(&f, &section)).and_then(|s| s.into_iter().find(|(k, _)| k == "region")).map(|(_, v)| v);
        b = b.with_region(region.unwrap_or_else(|| "us-east-1".into()));
    }
    Ok(b)
}

/// The `key = value` lines of `[section]` in an AWS shared config or credentials file.
fn ini_section(path: &Path, section: &str) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut inside = false;
    let mut found = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') && line.ends_with(']') {
            inside = line[1..line.len() - 1].trim() == section;
            if inside {
                found.get_or_insert_with(Vec::new);
            }
        } else if inside && !line.starts_with('#') && !line.starts_with(';') {
            if let Some((k, v)) = line.split_once('=') {
                found.get_or_insert_with(Vec::new).push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_the_project_file_and_off_means_no_remote() {
        let project = ProjectConfig { remote: Some("file:///shared/cache".into()), remote_mode: Some("read".into()) };
        let p = Path::new("pipe.toml");
        let r = resolve(None, None, &project, p).unwrap().unwrap();
        assert_eq!((r.url.as_str(), r.mode), ("file:///shared/cache", Mode::Read));
        let r = resolve(Some("s3://b/p"), Some("require"), &project, p).unwrap().unwrap();
        assert_eq!((r.url.as_str(), r.mode), ("s3://b/p", Mode::Require));
        assert!(resolve(None, Some("off"), &project, p).unwrap().is_none());
        assert!(resolve(None, None, &ProjectConfig::default(), p).unwrap().is_none());
        let bad = ProjectConfig { remote: None, remote_mode: Some("sometimes".into()) };
        assert!(resolve(None, None, &bad, p).unwrap_err().to_string().contains("remote_mode: unknown remote mode `sometimes`"));
    }

    #[test]
    fn a_bad_project_file_names_its_line() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join(FILE), "remote = \"s3://b\"\nremot_mode = \"read\"\n").unwrap();
        let e = project_config(t.path()).unwrap_err().to_string();
        assert!(e.contains("pipe.toml: line 2, column 1"), "{e}");
        assert!(e.contains("remot_mode"), "{e}");
    }

    #[test]
    fn credentials_never_show_in_urls() {
        assert_eq!(redact("s3://AKIA:secret@bucket/prefix"), "s3://bucket/prefix");
        assert_eq!(redact("file:///x"), "file:///x");
    }

    #[test]
    fn profile_sections_are_read_from_shared_files() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("credentials");
        std::fs::write(&f, "[default]\naws_access_key_id = A\n\n[profile other]\nregion = eu\n[ci]\naws_access_key_id=B\n")
            .unwrap();
        assert_eq!(ini_section(&f, "ci").unwrap(), vec![("aws_access_key_id".to_string(), "B".to_string())]);
        assert_eq!(ini_section(&f, "profile other").unwrap()[0].1, "eu");
        assert!(ini_section(&f, "missing").is_none());
    }
}
