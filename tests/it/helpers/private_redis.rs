//! A Redis of one test's own (Debian's `redis-server`, which `scripts/redis` installs), for
//! tests that stop and restart Redis without disturbing the others.

use std::process::{Child, Command, Stdio};

/// A Redis of this test's own, so stopping it disturbs no other test.
pub struct PrivateRedis {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub fn start_on(port: u16, dir: tempfile::TempDir) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/redis) starts");
        Self { port, child, dir }
    }

    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port, tempfile::tempdir().unwrap())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(mut self) -> (u16, tempfile::TempDir) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        (
            self.port,
            std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()),
        )
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
