//! Real-time scheduling for the cluster thread, as Corosync does for its own (`sched_setscheduler(SCHED_RR)`):
//! a heartbeat that waits behind a busy SIP thread, SIPp or a compiler on a loaded host is what turns a short
//! election timeout into a false failover. A thread under `SCHED_RR` runs before every `SCHED_OTHER` thread of
//! the host as soon as it is runnable; the kernel's RT throttling (`kernel.sched_rt_runtime_us`, 95 % by default)
//! keeps a runaway from locking the host.
//!
//! The policy is set with `SCHED_RESET_ON_FORK`: what the cluster thread starts (the blocking pool that encodes a
//! snapshot, hook commands, the volume's mount thread) runs under the normal scheduler. Inherited, three nodes'
//! snapshot encoders under `SCHED_RR` took both cores of a loaded host for tens of milliseconds and held the
//! cluster threads' heartbeats back past the hold lease. Only the Raft log writer, whose flush acknowledges
//! appends, takes the cluster thread's policy on purpose ([`current`], [`apply`]).
//!
//! The `unsafe` calls of the cluster live here.

/// A thread's scheduling policy and priority, to give another thread the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    policy: i32,
    priority: i32,
}

/// Put the calling thread under `SCHED_RR` at `priority` (1..=99), not inherited by what it creates; `0` leaves
/// it as it is. Needs CAP_SYS_NICE (root, or the systemd unit's `AmbientCapabilities`) or an `RLIMIT_RTPRIO` at
/// least `priority`.
pub fn realtime(priority: u8) -> std::io::Result<()> {
    if priority == 0 {
        return Ok(());
    }
    apply(Policy { policy: libc::SCHED_RR, priority: i32::from(priority.min(99)) })
}

/// The calling thread's policy.
pub fn current() -> Policy {
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; `param` is a valid out-pointer for the call's duration.
    let (policy, rc) = unsafe { (libc::sched_getscheduler(0), libc::sched_getparam(0, &mut param)) };
    let policy = policy & !libc::SCHED_RESET_ON_FORK;
    if policy < 0 || rc != 0 {
        return Policy { policy: libc::SCHED_OTHER, priority: 0 };
    }
    Policy { policy, priority: param.sched_priority }
}

/// Give the calling thread `p` (real-time policies with `SCHED_RESET_ON_FORK`).
pub fn apply(p: Policy) -> std::io::Result<()> {
    let flags = if p.policy == libc::SCHED_OTHER { 0 } else { libc::SCHED_RESET_ON_FORK };
    let param = libc::sched_param { sched_priority: p.priority };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 names the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, p.policy | flags, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_leaves_the_thread_alone_and_root_gets_round_robin_that_children_do_not_inherit() {
        std::thread::spawn(|| {
            realtime(0).unwrap();
            assert_eq!(current().policy, libc::SCHED_OTHER);
            match realtime(5) {
                Ok(()) => {
                    assert_eq!(current(), Policy { policy: libc::SCHED_RR, priority: 5 });
                    let mine = current();
                    let (child, given) = std::thread::spawn(move || {
                        let child = current();
                        apply(mine).unwrap();
                        (child, current())
                    })
                    .join()
                    .unwrap();
                    assert_eq!(child.policy, libc::SCHED_OTHER, "a thread it starts runs normally");
                    assert_eq!(given, mine, "unless given the policy on purpose");
                }
                // Not root and no RLIMIT_RTPRIO: refused, and said so.
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
            }
        })
        .join()
        .unwrap();
    }
}
