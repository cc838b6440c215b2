//! Event sources the agent reacts to: changes of the control file
//! (inotify on its directory, since configuration management replaces the
//! file by renaming) and of links and addresses (rtnetlink).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use tokio::io::unix::AsyncFd;

/// A non-blocking fd that becomes readable when something happened; what
/// happened is not parsed, only drained.
pub struct Watch {
    fd: AsyncFd<OwnedFd>,
}

/// Registers an fd this module owns (and so keeps open) with tokio.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the fd is owned by the AsyncFd and closed only when it drops.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

impl Watch {
    /// inotify on `file`'s directory, for anything that may change `file`.
    pub fn control_file(file: &Path) -> io::Result<Watch> {
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
        let mask = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_FROM;
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watch { fd: register(fd)? })
    }

    /// rtnetlink: links and addresses appearing, changing, disappearing.
    pub fn links() -> io::Result<Watch> {
        let groups = libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR;
        let fd = crate::host::route_socket(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, groups as u32)?;
        Ok(Watch { fd: register(fd)? })
    }

    /// Waits until something happened and drains the events.
    pub async fn changed(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 8192];
            let mut got = false;
            loop {
                let n = unsafe { libc::read(self.fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 {
                    got = true;
                    continue;
                }
                let err = io::Error::last_os_error();
                if n < 0 && err.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    break;
                }
                if n < 0 && err.raw_os_error() == Some(libc::ENOBUFS) {
                    // The kernel dropped events: treat it as a change.
                    got = true;
                    continue;
                }
                if n < 0 {
                    return Err(err);
                }
                break;
            }
            if got {
                return Ok(());
            }
        }
    }
}
