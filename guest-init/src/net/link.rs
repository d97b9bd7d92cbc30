//! Static IPv4 configuration over rtnetlink (linux/rtnetlink.h; netlink(7), rtnetlink(7)):
//! RTM_NEWLINK (up), RTM_NEWADDR, RTM_NEWROUTE (default route), each acknowledged.

use std::io::{Read, Write};
use std::net::Ipv4Addr;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET: u8 = 2;
const IFF_UP: u32 = 0x1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

/// Netlink messages are host-endian; every length is 4-byte aligned.
fn message(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = 16 + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
    let len = 4 + data.len();
    let mut a = Vec::with_capacity(len.next_multiple_of(4));
    a.extend_from_slice(&(len as u16).to_ne_bytes());
    a.extend_from_slice(&ty.to_ne_bytes());
    a.extend_from_slice(data);
    a.resize(len.next_multiple_of(4), 0);
    a
}

/// `ifinfomsg` bringing interface `index` up.
pub fn link_up(index: u32, seq: u32) -> Vec<u8> {
    let mut b = vec![0u8, 0];
    b.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    b.extend_from_slice(&(index as i32).to_ne_bytes());
    b.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    b.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    message(RTM_NEWLINK, 0, seq, &b)
}

/// `ifaddrmsg` + IFA_LOCAL/IFA_ADDRESS.
pub fn add_address(index: u32, addr: Ipv4Addr, prefix: u8, seq: u32) -> Vec<u8> {
    let mut b = vec![AF_INET, prefix, 0, RT_SCOPE_UNIVERSE];
    b.extend_from_slice(&index.to_ne_bytes());
    b.extend(attr(IFA_LOCAL, &addr.octets()));
    b.extend(attr(IFA_ADDRESS, &addr.octets()));
    message(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, seq, &b)
}

/// `rtmsg` default route via `gateway` on `index`.
pub fn add_default_route(index: u32, gateway: Ipv4Addr, seq: u32) -> Vec<u8> {
    let mut b = vec![
        AF_INET,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ];
    b.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    b.extend(attr(RTA_GATEWAY, &gateway.octets()));
    b.extend(attr(RTA_OIF, &index.to_ne_bytes()));
    message(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, seq, &b)
}

/// The errno of an NLMSG_ERROR acknowledgement (0 = success).
pub fn ack_errno(resp: &[u8], seq: u32) -> Result<i32, String> {
    if resp.len() < 20 {
        return Err(format!("short netlink reply ({} bytes)", resp.len()));
    }
    let ty = u16::from_ne_bytes([resp[4], resp[5]]);
    let rseq = u32::from_ne_bytes(resp[8..12].try_into().expect("4"));
    if ty != NLMSG_ERROR || rseq != seq {
        return Err(format!("unexpected netlink reply type {ty} seq {rseq}"));
    }
    Ok(-i32::from_ne_bytes(resp[16..20].try_into().expect("4")))
}

/// Configure `ifname` with `address` (a.b.c.d/prefix) and a default route via `gateway`.
pub fn configure_static(ifname: &str, address: &str, gateway: &str) -> Result<(), String> {
    let (ip, prefix) = address
        .split_once('/')
        .ok_or_else(|| format!("address {address:?}"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| format!("address {address:?}"))?;
    let prefix: u8 = prefix.parse().map_err(|_| format!("address {address:?}"))?;
    let gw: Ipv4Addr = gateway
        .parse()
        .map_err(|_| format!("gateway {gateway:?}"))?;
    let index: u32 = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex"))
        .map_err(|e| format!("interface {ifname}: {e} (is the virtio-net device attached?)"))?
        .trim()
        .parse()
        .map_err(|_| format!("interface {ifname}: bad ifindex"))?;
    let lo: u32 = std::fs::read_to_string("/sys/class/net/lo/ifindex")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1);
    let mut sock = crate::sys::netlink_route_socket().map_err(|e| format!("netlink: {e}"))?;
    let msgs = [
        ("lo up", link_up(lo, 1)),
        ("link up", link_up(index, 2)),
        ("address", add_address(index, ip, prefix, 3)),
        ("default route", add_default_route(index, gw, 4)),
    ];
    for (seq, (what, m)) in (1u32..).zip(msgs) {
        sock.write_all(&m)
            .map_err(|e| format!("netlink {what}: {e}"))?;
        let mut buf = [0u8; 1024];
        let n = sock
            .read(&mut buf)
            .map_err(|e| format!("netlink {what}: {e}"))?;
        match ack_errno(&buf[..n], seq)? {
            0 => {}
            e => {
                return Err(format!(
                    "netlink {what}: {}",
                    std::io::Error::from_raw_os_error(e)
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_aligned_lengths_and_headers() {
        let m = add_address(2, Ipv4Addr::new(10, 0, 2, 15), 24, 7);
        assert_eq!(m.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWADDR);
        // header 16 + ifaddrmsg 8 + two 8-byte attributes
        assert_eq!(m.len(), 40);
        let r = add_default_route(2, Ipv4Addr::new(10, 0, 2, 2), 8);
        assert_eq!(r.len(), 16 + 12 + 8 + 8);
        assert_eq!(link_up(2, 1).len(), 32);
    }
}
