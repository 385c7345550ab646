//! Which model-server address an agent may register for its node. A node token can be stolen
//! (any process on a launched VM, or a bring-your-own host, holds one), so what the agent says
//! is checked before the load balancer sends anyone's prompts there:
//!
//! - An endpoint the admin set when creating the node is kept; the agent cannot change it.
//! - Otherwise the endpoint must be an IP address the agent connects from (its own machine),
//!   and never loopback, link-local (169.254.0.0/16, fe80::/10, where the clouds' metadata
//!   services live), unspecified, multicast, or the control plane's own address: except for
//!   nodes on this machine (the local provider), whose model servers listen on loopback.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Why an agent's endpoint is refused, as a sentence for the agent's operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// Where the registering agent stands, and where the control plane listens.
#[derive(Debug, Clone)]
pub struct AgentOrigin {
    /// The address the agent's request came from.
    pub peer: IpAddr,
    /// The control plane's own addresses (its listen address and the public URL's).
    pub own: Vec<SocketAddr>,
    /// Every node may register a loopback endpoint (`--allow-loopback-endpoints`: stand-in
    /// VMs on this machine, in tests and demos).
    pub loopback_ok: bool,
}

/// Checks an endpoint an agent reported for a node whose endpoint the admin did not set.
pub fn check(url: &str, origin: &AgentOrigin, on_this_host: bool) -> Result<(), Refused> {
    let parsed = url::Url::parse(url).map_err(|e| Refused(format!("{url:?} is not a URL: {e}")))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let local_name = on_this_host
        && matches!(parsed.host(), Some(url::Host::Domain(name)) if name.eq_ignore_ascii_case("localhost"));
    let ip = match host_ip(&parsed) {
        Some(ip) => ip,
        None if local_name => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        None => {
            return Err(Refused(format!(
                "the endpoint {url:?} must name the node's IP address; to use a host name, set endpoint_url when creating the node (POST /admin/nodes)"
            )))
        }
    };
    let ip = canonical(ip);
    if is_own(ip, port, &origin.own) {
        return Err(Refused(format!(
            "the endpoint {url:?} is the control plane itself: requests would loop"
        )));
    }
    if ip.is_unspecified() || ip.is_multicast() || is_link_local(ip) || is_broadcast(ip) {
        return Err(Refused(format!(
            "the endpoint {url:?} is a link-local, metadata, unspecified or multicast address, which no model server is reached at"
        )));
    }
    if on_this_host || (origin.loopback_ok && ip.is_loopback()) {
        return Ok(());
    }
    if ip.is_loopback() {
        return Err(Refused(format!(
            "the endpoint {url:?} is a loopback address, which only nodes of the local provider may use"
        )));
    }
    if ip != canonical(origin.peer) {
        return Err(Refused(format!(
            "the endpoint {url:?} is not the address the agent connects from ({}); set endpoint_url when creating the node if the model server has another address",
            canonical(origin.peer)
        )));
    }
    Ok(())
}

/// The IP address a URL's host is written as, if it is one (not a name).
pub fn host_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        // fe80::/10, and AWS's IPv6 metadata address fd00:ec2::254.
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

fn is_broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// Whether `ip:port` reaches this control plane: one of its addresses, or loopback or an
/// unspecified listen address on one of its ports.
fn is_own(ip: IpAddr, port: u16, own: &[SocketAddr]) -> bool {
    own.iter().any(|addr| {
        addr.port() == port
            && (canonical(addr.ip()) == ip || ip.is_loopback() || addr.ip().is_unspecified())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(peer: &str) -> AgentOrigin {
        AgentOrigin {
            peer: peer.parse().unwrap(),
            own: vec![
                "127.0.0.1:8080".parse().unwrap(),
                "203.0.113.5:443".parse().unwrap(),
            ],
            loopback_ok: false,
        }
    }

    #[test]
    fn a_remote_agent_may_only_name_its_own_address() {
        let o = origin("10.1.2.3");
        assert!(check("http://10.1.2.3:8000", &o, false).is_ok());
        assert!(
            check("http://10.9.9.9:8000", &o, false).is_err(),
            "another machine"
        );
        assert!(
            check("http://model.internal:8000", &o, false).is_err(),
            "names are not checked, so refused"
        );
        assert!(check("http://[::ffff:10.1.2.3]:8000", &o, false).is_ok());
    }

    #[test]
    fn metadata_loopback_and_the_control_plane_are_refused() {
        let o = origin("169.254.169.254");
        for url in [
            "http://169.254.169.254/latest",
            "http://[fe80::1]:80",
            "http://[fd00:ec2::254]/",
            "http://0.0.0.0:8000",
            "http://224.0.0.1:8000",
        ] {
            assert!(check(url, &o, true).is_err(), "{url}");
        }
        let local = origin("127.0.0.1");
        assert!(
            check("http://127.0.0.1:8000", &local, false).is_err(),
            "loopback off this host"
        );
        assert!(check("http://127.0.0.1:8000", &local, true).is_ok());
        assert!(check("http://localhost:8000", &local, true).is_ok());
        assert!(
            check("http://127.0.0.1:8080", &local, true).is_err(),
            "the control plane"
        );
        assert!(
            check("http://127.0.0.2:8080/v1", &local, true).is_err(),
            "the control plane"
        );
        assert!(check("https://203.0.113.5", &origin("203.0.113.5"), false).is_err());
        let stand_ins = AgentOrigin {
            loopback_ok: true,
            ..origin("127.0.0.1")
        };
        assert!(check("http://127.0.0.1:8000", &stand_ins, false).is_ok());
        assert!(check("http://127.0.0.1:8080", &stand_ins, false).is_err());
        assert!(check("http://169.254.169.254/", &stand_ins, false).is_err());
    }
}
