//! Memory maps that survive their file shrinking underneath them.
//!
//! A read-only map of a file that another process truncates faults with `SIGBUS` on the pages
//! past the new end, which kills the process: a disk being compacted while we replicate it
//! would crash us instead of failing with an error. This module owns the process's `SIGBUS`
//! handler and a fixed table of watched maps ([`watch`]). A fault inside a watched map puts
//! zero pages (anonymous, private) over the rest of that map, marks the map as shrunk and
//! returns, so the access completes, reading zeros; the map's owner then checks
//! [`Watch::shrank`] after using the bytes and reports an error instead of using them
//! (`MappedFile` does this on every read and in `ReadAt::check_mapped`).
//!
//! Faults anywhere else go to the handler that was installed before ours (the Rust runtime's
//! stack-overflow handler, or the default action, which ends the process as before).
//!
//! The handler only touches atomics, a `OnceLock` that was set before it was installed, and
//! `mmap`/`sigaction`, which are async-signal-safe.

/// A watched map: unregistered on drop. Drop it before the map is unmapped, so a fault in a
/// later map at the same address is never taken for this one's.
#[derive(Debug)]
pub struct Watch {
    #[cfg(target_os = "linux")]
    slot: usize,
}

impl Watch {
    /// True once a fault inside the map found its file shrunk (the rest of the map now reads
    /// as zeros).
    pub fn shrank(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            linux::SLOTS[self.slot]
                .shrank
                .load(std::sync::atomic::Ordering::Acquire)
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }
}

/// Watch the map at `start` of `len` bytes. `None` when the handler cannot be installed or
/// every slot is taken (the map then faults as any map does). `start` must be page-aligned,
/// as every map is.
pub fn watch(start: *const u8, len: usize) -> Option<Watch> {
    #[cfg(target_os = "linux")]
    {
        linux::watch(start as usize, len).map(|slot| Watch { slot })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (start, len);
        None
    }
}

#[cfg(target_os = "linux")]
impl Drop for Watch {
    fn drop(&mut self) {
        linux::unwatch(self.slot);
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::{c_int, c_void};
    use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
    use std::sync::OnceLock;

    /// Maps watched at once; a differencing chain maps one file per layer, and every open
    /// disk keeps its chain mapped.
    const SLOT_COUNT: usize = 1024;
    /// `si_code` of a fault on an address with no backing file page (Linux value).
    const BUS_ADRERR: c_int = 2;

    const FREE: u8 = 0;
    /// Being filled in or cleared: the handler skips it.
    const CHANGING: u8 = 1;
    const LIVE: u8 = 2;

    pub(super) struct Slot {
        state: AtomicU8,
        start: AtomicUsize,
        len: AtomicUsize,
        pub(super) shrank: AtomicBool,
    }

    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: Slot = Slot {
        state: AtomicU8::new(FREE),
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        shrank: AtomicBool::new(false),
    };
    pub(super) static SLOTS: [Slot; SLOT_COUNT] = [EMPTY; SLOT_COUNT];

    /// The disposition `SIGBUS` had before ours, for faults that are not ours.
    struct Previous(libc::sigaction);
    // SAFETY: a plain C struct of integers, a signal mask and a function address; it is
    // written once, before the handler that reads it exists, and never changed.
    unsafe impl Sync for Previous {}
    unsafe impl Send for Previous {}
    static PREVIOUS: OnceLock<Previous> = OnceLock::new();
    static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);

    fn installed() -> bool {
        static INSTALLED: OnceLock<bool> = OnceLock::new();
        *INSTALLED.get_or_init(|| {
            // SAFETY: sysconf and sigaction with valid pointers to initialised structs.
            unsafe {
                let page = libc::sysconf(libc::_SC_PAGESIZE);
                if page > 0 {
                    PAGE_SIZE.store(page as usize, Ordering::Relaxed);
                }
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
                    return false;
                }
                if PREVIOUS.set(Previous(old)).is_err() {
                    return false;
                }
                let mut ours: libc::sigaction = std::mem::zeroed();
                ours.sa_sigaction = on_sigbus as *const () as usize;
                ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut ours.sa_mask);
                libc::sigaction(libc::SIGBUS, &ours, std::ptr::null_mut()) == 0
            }
        })
    }

    pub(super) fn watch(start: usize, len: usize) -> Option<usize> {
        if len == 0 || !installed() {
            return None;
        }
        let (index, slot) = SLOTS.iter().enumerate().find(|(_, s)| {
            s.state
                .compare_exchange(FREE, CHANGING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })?;
        slot.start.store(start, Ordering::Relaxed);
        slot.len.store(len, Ordering::Relaxed);
        slot.shrank.store(false, Ordering::Relaxed);
        slot.state.store(LIVE, Ordering::Release);
        Some(index)
    }

    pub(super) fn unwatch(index: usize) {
        let slot = &SLOTS[index];
        slot.state.store(CHANGING, Ordering::Release);
        slot.start.store(0, Ordering::Relaxed);
        slot.len.store(0, Ordering::Relaxed);
        slot.state.store(FREE, Ordering::Release);
    }

    /// Zero pages over `[addr's page, end of its watched map)` when `addr` is in one.
    fn cover(addr: usize) -> bool {
        let page = PAGE_SIZE.load(Ordering::Relaxed);
        for slot in &SLOTS {
            if slot.state.load(Ordering::Acquire) != LIVE {
                continue;
            }
            let start = slot.start.load(Ordering::Relaxed);
            let len = slot.len.load(Ordering::Relaxed);
            if addr < start || addr - start >= len {
                continue;
            }
            let from = addr & !(page - 1);
            let end = (start + len).next_multiple_of(page);
            // SAFETY: `[from, end)` lies inside a live read-only map that its owner keeps
            // mapped while the slot is live; replacing its pages with zero pages changes
            // what they read, which the owner learns from `shrank` before using the bytes.
            let mapped = unsafe {
                libc::mmap(
                    from as *mut c_void,
                    end - from,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if mapped == libc::MAP_FAILED {
                return false;
            }
            slot.shrank.store(true, Ordering::Release);
            return true;
        }
        false
    }

    extern "C" fn on_sigbus(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
        let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
        if code == BUS_ADRERR && cover(addr) {
            return;
        }
        // SAFETY: handing the signal on as the previous disposition would have taken it.
        unsafe { pass_on(signal, info, context) }
    }

    /// Deliver a fault that is not ours to the previous handler; with none (default or
    /// ignored), restore the default action: the faulting access repeats and ends the process.
    unsafe fn pass_on(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
        let previous = PREVIOUS.get().map(|p| p.0);
        match previous {
            Some(old) if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN => {
                if old.sa_flags & libc::SA_SIGINFO != 0 {
                    // SAFETY: an SA_SIGINFO disposition holds a three-argument handler.
                    let handler: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
                        unsafe { std::mem::transmute(old.sa_sigaction) };
                    handler(signal, info, context);
                } else {
                    // SAFETY: otherwise it holds a one-argument handler.
                    let handler: extern "C" fn(c_int) =
                        unsafe { std::mem::transmute(old.sa_sigaction) };
                    handler(signal);
                }
            }
            _ => {
                // SAFETY: sigaction is async-signal-safe; the struct is fully initialised.
                unsafe {
                    let mut default: libc::sigaction = std::mem::zeroed();
                    default.sa_sigaction = libc::SIG_DFL;
                    libc::sigemptyset(&mut default.sa_mask);
                    libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
                }
            }
        }
    }
}
