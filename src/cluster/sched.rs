//! Real-time scheduling for the cluster thread, as Corosync does for its own (`sched_setscheduler(SCHED_RR)`):
//! a heartbeat that waits behind a busy SIP thread, SIPp or a compiler on a loaded host is what turns a short
//! election timeout into a false failover. A thread under `SCHED_RR` runs before every `SCHED_OTHER` thread of
//! the host as soon as it is runnable; the kernel's RT throttling (`kernel.sched_rt_runtime_us`, 95 % by default)
//! keeps a runaway from locking the host. Threads this thread creates (the Raft log writer) inherit the policy.
//!
//! The one `unsafe` call of the cluster lives here.

/// Put the calling thread under `SCHED_RR` at `priority` (1..=99); `0` leaves it as it is. Needs CAP_SYS_NICE
/// (root, or the systemd unit's `AmbientCapabilities`) or an `RLIMIT_RTPRIO` at least `priority`.
pub fn realtime(priority: u8) -> std::io::Result<()> {
    if priority == 0 {
        return Ok(());
    }
    let param = libc::sched_param { sched_priority: i32::from(priority.min(99)) };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 names the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's scheduling policy is `SCHED_RR`.
#[cfg(test)]
fn is_realtime() -> bool {
    // SAFETY: no arguments but the calling thread's id.
    unsafe { libc::sched_getscheduler(0) == libc::SCHED_RR }
}

#[cfg(test)]
mod tests {
    #[test]
    fn zero_leaves_the_thread_alone_and_root_gets_round_robin() {
        std::thread::spawn(|| {
            super::realtime(0).unwrap();
            assert!(!super::is_realtime());
            match super::realtime(5) {
                Ok(()) => assert!(super::is_realtime()),
                // Not root and no RLIMIT_RTPRIO: refused, and said so.
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
            }
        })
        .join()
        .unwrap();
    }
}
