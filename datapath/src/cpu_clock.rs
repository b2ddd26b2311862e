//! CPU-time clocks, where the OS has them: the whole process's and the calling thread's. The
//! pipeline's own counters (`cycle::CycleReport::serial_cpu_seconds`, `drplane bench`'s CPU
//! line) are read from these.

/// CPU time the process has used (all threads, also those that ended), where the OS tells.
pub fn process_cpu_seconds() -> Option<f64> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        Some(clock_seconds(rustix::time::ClockId::ProcessCPUTime))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        None
    }
}

/// CPU time the calling thread has used, where the OS tells.
pub fn thread_cpu_seconds() -> Option<f64> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        Some(clock_seconds(rustix::time::ClockId::ThreadCPUTime))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        None
    }
}

/// A clock's reading in seconds.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn clock_seconds(clock: rustix::time::ClockId) -> f64 {
    let t = rustix::time::clock_gettime(clock);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}
