//! RTM_GETLINK over a NETLINK_ROUTE socket: the links of the agent's
//! network namespace, and single links of the namespaces it knows by a
//! namespace id (where the far ends of its veth pairs are); and
//! RTM_GETTFILTER: the programs of an interface's clsact filters.
//!
//! Requests and answers are built and read by hand (the layouts of
//! `linux/netlink.h` and `linux/rtnetlink.h`), so that nothing depends on
//! which of these structs a libc release happens to carry.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;
const TCMSG_LEN: usize = 20;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_ID: u16 = 11;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_EXT_MASK: u16 = 29;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_TARGET_NETNSID: u16 = 46;
const IFLA_INFO_KIND: u16 = 1;
/// The type bits of `nla_type` (without NLA_F_NESTED, NLA_F_NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3fff;
/// Leaves the counters out of every answer: they are most of its size.
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
/// How long the kernel may take to answer before the request fails.
const TIMEOUT: Duration = Duration::from_secs(2);
/// A dump that links changed under is asked for again this often.
const DUMP_TRIES: usize = 3;

/// One link as an RTM_NEWLINK message describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `ifi_flags` (`IFF_UP`, ...).
    pub flags: u32,
    /// `IFLA_ADDRESS` when it is an Ethernet address (six bytes).
    pub mac: Option<[u8; 6]>,
    /// `IFLA_LINK`: for a veth, its peer's ifindex (in the peer's
    /// namespace). The kernel leaves it out when it equals `ifindex`.
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the namespace `link` is in, as the asking
    /// namespace numbers it; absent when it is the same namespace.
    pub link_netnsid: Option<i32>,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, ...); absent for devices that
    /// are not made through rtnetlink (`lo`, physical ones).
    pub kind: Option<String>,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags & libc::IFF_UP as u32 != 0
    }
}

