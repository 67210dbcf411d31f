//! `aftercart worker` as a child process, its logs kept in a file.

use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

pub struct WorkerProcess {
    pub child: Child,
    _stderr: tempfile::NamedTempFile,
}

impl WorkerProcess {
    pub fn spawn(env: &[(String, String)]) -> WorkerProcess {
        // Logs go to a file: a failing test can print them, a passing one stays quiet.
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let child = super::cmd(env)
            .arg("worker")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .expect("spawn aftercart worker");
        WorkerProcess {
            child,
            _stderr: stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped yet (no wait).
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.child.id());
    }

    /// Waits for the exit without blocking the runtime (the SMTP server lives on it).
    pub async fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then the exit code 0 the spec asks for, within `timeout`.
    pub async fn stop(&mut self, timeout: Duration) {
        self.signal(libc::SIGTERM);
        let st = self.wait(timeout).await;
        assert!(
            st.is_some_and(|s| s.success()),
            "worker did not exit 0 after SIGTERM: {st:?}\n{}",
            self.logs()
        );
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self._stderr.path()).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // A failed assertion must not leave a worker running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
