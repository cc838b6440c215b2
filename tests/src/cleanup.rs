//! Everything the harness creates outside the process (namespaces, child
//! processes, bpffs mounts, temp directories) is registered here as well as
//! owned by a guard. The guards clean up on drop, panics included; the
//! registry is for the one case where drop never runs: a signal. Programs
//! that want that (the demo) call [`cleanup_on_interrupt`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) enum Resource {
    /// A child process; `graceful` ones get SIGTERM and a few seconds first.
    Process {
        pid: i32,
        graceful: bool,
    },
    Mount(PathBuf),
    Dir(PathBuf),
    Netns(String),
}

static REGISTRY: Mutex<Vec<(u64, Resource)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Set once the interrupt cleanup has started.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Records a resource; the returned id is passed to [`forget`] once the
/// owning guard has released it.
pub(crate) fn register(resource: Resource) -> u64 {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    if CLOSED.load(Ordering::SeqCst) {
        // Created while the interrupt cleanup runs: release it at once.
        release(&resource);
        return id;
    }
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).push((id, resource));
    id
}

pub(crate) fn forget(id: u64) {
    REGISTRY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(i, _)| *i != id);
}

/// Releases every registered resource: processes first (so that the agent
/// detaches while its interfaces still exist), then mounts, directories and
/// namespaces.
pub fn cleanup_all() {
    let mut all: Vec<Resource> = std::mem::take(&mut *REGISTRY.lock().unwrap_or_else(|e| e.into_inner()))
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    all.sort_by_key(|r| match r {
        Resource::Process { .. } => 0,
        Resource::Mount(_) => 1,
        Resource::Dir(_) => 2,
        Resource::Netns(_) => 3,
    });
    for r in all {
        release(&r);
    }
}

pub(crate) fn release(r: &Resource) {
    match r {
        Resource::Process { pid, graceful } => stop_pid(*pid, *graceful),
        Resource::Mount(path) => unmount(path),
        Resource::Dir(path) => {
            let _ = std::fs::remove_dir_all(path);
        }
        Resource::Netns(name) => delete_netns(name),
    }
}

/// Stops a process we spawned but do not hold a `Child` for (the signal
/// path): reaping it here is fine, the process is about to exit.
fn stop_pid(pid: i32, graceful: bool) {
    let reaped = |pid: i32| {
        let mut status = 0;
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        r == pid || r < 0
    };
    if graceful {
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if reaped(pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !reaped(pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lazy unmount: pinned maps of a process that is still exiting must not
/// make teardown fail.
pub(crate) fn unmount(path: &Path) {
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

pub(crate) fn delete_netns(name: &str) {
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        // write(2) is async-signal-safe; the watcher thread does the work.
        unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    }
}

/// On SIGINT or SIGTERM: release everything registered, then exit with
/// 130. Drop guards alone would not run: the default action of these
/// signals ends the process without unwinding.
pub fn cleanup_on_interrupt() -> std::io::Result<()> {
    if PIPE_WRITE.load(Ordering::Relaxed) >= 0 {
        return Ok(());
    }
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let [read_fd, write_fd] = fds;
    PIPE_WRITE.store(write_fd, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("cleanup-on-signal".into())
        .spawn(move || {
            let mut byte = 0u8;
            loop {
                let n = unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) };
                if n == 1 {
                    break;
                }
            }
            eprintln!("\ninterrupted: tearing down the test namespaces");
            CLOSED.store(true, Ordering::SeqCst);
            cleanup_all();
            std::process::exit(130);
        })?;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        if unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Removes what crashed earlier runs left behind: namespaces named
/// `PREFIX-PID-…` and agent directories `hwt-agent-PID-…` in the temp
/// directory, whose PID no longer runs. Names carry the PID of the process
/// that made them, so live runs are never touched.
pub fn sweep_stale(prefix: &str) {
    let dead = |name: &str, prefix: &str| -> bool {
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
            return false;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            return false;
        };
        let alive =
            unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        pid != std::process::id() as i32 && !alive
    };
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead(&name, prefix) {
                delete_netns(&name);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead(&name, "hwt-agent") {
                unmount(&e.path().join("bpffs"));
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
