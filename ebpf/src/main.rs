//! hostwall's kernel side: one TC program for each direction of an
//! endpoint's host-side interface, and an XDP early-drop filter for the
//! uplink. The programs are thin: they hand the frame to `judge::judge`
//! and turn its verdict into an action.
#![no_std]
#![no_main]

mod judge;
mod maps;
mod mutants;
mod parse;

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use hostwall_common::{Counter, DropReason};
use judge::{Hook, Verdict};

/// Packets from the endpoint (TC ingress of its host-side interface).
#[classifier]
pub fn hostwall_from_endpoint(ctx: TcContext) -> i32 {
    tc_judge(&ctx, Hook::FromEndpoint)
}

/// Packets to the endpoint (TC egress of its host-side interface).
#[classifier]
pub fn hostwall_to_endpoint(ctx: TcContext) -> i32 {
    tc_judge(&ctx, Hook::ToEndpoint)
}

/// Traffic arriving from other hosts (XDP on `--uplink`).
#[xdp]
pub fn hostwall_uplink(ctx: XdpContext) -> u32 {
    let verdict = judge::judge(Hook::Uplink, ctx.data(), ctx.data_end(), 0, 0);
    match count(verdict, (ctx.data_end() - ctx.data()) as u64) {
        true => xdp_action::XDP_PASS,
        false => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn tc_judge(ctx: &TcContext, hook: Hook) -> i32 {
    let skb = ctx.as_ptr() as *const __sk_buff;
    {
        let len = skb_len(skb);
        let linear = (ctx.data_end() - ctx.data()) as u32;
        if linear < len {
            // Headers in paged data: make linear what the parser may read,
            // and only that. Failing that, the parser sees a truncated
            // packet and drops it (fail closed).
            let want = pull_len(ctx);
            if linear < want {
                let _ = ctx.pull_data(if len < want { len } else { want });
            }
        }
    }
    let verdict = if hook == Hook::FromEndpoint && may_name_a_route(ctx) && source_routed(ctx) {
        // An endpoint may not choose its packets' route.
        Verdict::Drop(DropReason::SourceRouted)
    } else {
        let (ifindex, arrived_on, tagged) = unsafe { ((*skb).ifindex, (*skb).ingress_ifindex, (*skb).vlan_present) };
        if tagged != 0 {
            // The kernel took the frame's VLAN tag into the skb before TC:
            // a tagged frame, to or from an endpoint.
            Verdict::Drop(DropReason::UnsupportedEthertype)
        } else {
            judge::judge(hook, ctx.data(), ctx.data_end(), ifindex, arrived_on)
        }
    };
    // The length is read again for the counters: the copy the pull compared
    // would carry its bounds through every step of the judging, and the
    // verifier would walk them once for each.
    match count(verdict, skb_len(skb) as u64) {
        // TC_ACT_UNSPEC hands the packet to the next program (tcx's
        // TCX_NEXT); with none left the kernel lets it through.
        true => TC_ACT_UNSPEC,
        false => TC_ACT_SHOT,
    }
}

/// `skb->len`, read where it is asked for.
#[inline(always)]
fn skb_len(skb: *const __sk_buff) -> u32 {
    unsafe { core::ptr::read_volatile(&(*skb).len) }
}

/// Whether a packet's headers may name its route, from the linear data:
/// an IPv4 header without options, an IPv6 header followed by no extension
/// header, and any other frame cannot. Headers not in the linear data may
/// (`source_routed` reads them).
#[inline(always)]
fn may_name_a_route(ctx: &TcContext) -> bool {
    let Ok(b) = parse::read::<[u8; 9]>(ctx.data(), ctx.data_end(), 12) else {
        return true;
    };
    match u16::from_be_bytes([b[0], b[1]]) {
        parse::ETH_P_IP => b[2] & 0x0f != 5,
        parse::ETH_P_IPV6 => parse::is_ipv6_ext(b[8]),
        _ => false,
    }
}

/// Whether a packet names its own route: an IPv4 loose (131) or strict
/// (137) source route option, or an IPv6 routing header of type 0
/// (deprecated, RFC 5095) or 4 (segment routing). For IPv4, the option The options are copied to the stack and walked there,
/// type by type: the verifier then follows the walk without it touching
/// what it knows of the packet, which the judging after it relies on.
/// A malformed option ends the walk (the parser judges the header).
/// Options that take more than `OPTION_STEPS` steps to walk (a word of
/// no-operation padding is one step; no one sends that many) count as a
/// source route: refused rather than half read.
#[inline(never)]
fn source_routed(ctx: &TcContext) -> bool {
    let (Ok(ethertype), Ok(ver_ihl)) = (ctx.load::<[u8; 2]>(12), ctx.load::<u8>(parse::ETH_HLEN)) else {
        return false;
    };
    match u16::from_be_bytes(ethertype) {
        parse::ETH_P_IP => {}
        parse::ETH_P_IPV6 => return ipv6_routing_header(ctx),
        _ => return false,
    }
    if ver_ihl & 0x0f <= 5 {
        return false;
    }
    let n = (ver_ihl & 0x0f) as usize * 4 - 20;
    let at = |o: usize| parse::ETH_HLEN + 20 + o;
    let mut o = 0usize;
    for _ in 0..OPTION_STEPS {
        if o >= n {
            return false;
        }
        let Ok(kind) = ctx.load::<u8>(at(o)) else {
            return false;
        };
        match kind {
            0 => return false,
            // No-operation padding, a word at a time where it fills one.
            1 if o + 4 <= n && ctx.load::<[u8; 4]>(at(o)) == Ok([1; 4]) => o += 4,
            1 => o += 1,
            131 | 137 => return true,
            _ => match ctx.load::<u8>(at(o) + 1) {
                Ok(len) if len >= 2 => o += len as usize,
                _ => return false,
            },
        }
    }
    // Longer than anyone sends (no-operation padding, mostly): refused
    // rather than half read.
    true
}

/// IPv6 extension headers walked for a routing header (the parser walks
/// no more).
const IPV6_EXT_STEPS: usize = 8;

/// Whether an IPv6 packet's extension headers hold a routing header of
/// type 0 or 4.
#[inline(always)]
fn ipv6_routing_header(ctx: &TcContext) -> bool {
    let Ok(mut nh) = ctx.load::<u8>(parse::ETH_HLEN + 6) else {
        return false;
    };
    let mut off = parse::ETH_HLEN + 40;
    for _ in 0..IPV6_EXT_STEPS {
        if !parse::is_ipv6_ext(nh) || off > parse::MAX_L4_OFFSET {
            return false;
        }
        let Ok(hdr) = ctx.load::<[u8; 4]>(off) else {
            return false;
        };
        if nh == 43 && (hdr[2] == 0 || hdr[2] == 4) {
            return true;
        }
        off += match nh {
            44 => 8,
            51 => (hdr[1] as usize + 2) * 4,
            _ => (hdr[1] as usize + 1) * 8,
        };
        nh = hdr[0];
    }
    false
}

/// Options `source_routed` walks one by one before it looks at the
/// bytes left.
const OPTION_STEPS: usize = 14;

/// How many bytes of the frame the parser may read: the IP header and 20
/// bytes of TCP, UDP or SCTP for most packets, everything up to
/// `parse::MAX_READ` for ICMP (errors quote a packet; neighbour discovery
/// and MLD are checked whole) and IPv6 extension headers. Read with
/// `bpf_skb_load_bytes`, which sees paged data.
#[inline(always)]
fn pull_len(ctx: &TcContext) -> u32 {
    const FULL: u32 = parse::MAX_READ as u32;
    let Ok(ethertype) = ctx.load::<[u8; 2]>(12) else {
        return FULL;
    };
    match u16::from_be_bytes(ethertype) {
        parse::ETH_P_IP => {
            let (Ok(ver_ihl), Ok(proto)) = (ctx.load::<u8>(parse::ETH_HLEN), ctx.load::<u8>(parse::ETH_HLEN + 9))
            else {
                return FULL;
            };
            match proto {
                parse::IPPROTO_TCP | parse::IPPROTO_UDP | parse::IPPROTO_SCTP => {
                    (parse::ETH_HLEN as u32) + (ver_ihl as u32 & 0x0f) * 4 + 20
                }
                _ => FULL,
            }
        }
        parse::ETH_P_IPV6 => match ctx.load::<u8>(parse::ETH_HLEN + 6) {
            Ok(parse::IPPROTO_TCP | parse::IPPROTO_UDP | parse::IPPROTO_SCTP) => parse::ETH_HLEN as u32 + 40 + 20,
            _ => FULL,
        },
        _ => FULL,
    }
}

/// Count the verdict; `true` if the packet passes.
#[inline(always)]
fn count(verdict: Verdict, bytes: u64) -> bool {
    let (map, index, pass) = match verdict {
        Verdict::Pass(reason) => (&maps::PASSES, reason as u32, true),
        Verdict::Drop(reason) => (&maps::DROPS, reason as u32, false),
    };
    if let Some(c) = map.get_ptr_mut(index) {
        let c: *mut Counter = c;
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
    pass
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
