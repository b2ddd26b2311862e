//! Live disks: replication from a running hypervisor. On Linux that is QEMU/KVM (or
//! `qemu-storage-daemon`, QEMU's block layer without a guest), driven over QMP ([`qmp`]) and
//! read over NBD ([`nbd`]); [`qemu`] makes a disk it hosts a
//! [`ChangeSource`](crate::source::ChangeSource): dirty bitmaps say what changed, a fleecing
//! view gives each cycle a crash-consistent point in time while the guest keeps writing.

pub mod group;
pub mod nbd;
pub mod qemu;
pub mod qmp;
mod scratch;

pub use group::QemuGroup;
pub use qemu::{QemuOptions, QemuSource};
