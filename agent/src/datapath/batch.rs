//! Many entries of one map in one system call: `BPF_MAP_UPDATE_BATCH` and
//! `BPF_MAP_DELETE_BATCH`. A policy of 10,000 rules writes tens of
//! thousands of entries into a slot; one call for all of them instead of
//! one each takes about a third off the time to write them. Kernels that
//! cannot batch a map's type answer `ENOTSUPP`, and the entries are then
//! written one call each.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use aya::Pod;
use aya::maps::MapError;
use aya::sys::SyscallError;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The kernel's `ENOTSUPP` (not in libc: it is not meant for user space,
/// but the bpf system call returns it for a map without batch operations).
const ENOTSUPP: i32 = 524;

/// The `batch` member of the kernel's `union bpf_attr`; the kernel reads
/// the bytes passed and takes the rest of the union as zero.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// What a batch call did.
#[derive(Debug, PartialEq, Eq)]
pub enum Batched {
    /// Every entry was written (or removed).
    All,
    /// The kernel has no batch operation for this map; nothing was done.
    Unsupported,
}

fn call(cmd: libc::c_long, name: &'static str, mut attr: BatchAttr) -> Result<Batched, MapError> {
    if attr.count == 0 {
        return Ok(Batched::All);
    }
    // SAFETY: `attr` points to `count` keys (and values) that outlive the
    // call, of the map's key and value sizes (the callers' types are the
    // map's own); the kernel writes only `count` back.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if ret == 0 {
        return Ok(Batched::All);
    }
    let io_error = io::Error::last_os_error();
    match io_error.raw_os_error() {
        // Before Linux 5.6 the command does not exist (EINVAL); one call
        // per entry then says what is wrong, if anything is.
        Some(ENOTSUPP | libc::EOPNOTSUPP | libc::EINVAL) if attr.count == 0 => Ok(Batched::Unsupported),
        _ => Err(MapError::SyscallError(SyscallError { call: name, io_error })),
    }
}

/// Writes `entries` into the map `fd` (keys and values of its own sizes).
/// `Unsupported` when the kernel cannot batch this map; an error after
/// some entries were written leaves the map holding part of them.
pub fn update<K: Pod, V: Pod>(fd: BorrowedFd<'_>, entries: &[(K, V)]) -> Result<Batched, MapError> {
    let keys: Vec<K> = entries.iter().map(|(k, _)| *k).collect();
    let values: Vec<V> = entries.iter().map(|(_, v)| *v).collect();
    let attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: entries.len() as u32,
        map_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    call(BPF_MAP_UPDATE_BATCH, "bpf_map_update_batch", attr)
}

/// Removes `keys` from the map `fd`; every key must be present.
pub fn delete<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> Result<Batched, MapError> {
    let attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    call(BPF_MAP_DELETE_BATCH, "bpf_map_delete_batch", attr)
}
