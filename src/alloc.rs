//! The process allocator: mimalloc, without transparent huge pages.
//!
//! With glibc malloc, allocation was ~11% of CPU under load and agentgate ran at ~0.6x the
//! requests/s of vanilla Pingora; with mimalloc at ~0.96x. On kernels with THP `always`,
//! mimalloc's arenas are backed by 2 MiB pages as soon as they are touched, which doubled RSS
//! with 1,000 open streams (159 MiB vs 84 MiB); opting this process out of THP keeps both the
//! throughput and the memory (numbers in bench/results).

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Call first thing in `main`. The THP opt-out applies to later page faults in every mapping.
pub fn tune() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with integer arguments only changes this process's THP policy.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
