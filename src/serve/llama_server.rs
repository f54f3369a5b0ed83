//! One `llama-server` child per served model: started on the GGUF file on a private loopback
//! port, waited for (`/health`), watched, and stopped.
//!
//! The children never outlive `pipe serve`:
//! - each is started with `PR_SET_PDEATHSIG = SIGKILL` (Linux), so the kernel kills it when the
//!   thread that started it ends, however `pipe` ends (SIGKILL included);
//! - each gets its own process group, so a Ctrl-C in the terminal reaches only `pipe`, which then
//!   stops the children in order (SIGTERM, then SIGKILL after a grace period).
//!
//! Children must therefore be started from a thread that lives as long as the server: `pipe serve`
//! starts them from its main thread.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines of a child's log kept in memory for error messages.
const TAIL_LINES: usize = 20;

/// A failure starting or waiting for a `llama-server`.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The program could not be started.
    #[error("starting {program}: {source}")]
    Spawn { program: PathBuf, source: std::io::Error },
    /// It exited before it was ready.
    #[error("llama-server for model `{model}` exited before it was ready ({status}); its last log lines:\n{tail}")]
    Died { model: String, status: String, tail: String },
    /// It did not answer `/health` with 200 in time.
    #[error("llama-server for model `{model}` was not ready after {secs} s; its last log lines:\n{tail}")]
    NotReady { model: String, secs: u64, tail: String },
    /// No free loopback port could be had.
    #[error("finding a free port for llama-server: {0}")]
    Port(std::io::Error),
}

/// How to start a child.
#[derive(Debug, Clone)]
pub struct ChildConfig {
    /// The `llama-server` program.
    pub program: PathBuf,
    /// The GGUF file.
    pub gguf: PathBuf,
    /// The name the model answers to (`--alias`).
    pub alias: String,
    /// Context size in tokens, shared by the slots; `None`: the model's.
    pub ctx_size: Option<u32>,
    /// Requests decoded at once (`--parallel`); more wait in llama-server's queue.
    pub parallel: u32,
    /// CPU threads; `None`: llama-server's choice.
    pub threads: Option<u32>,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

/// A running `llama-server`.
pub struct LlamaServer {
    /// The model's name.
    pub alias: String,
    /// Its loopback port.
    pub port: u16,
    /// Its process id.
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
    child: Mutex<Child>,
    tail: Arc<Mutex<VecDeque<String>>>,
    exited: Mutex<Option<String>>,
}

/// The `llama-server` program, found as the export gate finds llama.cpp's tools
/// (`PIPE_LLAMA_CPP`, else `PATH`).
pub fn program() -> Option<PathBuf> {
    crate::export::llamacpp::find_tool("llama-server")
}

/// Where [`program`] looked, for messages.
pub fn where_looked() -> String {
    crate::export::llamacpp::search_description()
}

/// A free loopback port (the kernel's pick; released for the child to bind).
fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

impl LlamaServer {
    /// Starts the child (it loads the model in the background; see [`LlamaServer::wait_ready`]).
    pub fn start(cfg: &ChildConfig) -> Result<LlamaServer, ChildError> {
        let port = free_port().map_err(ChildError::Port)?;
        let mut cmd = Command::new(&cfg.program);
        cmd.arg("--model")
            .arg(&cfg.gguf)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--alias", &cfg.alias])
            // The GGUF's own chat template (tokenizer.chat_template), rendered as Jinja: the
            // template the model was trained with, not llama.cpp's guess from its built-in list.
            .arg("--jinja")
            .args(["--parallel", &cfg.parallel.to_string()])
            // pipe's front end is the only client, and it has its own web page (none).
            .arg("--no-webui");
        if let Some(c) = cfg.ctx_size {
            cmd.args(["--ctx-size", &c.to_string()]);
        }
        if let Some(t) = cfg.threads {
            cmd.args(["--threads", &t.to_string()]);
        }
        // Found next to the program, as the tools' RPATH expects when PIPE_LLAMA_CPP names a build folder.
        if let Some(dir) = cfg.program.parent() {
            let mut path = std::env::split_paths(&std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default()).collect::<Vec<_>>();
            path.insert(0, dir.to_path_buf());
            if let Ok(joined) = std::env::join_paths(path) {
                cmd.env("LD_LIBRARY_PATH", joined);
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let parent = std::process::id();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                // Its own process group: a terminal's Ctrl-C goes to pipe, which stops it.
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                #[cfg(target_os = "linux")]
                {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The parent may have died between fork and prctl.
                    if libc::getppid() as u32 != parent {
                        libc::_exit(1);
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| ChildError::Spawn { program: cfg.program.clone(), source })?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let log = std::fs::File::create(&cfg.log).ok().map(|f| Arc::new(Mutex::new(f)));
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as _),
        ]
        .into_iter()
        .flatten()
        {
            let (tail, log) = (tail.clone(), log.clone());
            std::thread::spawn(move || copy_lines(stream, &tail, log.as_deref()));
        }
        Ok(LlamaServer {
            alias: cfg.alias.clone(),
            port,
            pid: child.id(),
            log: cfg.log.clone(),
            child: Mutex::new(child),
            tail,
            exited: Mutex::new(None),
        })
    }

    /// The base URL of its HTTP API.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its last log lines.
    pub fn tail(&self) -> String {
        self.tail.lock().map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default()
    }

    /// `Some(status)` once the child has exited (checked now).
    pub fn exit_status(&self) -> Option<String> {
        let mut exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        if exited.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(Some(status)) = child.try_wait() {
                *exited = Some(describe(status));
            }
        }
        exited.clone()
    }

