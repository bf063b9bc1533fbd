//! A Kafka broker of one test's own (started and stopped with `scripts/kafka`), for tests that
//! stop or restart the broker without disturbing the others.

/// A broker of one test's own, on a free port, so it can be stopped without disturbing the
/// others. Stopped (and its data removed) on drop.
pub struct OwnBroker {
    pub port: u16,
    data: tempfile::TempDir,
}

impl OwnBroker {
    fn command(&self, action: &str) -> std::process::Output {
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka"))
            .arg(action)
            .env("KAFKA_PORT", self.port.to_string())
            .env("HOWK_DATA_DIR", self.data.path())
            .output()
            .expect("run scripts/kafka")
    }

    pub fn start() -> Self {
        // The controller takes the next port: find a free pair.
        let port = loop {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
                break port;
            }
        };
        let broker = Self {
            port,
            data: tempfile::tempdir().unwrap(),
        };
        let output = broker.command("start");
        assert!(
            output.status.success(),
            "own broker did not start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        broker
    }

    pub fn stop(&self) {
        let output = self.command("stop");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) {
        let output = self.command("start");
        assert!(
            output.status.success(),
            "own broker did not restart: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.command("stop");
    }
}
