//! Packet access and header constants shared by the XDP programs (`main.rs`, `sink.rs`): each
//! binary includes this module, so both read packets the one verifier-friendly way.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_UDP: u8 = 17;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;

/// A bounds-checked pointer into the packet, or `None` if `T` at `off` would cross `data_end`.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Reads whole byte arrays, never single bytes through separate checks: one bounds check per
/// header keeps the verifier's packet-range tracking simple.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the whole T lies inside the packet; byte arrays have
    // alignment 1.
    ptr_at::<T>(ctx, off).map(|p| unsafe { *p })
}