    /// Blocks until `/health` answers 200 (the model is loaded), the child exits, or `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), ChildError> {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                // Let the log readers catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Err(ChildError::Died { model: self.alias.clone(), status, tail: self.tail() });
            }
            if health(self.port) {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                return Err(ChildError::NotReady { model: self.alias.clone(), secs: timeout.as_secs(), tail: self.tail() });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the child: SIGTERM, then SIGKILL after `grace`; reaps it.
    pub fn stop(&self, grace: Duration) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child, which has not been reaped (try_wait above).
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// Copies a child's output to its log file, keeping the last lines in memory.
fn copy_lines(stream: Box<dyn std::io::Read + Send>, tail: &Mutex<VecDeque<String>>, log: Option<&Mutex<std::fs::File>>) {
    let mut r = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let Some(log) = log {
            if let Ok(mut f) = log.lock() {
                let _ = f.write_all(&line);
            }
        }
        if let Ok(mut t) = tail.lock() {
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(String::from_utf8_lossy(&line).trim_end().to_string());
        }
    }
}

/// `GET /health` on the loopback port answers 200.
fn health(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// Where a model's `llama-server` log goes: `<dir>/<name>.log`, the name made file-safe.
pub fn log_path(dir: &Path, model: &str) -> PathBuf {
    let safe: String = model.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    dir.join(format!("llama-server-{safe}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_a_spawn_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ChildConfig {
            program: "/nonexistent/llama-server".into(),
            gguf: "m.gguf".into(),
            alias: "m".into(),
            ctx_size: None,
            parallel: 1,
            threads: None,
            log: dir.path().join("m.log"),
        };
        let e = LlamaServer::start(&cfg).err().expect("no such program");
        assert!(e.to_string().contains("/nonexistent/llama-server"), "{e}");
    }

    #[test]
    fn a_child_that_exits_early_is_reported_with_its_log_lines() {
        let dir = tempfile::tempdir().unwrap();
        // A stand-in program that prints and fails, as llama-server does on a bad model file.
        let prog = dir.path().join("fake-server");
        std::fs::write(&prog, "#!/bin/sh\necho 'loading model'\necho 'error: bad magic' >&2\nexit 3\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = ChildConfig {
            program: prog,
            gguf: "m.gguf".into(),
            alias: "m".into(),
            ctx_size: Some(512),
            parallel: 1,
            threads: Some(1),
            log: log_path(dir.path(), "m/x"),
        };
        let s = LlamaServer::start(&cfg).unwrap();
        let e = s.wait_ready(Duration::from_secs(10)).unwrap_err().to_string();
        assert!(e.contains("exit code 3") && e.contains("bad magic") && e.contains("loading model"), "{e}");
        assert_eq!(s.log.file_name().unwrap(), "llama-server-m_x.log");
        assert!(std::fs::read_to_string(&s.log).unwrap().contains("bad magic"));
    }
}
