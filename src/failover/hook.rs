//! Operator hook commands, keepalived `notify` style: a shell command the operator configures per event
//! (`on_acquire` starts the PBX once the volume is mounted, `on_release` stops it before unmounting), run with
//! `/bin/sh -c`, the event described in `SIPFRONT_*` environment variables, a timeout, and its output in our log
//! (each line at info, target `sipfront::hook`). This module only runs a command; which hook runs when, and what
//! a failure means for the failover, is the caller's decision.
//!
//! # Processes
//! The shell runs in a process group of its own, so that on timeout (or if the caller drops the future) the whole
//! group gets SIGKILL: the shell and whatever it started and is waiting for. A hook may also leave a daemon
//! running (`mydaemon &`). That daemon inherits the shell's stdout, so the output pipe does not reach EOF when
//! the shell exits: we wait for the *shell's exit* (a pidfd, polled by tokio), read what is left for at most
//! 100 ms more, and close our end. A daemon that later writes to that stdout gets SIGPIPE (or EPIPE), so hooks
//! should start daemons with their output redirected, or through the service manager (`systemctl start`). A
//! daemon that calls `setsid` leaves our process group and survives a timeout kill.
//!
//! Nothing here blocks the runtime: the exit and the output are both awaited through tokio's reactor.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use super::sys;

/// The last this many bytes of a hook's output are kept for [`HookRun`] and [`HookFailure`].
pub const OUTPUT_TAIL_BYTES: usize = 2048;
/// After the shell exits, how long we go on reading output that is still in the pipe.
const DRAIN: Duration = Duration::from_millis(100);
/// After SIGKILL on timeout, how long we wait for the shell to be reaped before leaving that to a thread.
const KILL_GRACE: Duration = Duration::from_secs(1);
/// A line longer than this is logged in pieces.
const MAX_LINE: usize = 1024;

/// One configured hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Which hook this is (`"on_acquire"`), for the log and errors; also passed as `SIPFRONT_HOOK`.
    pub name: &'static str,
    /// Run with `/bin/sh -c`.
    pub command: String,
    /// After this the hook's process group is killed and the run fails with [`HookFailure::Timeout`].
    pub timeout: Duration,
}

/// A hook that exited with status 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    /// The shell's exit status: always 0 here (anything else is [`HookFailure::Exit`]).
    pub status: i32,
    /// From start to the shell's exit and the end of its output.
    pub took: Duration,
    /// The last [`OUTPUT_TAIL_BYTES`] of stdout and stderr (merged, in order), trailing whitespace trimmed.
    pub output_tail: String,
}

/// Why a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookFailure {
    #[error("cannot start /bin/sh: {0}")]
    Spawn(#[source] io::Error),
    /// The hook ran longer than its timeout; its process group was killed with SIGKILL.
    #[error("timed out after {after:?}; its process group was killed")]
    Timeout { after: Duration },
    #[error("exited with status {status} (output: {:?})", last_line(output_tail))]
    Exit { status: i32, output_tail: String },
    #[error("killed by signal {signal} (output: {:?})", last_line(output_tail))]
    Signal { signal: i32, output_tail: String },
    /// We lost track of the shell (its exit could not be observed); its group was killed.
    #[error("cannot wait for the hook: {0}")]
    Wait(#[source] io::Error),
}

fn last_line(tail: &str) -> &str {
    tail.lines().next_back().unwrap_or("")
}

/// Run `hook`: `/bin/sh -c COMMAND` with `env` added to our environment (plus `SIPFRONT_HOOK`), stdin from
/// /dev/null, stdout and stderr into our log. Ok only for exit status 0.
pub async fn run(hook: &Hook, env: &[(&str, String)]) -> Result<HookRun, HookFailure> {
    let started = Instant::now();
    let name = hook.name;
    tracing::info!(hook = name, command = %hook.command, "running hook");
    let (mut shell, pipe) = Shell::spawn(hook, env).map_err(HookFailure::Spawn)?;
    let mut output = Output::new(name);
    let mut eof = false;
    let exited = {
        let exit = tokio::time::timeout(hook.timeout, shell.exited());
        tokio::pin!(exit);
        loop {
            tokio::select! {
                result = &mut exit => break result,
                at_eof = output.read_from(&pipe), if !eof => eof = at_eof,
            }
        }
    };
    let status = match exited {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            shell.kill_group();
            return Err(HookFailure::Wait(e));
        }
        Err(_elapsed) => {
            shell.kill_group();
            let _ = tokio::time::timeout(KILL_GRACE, shell.exited()).await;
            output.drain(&pipe, eof).await;
            let tail = output.finish();
            tracing::warn!(hook = name, timeout = ?hook.timeout, last_output = last_line(&tail), "hook timed out");
            return Err(HookFailure::Timeout { after: hook.timeout });
        }
    };
    output.drain(&pipe, eof).await;
    let output_tail = output.finish();
    let took = started.elapsed();
    match (status.code(), status.signal()) {
        (Some(0), _) => {
            tracing::info!(hook = name, ?took, "hook succeeded");
            Ok(HookRun { status: 0, took, output_tail })
        }
        (Some(status), _) => {
            tracing::warn!(hook = name, status, ?took, "hook failed");
            Err(HookFailure::Exit { status, output_tail })
        }
        (None, signal) => {
            let signal = signal.unwrap_or(0);
            tracing::warn!(hook = name, signal, ?took, "hook killed by a signal");
            Err(HookFailure::Signal { signal, output_tail })
        }
    }
}

