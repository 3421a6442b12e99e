//! Host network facts the agent needs: interface addresses (getifaddrs), the default-route
//! interface (/proc/net/route), and go-sockaddr's `GetPrivateIP` rule, used by Nomad to pick
//! the advertise address when binding 0.0.0.0.

use std::ffi::CStr;
use std::net::Ipv4Addr;

/// All (interface, IPv4 address) pairs of interfaces that are up.
pub fn ipv4_addrs() -> Vec<(String, Ipv4Addr)> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs fills a linked list that we walk read-only and free once.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null()
                && (*ifa.ifa_addr).sa_family as i32 == libc::AF_INET
                && ifa.ifa_flags & libc::IFF_UP as u32 != 0
            {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                let name = CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
                out.push((name, ip));
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// The first IPv4 address of the named interface.
pub fn interface_ip(name: &str) -> Option<Ipv4Addr> {
    ipv4_addrs()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, ip)| ip)
}

/// The interface of the IPv4 default route.
pub fn default_interface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.len() > 2 && cols[1] == "00000000").then(|| cols[0].to_string())
    })
}

/// RFC 6890 private ranges as go-sockaddr counts them for `GetPrivateIP`.
pub fn is_private(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private() || (o[0] == 100 && (64..128).contains(&o[1]))
}

/// go-sockaddr `GetPrivateIP`: a private address, preferring the default-route interface.
pub fn private_ip() -> Option<Ipv4Addr> {
    let addrs = ipv4_addrs();
    let default = default_interface();
    addrs
        .iter()
        .filter(|(n, ip)| Some(n) == default.as_ref() && is_private(*ip))
        .chain(
            addrs
                .iter()
                .filter(|(_, ip)| is_private(*ip) && !ip.is_loopback()),
        )
        .map(|(_, ip)| *ip)
        .next()
}

/// The address Nomad's network fingerprint gives the node: the default-route interface's IP,
/// or the private IP, or loopback as a last resort.
pub fn default_ip() -> Ipv4Addr {
    default_interface()
        .and_then(|i| interface_ip(&i))
        .or_else(private_ip)
        .unwrap_or(Ipv4Addr::LOCALHOST)
}

/// Expands the go-sockaddr templates the double understands, e.g. `{{ GetPrivateIP }}` and
/// `{{ GetInterfaceIP "eth0" }}`. Plain addresses pass through.
pub fn expand_template(s: &str) -> Result<String, String> {
    let t = s.trim();
    let Some(inner) = t.strip_prefix("{{").and_then(|x| x.strip_suffix("}}")) else {
        return Ok(t.to_string());
    };
    let inner = inner.trim();
    if inner == "GetPrivateIP" {
        return private_ip()
            .map(|ip| ip.to_string())
            .ok_or_else(|| "No private IP address found".to_string());
    }
    if let Some(arg) = inner.strip_prefix("GetInterfaceIP") {
        let name = arg.trim().trim_matches('"');
        return interface_ip(name)
            .map(|ip| ip.to_string())
            .ok_or_else(|| format!("No IP address found on interface {name:?}"));
    }
    Err(format!(
        "unable to parse address template {s:?}: the nomad test double understands only \
         GetPrivateIP and GetInterfaceIP"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_and_templates_expand() {
        assert_eq!(interface_ip("lo"), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(
            expand_template("{{ GetInterfaceIP \"lo\" }}").unwrap(),
            "127.0.0.1"
        );
        assert_eq!(expand_template(" 10.0.0.1 ").unwrap(), "10.0.0.1");
        assert!(expand_template("{{ GetAllInterfaces }}").is_err());
        assert!(is_private("10.213.0.2".parse().unwrap()));
        assert!(is_private("100.64.1.1".parse().unwrap()));
        assert!(!is_private("8.8.8.8".parse().unwrap()));
    }
}
