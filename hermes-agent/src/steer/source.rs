//! The address the agent delivers to the app from. It is not loopback, so that the app never
//! takes a remote client for a local one (an app that trusts 127.0.0.1, "allow from localhost",
//! Redis' protected mode, would otherwise trust the whole network), and it is the same on every
//! replica, so the app sees the same peer everywhere; the app learns the real client from
//! `X-Forwarded-For`. The steering program lets connections from it through.
//!
//! The default, 169.254.72.1, is link-local: it is added to `lo` (scope host) in the protected
//! network namespace if it is not there, with one netlink request.
use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
};

use nix::{
    net::if_::if_nametoindex,
    sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        setsockopt, socket, sockopt,
    },
};
use tokio::net::{TcpSocket, TcpStream};

/// The default delivery address.
pub const DEFAULT: Ipv4Addr = Ipv4Addr::new(169, 254, 72, 1);

/// Makes sure `addr` is an address of this network namespace, adding it to `lo` if not.
pub fn ensure(addr: Ipv4Addr) -> io::Result<()> {
    if std::net::TcpListener::bind((addr, 0)).is_ok() {
        return Ok(());
    }
    add_to_loopback(addr)?;
    tracing::info!(%addr, "added the delivery address to lo");
    Ok(())
}

/// Connects to the app at `app` from `source`.
pub async fn connect(source: Ipv4Addr, app: SocketAddr) -> io::Result<TcpStream> {
    connect_in(None, source, app).await
}

/// Connects to the app at `app` from `source`, with a socket made in `netns` (`None`: the
/// agent's own namespace).
pub async fn connect_in(
    netns: Option<&super::netns::Netns>,
    source: Ipv4Addr,
    app: SocketAddr,
) -> io::Result<TcpStream> {
    let socket = match (netns, app) {
        (Some(netns), _) => netns.tcp_socket(app)?,
        (None, SocketAddr::V4(_)) => TcpSocket::new_v4()?,
        (None, SocketAddr::V6(_)) => TcpSocket::new_v6()?,
    };
    if app.is_ipv4() {
        // An app connection per client connection, closed by the agent, leaves a TIME_WAIT
        // behind on `source` each time: tens of thousands a minute under a client that opens a
        // connection per request. A port taken at bind time must be held by none of them, and
        // finding one grows slow as they pile up; taken at connect time, on `lo` (where the
        // app is reached at `source`), the kernel reuses a TIME_WAIT's port once it is a second
        // old (`net.ipv4.tcp_tw_reuse`, on for loopback by default).
        setsockopt(&socket, sockopt::IpBindAddressNoPort, &true)?;
        // Refused without CAP_NET_RAW before Linux 5.7: then ports are reused less, that is all.
        if app.ip() == std::net::IpAddr::V4(source) {
            let _ = setsockopt(
                &socket,
                sockopt::BindToDevice,
                &std::ffi::OsString::from("lo"),
            );
        }
        socket.bind(SocketAddr::from((source, 0)))?;
    }
    socket.connect(app).await
}

// rtnetlink(7): what an RTM_NEWADDR request is made of.
const RTM_NEWADDR: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RT_SCOPE_HOST: u8 = 254;

/// `ip addr add ADDR/32 dev lo scope host`.
fn add_to_loopback(addr: Ipv4Addr) -> io::Result<()> {
    let index = if_nametoindex("lo")?;
    let mut message = Vec::with_capacity(40);
    // struct nlmsghdr: length, type, flags, sequence, port id.
    message.extend_from_slice(&40u32.to_ne_bytes());
    message.extend_from_slice(&RTM_NEWADDR.to_ne_bytes());
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    // struct ifaddrmsg: family, prefix length, flags, scope, interface index.
    message.extend_from_slice(&[libc_af_inet(), 32, 0, RT_SCOPE_HOST]);
    message.extend_from_slice(&index.to_ne_bytes());
    // Two struct rtattr with the address.
    for kind in [IFA_LOCAL, IFA_ADDRESS] {
        message.extend_from_slice(&8u16.to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&addr.octets());
    }
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    use std::os::fd::AsRawFd as _;
    sendto(
        fd.as_raw_fd(),
        &message,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut answer = [0u8; 256];
    let n = recv(fd.as_raw_fd(), &mut answer, MsgFlags::empty())?;
    // The acknowledgement: a struct nlmsghdr of type NLMSG_ERROR, then the error (0: done).
    if n < 20 || u16::from_ne_bytes([answer[4], answer[5]]) != NLMSG_ERROR {
        return Err(io::Error::other("unexpected netlink answer"));
    }
    match i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]) {
        0 => Ok(()),
        error if -error == nix::errno::Errno::EEXIST as i32 => Ok(()),
        error => Err(io::Error::from_raw_os_error(-error)),
    }
}

fn libc_af_inet() -> u8 {
    AddressFamily::Inet as i32 as u8
}