/// A NETLINK_ROUTE socket with `flags` (`SOCK_*`) on top of `SOCK_RAW`,
/// bound to the multicast `groups` (`RTMGRP_*`; 0 for requests only).
pub fn route_socket(flags: i32, groups: u32) -> io::Result<OwnedFd> {
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | flags, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = groups;
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// A NETLINK_ROUTE socket for requests (no multicast groups).
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub fn open() -> io::Result<Socket> {
        let fd = route_socket(libc::SOCK_CLOEXEC, 0)?;
        let tv = libc::timeval {
            tv_sec: TIMEOUT.as_secs() as _,
            tv_usec: 0,
        };
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket { fd, seq: 0 })
    }

    /// The link `ifindex` of the agent's namespace, or of the namespace
    /// the agent's numbers `netnsid`; `Ok(None)` when there is none.
    pub fn get(&mut self, ifindex: u32, netnsid: Option<i32>) -> io::Result<Option<Link>> {
        match self.request(NLM_F_REQUEST, ifindex, netnsid) {
            Ok((links, _)) => Ok(links.into_iter().find(|l| l.ifindex == ifindex)),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link of the agent's namespace.
    pub fn dump(&mut self) -> io::Result<Vec<Link>> {
        let mut tries = 0;
        loop {
            let (links, interrupted) = self.request(NLM_F_REQUEST | NLM_F_DUMP, 0, None)?;
            tries += 1;
            if !interrupted || tries == DUMP_TRIES {
                return Ok(links);
            }
        }
    }

    /// Sends one RTM_GETLINK and reads the answer; also says whether a
    /// dump was interrupted by a change (and may be inconsistent).
    fn request(&mut self, flags: u16, ifindex: u32, netnsid: Option<i32>) -> io::Result<(Vec<Link>, bool)> {
        let mut links = Vec::new();
        let interrupted = self.exchange(
            |seq| request_bytes(seq, flags, ifindex, netnsid),
            flags & NLM_F_DUMP != 0,
            |ty, payload| {
                if ty == RTM_NEWLINK
                    && let Some(link) = parse_link(payload)
                {
                    links.push(link);
                }
                ty == RTM_NEWLINK
            },
        )?;
        Ok((links, interrupted))
    }

    /// The ids of the BPF programs of the tc filters of interface
    /// `ifindex` under `parent` (a clsact hook: `0xfffffff2` ingress,
    /// `0xfffffff3` egress).
    pub fn tc_filter_programs(&mut self, ifindex: u32, parent: u32) -> io::Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.exchange(
            |seq| {
                let mut msg = vec![0u8; NLMSG_HDRLEN + TCMSG_LEN];
                msg[4..6].copy_from_slice(&RTM_GETTFILTER.to_ne_bytes());
                msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
                msg[8..12].copy_from_slice(&seq.to_ne_bytes());
                // tcmsg: family AF_UNSPEC, pads, ifindex, handle, parent, info.
                msg[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
                msg[NLMSG_HDRLEN + 12..NLMSG_HDRLEN + 16].copy_from_slice(&parent.to_ne_bytes());
                let len = msg.len() as u32;
                msg[0..4].copy_from_slice(&len.to_ne_bytes());
                msg
            },
            true,
            |ty, payload| {
                if ty == RTM_NEWTFILTER {
                    ids.extend(filter_program(payload));
                }
                false
            },
        )?;
        Ok(ids)
    }

    /// Sends the request `build` makes for a sequence number and hands
    /// every message of its answer to `on` (type, payload), which says
    /// whether a single answer (not a dump) is complete. Returns whether
    /// a dump was interrupted by a change.
    fn exchange(
        &mut self,
        build: impl FnOnce(u32) -> Vec<u8>,
        dump: bool,
        mut on: impl FnMut(u16, &[u8]) -> bool,
    ) -> io::Result<bool> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let req = build(seq);
        let n = unsafe { libc::send(self.fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut answer = Answer::default();
        let mut buf = vec![0u8; 64 * 1024];
        while !answer.done {
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(io::Error::other(format!(
                    "a netlink answer of {n} bytes did not fit in {} bytes",
                    buf.len()
                )));
            }
            answer.read(&buf[..n], seq, dump, &mut on)?;
        }
        Ok(answer.interrupted)
    }
}

/// The program id of a `bpf` filter (an RTM_NEWTFILTER payload: tcmsg,
/// then attributes).
fn filter_program(payload: &[u8]) -> Option<u32> {
    let attrs_of = payload.get(TCMSG_LEN..)?;
    let kind = attrs(attrs_of)
        .find(|(t, _)| *t == TCA_KIND)
        .map(|(_, v)| c_string(v))?;
    if kind != "bpf" {
        return None;
    }
    let options = attrs(attrs_of).find(|(t, _)| *t == TCA_OPTIONS)?.1;
    let id = attrs(options).find(|(t, _)| *t == TCA_BPF_ID)?.1;
    Some(u32::from_ne_bytes(id.get(..4)?.try_into().ok()?))
}

/// An RTM_GETLINK request: for `ifindex`, or a dump with `NLM_F_DUMP`.
fn request_bytes(seq: u32, flags: u16, ifindex: u32, netnsid: Option<i32>) -> Vec<u8> {
    let mut msg = vec![0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
    msg[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC, pad, type, index, flags, change.
    msg[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    push_attr(&mut msg, IFLA_EXT_MASK, &RTEXT_FILTER_SKIP_STATS.to_ne_bytes());
    if let Some(id) = netnsid {
        push_attr(&mut msg, IFLA_TARGET_NETNSID, &id.to_ne_bytes());
    }
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    msg
}

fn push_attr(msg: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = 4 + value.len();
    msg.extend_from_slice(&(len as u16).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(value);
    msg.resize(align(msg.len()), 0);
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// What has arrived of the answer to one request.
#[derive(Default)]
struct Answer {
    done: bool,
    interrupted: bool,
}

impl Answer {
    /// Reads the messages of one datagram, handing each of the request's
    /// to `on`; messages of other requests (another sequence number) are
    /// skipped.
    fn read(
        &mut self,
        mut buf: &[u8],
        seq: u32,
        dump: bool,
        on: &mut impl FnMut(u16, &[u8]) -> bool,
    ) -> io::Result<()> {
        while buf.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
            if len < NLMSG_HDRLEN || len > buf.len() {
                return Err(io::Error::other("a malformed netlink message"));
            }
            let ty = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
            let flags = u16::from_ne_bytes(buf[6..8].try_into().unwrap());
            let msg_seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap());
            let payload = &buf[NLMSG_HDRLEN..len];
            buf = &buf[align(len).min(buf.len())..];
            if msg_seq != seq {
                continue;
            }
            if flags & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match ty {
                NLMSG_DONE => self.done = true,
                NLMSG_ERROR => {
                    let code = payload
                        .get(0..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                        .ok_or_else(|| io::Error::other("a truncated netlink error"))?;
                    self.done = true;
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                _ => {
                    if on(ty, payload) && !dump {
                        self.done = true;
                    }
                }
            }
        }
        Ok(())
    }
}

/// An RTM_NEWLINK payload: ifinfomsg, then attributes.
fn parse_link(payload: &[u8]) -> Option<Link> {
    let head = payload.get(..IFINFOMSG_LEN)?;
    let mut link = Link {
        ifindex: i32::from_ne_bytes(head[4..8].try_into().unwrap()) as u32,
        flags: u32::from_ne_bytes(head[8..12].try_into().unwrap()),
        ..Default::default()
    };
    for (ty, value) in attrs(&payload[IFINFOMSG_LEN..]) {
        match ty {
            IFLA_ADDRESS => link.mac = value.try_into().ok(),
            IFLA_IFNAME => link.name = c_string(value),
            IFLA_LINK => link.link = value.get(..4).map(|b| u32::from_ne_bytes(b.try_into().unwrap())),
            IFLA_LINK_NETNSID => {
                link.link_netnsid = value.get(..4).map(|b| i32::from_ne_bytes(b.try_into().unwrap()));
            }
            IFLA_LINKINFO => {
                link.kind = attrs(value)
                    .find(|(t, _)| *t == IFLA_INFO_KIND)
                    .map(|(_, v)| c_string(v));
            }
            _ => {}
        }
    }
    Some(link)
}

/// The attributes (type without flag bits, value) packed in `buf`.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes(buf[0..2].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(buf[2..4].try_into().unwrap()) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let value = &buf[4..len];
        buf = &buf[align(len).min(buf.len())..];
        Some((ty, value))
    })
}

fn c_string(value: &[u8]) -> String {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer's links, as `Socket::request` collects them.
    #[derive(Default)]
    struct LinkAnswer {
        answer: Answer,
        links: Vec<Link>,
    }

    impl LinkAnswer {
        fn read(&mut self, buf: &[u8], seq: u32, dump: bool) -> io::Result<()> {
            let links = &mut self.links;
            self.answer.read(buf, seq, dump, &mut |ty, payload| {
                if ty == RTM_NEWLINK
                    && let Some(link) = parse_link(payload)
                {
                    links.push(link);
                }
                ty == RTM_NEWLINK
            })
        }
    }

    /// An RTM_NEWLINK message as the kernel sends it.
    fn newlink(seq: u32, flags: u16, ifindex: u32, ifi_flags: u32, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut msg = vec![0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
        msg[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        msg[6..8].copy_from_slice(&flags.to_ne_bytes());
        msg[8..12].copy_from_slice(&seq.to_ne_bytes());
        msg[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&ifindex.to_ne_bytes());
        msg[NLMSG_HDRLEN + 8..NLMSG_HDRLEN + 12].copy_from_slice(&ifi_flags.to_ne_bytes());
        for (ty, value) in attrs {
            push_attr(&mut msg, *ty, value);
        }
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg
    }

    fn control(ty: u16, seq: u32, error: i32) -> Vec<u8> {
        let mut msg = vec![0u8; NLMSG_HDRLEN + 4];
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&ty.to_ne_bytes());
        msg[8..12].copy_from_slice(&seq.to_ne_bytes());
        msg[NLMSG_HDRLEN..].copy_from_slice(&error.to_ne_bytes());
        msg
    }

    fn veth_attrs() -> Vec<(u16, Vec<u8>)> {
        let mut info = Vec::new();
        push_attr(&mut info, IFLA_INFO_KIND, b"veth\0");
        vec![
            (IFLA_IFNAME, b"hw-web\0".to_vec()),
            (IFLA_ADDRESS, vec![0x02, 0x42, 0x0a, 0x4d, 0x00, 0x0b]),
            (IFLA_LINK, 2u32.to_ne_bytes().to_vec()),
            (IFLA_LINK_NETNSID, 3i32.to_ne_bytes().to_vec()),
            (IFLA_LINKINFO | 0x8000, info),
        ]
    }

    #[test]
    fn requests_carry_the_index_and_the_target_namespace() {
        let req = request_bytes(7, NLM_F_REQUEST, 12, Some(3));
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize, req.len());
        assert_eq!(u16::from_ne_bytes(req[4..6].try_into().unwrap()), RTM_GETLINK);
        assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 7);
        assert_eq!(i32::from_ne_bytes(req[20..24].try_into().unwrap()), 12);
        let found: Vec<(u16, Vec<u8>)> = attrs(&req[NLMSG_HDRLEN + IFINFOMSG_LEN..])
            .map(|(t, v)| (t, v.to_vec()))
            .collect();
        assert_eq!(
            found,
            vec![
                (IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS.to_ne_bytes().to_vec()),
                (IFLA_TARGET_NETNSID, 3i32.to_ne_bytes().to_vec()),
            ]
        );
        let req = request_bytes(8, NLM_F_REQUEST | NLM_F_DUMP, 0, None);
        assert_eq!(req.len(), NLMSG_HDRLEN + IFINFOMSG_LEN + 8);
    }

    #[test]
    fn a_veth_answer_names_its_peer() {
        let mut answer = LinkAnswer::default();
        answer
            .read(&newlink(5, 0, 9, libc::IFF_UP as u32, &veth_attrs()), 5, false)
            .unwrap();
        assert!(answer.answer.done);
        assert_eq!(
            answer.links,
            vec![Link {
                ifindex: 9,
                name: "hw-web".into(),
                flags: libc::IFF_UP as u32,
                mac: Some([0x02, 0x42, 0x0a, 0x4d, 0x00, 0x0b]),
                link: Some(2),
                link_netnsid: Some(3),
                kind: Some("veth".into()),
            }]
        );
        assert!(answer.links[0].is_up());
    }

    #[test]
    fn a_dump_ends_at_done_and_skips_other_requests() {
        let mut answer = LinkAnswer::default();
        let mut datagram = newlink(
            4,
            0x2,
            1,
            0,
            &[(IFLA_IFNAME, b"lo\0".to_vec()), (IFLA_ADDRESS, vec![0; 6])],
        );
        datagram.extend(newlink(3, 0x2, 2, 0, &[(IFLA_IFNAME, b"stale\0".to_vec())]));
        datagram.extend(newlink(4, 0x2 | NLM_F_DUMP_INTR, 3, 0, &veth_attrs()));
        answer.read(&datagram, 4, true).unwrap();
        assert!(!answer.answer.done);
        assert_eq!(answer.links.iter().map(|l| l.ifindex).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(answer.links[0].kind, None);
        assert!(answer.answer.interrupted);
        answer.read(&control(NLMSG_DONE, 4, 0), 4, true).unwrap();
        assert!(answer.answer.done);
    }

    #[test]
    fn errors_and_odd_addresses() {
        let mut answer = LinkAnswer::default();
        let e = answer
            .read(&control(NLMSG_ERROR, 1, -libc::ENODEV), 1, false)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        // A tunnel's four-byte address is no MAC.
        let mut answer = LinkAnswer::default();
        answer
            .read(&newlink(2, 0, 4, 0, &[(IFLA_ADDRESS, vec![10, 0, 0, 1])]), 2, false)
            .unwrap();
        assert_eq!(answer.links[0].mac, None);
        // A message that claims more bytes than there are.
        let mut bad = newlink(2, 0, 4, 0, &[]);
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(LinkAnswer::default().read(&bad, 2, false).is_err());
    }

    #[test]
    fn a_bpf_filter_names_its_program() {
        let mut payload = vec![0u8; TCMSG_LEN];
        let mut options = Vec::new();
        push_attr(&mut options, TCA_BPF_ID, &77u32.to_ne_bytes());
        push_attr(&mut payload, TCA_KIND, b"bpf\0");
        push_attr(&mut payload, TCA_OPTIONS, &options);
        assert_eq!(filter_program(&payload), Some(77));
        let mut other = vec![0u8; TCMSG_LEN];
        push_attr(&mut other, TCA_KIND, b"u32\0");
        push_attr(&mut other, TCA_OPTIONS, &options);
        assert_eq!(filter_program(&other), None);
        assert_eq!(filter_program(&[0; 4]), None);
    }

    /// The namespace the tests run in has at least `lo`, which is no veth.
    #[test]
    fn reads_the_links_of_this_namespace() {
        let mut socket = Socket::open().unwrap();
        let links = socket.dump().unwrap();
        let lo = links.iter().find(|l| l.name == "lo").expect("lo in the dump");
        assert_eq!(lo.mac, Some([0; 6]));
        let again = socket.get(lo.ifindex, None).unwrap().expect("lo by its ifindex");
        assert_eq!(again.name, "lo");
        assert_eq!(again.kind, None);
        assert_eq!(socket.get(u32::MAX >> 1, None).unwrap(), None);
    }
}