/// The hook's shell, leader of its own process group, until reaped. Dropped before that (the caller gave up on
/// [`run`]), it kills the group and leaves the reaping to a thread.
struct Shell {
    /// `None` once handed to the reaping thread.
    child: Option<Child>,
    /// The shell's pidfd: readable once it has exited, so tokio can await the exit without SIGCHLD handling.
    exit: AsyncFd<File>,
    /// Set once reaped; from then on the group is left alone (daemons it started keep running).
    status: Option<ExitStatus>,
}

impl Shell {
    /// Start the shell; also returns the read end of its stdout+stderr pipe, non-blocking, for tokio.
    fn spawn(hook: &Hook, env: &[(&str, String)]) -> io::Result<(Shell, AsyncFd<File>)> {
        let (read, write) = sys::pipe()?;
        sys::set_nonblocking(&read)?;
        let pipe = sys::async_readable(read)?;
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(&hook.command)
            .env("SIPFRONT_HOOK", hook.name)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(write.try_clone()?))
            .stderr(Stdio::from(write))
            .process_group(0);
        let mut child = command.spawn()?;
        drop(command); // closes our copies of the write end, so the pipe can reach EOF
                       // Not yet reaped, so the pid cannot have been reused.
        match sys::pidfd_open(child.id()).and_then(sys::async_readable) {
            Ok(exit) => Ok((Shell { child: Some(child), exit, status: None }, pipe)),
            Err(e) => {
                let _ = sys::kill_group(child.id(), libc::SIGKILL);
                let _ = child.wait(); // SIGKILLed: returns at once
                Err(e)
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Wait for the shell to exit, and reap it.
    async fn exited(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            let mut ready = self.exit.readable().await?;
            let child = self.child.as_mut().ok_or_else(|| io::Error::from_raw_os_error(libc::ECHILD))?;
            match child.try_wait()? {
                Some(status) => self.status = Some(status),
                None => ready.clear_ready(),
            }
        }
    }

    /// SIGKILL the whole process group. A group that is already gone is fine.
    fn kill_group(&self) {
        if let Err(e) = sys::kill_group(self.pid(), libc::SIGKILL) {
            if e.raw_os_error() != Some(libc::ESRCH) {
                tracing::warn!(pgid = self.pid(), error = %e, "cannot kill the hook's process group");
            }
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        self.kill_group();
        if let Some(mut child) = self.child.take() {
            if !matches!(child.try_wait(), Ok(Some(_))) {
                // SIGKILLed, so it is gone in a moment; a thread waits for that rather than the runtime.
                let _ = std::thread::Builder::new().name("sipfront-hook-reaper".into()).spawn(move || child.wait());
            }
        }
    }
}

/// The hook's output: logged line by line as it arrives; the last [`OUTPUT_TAIL_BYTES`] kept.
struct Output {
    hook: &'static str,
    /// The newest output, at most twice the tail size (trimmed in batches).
    tail: Vec<u8>,
    /// The line being received.
    line: Vec<u8>,
}

impl Output {
    fn new(hook: &'static str) -> Output {
        Output { hook, tail: Vec::new(), line: Vec::new() }
    }

    /// Read what the pipe has (waiting for it if need be); true at EOF or on a read error. Cancel safe: the only
    /// await is for readiness, the read itself is synchronous.
    async fn read_from(&mut self, pipe: &AsyncFd<File>) -> bool {
        let mut buf = [0; 4096];
        loop {
            let Ok(mut ready) = pipe.readable().await else { return true };
            match ready.try_io(|file| file.get_ref().read(&mut buf)) {
                Ok(Ok(0)) => return true,
                Ok(Ok(n)) => {
                    self.push(&buf[..n]);
                    return false;
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => {
                    tracing::warn!(hook = self.hook, error = %e, "cannot read the hook's output");
                    return true;
                }
                Err(_would_block) => {}
            }
        }
    }

    /// After the shell's exit: read on until EOF, for at most [`DRAIN`] (a daemon may hold the pipe open).
    async fn drain(&mut self, pipe: &AsyncFd<File>, mut eof: bool) {
        let _ = tokio::time::timeout(DRAIN, async {
            while !eof {
                eof = self.read_from(pipe).await;
            }
        })
        .await;
    }

    fn push(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > 2 * OUTPUT_TAIL_BYTES {
            self.tail.drain(..self.tail.len() - OUTPUT_TAIL_BYTES);
        }
        for &b in bytes {
            if b == b'\n' {
                self.log_line();
            } else {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.log_line();
                }
            }
        }
    }

    fn log_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line);
        tracing::info!(target: "sipfront::hook", hook = self.hook, "{}", line.trim_end_matches('\r'));
        self.line.clear();
    }

    /// Log a last unterminated line; the tail as text, starting on a character boundary.
    fn finish(mut self) -> String {
        if !self.line.is_empty() {
            self.log_line();
        }
        let mut start = self.tail.len().saturating_sub(OUTPUT_TAIL_BYTES);
        while self.tail.get(start).is_some_and(|b| b & 0xC0 == 0x80) {
            start += 1; // a UTF-8 continuation byte: the character began before the tail
        }
        String::from_utf8_lossy(&self.tail[start..]).trim_end().to_owned()
    }
}
