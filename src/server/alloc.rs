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

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, mimalloc 3).
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Call first thing in `main`. The THP opt-out applies to later page faults in every mapping.
///
/// Freed pages go back to the OS at once (mimalloc 3 waits 1 s, and only checks when the
/// thread allocates again): with 1,000 approvals pending, RSS was 60 KiB per request with the
/// delay and 50 KiB without (bench/README.md). The price is CPU under load: every freed range
/// is unmapped and faulted back in, ~10% of passthrough requests/s at c=64 against a 10 ms
/// delay (which still left 56 KiB per pending request, also with a thread forcing a purge every
/// 500 ms). `MIMALLOC_PURGE_DELAY` in the environment still decides when set: `10` for a
/// gateway that wants the throughput more than the memory.
pub fn tune() {
    #[cfg(feature = "mimalloc")]
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option; mimalloc reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with integer arguments only changes this process's THP policy.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use super::*;

    /// The index is mimalloc 3's purge delay: its documented default (1000 ms) before `tune`,
    /// 0 after.
    #[test]
    fn purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads and sets an integer option.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(before, 1000);
        tune();
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
            0
        );
    }
}
