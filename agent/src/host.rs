//! What the agent reads about the host it runs on.

pub mod rtnl;

pub use rtnl::route_socket;

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// The ifindex of an interface in the agent's network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => None,
        i => Some(i),
    }
}

/// Every address configured in the agent's network namespace: what the
/// `host` peer stands for.
pub fn addresses() -> io::Result<BTreeSet<IpAddr>> {
    let mut out = BTreeSet::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cur = ifap;
    while !cur.is_null() {
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            match unsafe { (*ifa.ifa_addr).sa_family } as i32 {
                libc::AF_INET => {
                    let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.insert(IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.insert(IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    unsafe { libc::freeifaddrs(ifap) };
    Ok(out)
}

/// The node name endpoints are matched against: the hostname.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "localhost".into();
    }
    CStr::from_bytes_until_nul(&buf)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Whether this process shares PID 1's mount namespace: only there does a
/// bpffs it mounts outlive it. (`ip netns exec`, a hardened systemd unit
/// and `unshare -m` give a process a namespace of its own, whose mounts
/// die with it, pins and all.)
pub fn in_host_mount_namespace() -> bool {
    if let (Ok(me), Ok(init)) = (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    ) {
        return me == init;
    }
    // The namespace links need ptrace access to PID 1, which a root
    // without all of PID 1's capabilities lacks; its mount table does
    // not. Mount ids are unique across namespaces: the same root mount is
    // the same namespace.
    match (
        root_mount_id("/proc/self/mountinfo"),
        root_mount_id("/proc/1/mountinfo"),
    ) {
        (Some(me), Some(init)) => me == init,
        _ => false,
    }
}

/// The id of the topmost mount at `/` in a mount table.
fn root_mount_id(mountinfo: &str) -> Option<u64> {
    std::fs::read_to_string(mountinfo).ok()?.lines().rev().find_map(|l| {
        let mut fields = l.split(' ');
        let id = fields.next()?.parse().ok()?;
        (fields.nth(3)? == "/").then_some(id)
    })
}

/// Makes `dir` a directory on a bpffs: uses it if it is one, creates it
/// inside a bpffs parent, or mounts a bpffs on it, the last two only when
/// a bpffs mounted here outlives the agent (this is PID 1's mount
/// namespace). A bpffs inherited or bind-mounted from the host is always
/// accepted.
pub fn ensure_bpffs(dir: &Path) -> io::Result<()> {
    if is_bpffs(dir) {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && is_bpffs(parent)
    {
        std::fs::create_dir_all(dir)?;
        return Ok(());
    }
    if !in_host_mount_namespace() {
        return Err(io::Error::other(format!(
            "{} is not on a bpffs, and this process's mount namespace is not the host's (PID 1's): a bpffs \
             mounted here would vanish with the agent, and enforcement with it. Mount one on the host first \
             (`mount -t bpf bpf /sys/fs/bpf`), bind-mount the host's into this namespace, or give --bpffs a \
             directory on one",
            dir.display()
        )));
    }
    if let Some(parent) = dir.parent() {
        if !parent.exists() {
            std::fs::create_dir_all(parent)?;
        }
        if parent == Path::new("/sys/fs/bpf") {
            mount_bpffs(parent)?;
        }
        if is_bpffs(parent) {
            std::fs::create_dir_all(dir)?;
            return Ok(());
        }
    }
    std::fs::create_dir_all(dir)?;
    mount_bpffs(dir)
}

fn mount_bpffs(dir: &Path) -> io::Result<()> {
    let target = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Every interface of the agent's network namespace: (ifindex, name).
pub fn interfaces() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return out;
    }
    let mut cur = list;
    loop {
        let entry = unsafe { &*cur };
        if entry.if_index == 0 || entry.if_name.is_null() {
            break;
        }
        let name = unsafe { CStr::from_ptr(entry.if_name) }.to_string_lossy().into_owned();
        out.push((entry.if_index, name));
        cur = unsafe { cur.add(1) };
    }
    unsafe { libc::if_freenameindex(list) };
    out
}

/// An interface of the agent's network namespace and its Ethernet address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkMac {
    pub ifindex: u32,
    pub name: String,
    pub mac: [u8; 6],
}

/// The Ethernet address of every link in the agent's network namespace
/// that has one: the host's own interfaces, bridges, the uplink, the host
/// sides of veth pairs. Links without one (`lo`'s all zeros, tunnels)
/// are left out.
pub fn link_macs() -> io::Result<Vec<LinkMac>> {
    let links = rtnl::Socket::open()?.dump()?;
    Ok(links
        .into_iter()
        .filter_map(|l| {
            let mac = l.mac.filter(|m| *m != [0; 6])?;
            Some(LinkMac {
                ifindex: l.ifindex,
                name: l.name,
                mac,
            })
        })
        .collect())
}

/// The far end of a veth pair, seen from the near end in the agent's
/// network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethPeer {
    /// Its ifindex in its own namespace.
    pub ifindex: u32,
    /// Its namespace as the agent's namespace numbers it; `None` when it
    /// is in the agent's namespace itself.
    pub netnsid: Option<i32>,
    pub name: String,
    /// Its Ethernet address (`IFLA_ADDRESS`).
    pub mac: Option<[u8; 6]>,
    /// Whether it is up (`IFF_UP`).
    pub up: bool,
}

/// The other end of the veth pair whose end in the agent's namespace is
/// `ifindex`: an RTM_GETLINK for `ifindex`, whose `IFLA_LINK` and
/// `IFLA_LINK_NETNSID` name the peer, then one for the peer in its
/// namespace (`IFLA_TARGET_NETNSID`). `Ok(None)` when `ifindex` is gone
/// or is no veth.
pub fn veth_peer(ifindex: u32) -> io::Result<Option<VethPeer>> {
    let mut socket = rtnl::Socket::open()?;
    let Some(near) = socket.get(ifindex, None)? else {
        return Ok(None);
    };
    if near.kind.as_deref() != Some("veth") {
        return Ok(None);
    }
    // The kernel leaves IFLA_LINK out when the peer's ifindex equals this
    // end's, which it can only in another namespace.
    let peer_index = match (near.link, near.link_netnsid) {
        (Some(i), _) => i,
        (None, Some(_)) => ifindex,
        (None, None) => return Ok(None),
    };
    let Some(far) = socket.get(peer_index, near.link_netnsid)? else {
        return Ok(None);
    };
    Ok(Some(VethPeer {
        ifindex: peer_index,
        netnsid: near.link_netnsid,
        up: far.is_up(),
        name: far.name,
        mac: far.mac,
    }))
}

/// The Ethernet address of the container's side of the veth pair whose
/// host side is `ifindex`: `None` when `ifindex` is no veth or the address
/// cannot be read.
pub fn peer_mac(ifindex: u32) -> Option<[u8; 6]> {
    veth_peer(ifindex).ok().flatten().and_then(|p| p.mac)
}
