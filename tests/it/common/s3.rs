//! A real S3 server for the remote cache tests: moto's server (from PyPI, installed into the
//! tests' Python environment by scripts/test.sh) on a free loopback port, stopped when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running S3 server.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
}

/// `moto_server` on PATH, if there.
fn moto_server() -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join("moto_server")).find(|p| p.is_file())
}

impl S3Server {
    /// Starts a server, or returns `None` (the test then skips) where moto is not installed;
    /// with `PIPE_REQUIRE_PYTHON` set (scripts/test.sh) a missing moto is a failure.
    pub fn start() -> Option<S3Server> {
        let Some(bin) = moto_server() else {
            assert!(
                std::env::var_os("PIPE_REQUIRE_PYTHON").is_none(),
                "moto_server must be on PATH (scripts/test.sh installs it)"
            );
            eprintln!("skipping: moto_server is not installed (scripts/test.sh installs it)");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let s = S3Server { child: Some(child), port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on {port} within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(s)
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto accepts unsigned requests).
    pub fn bucket(&self, name: &str) -> String {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(c, "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port)
            .unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "creating bucket {name}: {resp}");
        format!("s3://{name}/team-cache")
    }

    /// The environment a client needs: endpoint and (any) credentials.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Stops the server (it stays down).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
