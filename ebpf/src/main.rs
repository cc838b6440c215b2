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
use hostwall_common::Counter;
use judge::{Hook, Verdict};

/// Bytes of headers that must be in the linear part of an skb for direct
/// packet access: Ethernet, IPv6 with extension headers, and an L4 header.
const PULL_LEN: u32 = 256;

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
    let len = ctx.len();
    if (ctx.data_end() - ctx.data()) < PULL_LEN as usize && len as usize > ctx.data_end() - ctx.data() {
        // Headers in paged data: make them linear. Failing that, the
        // parser sees a truncated packet and drops it (fail closed).
        let _ = ctx.pull_data(if len < PULL_LEN { len } else { PULL_LEN });
    }
    let skb = ctx.as_ptr() as *const __sk_buff;
    let (ifindex, arrived_on) = unsafe { ((*skb).ifindex, (*skb).ingress_ifindex) };
    let verdict = judge::judge(hook, ctx.data(), ctx.data_end(), ifindex, arrived_on);
    match count(verdict, len as u64) {
        // TC_ACT_UNSPEC hands the packet to the next program (tcx's
        // TCX_NEXT); with none left the kernel lets it through.
        true => TC_ACT_UNSPEC,
        false => TC_ACT_SHOT,
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
