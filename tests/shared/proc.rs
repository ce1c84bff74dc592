//! Child processes of the tests: each in its own process group, so that one SIGKILL takes the whole group
//! (coreutils `timeout` and the program under it).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};

/// A child process in its own process group; [`Proc::kill`] SIGKILLs the group (the owner calls it on drop).
pub struct Proc {
    pub label: String,
    pub child: Child,
    /// The exit status once it was seen (a child is reaped once; later calls return this).
    pub status: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(label: &str, mut cmd: Command) -> Proc {
        cmd.process_group(0).stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {label} ({cmd:?}): {e}"));
        Proc { label: label.into(), child, status: None }
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn kill(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        // The whole group: `timeout` and the program under it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }

    /// Send `signal` (a `kill` name such as "TERM" or "USR1") to the program under `timeout`, not to `timeout`
    /// itself (which would die of SIGUSR1, or forward SIGTERM to the whole group).
    pub fn signal_program(&self, signal: &str) {
        for c in child_pids(self.child.id()) {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &c])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The processes whose parent is `pid`, from /proc.
pub fn child_pids(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{name}/stat")).ok()?;
        // "pid (comm) state ppid ...": the comm may hold spaces, so read after its closing parenthesis.
        let ppid: u32 = stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()?;
        (ppid == pid).then_some(name)
    })
    .collect()
}
